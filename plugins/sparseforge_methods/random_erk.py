"""Static random pruning with layer-wise densities, from "The Unreasonable Effectiveness of Random
Pruning: Return of the Most Naive Baseline for Sparse Training" (Liu et al., ICLR 2022).

Applied at initialisation, before training; the mask never changes. Layer densities:

* ``uniform``: every layer at density d = 1 - sparsity;
* ``er``: d_l proportional to (n_in + n_out) / (n_in * n_out) (Erdős–Rényi, first two dims only);
* ``erk``: d_l proportional to sum(shape_l) / prod(shape_l) (kernel dims included, Erdős–Rényi-Kernel).

For ER/ERK the scale eps solves sum_l d_l * N_l = d * sum_l N_l; a layer whose d_l would exceed 1 is
kept dense and eps is re-solved over the rest (the official ``sparselearning/core.py`` procedure).
The paper samples Bernoulli(d_l) masks; here each layer keeps exactly round(d_l * N_l) randomly chosen
weights, so the realised sparsity equals the requested one rather than matching it in expectation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sparseforge.config import Config, param
from sparseforge.masking import apply_mask
from sparseforge.registry import Method, Paper


@dataclass
class RandomERKConfig(Config):
    sparsity: float = param(0.9, "fraction of the targeted weights removed overall", range=(0.0, 1.0, "[)"))
    distribution: str = param("erk", "layer-wise density rule", choices=("erk", "er", "uniform"))
    seed: int = param(0, "random seed of the masks", range=(0, 2**63 - 1))


def layer_densities(shapes: list[tuple], density: float, distribution: str) -> list[float]:
    """Per-layer densities whose parameter-weighted mean is ``density`` (the paper's ER/ERK rule)."""
    numels = [math.prod(s) for s in shapes]
    if distribution == "uniform":
        return [density] * len(shapes)
    if distribution == "erk":
        raw = [sum(s) / math.prod(s) for s in shapes]
    else:
        raw = [(s[0] + s[1]) / (s[0] * s[1]) for s in shapes]
    dense: set[int] = set()
    total = density * sum(numels)
    while True:
        budget = total - sum(numels[i] for i in dense)
        denom = sum(raw[i] * numels[i] for i in range(len(shapes)) if i not in dense)
        eps = budget / denom if denom > 0 else 0.0
        over = [i for i in range(len(shapes)) if i not in dense and eps * raw[i] > 1.0]
        if not over:
            break
        # Densest first, one at a time, as the reference implementation does.
        dense.add(max(over, key=lambda i: raw[i]))
    return [1.0 if i in dense else eps * raw[i] for i in range(len(shapes))]


class RandomERK(Method):
    name = "random_erk"
    paper = Paper("The Unreasonable Effectiveness of Random Pruning: Return of the Most Naive Baseline for "
                  "Sparse Training", 2022, "2202.02643", "https://github.com/VITA-Group/Random_Pruning")
    kind = "sparse_training"
    kernel = "spmm_conv"
    Config = RandomERKConfig
    summary = "Static random masks at initialisation with uniform / ER / ERK layer-wise densities."
    stage = "init"

    @torch.no_grad()
    def apply(self, model, targets):
        cfg = self.config
        shapes = [tuple(getattr(t.module, t.param).shape) for t in targets]
        numels = [math.prod(s) for s in shapes]
        dens = layer_densities(shapes, 1.0 - cfg.sparsity, cfg.distribution)
        keeps = [round(d * n) for d, n in zip(dens, numels)]
        # Rounding each layer can drift the total by up to one weight per layer; hand the difference to
        # the largest sparse layers so the model-wide count is exact.
        target_keep = round((1.0 - cfg.sparsity) * sum(numels))
        diff = target_keep - sum(keeps)
        order = sorted((i for i in range(len(keeps)) if dens[i] < 1.0), key=lambda i: -numels[i])
        for i in order:
            if diff == 0:
                break
            step = max(-keeps[i], min(numels[i] - keeps[i], diff))
            keeps[i] += step
            diff -= step
        gen = torch.Generator().manual_seed(cfg.seed)
        self.densities = {}
        for t, n, keep in zip(targets, numels, keeps):
            w = getattr(t.module, t.param)
            flat = torch.zeros(n, dtype=torch.bool)
            flat[torch.randperm(n, generator=gen)[:keep]] = True
            apply_mask(t.module, flat.reshape(w.shape), t.param)
            self.densities[t.key] = keep / n
        return model
