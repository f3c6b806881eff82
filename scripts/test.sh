#!/usr/bin/env bash
# The README's test command (CI runs it through .ci/run): installs what the tests need on a fresh
# machine -- Debian's Fashion-MNIST package when it can, a venv with sparseforge[test,models] -- and runs
# the suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) \
    || echo "warning: could not install dataset-fashion-mnist; the tests that need it will skip" >&2
fi
python3 -m venv .venv
.venv/bin/python -m pip install -q ".[test,models]"
.venv/bin/python -m pytest "$@"
