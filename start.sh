#!/usr/bin/env bash
# Set up the environment (once) and run a lesson headless, showing its progress and printing its results.
#   ./start.sh                run lesson 1 (on sample data when offline)
#   ./start.sh 02 [--sample]  run another lesson (--sample: on the sample data even when online)
#   ./start.sh lab [options]  open all lessons in JupyterLab instead; options go to JupyterLab (e.g. --port 8899)
#   ./start.sh report         draw the results of the lessons run so far beside the book's
set -euo pipefail
cd "$(dirname "$0")"
tools/setup_env.sh lab,app
case "${1:-}" in
  lab|report) exec .venv/bin/course "$@" ;;
esac
exec .venv/bin/course run "${1:-01_intro}" "${@:2}"
