"""STATIC step cost: vectorised CSR trie (StaticIndex) vs a plain Python dict trie, and vs item count.

    python benchmarks/bench_static_decoding.py [--quick]

Per decoding step (median over steps and repeats, scorer excluded: logits come from a precomputed
table), for N items at fixed V, L, batch and beam. Writes results/bench_static_decoding.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join("results", "bench_static_decoding.json"))
    args = ap.parse_args(argv)
    from sparseforge_methods.static_decoding import PythonTrie, StaticIndex, python_trie_beam_search

    torch.set_num_threads(1)
    vocab, length, batch, beam = 256, 6, 4, 8
    ns = [1_000, 10_000, 100_000] if args.quick else [1_000, 10_000, 100_000, 1_000_000]
    repeats = 3 if args.quick else 5
    g = torch.Generator().manual_seed(0)
    table = torch.randn(batch, vocab + 1, vocab, generator=g, dtype=torch.float64)

    def make_step(times):
        def step(prefix):
            b, m, t = prefix.shape
            last = prefix[..., -1].clamp(min=0) if t else torch.full((b, m), vocab, dtype=torch.int64)
            out = table[torch.arange(b).unsqueeze(1), last]
            times.append(time.perf_counter())  # the constraint work runs between two scorer calls
            return out
        return step

    def per_step(search):
        marks = []
        step = make_step(marks)
        t0 = time.perf_counter()
        search(step)
        end = time.perf_counter()
        # step d's constraint work: from the scorer's return at step d to its next call (or the end)
        bounds = marks + [end]
        return [bounds[i + 1] - bounds[i] for i in range(len(marks))], end - t0

    rows = []
    print(f"V={vocab} L={length} batch={batch} beam={beam}; constraint time per step: median over steps x repeats, "
          f"and mean over the L steps (median of repeats); ratio = trie/STATIC of the whole search")
    print(f"{'N':>9s} {'STATIC med':>11s} {'trie med':>9s} {'STATIC mean':>12s} {'trie mean':>10s} {'trie/STATIC':>12s}  (ms)")
    for n in ns:
        rng = np.random.default_rng(n)
        items = np.unique(rng.integers(0, vocab, size=(n, length)), axis=0)
        idx = StaticIndex(items, vocab, d_dense=2)
        trie = PythonTrie(idx.sids) if n <= 100_000 else None
        st, tr, ratios, s_tot, t_tot = [], [], [], [], []
        for _ in range(repeats):
            s_steps, _ = per_step(lambda f: idx.constrained_beam_search(f, batch, beam))
            st += s_steps
            s_tot.append(sum(s_steps))
            if trie is not None:
                t_steps, _ = per_step(lambda f: python_trie_beam_search(trie, f, batch, beam))
                tr += t_steps
                t_tot.append(sum(t_steps))
                ratios.append(sum(t_steps) / sum(s_steps))
        s_ms = float(np.median(st) * 1e3)
        t_ms = float(np.median(tr) * 1e3) if tr else None
        s_mean = float(np.median(s_tot) / length * 1e3)
        t_mean = float(np.median(t_tot) / length * 1e3) if t_tot else None
        ratio = float(np.median(ratios)) if ratios else None
        nan = float("nan")
        print(f"{len(items):9d} {s_ms:11.3f} {t_ms if t_ms is not None else nan:9.3f} {s_mean:12.3f} "
              f"{t_mean if t_mean is not None else nan:10.3f} {ratio if ratio is not None else nan:12.1f}")
        rows.append({"n_items": int(len(items)), "static_ms_per_step_median": s_ms, "trie_ms_per_step_median": t_ms,
                     "static_ms_per_step_mean": s_mean, "trie_ms_per_step_mean": t_mean,
                     "trie_over_static": ratio, "layer_max_branches": idx.layer_max_branches})
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"vocab": vocab, "length": length, "batch": batch, "beam": beam, "rows": rows}, fh, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
