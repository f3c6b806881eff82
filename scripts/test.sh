#!/usr/bin/env bash
# The README's test command: installs everything into ./.venv and runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q ".[test,models]"
.venv/bin/python -m pytest -q "$@"
