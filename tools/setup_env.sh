#!/usr/bin/env bash
# Create .venv (once) and install the project into it with the given extras, e.g. `tools/setup_env.sh dev`.
# Works offline against a local package mirror; re-running only installs what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-lab,app}
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
stamp=.venv/.installed-$extras
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "Installing course-utils[$extras] into .venv (first time: a few minutes, PyTorch is large)..."
  .venv/bin/pip install -q -e ".[$extras]" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import course_utils, fastai, torch" # fail here, clearly, if the install did not work
  .venv/bin/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (course)" >/dev/null
  touch "$stamp"
fi
