#!/usr/bin/env python3
"""Builds sparseforge.wasm: the CPU kernels as a single-threaded wasm32-wasi reactor with C ABI exports.

    python scripts/build_wasm.py            # -> python/sparseforge/_wasm/sparseforge.wasm
    python scripts/build_wasm.py --out F    # anywhere else (CMake's optional step uses this)

Needs ``ziglang`` (PyPI) in this Python: ``pip install ziglang wasmtime`` or ``pip install ".[wasm]"``.
Sources: every ``csrc/wasm/*.cc`` (the exports, the single-threaded runtime stub), the shared ISA
selection in ``csrc/runtime/``, and per kernel folder ``reference.cc``, ``dispatch.cc`` and, where
SIMD128 pays, ``wasm_simd.cc``. A new op needs its kernel folder and one ``csrc/wasm/<op>.cc``.

The first build with a given flag set compiles zig's libc and libc++ for wasm32-wasi (about a minute on
two cores); zig keeps them, and every object, in its global cache (``~/.cache/zig``, or
``ZIG_GLOBAL_CACHE_DIR`` / ``--cache-dir``), so later builds take seconds and an unchanged tree is a
cache hit. The flags below are fixed for that reason: changing one rebuilds libc.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "python" / "sparseforge" / "_wasm" / "sparseforge.wasm"
FLAGS = [
    "--target=wasm32-wasi", "-mexec-model=reactor", "-msimd128", "-O3", "-std=c++17",
    "-DSPARSEFORGE_HAVE_WASM_SIMD=1", "-Wall", "-Wextra", "-Wno-unused-parameter",
    "-Wno-unused-function",  # native-only helpers in the shared dispatch files (used under AVX2)
    "-s",  # strip: ~30x smaller module, and debug info buys nothing inside wasmtime
]


def sources(root: Path = ROOT) -> list[Path]:
    csrc = root / "csrc"
    # An export file that includes "kernels/<op>/..." is built when that kernel folder exists, so an op's
    # export can land before (or without) its kernel branch; module.cc and the stub are always built.
    out = []
    for p in sorted((csrc / "wasm").glob("*.cc")):
        needs = re.search(r'#include "kernels/(\w+)/', p.read_text())
        if needs is None or (csrc / "kernels" / needs.group(1)).is_dir():
            out.append(p)
    out += [csrc / "runtime" / "dispatch.cc", csrc / "runtime" / "cpu_features.cc"]
    for kdir in sorted(p for p in (csrc / "kernels").iterdir() if p.is_dir()):
        out += [kdir / f for f in ("reference.cc", "dispatch.cc", "wasm_simd.cc") if (kdir / f).exists()]
    return out


def inputs(root: Path = ROOT) -> list[Path]:
    """Every file the module depends on (CMake's DEPENDS list): sources and headers."""
    csrc = root / "csrc"
    hdrs = sorted(csrc.glob("include/**/*.h")) + sorted(csrc.glob("kernels/*/*.h")) + sorted(csrc.glob("wasm/*.h"))
    return sources(root) + hdrs + [Path(__file__).resolve()]


def build(out: Path, cache_dir: str | None = None, verbose: bool = False) -> float:
    env = dict(os.environ)
    if cache_dir:
        env["ZIG_GLOBAL_CACHE_DIR"] = env["ZIG_LOCAL_CACHE_DIR"] = cache_dir
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".wasm.tmp")
    cmd = [sys.executable, "-m", "ziglang", "c++", *FLAGS, f"-I{ROOT / 'csrc' / 'include'}", f"-I{ROOT / 'csrc'}",
           *map(str, sources()), "-o", str(tmp)]
    if verbose:
        print(" ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"zig c++ failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    if proc.stderr.strip():
        print(proc.stderr, file=sys.stderr)
    os.replace(tmp, out)  # readers never see a half-written module
    return dt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output module (default {DEFAULT_OUT})")
    ap.add_argument("--cache-dir", help="zig's cache directory (default: zig's global cache, ~/.cache/zig)")
    ap.add_argument("--soft", action="store_true",
                    help="on a missing toolchain or a failed build print why and exit 0 (CMake's optional step)")
    ap.add_argument("--list-inputs", action="store_true", help="print the files the module depends on (for CMake)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    if args.list_inputs:
        print(";".join(p.as_posix() for p in inputs()))
        return 0
    try:
        import ziglang  # noqa: F401
    except ImportError:
        msg = f"build_wasm: ziglang is not installed in {sys.executable}; pip install ziglang wasmtime"
        print(msg, file=sys.stderr)
        return 0 if args.soft else 2
    try:
        dt = build(args.out, args.cache_dir, args.verbose)
    except (RuntimeError, OSError) as exc:
        args.out.unlink(missing_ok=True)  # no stale module that no longer matches the sources
        print(f"build_wasm: {exc}", file=sys.stderr)
        return 0 if args.soft else 1
    print(f"build_wasm: {args.out} ({args.out.stat().st_size / 1024:.0f} KiB) in {dt:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
