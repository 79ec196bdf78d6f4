#!/usr/bin/env bash
# On a machine with a CUDA GPU: the fast-image benchmark with every variant, then the GPU-only tests,
# in one go (about 5 minutes on an H200). Logs, JSON and the markdown table go to OUT_DIR.
#   bench/gpu_check.sh [OUT_DIR]        (default bench/results/gpu; PYTHON=... to pick an interpreter,
#                                        default .venv/bin/python where there is one, else python3)
set -uo pipefail
if [ -x .venv/bin/python ]; then py=${PYTHON:-.venv/bin/python}; else py=${PYTHON:-python3}; fi
out=${1:-bench/results/gpu}
mkdir -p "$out"
"$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU here')" || exit 2
# the benchmark imports the installed package (not the checkout it runs from)
"$py" -c "import importlib.metadata as m; m.version('course-utils')" 2>/dev/null || { echo "course-utils is not installed for $py: pip install -e ." >&2; exit 2; }
"$py" bench/bench_fastimage.py --variants --out "$out" 2>&1 | tee "$out/bench.log"
bench=${PIPESTATUS[0]}
# --noconftest: the GPU tests need neither the notebook runner nor its session fixtures
"$py" -m pytest -q --noconftest -p no:cacheprovider tests/test_fastimage.py -k "gpu or cuda" 2>&1 | tee "$out/gpu_tests.log"
tests=${PIPESTATUS[0]}
exit $(( bench || tests ))
