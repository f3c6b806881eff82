"""BDWP, from "Efficient N:M Sparse DNN Training Using Algorithm, Architecture, and Dataflow
Co-Design" (Fang et al., 2023): bidirectional weight pruning.

The dense weight W is trained; two N:M masks are recomputed from |W| at every step:

* forward, Y = X·(W ⊙ M_f)ᵀ with M_f grouping M consecutive *input* features (the forward GEMM's
  reduction dimension);
* activation gradient, dX = dY·(W ⊙ M_b) with M_b grouping M consecutive *output* features (the
  reduction dimension of that GEMM),

so both GEMMs are N:M in their reduction dimension, while the weight gradient dW = dYᵀ·X stays dense and
updates W straight through. Training costs (2·N/M + 1)/3 of dense MACs (:func:`training_mac_fraction`).
Linear and Conv2d layers (groups=1) are supported; ``finalize()`` keeps the forward mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from sparseforge.config import param
from sparseforge.masking import apply_mask
from sparseforge.patterns import nm_mask_along
from sparseforge.nm_method import NMConfig, NMMethod
from sparseforge.registry import Paper


def forward_mask(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    return nm_mask_along(w.detach().abs(), n, m, dim=1)


def backward_mask(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    return nm_mask_along(w.detach().abs(), n, m, dim=0)


def training_mac_fraction(n: int, m: int) -> float:
    """MACs of one BDWP training step relative to dense: forward and dX are N:M, dW is dense."""
    return (2 * n / m + 1) / 3


class _BDWPFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, layer):
        n, m = layer.bdwp_n, layer.bdwp_m
        mf = forward_mask(w, n, m)
        wb = w * backward_mask(w, n, m)
        ctx.save_for_backward(x, w, wb, mf)
        ctx.layer = layer
        ctx.has_bias = b is not None
        if isinstance(layer, nn.Conv2d):
            return F.conv2d(x, w * mf, b, layer.stride, layer.padding, layer.dilation, layer.groups)
        return F.linear(x, w * mf, b)

    @staticmethod
    def backward(ctx, gy):
        x, w, wb, mf = ctx.saved_tensors
        layer = ctx.layer
        if isinstance(layer, nn.Conv2d):
            args = (layer.stride, layer.padding, layer.dilation, layer.groups)
            gx = torch.nn.grad.conv2d_input(x.shape, wb, gy, *args) if ctx.needs_input_grad[0] else None
            gw = torch.nn.grad.conv2d_weight(x, w.shape, gy, *args)
            gb = gy.sum((0, 2, 3)) if ctx.has_bias else None
        else:
            gx = gy @ wb if ctx.needs_input_grad[0] else None
            gy2, x2 = gy.reshape(-1, gy.shape[-1]), x.reshape(-1, x.shape[-1])
            gw = gy2.t() @ x2
            gb = gy2.sum(0) if ctx.has_bias else None
        if layer.bdwp_decay:
            gw = gw + layer.bdwp_decay * (~mf) * w
        return gx, gw, gb, None


class BDWPLinear(nn.Linear):
    """nn.Linear trained with bidirectional N:M masks (same parameters and state_dict)."""

    def forward(self, x):
        return _BDWPFunction.apply(x, self.weight, self.bias, self)


class BDWPConv2d(nn.Conv2d):
    """nn.Conv2d trained with bidirectional N:M masks (same parameters and state_dict)."""

    def forward(self, x):
        if self.padding_mode != "zeros":
            raise NotImplementedError("BDWP supports zero padding only")
        return _BDWPFunction.apply(x, self.weight, self.bias, self)


_SWAP = {nn.Linear: BDWPLinear, nn.Conv2d: BDWPConv2d}


@dataclass
class BDWPConfig(NMConfig):
    n: int = param(2, "weights kept per group (forward and backward)", range=(1, 64))
    m: int = param(8, "group size; the paper's default is 2:8", range=(1, 64))
    decay: float = param(0.0, "optional SR-STE-style decay on weights pruned in the forward mask",
                         range=(0.0, 1.0))


class BDWP(NMMethod):
    name = "bdwp"
    paper = Paper("Efficient N:M Sparse DNN Training Using Algorithm, Architecture, and Dataflow Co-Design",
                  2023, "2309.13015")
    Config = BDWPConfig
    summary = "N:M along the input dim forward and along the output dim for dX; dense dW (STE)."
    stage = "during_training"
    default_targets = (nn.Linear, nn.Conv2d)

    def apply(self, model, targets):
        cfg = self.config
        bad = []
        for t in targets:
            base = type(t.module)
            w = t.module.weight
            if base not in _SWAP or t.param != "weight":
                bad.append(f"{t.key} ({base.__name__}: only nn.Linear and nn.Conv2d)")
            elif isinstance(t.module, nn.Conv2d) and t.module.groups != 1:
                bad.append(f"{t.key} (grouped convolution)")
            elif w.shape[0] % cfg.m or w.shape[1] % cfg.m:
                bad.append(f"{t.key} (shape {tuple(w.shape)}: in and out must be multiples of {cfg.m})")
        if bad:
            raise ValueError("bdwp cannot train these layers: " + "; ".join(bad) + " (leave them out with exclude=)")
        for t in targets:
            t.module.__class__ = _SWAP[type(t.module)]
            t.module.bdwp_n, t.module.bdwp_m, t.module.bdwp_decay = cfg.n, cfg.m, cfg.decay
        return model

    def prepare(self, model, optimizer, total_steps=None) -> None:
        self.optimizer = optimizer

    @torch.no_grad()
    def finalize(self):
        for t in self.targets:
            mod = t.module
            mask = forward_mask(mod.weight, mod.bdwp_n, mod.bdwp_m)
            mod.__class__ = type(mod).__bases__[0]
            for attr in ("bdwp_n", "bdwp_m", "bdwp_decay"):
                delattr(mod, attr)
            apply_mask(mod, mask)
        return self.model
