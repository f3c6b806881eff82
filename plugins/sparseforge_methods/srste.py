"""SR-STE, from "Learning N:M Fine-grained Structured Sparse Neural Networks From Scratch"
(Zhou et al., ICLR 2021).

Training from scratch with an N:M mask recomputed from |W| at every forward pass (groups of M along
the input dimension; conv weights channels-last, as the official ``sparse_ops.py``). The forward uses
W ⊙ m; the backward passes the dense gradient straight through and adds the sparse-refined term
λ_W·(1 − m) ⊙ W, which pulls pruned weights towards zero so the mask settles:

    W ← W − γ·(g(W ⊙ m) + λ_W·(1 − m) ⊙ W)

λ_W = 0 is plain STE. The paper's SAD metric (how often masks change) is tracked as cumulative mask
flips between consecutive steps (``method.mask_flips``). ``finalize()`` freezes the last mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparseforge.config import param
from sparseforge.masking import SparseParametrization, freeze_mask, get_mask, register_sparse_parametrization
from sparseforge.patterns import nm_mask
from sparseforge.nm_method import NMConfig, NMMethod
from sparseforge.registry import Paper


class _SRSTEFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, mask, decay: float):
        ctx.save_for_backward(w, mask)
        ctx.decay = decay
        return w * mask

    @staticmethod
    def backward(ctx, grad):
        w, mask = ctx.saved_tensors
        if ctx.decay:
            grad = grad + ctx.decay * (~mask) * w
        return grad, None, None


class SRSTEMask(SparseParametrization):
    """Dynamic N:M mask with the (sparse-refined) straight-through estimator."""

    def __init__(self, n: int, m: int, decay: float):
        super().__init__()
        self.n, self.m, self.decay = int(n), int(m), float(decay)
        self.last_mask: torch.Tensor | None = None  # the mask of the latest forward, for flip counting

    def forward(self, w):
        mask = self.current_mask(w)
        self.last_mask = mask
        return _SRSTEFunction.apply(w, mask, self.decay)

    def current_mask(self, w):
        return nm_mask(w.detach().abs(), self.n, self.m)

    def spec(self) -> dict:
        return {"n": self.n, "m": self.m, "decay": self.decay}

    def extra_repr(self) -> str:
        return f"{self.n}:{self.m}, decay={self.decay:g}"


@dataclass
class SRSTEConfig(NMConfig):
    decay: float = param(2e-4, "λ_W, the sparse-refined decay on pruned weights; 0 gives plain STE",
                         range=(0.0, 1.0))
    track_flips: bool = param(True, "count mask flips per step (the paper's SAD metric)")


class SRSTE(NMMethod):
    name = "srste"
    paper = Paper("Learning N:M Fine-grained Structured Sparse Neural Networks From Scratch", 2021,
                  "2102.04010", "https://github.com/NM-sparsity/NM-sparsity")
    Config = SRSTEConfig
    summary = "Train N:M from scratch: dynamic |W| masks, STE backward plus decay on pruned weights."
    stage = "during_training"

    def apply(self, model, targets):
        cfg = self.config
        self.check_targets(targets)
        for t in targets:
            register_sparse_parametrization(t.module, SRSTEMask(cfg.n, cfg.m, cfg.decay), t.param)
        self.mask_flips: list[int] = []
        self._last = None
        return model

    def _masks(self):
        # The forward pass already computed this step's masks; recomputing them would double the cost.
        out = []
        for t in self.targets:
            p = t.module.parametrizations[t.param][0]
            out.append(p.last_mask if p.last_mask is not None else get_mask(t.module, t.param))
        return out

    def prepare(self, model, optimizer, total_steps=None) -> None:
        self.optimizer = optimizer
        self._last = self._masks() if self.config.track_flips else None

    def step(self, step_idx: int) -> None:
        if not self.config.track_flips:
            return
        now = self._masks()
        if self._last is not None:
            self.mask_flips.append(int(sum((a != b).sum().item() for a, b in zip(now, self._last))))
        self._last = now

    def finalize(self):
        for t in self.targets:
            freeze_mask(t.module, t.param)
        return self.model
