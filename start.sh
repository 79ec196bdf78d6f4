#!/usr/bin/env bash
# Set up the environment (once) and run a lesson headless, printing its results.
#   ./start.sh            run lesson 1 (on sample data when offline)
#   ./start.sh 02         run another lesson
#   ./start.sh lab        open all lessons in JupyterLab instead
set -euo pipefail
cd "$(dirname "$0")"
tools/setup_env.sh lab,app
if [ "${1:-}" = lab ]; then exec .venv/bin/course lab "${@:2}"; fi
exec .venv/bin/course run "${1:-01_intro}"
