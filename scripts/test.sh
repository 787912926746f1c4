#!/usr/bin/env bash
# Set up (idempotent), check lint, format and types, then run the whole test suite, slow
# real-weights tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/python -m pytest -q "$@"
