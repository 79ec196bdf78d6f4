#!/usr/bin/env bash
# Create .venv (once) and install the project into it with the given extras, e.g. `tools/setup_env.sh dev`,
# with the tested releases from constraints.txt. Works offline against a local package mirror; re-running
# only installs what changed. A failed install or an extra's package that does not import stops here.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-lab,app}
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
stamp=.venv/.installed-$extras
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  echo "Installing course-utils[$extras] into .venv (first time: a few minutes, PyTorch is large)..."
  log=.venv/install.log
  if ! .venv/bin/pip install -e ".[$extras]" -c constraints.txt >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "Installing course-utils[$extras] failed: the end of pip's output is above, all of it in $log." >&2
    exit 1
  fi
  .venv/bin/python tools/check_install.py "$extras"
  .venv/bin/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (course)" >/dev/null
  touch "$stamp"
fi
