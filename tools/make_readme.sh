#!/usr/bin/env bash
# README.md is generated from nbs/index.ipynb. (nbdev-readme would need the Quarto binary, which a
# machine without internet cannot download; nbconvert's Markdown export gives the same text offline.)
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/jupyter nbconvert --log-level=ERROR --to markdown --output-dir . --output README nbs/index.ipynb
