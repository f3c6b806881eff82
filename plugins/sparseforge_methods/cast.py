"""CAST, from "CAST: Continuous and Differentiable Semi-Structured Sparsity-Aware Training for Large
Language Models" (2025): turn a pretrained dense model into an exact N:M (2:4) model by continuous
decay rather than a hard cut.

Around the user's optimizer (Adam in the paper):

* **Masks.** Every ``mask_interval`` (T₁ = 10) steps, each group of M input-consecutive weights marks
  its N largest |w| as kept (m = 1); the others are *decay targets*. The layer still computes with all
  of them, so masks can flip while the decayed weights are non-zero.
* **AdamS decay.** After each optimizer step, an L1 proximal step shrinks only the decay targets:
  w ← sign(w)·max(|w| − δ_t, 0) on m = 0. δ_t is adaptive per layer (proportional to the layer's mean
  kept |w|, so every layer sparsifies at the same relative pace) and grows linearly with t, scaled so
  that the cumulative decay reaches ``decay_strength`` × that mean by the projection step.
* **Weight scaling.** A learnable per-layer scale γ (initialised to 1) multiplies the weight, to make
  up for the magnitude the decay removes; it is trained by the same optimizer and folded in at the end.
* **Self-distillation.** The loss adds KL(teacher ‖ student) on logits, the teacher being a frozen copy
  of the dense model taken at ``prepare``.
* **Projection.** At ``project_fraction`` of the run the weights are projected onto exact N:M and the
  rest of the run fine-tunes with the mask fixed.

The paper's exact schedule of the decay coefficient and its normalisation are not public (no code);
the choices above follow its description. The mask-flip rate per update is kept in ``flip_rates``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from sparseforge.config import param
from sparseforge.masking import SparseParametrization, freeze_mask, register_sparse_parametrization
from sparseforge.patterns import nm_mask
from sparseforge.nm_method import NMConfig, NMMethod
from sparseforge.registry import Paper


class CASTScale(SparseParametrization):
    """w -> γ·w with a learnable scalar γ; ``mask`` holds the N:M decay pattern (kept = True)."""

    def __init__(self, n: int, m: int, gamma: float = 1.0, shape: tuple | None = None):
        super().__init__()
        self.n, self.m = int(n), int(m)
        self.gamma = nn.Parameter(torch.tensor(float(gamma)))
        self.register_buffer("mask", torch.ones(shape or (), dtype=torch.bool), persistent=False)

    def forward(self, w):
        return w * self.gamma

    def current_mask(self, w):
        return nm_mask(w.detach().abs(), self.n, self.m)

    def spec(self) -> dict:
        return {"n": self.n, "m": self.m, "gamma": float(self.gamma.detach())}


@dataclass
class CASTConfig(NMConfig):
    mask_interval: int = param(10, "T₁: steps between mask updates", range=(1, 10**6))
    decay_strength: float = param(1.5, "cumulative L1 decay by projection, in units of the layer's mean kept |w|",
                                  range=(0.0, 100.0))
    project_fraction: float = param(0.8, "fraction of the run after which weights are projected to exact N:M",
                                    range=(0.0, 1.0, "(]"))
    kd_weight: float = param(0.5, "weight of the self-distillation KL term (1 - kd_weight on the task loss)",
                             range=(0.0, 1.0))
    temperature: float = param(1.0, "distillation temperature", range=(0.0, 100.0, "(]"))
    total_steps: int | None = param(None, "steps of the whole run; unset: taken from the training loop",
                                    range=(1, 2**31 - 1), optional=True)


class CAST(NMMethod):
    name = "cast"
    paper = Paper("CAST: Continuous and Differentiable Semi-Structured Sparsity-Aware Training for Large "
                  "Language Models", 2025, "2509.25996")
    Config = CASTConfig
    summary = "Dense to exact N:M by adaptive L1 decay of the pruned-to-be weights, γ scaling and self-distillation."
    stage = "fine_tuning"

    def apply(self, model, targets):
        cfg = self.config
        self.check_targets(targets)
        self.scales = []
        for t in targets:
            w = getattr(t.module, t.param)
            p = CASTScale(cfg.n, cfg.m, shape=tuple(w.shape))
            register_sparse_parametrization(t.module, p, t.param)
            p.mask = p.current_mask(t.module.parametrizations[t.param].original)
            self.scales.append(p)
        self.flip_rates: list[float] = []
        self.projected = False
        return model

    def _originals(self):
        return [t.module.parametrizations[t.param].original for t in self.targets]

    def prepare(self, model, optimizer, total_steps=None) -> None:
        cfg = self.config
        self.total_steps = cfg.total_steps or total_steps
        if self.total_steps is None:
            raise ValueError("cast needs the run length: set total_steps in the config or pass it to prepare()")
        self.project_step = max(1, int(round(cfg.project_fraction * self.total_steps)))
        known = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = [p.gamma for p in self.scales if id(p.gamma) not in known]
        if missing:  # an optimizer built before sparsify() does not know the scales yet
            optimizer.add_param_group({"params": missing, "weight_decay": 0.0})
        self.optimizer = optimizer
        with torch.no_grad():
            self.teacher = copy.deepcopy(model).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
            # δ_t grows linearly: step t removes base·t/Σ, so the sum up to the projection is base.
            self._ramp = self.project_step * (self.project_step + 1) / 2
            self._base = [cfg.decay_strength * w.abs()[s.mask].mean().item()
                          for w, s in zip(self._originals(), self.scales)]
        self._student_out = None
        self._hook = model.register_forward_hook(self._capture)

    def _capture(self, module, inputs, output):
        self._student_out = output

    def training_loss(self, model, inputs, targets, loss):
        cfg = self.config
        if cfg.kd_weight == 0 or self._student_out is None:
            return loss
        with torch.no_grad():
            teacher = self.teacher(inputs)
        t = cfg.temperature
        kd = F.kl_div(F.log_softmax(self._student_out / t, -1), F.log_softmax(teacher / t, -1),
                      log_target=True, reduction="batchmean") * t * t
        return (1 - cfg.kd_weight) * loss + cfg.kd_weight * kd

    @torch.no_grad()
    def step(self, step_idx: int) -> None:
        t = step_idx + 1
        if self.projected:
            return
        if t >= self.project_step:
            self._project()
            return
        if t % self.config.mask_interval == 0:
            changed = total = 0
            for w, s in zip(self._originals(), self.scales):
                new = s.current_mask(w)
                changed += int((new != s.mask).sum())
                total += new.numel()
                s.mask = new
            self.flip_rates.append(changed / total)
        for w, s, base in zip(self._originals(), self.scales, self._base):
            delta = base * t / self._ramp
            decayed = torch.sign(w) * torch.clamp(w.abs() - delta, min=0.0)
            w.copy_(torch.where(s.mask, w, decayed))

    @torch.no_grad()
    def _project(self) -> None:
        for t in self.targets:
            freeze_mask(t.module, t.param)  # bakes γ·w, keeps the N:M pattern, zeroes the rest
        self.projected = True

    def finalize(self):
        if not self.projected:
            self._project()
        self._hook.remove()
        self.teacher = None
        return self.model
