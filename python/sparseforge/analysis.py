"""Sparsity sweeps and the "essential sparsity" knee (Jaiswal et al., 2023).

Essential sparsity is the largest one-shot sparsity before quality starts falling fast. A sweep
prunes a fresh copy of the model at each level, scores it, and the knee is read off the curve.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Callable, Sequence

import torch.nn as nn
from tqdm.auto import tqdm

from .api import sparsify

__all__ = ["SweepPoint", "sparsity_sweep", "essential_sparsity", "embedding_cosine"]


@dataclasses.dataclass
class SweepPoint:
    sparsity: float
    score: float


def sparsity_sweep(model: nn.Module, score: Callable[[nn.Module], float], sparsities: Sequence[float],
                   method: str = "magnitude", progress: bool = True, **kwargs) -> list[SweepPoint]:
    """Scores ``method`` applied one-shot to a copy of ``model`` at each sparsity (model untouched)."""
    out = []
    for s in tqdm(list(sparsities), desc=f"{method} sweep", disable=not progress, leave=False):
        pruned = copy.deepcopy(model) if s > 0 else model
        if s > 0:
            sparsify(pruned, method, sparsity=float(s), **kwargs)
        out.append(SweepPoint(float(s), float(score(pruned))))
    return out


def essential_sparsity(points: Sequence[SweepPoint], tolerance: float = 0.01) -> float:
    """Largest sparsity whose score stays within ``tolerance`` (relative) of the densest point's score,
    with every lower sparsity also within it: the knee after which quality drops fast."""
    pts = sorted(points, key=lambda p: p.sparsity)
    base = pts[0].score
    knee = pts[0].sparsity
    for p in pts:
        if p.score < base * (1 - tolerance):
            break
        knee = p.sparsity
    return knee


def embedding_cosine(reference, candidate) -> float:
    """Mean cosine similarity between matching rows of two ``[n, d]`` embedding tensors."""
    import torch.nn.functional as F

    return F.cosine_similarity(reference, candidate, dim=1).mean().item()
