"""spmm_conv (sparse 1x1 conv over CHW) against torch dense conv2d and against XNNPACK's sparse path.

    python benchmarks/bench_spmm_conv.py [--quick] [--out results/bench_spmm_conv.json]

MobileNetV2 1x1 shapes (C_in x C_out x HW) at 70/80/90% unstructured sparsity (plus 4x1 output-channel
blocks at 80/90%), batch 1. Every ratio is measured in one run: each round times torch dense, sparseforge
and XNNPACK back to back (interleaved), a round's time is the median of `inner` single calls, the table
shows the median over rounds of the per-round ratios and their spread (25th..75th percentile; the JSON
also has min..max and the ratio of the best times). torch and sparseforge run with
1 and 2 threads; the XNNPACK comparison is single-threaded (no thread pool). XNNPACK comes from Debian's
libxnnpack-dev + libpthreadpool-dev through benchmarks/xnnpack_shim.c, compiled here; without them that
column says why it is missing.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sparseforge import _C
from sparseforge.formats import SparseConvWeight

HERE = Path(__file__).resolve().parent
SHAPES = [(64, 384, 196), (256, 256, 784), (512, 512, 196), (1024, 1024, 49)]
SPARSITIES = [0.7, 0.8, 0.9]
TARGET_DENSE = {0.7: 1.5, 0.8: 2.5, 0.9: 5.0}
TARGET_XNN = {0.8: 1.5, 0.9: 1.5}


class Xnnpack:
    """XNNPACK's NCHW sparse 1x1 convolution through the C shim; `error` says why it is unavailable."""

    def __init__(self):
        self.lib, self.error = None, None
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            self.error = "no C compiler"
            return
        if not Path("/usr/include/xnnpack.h").exists():
            self.error = "xnnpack.h not found (apt-get install libxnnpack-dev libpthreadpool-dev)"
            return
        so = Path(tempfile.mkdtemp()) / "xnnpack_shim.so"
        proc = subprocess.run([cc, "-O2", "-shared", "-fPIC", str(HERE / "xnnpack_shim.c"), "-o", str(so),
                               "-lXNNPACK", "-lpthreadpool"], capture_output=True, text=True)
        if proc.returncode != 0:
            self.error = "shim did not build: " + proc.stderr.strip()[-300:]
            return
        lib = ctypes.CDLL(str(so))
        lib.xs_create.restype = ctypes.c_void_p
        lib.xs_create.argtypes = [ctypes.c_size_t, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float, ctypes.c_float]
        lib.xs_setup.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p]
        lib.xs_run.argtypes = [ctypes.c_void_p]
        lib.xs_time.restype = ctypes.c_double
        lib.xs_time.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.xs_delete.argtypes = [ctypes.c_void_p]
        if lib.xs_init() != 0:
            self.error = "xnn_initialize failed (CPU not supported?)"
            return
        self.lib = lib

    def conv(self, w: np.ndarray, x: np.ndarray, hw_shape):
        """Returns (time_fn(iters) -> seconds, output array) for y = W x over NCHW x."""
        c_out, c_in = w.shape
        bias = np.zeros(c_out, np.float32)
        op = self.lib.xs_create(c_in, c_out, w.ctypes.data, bias.ctypes.data, -np.inf, np.inf)
        if not op:
            raise RuntimeError("xnn_create_convolution2d_nchw_f32 failed")
        y = np.empty((1, c_out) + hw_shape, np.float32)
        if self.lib.xs_setup(op, 1, hw_shape[0], hw_shape[1], x.ctypes.data, y.ctypes.data) != 0:
            raise RuntimeError("xnn_setup_convolution2d_nchw_f32 failed")
        keep = (w, bias, x, y)  # noqa: F841  (alive while op is)
        return (lambda iters, op=op, keep=keep: self.lib.xs_time(op, iters)), y, op


def timed(fn, iters):
    """Median of `iters` single-call times: robust to the preemptions of a shared machine."""
    ts = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def sparse_weight(rng, c_out, c_in, sparsity, block):
    nb = -(-c_out // block)
    keep = np.zeros(nb * c_in, bool)
    keep[rng.permutation(nb * c_in)[: round((1 - sparsity) * nb * c_in)]] = True
    w = rng.standard_normal((nb * block, c_in)).astype(np.float32) * np.repeat(keep.reshape(nb, c_in), block, axis=0)
    return np.ascontiguousarray(w[:c_out])


def bench_case(c_in, c_out, hw, sparsity, block, threads, rounds, xnn, rng):
    side = int(round(hw ** 0.5))
    assert side * side == hw
    w = sparse_weight(rng, c_out, c_in, sparsity, block)
    x = rng.standard_normal((1, c_in, side, side)).astype(np.float32)
    xt, wt = torch.from_numpy(x), torch.from_numpy(w).reshape(c_out, c_in, 1, 1)
    packed = SparseConvWeight.from_dense(w, block=block)
    plan = packed.plan
    x3 = x.reshape(1, c_in, hw)
    out = np.empty((1, c_out, hw), np.float32)
    ref = F.conv2d(xt.double(), wt.double()).numpy()
    torch.set_num_threads(threads)
    _C.set_num_threads(threads)
    plan.run(x3, out=out)
    err = float(np.abs(out.reshape(ref.shape) - ref).max() / (np.abs(ref).max() + 1e-30))
    xnn_time = None
    if xnn.lib is not None and threads == 1:
        xnn_time, y_x, _op = xnn.conv(w, x, (side, side))
        xnn_time(1)
        err_x = float(np.abs(y_x - ref).max() / (np.abs(ref).max() + 1e-30))
    # Calls per round so a round lasts ~2 ms at least (timer noise), from a quick dense probe.
    probe = timed(lambda: F.conv2d(xt, wt), 3)
    inner = max(1, int(2e-3 / max(probe, 1e-7)))
    with torch.inference_mode():
        F.conv2d(xt, wt)
    td, ts, tx = [], [], []
    for _ in range(rounds):
        with torch.inference_mode():
            td.append(timed(lambda: F.conv2d(xt, wt), inner))
        ts.append(timed(lambda: plan.run(x3, out=out), inner * 2))
        if xnn_time is not None:
            tx.append(float(np.median([xnn_time(1) for _ in range(inner * 2)])))
    td, ts = np.array(td), np.array(ts)
    row = {
        "c_in": c_in, "c_out": c_out, "hw": hw, "sparsity": sparsity, "block": block, "threads": threads,
        "rounds": rounds, "inner": inner, "rel_err": err,
        "dense_us": float(np.median(td) * 1e6), "sparse_us": float(np.median(ts) * 1e6),
        "vs_dense": float(np.median(td / ts)), "vs_dense_min": float(np.min(td / ts)), "vs_dense_max": float(np.max(td / ts)),
        "vs_dense_q25": float(np.percentile(td / ts, 25)), "vs_dense_q75": float(np.percentile(td / ts, 75)),
        "vs_dense_best": float(td.min() / ts.min()),
    }
    if xnn_time is not None:
        tx = np.array(tx)
        row.update({"xnnpack_us": float(np.median(tx) * 1e6), "vs_xnnpack": float(np.median(tx / ts)),
                    "vs_xnnpack_min": float(np.min(tx / ts)), "vs_xnnpack_max": float(np.max(tx / ts)),
                    "vs_xnnpack_q25": float(np.percentile(tx / ts, 25)), "vs_xnnpack_q75": float(np.percentile(tx / ts, 75)),
                    "vs_xnnpack_best": float(tx.min() / ts.min()),
                    "xnnpack_rel_err": err_x})
    return row


def summarize(rows):
    """Worst-shape ratio per target. A 2-thread row counts only when torch's 2-thread dense conv ran at
    most 2x slower than its 1-thread conv on the same case: on a shared machine its OpenMP workers can be
    descheduled for whole time slices (tens of ms for a sub-ms conv), which would make any ratio look met."""
    one = {(r["c_in"], r["c_out"], r["hw"], r["sparsity"], r["block"]): r["dense_us"] for r in rows if r["threads"] == 1}
    for r in rows:
        key = (r["c_in"], r["c_out"], r["hw"], r["sparsity"], r["block"])
        r["dense_stalled"] = bool(r["threads"] > 1 and key in one and r["dense_us"] > 2 * one[key])
    summary = {}
    for threads in (1, 2):
        for sp in SPARSITIES:
            sel = [r for r in rows if r["threads"] == threads and r["sparsity"] == sp and r["block"] == 1
                   and not r["dense_stalled"]]
            worst = min((r["vs_dense"] for r in sel), default=None)
            summary[f"vs_dense_t{threads}_{sp}"] = {"worst": worst, "target": TARGET_DENSE[sp], "valid_rows": len(sel),
                                                   "met": worst is not None and worst >= TARGET_DENSE[sp]}
    return summary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer rounds, unstructured only")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--out", default=str(HERE.parent / "results" / "bench_spmm_conv.json"))
    args = ap.parse_args(argv)
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        os.environ.pop(var, None)
    rounds = args.rounds or (7 if args.quick else 21)
    xnn = Xnnpack()
    rng = np.random.default_rng(0)
    cases = [(s, sp, 1) for s in SHAPES for sp in SPARSITIES]
    if not args.quick:
        cases += [(s, sp, 4) for s in SHAPES for sp in (0.8, 0.9)]
    rows = []
    print(f"sparseforge spmm_conv: kernel {_C.kernel_for('spmm_conv')}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; XNNPACK: {'libXNNPACK (Debian), single thread' if xnn.lib else 'skipped: ' + xnn.error}")
    print(f"{'C_in x C_out x HW':>18} {'sp':>4} {'blk':>3} {'thr':>3} {'dense us':>9} {'sparse us':>9} "
          f"{'vs dense (q25..q75)':>22} {'xnnpack us':>10} {'vs xnnpack (q25..q75)':>22}")
    for threads in (1, 2):
        for (c_in, c_out, hw), sp, block in cases:
            r = bench_case(c_in, c_out, hw, sp, block, threads, rounds, xnn, rng)
            rows.append(r)
            xs = (f"{r['xnnpack_us']:10.1f} {r['vs_xnnpack']:8.2f}x ({r['vs_xnnpack_min']:.2f}..{r['vs_xnnpack_max']:.2f})"
                  if "xnnpack_us" in r else f"{'-':>10} {'-':>22}")
            print(f"{c_in:>5}x{c_out:>5}x{hw:>5} {sp:4.1f} {block:3d} {threads:3d} {r['dense_us']:9.1f} {r['sparse_us']:9.1f} "
                  f"{r['vs_dense']:8.2f}x ({r['vs_dense_q25']:.2f}..{r['vs_dense_q75']:.2f})  {xs}", flush=True)
    summary = summarize(rows)
    for sp, tgt in TARGET_XNN.items():
        sel = [r for r in rows if r["threads"] == 1 and r["sparsity"] == sp and r["block"] == 1 and "vs_xnnpack" in r]
        if sel:
            worst = min(r["vs_xnnpack"] for r in sel)
            summary[f"vs_xnnpack_t1_{sp}"] = {"worst": worst, "target": tgt, "met": worst >= tgt}
    print("\ntargets (worst shape, unstructured; rows where torch's 2-thread dense conv stalled are not counted):")
    for k, v in summary.items():
        if v["worst"] is None:
            print(f"  {k:22s} no valid row (torch dense stalled on every shape)  target >= {v['target']}x  NOT MEASURED")
        else:
            note = "" if v.get("valid_rows", 4) == 4 else "  ({}/4 shapes valid)".format(v["valid_rows"])
            print(f"  {k:22s} {v['worst']:.2f}x  target >= {v['target']}x  {'met' if v['met'] else 'NOT MET'}{note}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": " ".join([Path(sys.argv[0]).name] + (argv or sys.argv[1:])),
                               "kernel": _C.kernel_for("spmm_conv"), "torch": torch.__version__,
                               "xnnpack": "available" if xnn.lib else xnn.error, "rows": rows, "summary": summary}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
