"""One-shot magnitude pruning, as studied in "The Emergence of Essential Sparsity in Large Pre-trained
Models" (Jaiswal et al., 2023): remove the smallest-|W| weights of every targeted layer in one shot,
with no retraining, unstructured (per layer or global) or N:M along the input dimension.

The official code prunes q/k/v/o and the MLP Linears with ``prune.global_unstructured(L1Unstructured)``
and leaves embeddings and the head dense; here that is ``targets``/``exclude``. Counts are exact: a
layer at sparsity s loses exactly round(s * numel) weights (ties broken by index), so the realised
sparsity is the requested one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparseforge.config import Config, ConfigError, param
from sparseforge.masking import apply_mask
from sparseforge.patterns import nm_mask, parse_nm, topk_mask
from sparseforge.registry import Method, Paper
from sparseforge.targets import require_reduction_multiple


@dataclass
class MagnitudeConfig(Config):
    sparsity: float | None = param(None, "fraction of weights removed; unset means 0.5 for unstructured and "
                                   "1 - N/M for an N:M pattern", range=(0.0, 1.0, "[)"), optional=True)
    pattern: str = param("unstructured", "'unstructured' or an N:M pattern such as '2:4', '1:4', '2:8', '4:8'")
    scope: str = param("layer", "unstructured only: rank weights within each layer or across all targets",
                       choices=("layer", "global"))

    @property
    def effective_sparsity(self) -> float:
        if self.pattern == "unstructured":
            return 0.5 if self.sparsity is None else self.sparsity
        n, m = parse_nm(self.pattern)
        return 1.0 - n / m

    def check(self) -> None:
        if self.pattern == "unstructured":
            return
        try:
            n, m = parse_nm(self.pattern)
        except ValueError:
            raise ConfigError(self.METHOD, "pattern", self.pattern, "'unstructured' or 'N:M' with 1 <= N <= M <= 64") from None
        if self.scope != "layer":
            raise ConfigError(self.METHOD, "scope", self.scope, "'layer' for N:M patterns (groups are local)")
        # sparsity is implied by N:M; a different explicit value is a contradiction, not a request.
        implied = 1.0 - n / m
        if self.sparsity is not None and abs(self.sparsity - implied) > 1e-9:
            raise ConfigError(self.METHOD, "sparsity", self.sparsity,
                              f"{implied:g} (implied by pattern {self.pattern}) or leave it unset")


class Magnitude(Method):
    name = "magnitude"
    paper = Paper("The Emergence of Essential Sparsity in Large Pre-trained Models: The Weights that Matter",
                  2023, "2306.03805", "https://github.com/VITA-Group/essential_sparsity")
    kind = "pruning"
    kernel = "nm_gemm"
    Config = MagnitudeConfig
    summary = "One-shot |W| pruning without retraining: unstructured per layer or global, or N:M."
    stage = "post_training"

    def nm_pattern(self):
        return None if self.config.pattern == "unstructured" else parse_nm(self.config.pattern)

    @torch.no_grad()
    def apply(self, model, targets):
        cfg = self.config
        weights = [getattr(t.module, t.param).detach() for t in targets]
        if cfg.pattern != "unstructured":
            n, m = parse_nm(cfg.pattern)
            require_reduction_multiple(self.name, targets, m, cfg.pattern)
            for t, w in zip(targets, weights):
                apply_mask(t.module, nm_mask(w.abs(), n, m), t.param)
        elif cfg.scope == "layer":
            for t, w in zip(targets, weights):
                keep = w.numel() - round(cfg.effective_sparsity * w.numel())
                apply_mask(t.module, topk_mask(w.abs(), keep), t.param)
        else:
            scores = torch.cat([w.abs().reshape(-1).float() for w in weights])
            keep = scores.numel() - round(cfg.effective_sparsity * scores.numel())
            flat = topk_mask(scores, keep)
            offset = 0
            for t, w in zip(targets, weights):
                apply_mask(t.module, flat[offset: offset + w.numel()].reshape(w.shape), t.param)
                offset += w.numel()
        return model
