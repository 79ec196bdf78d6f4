#!/usr/bin/env bash
# Set up everything the tests need (once) and run the whole suite: notebooks in sync with the
# package, every notebook executed on sample data, unit tests, browser tests of the apps.
set -euo pipefail
cd "$(dirname "$0")"
tools/setup_env.sh dev
if [ ! -x "${CHROMIUM_PATH:-/usr/bin/chromium}" ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "Installing Debian's chromium for the browser tests..."
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
  else
    echo "chromium is missing: install it (apt-get install chromium) for the browser tests." >&2; exit 1
  fi
fi
source .venv/bin/activate
echo "== notebooks and generated files in sync (nbdev-export, nbdev-clean, README from nbs/index.ipynb)"
# the content of every file that differs from git's index or is new (not ignored), so that a file that
# was already modified and is rewritten again still counts as a change
snapshot() { git ls-files -z --modified --deleted --others --exclude-standard | sort -zu | xargs -0r sha256sum 2>&1 || true; }
before=$(snapshot)
nbdev-export
nbdev-clean
tools/make_readme.sh
after=$(snapshot)
if [ "$before" != "$after" ]; then
  echo "nbdev-export, nbdev-clean or tools/make_readme.sh changed files; run them and commit the result:" >&2
  diff <(echo "$before") <(echo "$after") >&2 || true
  exit 1
fi
echo "== test suite"
python -m pytest "$@"
