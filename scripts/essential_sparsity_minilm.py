#!/usr/bin/env python
"""Essential-sparsity curve of the pretrained all-MiniLM-L6-v2 under one-shot magnitude pruning.

Prunes the encoder's Linear layers (q, k, v, attention output, MLP; embeddings and pooler stay dense,
as in the paper's code) with global magnitude pruning at 0-90% sparsity, and scores each model by the
cosine between its sentence embeddings and the dense model's on BBC News sentences. Writes a table
(Markdown + CSV) and a plot to --out (default results/).

    python scripts/essential_sparsity_minilm.py [--sentences 128] [--scope global|layer] [--out results]
"""

from __future__ import annotations

import argparse
import csv
import os

import numpy as np
import torch


def embed(tok, model, sentences, batch=32):
    outs = []
    with torch.inference_mode():
        for i in range(0, len(sentences), batch):
            enc = tok(sentences[i:i + batch], padding=True, truncation=True, max_length=128, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)  # mean pooling, as sentence-transformers
            outs.append(torch.nn.functional.normalize(pooled, dim=1))
    return torch.cat(outs)


def run(n_sentences=128, scope="global", sparsities=None, progress=True):
    from sparseforge.analysis import embedding_cosine, essential_sparsity, sparsity_sweep
    from sparseforge.data.models import load_minilm
    from sparseforge.data.text import bbc_sentences

    sparsities = sparsities if sparsities is not None else [round(0.1 * i, 2) for i in range(10)]
    torch.manual_seed(0)
    tok, model = load_minilm()
    sentences = bbc_sentences(n_sentences)
    dense = embed(tok, model, sentences)
    score = lambda m: embedding_cosine(dense, embed(tok, m, sentences))
    points = sparsity_sweep(model, score, sparsities, method="magnitude", progress=progress, scope=scope,
                            targets=["encoder.*"])
    return points, essential_sparsity(points, tolerance=0.01)


def nm_points(n_sentences=128, patterns=("2:4", "4:8", "1:4")):
    """Embedding cosine to dense for one-shot magnitude N:M pruning of the same layers."""
    import copy

    import sparseforge as sf
    from sparseforge.analysis import embedding_cosine
    from sparseforge.data.models import load_minilm
    from sparseforge.data.text import bbc_sentences

    tok, model = load_minilm()
    sentences = bbc_sentences(n_sentences)
    dense = embed(tok, model, sentences)
    out = []
    for pat in patterns:
        pruned = sf.sparsify(copy.deepcopy(model), "magnitude", pattern=pat, targets=["encoder.*"])
        enc = [x for x in sf.sparsity_report(pruned).layers if x.name.startswith("encoder.")]
        sparsity = 1 - sum(x.nnz for x in enc) / sum(x.numel for x in enc)
        out.append((pat, sparsity, embedding_cosine(dense, embed(tok, pruned, sentences))))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sentences", type=int, default=128)
    ap.add_argument("--scope", choices=("global", "layer"), default="global")
    ap.add_argument("--out", default="results")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    points, knee = run(args.sentences, args.scope)
    nm = nm_points(args.sentences)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"essential_sparsity_minilm_{args.scope}")
    with open(stem + ".csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sparsity", "embedding_cosine"])
        for p in points:
            w.writerow([f"{p.sparsity:.2f}", f"{p.score:.5f}"])
    lines = ["| sparsity | cosine to dense |", "|---:|---:|"] + [f"| {p.sparsity:.0%} | {p.score:.4f} |" for p in points]
    lines.append(f"\nEssential sparsity (cosine within 1% of dense): {knee:.0%}")
    lines += ["", "| N:M pattern | sparsity | cosine to dense |", "|---|---:|---:|"]
    lines += [f"| {pat} | {sp:.0%} | {cos:.4f} |" for pat, sp, cos in nm]
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = np.array([p.sparsity for p in points]) * 100
    ax.plot(xs, [p.score for p in points], "o-", label=f"magnitude ({args.scope})")
    for pat, sp, cos in nm:
        ax.plot(sp * 100, cos, "s", label=f"magnitude N:M {pat}")
    ax.axvline(knee * 100, color="gray", ls="--", label=f"essential sparsity ≈ {knee:.0%}")
    ax.set_xlabel("sparsity of encoder Linear weights (%)")
    ax.set_ylabel("embedding cosine to dense")
    ax.set_title("all-MiniLM-L6-v2, one-shot magnitude pruning")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(stem + ".png", dpi=120)
    print(f"wrote {stem}.csv, {stem}.md, {stem}.png")


if __name__ == "__main__":
    main()
