#!/usr/bin/env python
"""SmolLM2-135M with sparse attention at a 2k context: perplexity vs fraction of attention skipped.

Every method runs through the Hugging Face integration (``sparseforge.attention``) on BBC News text
(``bbc_token_blocks``: calibration and evaluation blocks are disjoint). Prefill block-skip methods run on
the ``block_attention`` op: ``blasst`` (calibrated per phase, several target sparsities), ``s2o`` (τ),
``sparse_frontier`` ``vertical_and_slash`` and ``block_sparse`` (budgets). Decode-only methods are
evaluated with their decode rule applied to every prefill row (``prefill="per_query"``, as Double
Sparsity's official perplexity evaluation does): ``double_sparsity`` (qk channels) and Quest. For the
block methods "skipped" is the fraction of (query tile, key block) pairs not computed, summed over all
30 layers (the op's stats); for the per-row rules it is the fraction of causally visible keys not read.

It also checks BLASST's bound on real attention: on layers 2, 15 and 29 of the evaluation text, the
probability mass each row drops is at most ``#skipped keys · λ <= scale_factor``, and reports the
relative output error. Writes ``results/smollm2_sparse_attention.{md,json,png}`` (``--replot`` redraws the
table and plot from the JSON).

    OMP_WAIT_POLICY=PASSIVE python scripts/smollm2_sparse_attention.py [--length 2048] [--eval-seqs 1]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import torch


def perplexity(model, ids: torch.Tensor) -> float:
    nll, count = 0.0, 0
    with torch.inference_mode():
        for row in ids:
            hidden = model.model(input_ids=row[None]).last_hidden_state[0, :-1]
            for s in range(0, hidden.shape[0], 512):
                logits = model.lm_head(hidden[s:s + 512])
                nll += float(torch.nn.functional.cross_entropy(logits, row[1 + s:1 + s + 512], reduction="sum"))
            count += row.numel() - 1
    return math.exp(nll / count)


def skipped(model) -> tuple[float, str]:
    from sparseforge.attention import handlers

    hs = handlers(model)
    tot = sum(h.stats["prefill_tokens_total"] for h in hs)
    if tot:
        return 1 - sum(h.stats["prefill_tokens_kept"] for h in hs) / tot, "keys"
    tot = sum(h.stats["prefill_total"] for h in hs)
    if tot:
        return sum(h.stats["prefill_skipped"] for h in hs) / tot, "blocks"
    return float("nan"), "?"


def blasst_bound(qkv: dict, scale_factor: float, block: int) -> dict:
    """Dropped mass per row vs the bound, and relative error, of the op at λ = scale_factor / L."""
    from sparseforge.ops import block_attention
    from sparseforge_methods.blasst import tile_gaps

    worst_ratio, worst_mass, rel = 0.0, 0.0, []
    for x in qkv.values():
        q, k, v, sc = x["q"], x["k"], x["v"], x["scale"]
        n = q.shape[2]
        lam = scale_factor / n
        if lam >= 1:
            continue
        gaps, visible = tile_gaps(q, k, causal=True, scale=sc, block_size=block)
        skip = (gaps[0] < math.log(lam)) & visible
        out, st = block_attention(q, k, v, causal=True, scale=sc, mode="threshold", threshold=lam, block_size=block)
        assert st.skipped == int(skip.sum()), "calibration statistic disagrees with the op"
        g = q.shape[1] // k.shape[1]
        for h in range(q.shape[1]):  # one head at a time: [L, L] float64
            s = (q[0, h].double() @ k[0, h // g].double().T) * sc
            s = s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), -math.inf)
            p = torch.softmax(s, -1)
            ks = skip[h].repeat_interleave(block, 0).repeat_interleave(block, 1)[:n, :n] & (p > 0)
            dropped = (p * ks).sum(-1)
            bound = ks.sum(-1).double() * lam
            assert bool((dropped <= bound + 1e-12).all()), "BLASST bound violated"
            if bool((bound > 0).any()):
                worst_ratio = max(worst_ratio, float((dropped[bound > 0] / bound[bound > 0]).max()))
            worst_mass = max(worst_mass, float(dropped.max()))
            dense = p @ v[0, h // g].double()
            rel.append(float((out[0, h].double() - dense).norm() / dense.norm()))
    return {"max_dropped_mass": worst_mass, "max_dropped_over_bound": worst_ratio, "bound_c": scale_factor,
            "max_rel_err": max(rel) if rel else 0.0, "mean_rel_err": sum(rel) / len(rel) if rel else 0.0}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--length", type=int, default=2048)
    ap.add_argument("--eval-seqs", type=int, default=1)
    ap.add_argument("--calib-seqs", type=int, default=1)
    ap.add_argument("--blasst-targets", type=float, nargs="+", default=[0.3, 0.5, 0.55, 0.6, 0.65])
    ap.add_argument("--s2o-taus", type=float, nargs="+", default=[0.03, 0.3])
    ap.add_argument("--vs-sizes", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--bs-chunks", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--quest-budgets", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--ds-fractions", type=float, nargs="+", default=[1 / 16, 1 / 4])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="results")
    ap.add_argument("--replot", action="store_true", help="only redraw the table and plot from --out's JSON")
    args = ap.parse_args()
    if args.replot:
        with open(os.path.join(args.out, "smollm2_sparse_attention.json")) as f:
            write_outputs(json.load(f), os.path.join(args.out, "smollm2_sparse_attention"))
        return
    torch.set_num_threads(args.threads)

    import sparseforge as sf
    from sparseforge.attention import capture_qkv, handlers, uninstall
    from sparseforge.data.models import load_smollm2
    from sparseforge.data.text import bbc_token_blocks

    t_start = time.time()
    tok, model = load_smollm2()
    n = args.length
    calib = bbc_token_blocks(tok, n, args.calib_seqs, start=0)
    ids = bbc_token_blocks(tok, n, args.eval_seqs, start=args.calib_seqs + 1)
    rows, log = [], {}

    def run(method, label, setup=None, **cfg):
        t0 = time.time()
        sf.sparsify(model, method, **cfg)
        if setup:
            setup()
        for h in handlers(model):
            h.reset_stats()
        ppl = perplexity(model, ids)
        frac, unit = skipped(model)
        fb = {k: v for h in handlers(model) for k, v in h.fallbacks.items()}
        rows.append({"method": method, "setting": label, "ppl": ppl, "skipped": frac, "unit": unit,
                     "fallbacks": fb, "seconds": time.time() - t0})
        print(f"{method:16s} {label:28s} ppl {ppl:8.3f}  skipped {frac:6.1%} of {unit}  ({time.time() - t0:.0f}s)",
              flush=True)

    # Dense baseline (SDPA), capturing layers 2/15/29 for the BLASST bound check in the same pass.
    t0 = time.time()
    qkv, _ = capture_qkv(model, ids[:1], layers=[2, 15, 29], return_output=True)
    dense = perplexity(model, ids)
    rows.append({"method": "dense", "setting": "sdpa", "ppl": dense, "skipped": 0.0, "unit": "-", "fallbacks": {},
                 "seconds": time.time() - t0})
    print(f"dense ppl {dense:.3f} ({time.time() - t0:.0f}s)", flush=True)

    # BLASST: calibrate once (the fit is per phase), then one forward per target sparsity.
    sf.sparsify(model, "blasst")
    t0 = time.time()
    cal = sf.method_of(model).calibrate(calib, lengths=(n // 2, n))
    fit = [h.fit.clone() for h in handlers(model)]
    log["blasst_calibration"] = {ph: {k: cal[ph][k] for k in ("a", "b", "r2")} for ph in cal}
    log["blasst_calibration_seconds"] = time.time() - t0
    print("blasst fit", log["blasst_calibration"], f"({time.time() - t0:.0f}s)", flush=True)
    bounds = {}
    for target in args.blasst_targets:
        def restore():
            for h, f in zip(handlers(model), fit):
                h.fit.copy_(f)
        run("blasst", f"target {target:.2f}", restore, target_sparsity=target)
        sf_prefill = handlers(model)[0].scale_factor("prefill")
        rows[-1]["setting"] += f" (c={sf_prefill:.3g})"
        rows[-1]["scale_factor"] = sf_prefill
        bounds[target] = blasst_bound(qkv, sf_prefill, 64)
        print("   bound", bounds[target], flush=True)
    log["blasst_bound"] = bounds

    for tau in args.s2o_taus:
        run("s2o", f"tau {tau:g}", threshold=tau)
    for size in args.vs_sizes:
        run("sparse_frontier", f"vertical_and_slash v=s={size}", pattern="vertical_and_slash", vertical_size=size,
            slash_size=size)
    for chunks in args.bs_chunks:
        run("sparse_frontier", f"block_sparse top {chunks}x64", pattern="block_sparse", top_chunks=chunks)
    for budget in args.quest_budgets:
        run("sparse_frontier", f"quest per-row budget {budget}", pattern="quest", token_budget=budget,
            prefill="per_query")
    ds_stats = None
    for frac in args.ds_fractions:
        def ds_setup():
            nonlocal ds_stats
            if ds_stats is None:
                sf.method_of(model).calibrate(calib[:, : n // 2])
                ds_stats = [h.channel_stats.clone() for h in handlers(model)]
            for h, s in zip(handlers(model), ds_stats):
                h.channel_stats.copy_(s)
        run("double_sparsity", f"qk r=d/8 k={frac:.3g}L per-row", ds_setup, channel="qk", group_factor=8,
            token_fraction=frac, prefill="per_query")
    uninstall(model)

    total = time.time() - t_start
    os.makedirs(args.out, exist_ok=True)
    data = {"length": n, "eval_seqs": args.eval_seqs, "threads": args.threads, "dense_ppl": dense, "rows": rows,
            **log, "total_seconds": total}
    with open(os.path.join(args.out, "smollm2_sparse_attention.json"), "w") as f:
        json.dump(data, f, indent=1, default=float)
    write_outputs(data, os.path.join(args.out, "smollm2_sparse_attention"))


def _blasst_off(r: dict, n: int) -> bool:
    """A BLASST row whose scale factor is >= L_kv: λ >= 1, skipping switched off (TensorRT-LLM's rule)."""
    c = r.get("scale_factor")
    if c is None and "c=" in r["setting"]:
        c = float(r["setting"].split("c=")[1].rstrip(")"))
    return r["method"] == "blasst" and c is not None and c >= n


def write_outputs(data: dict, base: str) -> None:
    """Markdown table and plot from the JSON record (``--replot`` redraws them without rerunning)."""
    n, dense, rows, bounds = data["length"], data["dense_ppl"], data["rows"], data["blasst_bound"]
    lines = [f"# SmolLM2-135M sparse attention at {n} tokens ({data['eval_seqs']} BBC News sequence(s), "
             f"{data['eval_seqs'] * (n - 1)} predictions)", "",
             "`skipped`: fraction of (query tile, key block) pairs not computed over all 30 layers (the op's "
             "stats), or for the per-row decode rules (Quest, Double Sparsity; prefill rows treated as decode "
             "steps) the fraction of causally visible keys not read. BLASST rows marked *off* have "
             "c = scale_factor >= L, so λ >= 1 and skipping is switched off (TensorRT-LLM's rule).", "",
             "| method | setting | perplexity | vs dense | skipped | of |", "|---|---|---|---|---|---|"]
    for r in rows:
        off = " *off*" if _blasst_off(r, n) else ""
        lines.append(f"| {r['method']} | {r['setting']}{off} | {r['ppl']:.3f} | {r['ppl'] / dense - 1:+.2%} | "
                     f"{r['skipped']:.1%} | {r['unit']} |")
    lines += ["", "BLASST calibration (scale_factor = a·exp(b·sparsity)): " + ", ".join(
        f"{ph}: a={v['a']:.3g}, b={v['b']:.3g}, R²={v['r2']:.2f}" for ph, v in data["blasst_calibration"].items()),
              "", "BLASST bound on real attention (layers 2, 15, 29 of the evaluation text; asserted on every row: "
              "dropped probability mass <= #skipped keys · λ <= c; relative error per head):", "",
              "| target | c = λ·L | max dropped mass | max dropped / bound | max rel. err | mean rel. err |",
              "|---|---|---|---|---|---|"]
    for t, b in bounds.items():
        lines.append(f"| {float(t):.2f} | {b['bound_c']:.3g} | {b['max_dropped_mass']:.2e} | "
                     f"{b['max_dropped_over_bound']:.3f} | {b['max_rel_err']:.2e} | {b['mean_rel_err']:.2e} |")
    lines += ["", f"Total runtime {data['total_seconds']:.0f} s on {data.get('threads', 2)} threads "
              f"(BLASST calibration {data.get('blasst_calibration_seconds', float('nan')):.0f} s)."]
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot")
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups: dict = {}
    for r in rows[1:]:
        if _blasst_off(r, n):
            continue
        key = r["method"] if r["method"] != "sparse_frontier" else r["setting"].split()[0]
        groups.setdefault(key, []).append(r)
    for key, rs in groups.items():
        rs = sorted(rs, key=lambda r: r["skipped"])
        ax.plot([r["skipped"] for r in rs], [r["ppl"] for r in rs], "o-", label=key)
    ax.axhline(dense, color="k", lw=1, ls="--", label="dense")
    ax.axhline(dense * 1.01, color="gray", lw=0.8, ls=":", label="dense +1%")
    ax.set_xlabel("fraction of attention skipped (blocks; keys for per-row decode rules)")
    ax.set_ylabel("perplexity")
    ax.set_title(f"SmolLM2-135M, {n} tokens of BBC News")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(base + ".png", dpi=120)

if __name__ == "__main__":
    main()
