"""Block-skip attention (``sparseforge.ops.block_attention`` and the decode entries) vs torch SDPA, fp32.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_block_attention.py [--quick] [--threads 2]

Every row times an anchor and the candidate interleaved in one process (torch and sparseforge on the same
thread count); the ratio is median(anchor) / median(candidate) in wall time, the spread the 25th-75th
percentile of the per-repeat ratios. Anchors: ``torch.nn.functional.scaled_dot_product_attention`` (the
same q, k, v; GQA through ``enable_gqa``) and, for the decode rows, also our own dense mode.

Inputs for the skip modes are "real-ish": an attention sink (4 keys every query attends to strongly) plus
local, RoPE-like position features (high frequencies only, so similarity decays within ~50 tokens) plus
noise. For the threshold rows the threshold is calibrated (bisection on the kernel's own statistics) to skip
~75% of the blocks; the max abs deviation from the dense output is reported next to the speed. Writes
``results/bench_block_attention.json`` and ``.md`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
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
from sparseforge.ops import block_attention, double_sparsity_decode, gathered_decode_attention

SDPA_DENSE_FLOOR = 1 / 1.2  # dense mode within 1.2x of SDPA time


def quantile(xs, q):
    xs = sorted(xs)
    i = (len(xs) - 1) * q
    lo, hi = int(i), min(int(i) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (i - lo)


def time_pair(anchor, cand, repeats):
    anchor(), cand()
    ta, tc = [], []
    for _ in range(repeats):
        for f, acc in ((anchor, ta), (cand, tc)):
            t = time.perf_counter()
            f()
            acc.append(time.perf_counter() - t)
    pair = [a / c for a, c in zip(ta, tc)]
    ma, mc = statistics.median(ta), statistics.median(tc)
    return dict(anchor_ms=1e3 * ma, ms=1e3 * mc, ratio=ma / mc, p25=quantile(pair, 0.25), p75=quantile(pair, 0.75))


def sink_local_qkv(B, H, L, D, seed=0, nfreq=16, amp=2.6, sink=28.0):
    """q, k, v with an attention sink and local (decaying within ~50 tokens) position similarity."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.arange(L, dtype=torch.float32)
    freq = 0.05 * 10.0 ** (torch.arange(nfreq, dtype=torch.float32) / (nfreq - 1))  # 0.05..0.5 rad/token
    ang = pos[:, None] * freq[None, :] + torch.rand(nfreq, generator=g) * 2 * math.pi
    rot = torch.cat([torch.cos(ang), torch.sin(ang)], -1) * amp
    q = torch.randn(B, H, L, D, generator=g) * 0.5
    k = torch.randn(B, H, L, D, generator=g) * 0.5
    q[..., 1:1 + 2 * nfreq] = rot
    k[..., 1:1 + 2 * nfreq] = rot
    q[..., 0] = 4.0
    k[..., 0] = 0.0
    k[..., :4, 0] = sink
    return q, k, torch.randn(B, H, L, D, generator=g)


def calibrate_threshold(q, k, v, target=0.75, **kw):
    """Bisection on log(threshold) until the kernel skips target +- 2% of the blocks."""
    lo, hi = math.log(1e-8), 0.0
    best = None
    for _ in range(10):
        mid = 0.5 * (lo + hi)
        _, st = block_attention(q, k, v, mode="threshold", threshold=math.exp(mid), **kw)
        best = (math.exp(mid), st)
        if abs(st.skip_fraction - target) <= 0.02:
            break
        lo, hi = (mid, hi) if st.skip_fraction < target else (lo, mid)
    return best


def local_block_mask(H, nq, nkv, keep, seed=0):
    """Per query block: the sink block, the diagonal neighbourhood and random others; `keep` blocks each."""
    g = torch.Generator().manual_seed(seed)
    num = torch.full((1, H, nq), keep, dtype=torch.int32)
    idx = torch.zeros(1, H, nq, nkv, dtype=torch.int32)
    for h in range(H):
        for i in range(nq):
            chosen = [0] + [j for j in (i - 1, i, i + 1) if 0 < j < nkv]
            rest = [int(j) for j in torch.randperm(nkv, generator=g) if int(j) not in chosen]
            chosen = (chosen + rest)[:keep]
            idx[0, h, i, :keep] = torch.tensor(chosen, dtype=torch.int32)
            idx[0, h, i, keep:] = torch.tensor([j for j in range(nkv) if j not in chosen], dtype=torch.int32)
    return num, idx


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, L=4096 prefill rows only")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="results/bench_block_attention.json")
    args = ap.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 7)
    torch.set_num_threads(args.threads)
    _C.set_num_threads(args.threads)
    env = {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "SPARSEFORGE_ISA")}
    print(f"sparseforge {sparseforge.__version__}, kernel {_C.kernel_for('block_attention')}, torch {torch.__version__} "
          f"(SDPA on {torch.backends.cpu.get_cpu_capability()}), {platform.processor() or platform.machine()}, "
          f"threads {args.threads}, env {env}", flush=True)
    load_before = os.getloadavg()
    print(f"load average before: {load_before[0]:.2f} (a shared machine: ratios move with it)", flush=True)
    rows = []

    def add(name, shape, anchor_name, r, target, **extra):
        r.update(case=name, shape=shape, anchor=anchor_name, target=target, **extra)
        rows.append(r)
        more = " ".join(f"{k}={v}" for k, v in extra.items())
        print(f"  {name:22s} {shape:26s} vs {anchor_name:10s}: {r['anchor_ms']:8.2f} ms / {r['ms']:8.2f} ms -> "
              f"{r['ratio']:.2f}x [{r['p25']:.2f}-{r['p75']:.2f}] {more}", flush=True)

    H, D = 8, 64
    lengths = [4096] if args.quick else [4096, 8192]
    with torch.no_grad():
        # Dense prefill: the kernel itself against SDPA.
        q, k, v = (torch.randn(1, H, 4096, D) for _ in range(3))
        for causal in (False, True):
            r = time_pair(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
                          lambda: block_attention(q, k, v, causal=causal), repeats)
            add("dense" + (" causal" if causal else ""), f"B1 H{H} L4096 D{D}", "SDPA", r, SDPA_DENSE_FLOOR)
        # Threshold (BLASST) on sink + local inputs, threshold calibrated to ~75% skipped blocks.
        for L in lengths:
            q, k, v = sink_local_qkv(1, H, L, D)
            dense = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            thr, st = calibrate_threshold(q, k, v, causal=True)
            out, _ = block_attention(q, k, v, causal=True, mode="threshold", threshold=thr)
            r = time_pair(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                          lambda: block_attention(q, k, v, causal=True, mode="threshold", threshold=thr), repeats)
            add("threshold causal", f"B1 H{H} L{L} D{D}", "SDPA", r, 1.5, skipped=round(st.skip_fraction, 3),
                threshold=float(f"{thr:.3g}"), max_err=float(f"{(out - dense).abs().max():.2e}"))
            # Early stop (S2O) with an importance order: sink block, then the diagonal backwards, then the rest.
            nq = nkv = -(-L // 64)
            order = torch.stack([torch.tensor([0] + list(range(i, 0, -1)) + list(range(i + 1, nkv)), dtype=torch.int32)
                                 for i in range(nq)]).reshape(1, 1, nq, nkv)
            out, st = block_attention(q, k, v, causal=True, mode="early_stop", threshold=thr, order=order)
            r = time_pair(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                          lambda: block_attention(q, k, v, causal=True, mode="early_stop", threshold=thr, order=order),
                          repeats)
            add("early_stop causal", f"B1 H{H} L{L} D{D}", "SDPA", r, None, skipped=round(st.skip_fraction, 3),
                threshold=float(f"{thr:.3g}"), max_err=float(f"{(out - dense).abs().max():.2e}"))
            del dense
            # Block mask at 75% block sparsity (non-causal: every query block lists 1/4 of the key blocks).
            num, idx = local_block_mask(H, nq, nkv, keep=nkv // 4)
            out, st = block_attention(q, k, v, mode="block_mask", block_mask=(num, idx))
            r = time_pair(lambda: F.scaled_dot_product_attention(q, k, v),
                          lambda: block_attention(q, k, v, mode="block_mask", block_mask=(num, idx)), repeats)
            add("block_mask", f"B1 H{H} L{L} D{D}", "SDPA", r, 3.0, skipped=round(st.skip_fraction, 3))
        # Decode at L=8192 (cheap, so --quick keeps it): Double Sparsity = label GEMV -> top-k -> gathered attention.
        Hq, Hkv, L, Dd, rank = 32, 8, 8192, 128, 16
        g = torch.Generator().manual_seed(0)
        q = torch.randn(1, Hq, 1, Dd, generator=g)
        k = torch.randn(1, Hkv, L, Dd, generator=g)
        v = torch.randn(1, Hkv, L, Dd, generator=g)
        ch = torch.stack([torch.randperm(Dd, generator=g)[:rank] for _ in range(Hkv)]).int()
        label = torch.stack([k[:, h][..., ch[h].long()] for h in range(Hkv)], 1).contiguous()
        ksel = L // 8
        shape = f"Hq{Hq} Hkv{Hkv} L{L} D{Dd} r{rank} k{ksel}"
        ds = lambda: double_sparsity_decode(q, k, v, label, ch, ksel)  # noqa: E731
        r = time_pair(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True), ds, repeats * 5)
        add("double_sparsity decode", shape, "SDPA", r, 3.0)
        r = time_pair(lambda: block_attention(q, k, v), ds, repeats * 5)
        add("double_sparsity decode", shape, "ours dense", r, 3.0)
        r = time_pair(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True),
                      lambda: block_attention(q, k, v), repeats * 5)
        add("dense decode", f"Hq{Hq} Hkv{Hkv} L{L} D{Dd}", "SDPA", r, SDPA_DENSE_FLOOR)
        idx = torch.stack([torch.randperm(L, generator=g)[:ksel] for _ in range(Hkv)]).reshape(1, Hkv, ksel).int()
        r = time_pair(lambda: block_attention(q, k, v), lambda: gathered_decode_attention(q, k, v, idx), repeats * 5)
        add("gathered decode", shape, "ours dense", r, None)

    header = ["case", "shape", "anchor", "anchor ms", "ours ms", "ratio", "p25-p75", "target", "met", "skipped", "max err"]
    table = [[r["case"], r["shape"], r["anchor"], f"{r['anchor_ms']:.2f}", f"{r['ms']:.2f}", f"{r['ratio']:.2f}x",
              f"{r['p25']:.2f}-{r['p75']:.2f}", "-" if r["target"] is None else f">={r['target']:.2f}x",
              "-" if r["target"] is None else ("yes" if r["ratio"] >= r["target"] else "NO"),
              r.get("skipped", "-"), r.get("max_err", "-")] for r in rows]
    load_after = os.getloadavg()
    text = format_table(header, table, "lllrrrrrlrr")
    print()
    print(text)
    print(f"\nload average after: {load_after[0]:.2f}; repeats={repeats} (decode rows x5)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = " ".join([Path(sys.executable).name] + sys.argv)
    out.write_text(json.dumps(dict(command=command, repeats=repeats, threads=args.threads,
                                   kernel=_C.kernel_for("block_attention"), torch=torch.__version__, env=env,
                                   loadavg_before=load_before, loadavg_after=load_after, results=rows), indent=1))
    md = "| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n"
    md += "".join("| " + " | ".join(str(c) for c in row) + " |\n" for row in table)
    out.with_suffix(".md").write_text(f"`{command}` — threads {args.threads}, load average {load_before[0]:.1f} -> "
                                      f"{load_after[0]:.1f}\n\n" + md)
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
