"""N:M (2:4) sparse linear vs dense ``torch.nn.functional.linear``, fp32, measured in one run.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_nm_gemm.py [--quick]

For every (threads, shape, batch): the dense anchor, the sparse op (``sparseforge.ops.nm_linear``, the
whole custom-op path) and ``NMLinear`` after its dispatcher has chosen are timed interleaved in the same
process (plus the sparse op with bf16 weights, reported but without a target); the ratio is
median(dense) / median(other) in wall time; the spread is the 25th-75th percentile of the
per-repeat ratios. For 1 thread the ratio of the calling thread's CPU time is printed too: on a machine
shared with other jobs it shows the kernels' own cost when preemption blurs the wall-clock ratio. Writes ``results/bench_nm_gemm.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import sparseforge
from sparseforge import _C
from sparseforge._table import format_table
from sparseforge.formats import NMSparse
from sparseforge.nn import NMLinear
from sparseforge.nn.nm_linear import clear_dispatch_cache
from sparseforge.ops import nm_linear

SHAPES = [(4096, 4096), (11008, 4096)]  # (out_features, in_features)
BATCHES = [1, 16, 32, 64]
THREADS = [1, 2]
TARGETS = {1: 1.6, 16: 1.3, 32: 1.3, 64: 1.3}
FLOOR = 0.95


def quantile(xs, q):
    xs = sorted(xs)
    i = (len(xs) - 1) * q
    lo, hi = int(i), min(int(i) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (i - lo)


def bench_case(dense_fn, sparse_fn, disp_fn, bf16_fn, x, repeats):
    with torch.no_grad():
        for f in (dense_fn, sparse_fn, disp_fn, bf16_fn):
            f(x), f(x)
        td, ts, tp, tb = [], [], [], []
        cd, cs = [], []  # CPU time of the calling thread: with 1 thread both run entirely on it
        for _ in range(repeats):
            for f, acc, cacc in ((dense_fn, td, cd), (sparse_fn, ts, cs), (disp_fn, tp, None), (bf16_fn, tb, None)):
                c = time.thread_time()
                t = time.perf_counter()
                f(x)
                acc.append(time.perf_counter() - t)
                if cacc is not None:
                    cacc.append(time.thread_time() - c)
    pair = [d / s for d, s in zip(td, ts)]
    pair_p = [d / p for d, p in zip(td, tp)]
    md, ms, mp, mb = statistics.median(td), statistics.median(ts), statistics.median(tp), statistics.median(tb)
    return dict(dense_ms=1e3 * md, sparse_ms=1e3 * ms, dispatched_ms=1e3 * mp, ratio=md / ms,
                ratio_p25=quantile(pair, 0.25), ratio_p75=quantile(pair, 0.75), ratio_min=min(pair), ratio_max=max(pair),
                dispatched_ratio=md / mp, dispatched_p25=quantile(pair_p, 0.25), dispatched_p75=quantile(pair_p, 0.75),
                bf16w_ms=1e3 * mb, bf16w_ratio=md / mb,
                cpu_ratio=statistics.median(cd) / max(statistics.median(cs), 1e-9))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and only the 4096x4096 shape")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--out", default="results/bench_nm_gemm.json")
    args = ap.parse_args(argv)
    repeats = args.repeats or (7 if args.quick else 21)
    shapes = SHAPES[:1] if args.quick else SHAPES
    try:
        from threadpoolctl import threadpool_info
        pools = [{k: p.get(k) for k in ("internal_api", "num_threads", "version", "architecture")} for p in threadpool_info()]
    except ImportError:
        pools = "threadpoolctl not installed"
    env = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "SPARSEFORGE_ISA")}
    print(f"sparseforge {sparseforge.__version__}, kernel {_C.kernel_for('nm_gemm')}, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, env {env}", flush=True)
    load_before = os.getloadavg()
    print(f"load average before: {load_before[0]:.2f} (2 cores shared with other jobs: ratios move with it)", flush=True)
    torch.manual_seed(0)
    results = []
    for out_f, in_f in shapes:
        w = torch.randn(out_f, in_f)
        weight = NMSparse.from_dense(w, 2, 4, prune=True)
        dense_w = weight.to_dense().contiguous()
        del w
        weight_bf16 = weight.to(torch.bfloat16)  # bf16 weights, fp32 activations/accumulate (a plus, no target)
        layer = NMLinear(weight).eval()
        for threads in THREADS:
            torch.set_num_threads(threads)
            _C.set_num_threads(threads)
            clear_dispatch_cache()
            for batch in BATCHES:
                x = torch.randn(batch, in_f)
                layer.decide(batch)  # the dispatcher measures once, as it would in a model
                r = bench_case(lambda t: F.linear(t, dense_w), lambda t: nm_linear(t, weight), layer,
                               lambda t: nm_linear(t, weight_bf16), x, repeats)
                if threads != 1:
                    r["cpu_ratio"] = None  # other threads' time is not on the calling thread's clock
                r.update(out_features=out_f, in_features=in_f, batch=batch, threads=threads,
                         dispatch=layer.decide(batch).choice, target=TARGETS[batch])
                results.append(r)
                print(f"  {out_f}x{in_f} batch {batch:3d} threads {threads}: dense {r['dense_ms']:.2f} ms, "
                      f"sparse {r['sparse_ms']:.2f} ms -> {r['ratio']:.2f}x [{r['ratio_p25']:.2f}-{r['ratio_p75']:.2f}], "
                      f"dispatched ({r['dispatch']}) {r['dispatched_ratio']:.2f}x, bf16 weights {r['bf16w_ratio']:.2f}x", flush=True)
        del layer, dense_w, weight, weight_bf16
    header = ["shape", "batch", "thr", "dense ms", "sparse ms", "ratio", "p25-p75", "target", "met",
              "dispatched", "disp ratio", "bf16w ratio", "cpu-time ratio"]
    rows = [[f"{r['out_features']}x{r['in_features']}", r["batch"], r["threads"], f"{r['dense_ms']:.2f}",
             f"{r['sparse_ms']:.2f}", f"{r['ratio']:.2f}x", f"{r['ratio_p25']:.2f}-{r['ratio_p75']:.2f}",
             f">={r['target']}x", "yes" if r["ratio"] >= r["target"] else "NO", r["dispatch"],
             f"{r['dispatched_ratio']:.2f}x", f"{r['bf16w_ratio']:.2f}x",
             "-" if r["cpu_ratio"] is None else f"{r['cpu_ratio']:.2f}x"] for r in results]
    print()
    print(format_table(header, rows, "lrrrrrrllllrr"))
    floor_ok = all(r["dispatched_ratio"] >= FLOOR for r in results)
    load_after = os.getloadavg()
    print(f"\nload average after: {load_after[0]:.2f}")
    print(f"dispatched >= {FLOOR}x everywhere: {'yes' if floor_ok else 'NO'} "
          f"(min {min(r['dispatched_ratio'] for r in results):.2f}x); repeats={repeats}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(command=" ".join([Path(sys.executable).name] + sys.argv), repeats=repeats,
                                   kernel=_C.kernel_for("nm_gemm"), torch=torch.__version__, threadpools=pools, env=env,
                                   loadavg_before=load_before, loadavg_after=load_after,
                                   results=results), indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
