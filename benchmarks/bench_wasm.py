"""WebAssembly kernels vs the native ones, per op, measured in one run.

    python benchmarks/bench_wasm.py [--quick] [--repeats N]

For every (op, shape): the native kernel (``sparseforge._C``, best ISA, and the scalar reference) and the
wasm module's kernels (SIMD128 and the scalar references compiled to wasm, through wasmtime) are timed
interleaved in one process; each number is the median of the repeats and the ratio is
median(wasm) / median(native) in wall time (> 1: wasm is slower). Native runs on 1 thread, as wasm
does. nm_gemm and spmm_conv use resident weights on both sides (``nm_gemm_plan`` / ``spmm_conv_plan``
and ``_C.SpmmConvPlan``), so a call copies only the activations in and the output out, as a model
layer does; group_nnz and spgemm copy all their inputs on every call. Writes ``results/bench_wasm.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from sparseforge import _C
from sparseforge._table import format_table
from sparseforge.backends import wasm
from sparseforge.formats import NMSparse, SparseConvWeight

ROOT = Path(__file__).resolve().parents[1]


def native(isa: str, fn):
    """fn run with SPARSEFORGE_ISA forced (read by _C on every call)."""
    def call():
        old = os.environ.get("SPARSEFORGE_ISA")
        os.environ["SPARSEFORGE_ISA"] = isa
        try:
            return fn()
        finally:
            if old is None:
                del os.environ["SPARSEFORGE_ISA"]
            else:
                os.environ["SPARSEFORGE_ISA"] = old
    return call


def nm_gemm_case(rows, k, batch):
    g = torch.Generator().manual_seed(rows + batch)
    s = NMSparse.from_dense(torch.randn(rows, k, generator=g), 2, 4, prune=True)
    x = torch.randn(batch, k, generator=g).numpy()
    v, md, b = s.values.numpy(), s.meta.numpy(), torch.randn(rows, generator=g).numpy()
    out = np.empty((batch, rows), np.float32)
    plans = {isa: wasm.kernels(isa).nm_gemm_plan(v, md, 2, 4, k, b) for isa in wasm.ISAS}
    return (f"nm_gemm 2:4 {rows}x{k} b={batch}",
            lambda: _C.nm_gemm(x, v, md, 2, 4, k, b, out),
            {isa: (lambda p=p: p.run(x, out)) for isa, p in plans.items()})


def spmm_conv_case(c_out, c_in, hw, sparsity, block):
    rng = np.random.default_rng(c_out + hw)
    w = rng.standard_normal((c_out, c_in)).astype(np.float32)
    if block == 1:
        w[rng.random(w.shape) < sparsity] = 0.0
    else:  # whole blocks of output channels share their zeros
        keep = rng.random((-(-c_out // block), c_in)) >= sparsity
        w *= np.repeat(keep, block, axis=0)[:c_out]
    p = SparseConvWeight.from_dense(w, block=block)
    x = rng.standard_normal((1, c_in, hw)).astype(np.float32)
    args = (p.nnz, p.offsets, p.idx_delta, p.values, c_out, c_in, block)
    out = np.empty((1, c_out, hw), np.float32)
    nplan = _C.SpmmConvPlan(*args)
    plans = {isa: wasm.kernels(isa).spmm_conv_plan(*args) for isa in wasm.ISAS}
    return (f"spmm_conv {c_out}x{c_in} hw={hw} {sparsity:.0%} b{block}",
            lambda: nplan.run(x, None, 0.0, 6.0, out),
            {isa: (lambda q=q: q.run(x, None, 0.0, 6.0, out)) for isa, q in plans.items()})


def group_nnz_case(rows, cols):
    w = np.random.default_rng(0).standard_normal((rows, cols)).astype(np.float32)
    w[:, ::2] = 0.0
    return (f"group_nnz {rows}x{cols} m=4", lambda: _C.group_nnz(w, 4),
            {isa: (lambda k=wasm.kernels(isa): k.group_nnz(w, 4)) for isa in wasm.ISAS})


def spgemm_case(n, per_row):
    import scipy.sparse as sp

    a = sp.random(n, n, density=per_row / n, format="csr", dtype=np.float64, random_state=1)
    a.sort_indices()
    args = (a.indptr.astype(np.int32), a.indices.astype(np.int32), a.data, a.shape)
    return (f"spgemm A@A {n}x{n} {per_row}/row f64", lambda: _C.spgemm(*args, *args),
            {isa: (lambda k=wasm.kernels(isa): k.spgemm(*args, *args)) for isa in wasm.ISAS})


def cases(quick: bool):
    yield nm_gemm_case(1024, 1024, 1)
    yield nm_gemm_case(4096, 4096, 1)
    yield nm_gemm_case(2048, 2048, 16)
    if not quick:
        yield nm_gemm_case(2048, 2048, 64)
    yield spmm_conv_case(96, 24, 3136, 0.7, 1)
    yield spmm_conv_case(320, 112, 196, 0.8, 1)
    yield spmm_conv_case(320, 112, 196, 0.8, 4)
    if not quick:
        yield spmm_conv_case(1280, 320, 49, 0.8, 1)
    yield group_nnz_case(2048, 2048)
    yield spgemm_case(4000, 16)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--json", default=str(ROOT / "results" / "bench_wasm.json"))
    args = ap.parse_args()
    why = wasm.unavailable_reason()
    if why:
        raise SystemExit(f"bench_wasm: {why}")
    repeats = args.repeats or (5 if args.quick else 15)
    _C.set_num_threads(1)  # wasm is single-threaded: compare one thread with one thread
    best = _C.best_isa()
    rows, table = [], []
    for name, nat, wasm_fns in cases(args.quick):
        fns = {f"native_{best}": native(best, nat), "native_scalar": native("scalar", nat),
               "wasm_simd128": wasm_fns["wasm"], "wasm_scalar": wasm_fns["scalar"]}
        for f in fns.values():
            f()  # warm: page faults, plans, table init
        times = {key: [] for key in fns}
        for _ in range(repeats):
            for key, f in fns.items():
                times[key].append(timed(f))
        ms = {key: 1e3 * statistics.median(v) for key, v in times.items()}
        row = {"case": name, "ms": ms, "wasm_simd128_over_native": ms["wasm_simd128"] / ms[f"native_{best}"],
               "wasm_scalar_over_native_scalar": ms["wasm_scalar"] / ms["native_scalar"]}
        rows.append(row)
        table.append([name, f"{ms[f'native_{best}']:.3f}", f"{ms['wasm_simd128']:.3f}",
                      f"{row['wasm_simd128_over_native']:.2f}", f"{ms['native_scalar']:.3f}", f"{ms['wasm_scalar']:.3f}",
                      f"{row['wasm_scalar_over_native_scalar']:.2f}"])
        print(" | ".join(table[-1]), flush=True)
    head = ["case", f"native {best} ms", "wasm simd128 ms", "wasm/native", "native scalar ms", "wasm scalar ms",
            "wasm/native (scalar)"]
    print()
    print(format_table(head, table, align="l" + "r" * (len(head) - 1)))
    print(f"\n1 thread each, median of {repeats}; wasm via wasmtime from Python (one export call per op); "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared machine: as measured)")
    res = {"rows": rows, "repeats": repeats, "native_isa": best, "threads": 1, "machine": platform.machine(),
           "cpu_count": os.cpu_count(), "wasmtime": _wasmtime_version()}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=2))


def _wasmtime_version() -> str:
    from importlib.metadata import version

    return version("wasmtime")


if __name__ == "__main__":
    main()
