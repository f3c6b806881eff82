"""row_norm: remove whole output neurons (weight rows) with the smallest L2 norm, per layer.

Structured pruning like this shrinks a layer's dense GEMM instead of needing a sparse kernel; it is
here mostly to show the plugin contract.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparseforge.config import Config, param
from sparseforge.masking import apply_mask
from sparseforge.registry import Method, Paper


@dataclass
class RowNormConfig(Config):
    sparsity: float = param(0.5, "fraction of output rows removed per layer", range=(0.0, 1.0, "[)"))


class RowNorm(Method):
    name = "row_norm"
    paper = Paper("Pruning Filters for Efficient ConvNets", 2017, "1608.08710")
    kind = "pruning"
    kernel = "none"
    Config = RowNormConfig
    summary = "Structured pruning of whole output neurons by L2 norm (example third-party plugin)."

    @torch.no_grad()
    def apply(self, model, targets):
        for t in targets:
            w = getattr(t.module, t.param)
            norms = w.reshape(w.shape[0], -1).norm(dim=1)
            drop = round(self.config.sparsity * w.shape[0])
            keep_rows = torch.ones(w.shape[0], dtype=torch.bool)
            if drop:
                keep_rows[torch.topk(norms, drop, largest=False).indices] = False
            apply_mask(t.module, keep_rows.view(-1, *([1] * (w.dim() - 1))).expand_as(w), t.param)
        return model
