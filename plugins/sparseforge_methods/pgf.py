"""Progressive Gradient Flow, from "Progressive Gradient Flow for Robust N:M Sparsity Training in
Transformers" (Bambhaniya et al., 2024), aimed at high N:M sparsity (1:8 to 1:32).

Training runs in three phases: ``dense_steps`` dense, then a sparse phase, then ``finetune_steps``
with the final binary mask frozen. In the sparse phase:

* **MdGf** (mask-decay gradient flow, ``mdgf_exp`` / ``mdgf_linear``): the layer computes with
  W̃ = W ⊙ (m + (1 − m)·α(t)), m the N:M mask of |W| recomputed every step, α(t) = exp(−c·t) or
  max(0, 1 − c·t), t counting steps since the sparse phase began. The backward passes the gradient
  unchanged to every weight (dense STE), as the official ``sparse_functions.py`` does.
* **SdGf** (structure-decay gradient flow): binary masks whose pattern changes over equal frames of the
  sparse phase: ``sdgf_stepwise`` (M−1):M → (M/2):M → … → N:M, ``sdgf_geometric`` 8N:8M → 4N:4M →
  2N:2M → N:M (same density, coarser groups first).

With ``decay_coef`` unset, c is chosen so that α reaches ``final_alpha`` (1e-3, as the method notes
suggest) at the end of the sparse phase. The official code's step offset (``dense_steps`` used as a
fraction, 100× too small) is not reproduced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sparseforge.config import ConfigError, param
from sparseforge.masking import SparseParametrization, freeze_mask, register_sparse_parametrization
from sparseforge.patterns import nm_mask, reduction_size
from sparseforge.nm_method import NMConfig, NMMethod
from sparseforge.registry import Paper

MODES = ("mdgf_exp", "mdgf_linear", "sdgf_stepwise", "sdgf_geometric")


class _DenseSTE(torch.autograd.Function):
    """y = w * scale in the forward; the gradient reaches w unchanged."""

    @staticmethod
    def forward(ctx, w, scale):
        return w * scale

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class PGFMask(SparseParametrization):
    """N:M mask whose pruned entries are scaled by ``alpha`` (1 = dense, 0 = binary N:M).

    ``n``/``m`` is the pattern in force now (SdGf changes it); ``phase`` is "dense", "sparse" or "frozen".
    """

    def __init__(self, n: int, m: int, alpha: float = 1.0, phase: str = "dense"):
        super().__init__()
        self.n, self.m, self.alpha, self.phase = int(n), int(m), float(alpha), phase

    def current_mask(self, w):
        if self.phase == "dense":
            return torch.ones_like(w, dtype=torch.bool)
        return nm_mask(w.detach().abs(), self.n, self.m)

    def forward(self, w):
        if self.phase == "dense":
            return w
        mask = self.current_mask(w)
        scale = mask.to(w.dtype) if self.alpha == 0 else mask.to(w.dtype) + (~mask).to(w.dtype) * self.alpha
        return _DenseSTE.apply(w, scale)

    def spec(self) -> dict:
        return {"n": self.n, "m": self.m, "alpha": self.alpha, "phase": self.phase}

    def extra_repr(self) -> str:
        return f"{self.n}:{self.m}, alpha={self.alpha:.3g}, phase={self.phase}"


def sdgf_schedule(n: int, m: int, mode: str, k_sizes: list[int] | None = None) -> list[tuple[int, int]]:
    """The SdGf pattern sequence, ending at N:M.

    stepwise: (M−1):M, M/2:M, M/4:M, …, N:M; geometric: 8N:8M, 4N:4M, 2N:2M, N:M, starting at the
    coarsest group size that divides every layer's reduction size in ``k_sizes``.
    """
    if mode == "sdgf_stepwise":
        seq = [(m - 1, m)] if m - 1 > n else []
        k = m // 2
        while k > n:
            if (k, m) not in seq and k < m - 1:
                seq.append((k, m))
            k //= 2
        seq.append((n, m))
        return seq
    if mode == "sdgf_geometric":
        seq = []
        for f in (8, 4, 2):
            if k_sizes is None or all(k % (f * m) == 0 for k in k_sizes):
                seq.append((f * n, f * m))
        seq.append((n, m))
        return seq
    raise ValueError(f"not an SdGf mode: {mode!r}")


@dataclass
class PGFConfig(NMConfig):
    n: int = param(1, "weights kept per group at the end", range=(1, 64))
    m: int = param(8, "group size along the input dimension", range=(1, 64))
    mode: str = param("mdgf_exp", "gradient-flow schedule", choices=MODES)
    decay_coef: float | None = param(None, "c in α(t); unset: chosen so α(end of sparse phase) = final_alpha",
                                     range=(0.0, 1.0, "(]"), optional=True)
    final_alpha: float = param(1e-3, "α at the end of the sparse phase when decay_coef is unset",
                               range=(0.0, 1.0, "()"))
    dense_steps: int = param(0, "steps trained dense before the sparse phase", range=(0, 2**31 - 1))
    finetune_steps: int = param(0, "steps at the end with the binary mask frozen", range=(0, 2**31 - 1))
    total_steps: int | None = param(None, "steps of the whole run; unset: taken from the training loop",
                                    range=(1, 2**31 - 1), optional=True)

    def check(self) -> None:
        super().check()
        if self.mode == "sdgf_stepwise" and self.m & (self.m - 1):
            raise ConfigError(self.METHOD, "m", self.m, "a power of two for sdgf_stepwise")


class PGF(NMMethod):
    name = "pgf"
    paper = Paper("Progressive Gradient Flow for Robust N:M Sparsity Training in Transformers", 2024,
                  "2402.04744", "https://github.com/abhibambhaniya/progressive_gradient_flow_nm_sparsity")
    Config = PGFConfig
    summary = "High-ratio N:M training with decaying gradient flow to pruned weights (MdGf / SdGf)."
    stage = "during_training"

    def apply(self, model, targets):
        cfg = self.config
        self.check_targets(targets)
        self.params = []
        for t in targets:
            p = PGFMask(cfg.n, cfg.m, alpha=1.0, phase="dense")
            register_sparse_parametrization(t.module, p, t.param)
            self.params.append(p)
        ks = [reduction_size(getattr(t.module, t.param)) for t in targets]
        self.schedule = sdgf_schedule(cfg.n, cfg.m, cfg.mode, ks) if cfg.mode.startswith("sdgf") else [(cfg.n, cfg.m)]
        self.total_steps = cfg.total_steps
        self._set_step(0)
        return model

    # -- schedule -------------------------------------------------------------------------------------
    def sparse_steps(self) -> int:
        if self.total_steps is None:
            raise ValueError("pgf needs the run length: set total_steps in the config or pass it to prepare()")
        return max(1, self.total_steps - self.config.dense_steps - self.config.finetune_steps)

    def decay_coef(self) -> float:
        cfg = self.config
        if cfg.decay_coef is not None:
            return cfg.decay_coef
        s = self.sparse_steps()
        return -math.log(cfg.final_alpha) / s if cfg.mode == "mdgf_exp" else 1.0 / s

    def state_at(self, step: int) -> tuple[str, int, int, float]:
        """(phase, n, m, alpha) in force at training step ``step``."""
        cfg = self.config
        if step < cfg.dense_steps:
            return "dense", cfg.n, cfg.m, 1.0
        t = step - cfg.dense_steps
        if self.total_steps is not None and t >= self.sparse_steps():
            return "frozen", cfg.n, cfg.m, 0.0
        if cfg.mode == "mdgf_exp":
            return "sparse", cfg.n, cfg.m, math.exp(-self.decay_coef() * t)
        if cfg.mode == "mdgf_linear":
            return "sparse", cfg.n, cfg.m, max(0.0, 1.0 - self.decay_coef() * t)
        frame = min(len(self.schedule) - 1, t * len(self.schedule) // self.sparse_steps())
        n, m = self.schedule[frame]
        return "sparse", n, m, 0.0

    def _set_step(self, step: int) -> None:
        if self.total_steps is None:
            # Before prepare() the run length is unknown; step 0 of every schedule needs none of it.
            cfg = self.config
            if cfg.dense_steps > 0:
                phase, n, m, alpha = "dense", cfg.n, cfg.m, 1.0
            else:
                (n, m), alpha = self.schedule[0], (1.0 if cfg.mode.startswith("mdgf") else 0.0)
                phase = "sparse"
        else:
            phase, n, m, alpha = self.state_at(step)
        if phase == "frozen":
            self._freeze()
            return
        for p in self.params:
            p.phase, p.n, p.m, p.alpha = phase, n, m, alpha

    def _freeze(self) -> None:
        for p in self.params:
            p.phase, p.n, p.m, p.alpha = "sparse", self.config.n, self.config.m, 0.0
        for t in self.targets:
            freeze_mask(t.module, t.param)
        self._frozen = True

    # -- lifecycle -------------------------------------------------------------------------------------
    def prepare(self, model, optimizer, total_steps: int | None = None) -> None:
        self.optimizer = optimizer
        if self.config.total_steps is None:
            self.total_steps = total_steps
        self.sparse_steps()  # fail now, not mid-run, when the length is unknown
        self._set_step(0)

    def step(self, step_idx: int) -> None:
        if not getattr(self, "_frozen", False):
            self._set_step(step_idx + 1)

    def finalize(self):
        if not getattr(self, "_frozen", False):
            self._freeze()
        return self.model
