"""Fast Sparse ConvNets (Elsen, Dukhan, Gale, Simonyan; CVPR 2020): gradual magnitude pruning of the
1x1 (pointwise) convolutions of a MobileNet/EfficientNet-class network to 70-95%, optionally in blocks of
2 or 4 consecutive output channels sharing an input-channel position (2x1 / 4x1), and inference through
the CHW SpMM kernel (the XNNPACK spmm micro-kernels; here ``spmm_conv``).

Schedule (Zhu & Gupta, 2017): s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))^3 for t0 <= t <= t0 + n*dt,
updated every dt steps; pruned weights stay pruned. The first full convolution, the depthwise
convolutions and the classifier stay dense, as in the paper: only 1x1, ungrouped convs are targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from sparseforge.config import Config, param
from sparseforge.masking import apply_mask, bake_masks, freeze_mask, get_mask
from sparseforge.registry import Method, Paper

__all__ = ["FastSparseConvNets", "FastSparseConvNetsConfig", "zhu_gupta_sparsity", "block_magnitude_mask"]


def zhu_gupta_sparsity(step: int, s_i: float, s_f: float, t0: int, n_dt: int) -> float:
    """The cubic gradual-pruning schedule; flat at s_i before t0 and at s_f after t0 + n_dt."""
    if step < t0:
        return s_i
    if n_dt <= 0 or step >= t0 + n_dt:
        return s_f
    return s_f + (s_i - s_f) * (1.0 - (step - t0) / n_dt) ** 3


@torch.no_grad()
def block_magnitude_mask(w: torch.Tensor, sparsity: float, block: int, alive: torch.Tensor | None = None) -> torch.Tensor:
    """Keeps the largest-|W| (block-summed) entries of a [c_out, c_in, ...] weight; blocks are `block`
    consecutive output channels at one input position. Entries already pruned (alive == False) stay pruned."""
    c_out = w.shape[0]
    score = w.detach().abs().float().reshape(c_out, -1)
    if alive is not None:
        score = score * alive.reshape(c_out, -1)
    nb = -(-c_out // block)
    pad = torch.zeros(nb * block, score.shape[1])
    pad[:c_out] = score
    bscore = pad.reshape(nb, block, -1).sum(1)  # [nb, c_in*k*k]
    keep = bscore.numel() - round(sparsity * bscore.numel())
    mask = torch.zeros(bscore.numel(), dtype=torch.bool)
    if keep > 0:
        mask[torch.topk(bscore.reshape(-1), keep, sorted=False).indices] = True
    mask = mask.reshape(nb, 1, -1).expand(nb, block, -1).reshape(nb * block, -1)[:c_out]
    return mask.reshape(w.shape)


def is_pointwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (1, 1) and m.groups == 1


@dataclass
class FastSparseConvNetsConfig(Config):
    sparsity: float = param(0.9, "final sparsity s_f of every 1x1 conv (the paper: 70-95%)", range=(0.0, 1.0, "[)"))
    initial_sparsity: float = param(0.0, "s_i at the start of pruning", range=(0.0, 1.0, "[)"))
    block: int = param(1, "output channels per block sharing an input position (1, 2x1, 4x1)", choices=(1, 2, 4))
    begin_fraction: float = param(0.1, "t0 as a fraction of the training steps", range=(0.0, 1.0))
    end_fraction: float = param(0.75, "t0 + n*dt as a fraction of the training steps (then fine-tune at s_f)", range=(0.0, 1.0))
    frequency: int = param(20, "dt: steps between mask updates", range=(1, 10**9))

    def check(self) -> None:
        from sparseforge.config import ConfigError
        if self.end_fraction < self.begin_fraction:
            raise ConfigError(self.METHOD, "end_fraction", self.end_fraction, f">= begin_fraction ({self.begin_fraction})")
        if self.initial_sparsity > self.sparsity:
            raise ConfigError(self.METHOD, "initial_sparsity", self.initial_sparsity, f"<= sparsity ({self.sparsity})")


class FastSparseConvNets(Method):
    name = "fast_sparse_convnets"
    paper = Paper("Fast Sparse ConvNets", 2020, "1911.09723", "https://github.com/google/XNNPACK")
    kind = "pruning"
    kernel = "spmm_conv"
    Config = FastSparseConvNetsConfig
    summary = "Gradual (Zhu & Gupta) magnitude pruning of 1x1 convs, 1/2x1/4x1 blocks, CHW SpMM inference."
    stage = "during_training"

    def apply(self, model, targets):
        # Only pointwise convs: the stem, the depthwise convs and the classifier stay dense (the paper);
        # a model without any (an MLP) is left unchanged.
        self.targets = [t for t in targets if is_pointwise(t.module)]
        for t in self.targets:
            apply_mask(t.module, torch.ones_like(getattr(t.module, t.param), dtype=torch.bool), t.param)
        self.total_steps = None
        self.current_sparsity = 0.0
        return model

    def _window(self):
        total = self.total_steps or 0
        cfg = self.config
        t0 = int(round(cfg.begin_fraction * total))
        t1 = int(round(cfg.end_fraction * total))
        return t0, max(t1 - t0, 0)

    @torch.no_grad()
    def prune_to(self, sparsity: float) -> None:
        for t in self.targets:
            w = t.module.parametrizations[t.param].original
            alive = get_mask(t.module, t.param)
            apply_mask(t.module, block_magnitude_mask(w, sparsity, self.config.block, alive), t.param)
        self.current_sparsity = sparsity

    def prepare(self, model, optimizer, total_steps=None) -> None:
        self.model, self.optimizer, self.total_steps = model, optimizer, total_steps
        if total_steps is None:
            raise ValueError("fast_sparse_convnets: prepare() needs total_steps for the gradual schedule")
        self.prune_to(self.config.initial_sparsity)

    def step(self, step_idx: int) -> None:
        t0, n_dt = self._window()
        t = step_idx + 1
        if t < t0 or (t - t0) % self.config.frequency and t < t0 + n_dt:
            return
        s = zhu_gupta_sparsity(t, self.config.initial_sparsity, self.config.sparsity, t0, n_dt)
        if s > self.current_sparsity + 1e-9:
            self.prune_to(s)

    def finalize(self):
        if self.current_sparsity < self.config.sparsity - 1e-9:
            self.prune_to(self.config.sparsity)
        for t in self.targets:
            freeze_mask(t.module, t.param)
        return self.model

    def export(self, model):
        """Bakes the masks and folds BatchNorm into the convs before it, and swaps every pruned
        eligible 1x1 conv for a SparseConv2d (eval mode)."""
        from sparseforge.nn import export_sparse_conv

        model = bake_masks(model).eval()
        return export_sparse_conv(model, min_sparsity=min(0.5, self.config.sparsity), block="auto", fold_bn="auto")
