#!/usr/bin/env python
"""SmolLM2-135M under one-shot magnitude N:M pruning: perplexity and decode speed vs dense.

Prunes every Linear inside the decoder layers (q/k/v/o and the MLP; embeddings and lm_head stay dense)
with ``magnitude`` at 2:4 (and other patterns given with --patterns), measures perplexity on BBC News
text, then exports the 2:4 model (NMLinear, the nm_gemm kernel) and times greedy decoding at batch 1
against the dense model in the same run. Writes Markdown + JSON to --out (default results/).

    python scripts/smollm2_nm.py [--windows 8] [--window-len 256] [--decode-tokens 32] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time

import torch


def perplexity(model, ids: torch.Tensor, window: int, windows: int) -> float:
    nll, count = 0.0, 0
    with torch.inference_mode():
        for i in range(windows):
            chunk = ids[:, i * window:(i + 1) * window]
            if chunk.shape[1] < 2:
                break
            out = model(chunk, labels=chunk)
            nll += out.loss.item() * (chunk.shape[1] - 1)
            count += chunk.shape[1] - 1
    return float(torch.exp(torch.tensor(nll / count)))


def decode_seconds(model, prompt: torch.Tensor, tokens: int, repeats: int = 3) -> list[float]:
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.generate(prompt, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
            times.append(time.perf_counter() - t0)
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patterns", nargs="+", default=["2:4", "4:8"])
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--window-len", type=int, default=256)
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", default="results")
    args = ap.parse_args()

    import sparseforge as sf
    from sparseforge.data.models import load_smollm2
    from sparseforge.data.text import bbc_articles

    tok, dense = load_smollm2()
    text = "\n\n".join(t for _, t in bbc_articles(limit=40))
    ids = tok(text, return_tensors="pt").input_ids[:, : args.windows * args.window_len]
    rows = [("dense", perplexity(dense, ids, args.window_len, args.windows), 0.0)]
    pruned = {}
    for pat in args.patterns:
        model = sf.sparsify(copy.deepcopy(dense), "magnitude", pattern=pat, targets=["model.layers.*"])
        dec = [x for x in sf.sparsity_report(model).layers if x.name.startswith("model.layers.")]
        rows.append((f"magnitude {pat}", perplexity(model, ids, args.window_len, args.windows),
                     1 - sum(x.nnz for x in dec) / sum(x.numel for x in dec)))
        pruned[pat] = model
        print(rows[-1], flush=True)
    result = {"perplexity": [{"model": r[0], "ppl": r[1], "sparsity": r[2]} for r in rows], "decode": []}

    if "2:4" in pruned:
        try:
            exported = sf.export(pruned["2:4"])
        except Exception as exc:  # export needs the nm_gemm kernel module
            exported = None
            print(f"export skipped: {exc}")
        if exported is not None:
            if hasattr(sf, "explain"):
                print(sf.explain(exported))
            prompt = ids[:, :16]
            for threads in args.threads:
                torch.set_num_threads(threads)
                sf._C.set_num_threads(threads)
                d, s = [], []
                for _ in range(3):  # interleave so drift hits both equally
                    d += decode_seconds(dense, prompt, args.decode_tokens, 1)
                    s += decode_seconds(exported, prompt, args.decode_tokens, 1)
                md, ms = statistics.median(d), statistics.median(s)
                result["decode"].append({"threads": threads, "dense_s": d, "sparse_s": s, "speedup": md / ms,
                                         "dense_tok_s": args.decode_tokens / md, "sparse_tok_s": args.decode_tokens / ms})
                print(result["decode"][-1], flush=True)

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "smollm2_nm.json"), "w") as f:
        json.dump(result, f, indent=2)
    lines = ["| model | sparsity of decoder Linears | perplexity (BBC News) |", "|---|---:|---:|"]
    lines += [f"| {r[0]} | {r[2]:.1%} | {r[1]:.2f} |" for r in rows]
    if result["decode"]:
        lines += ["", "| threads | dense tok/s | 2:4 exported tok/s | speedup (median) |", "|---:|---:|---:|---:|"]
        lines += [f"| {d['threads']} | {d['dense_tok_s']:.1f} | {d['sparse_tok_s']:.1f} | {d['speedup']:.2f}x |"
                  for d in result["decode"]]
    with open(os.path.join(args.out, "smollm2_nm.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
