"""BLASST, from "BLASST: Dynamic BLocked Attention Sparsity via Softmax Thresholding" (2025, arXiv 2512.12087).

FlashAttention visits key blocks in order with an online softmax. For each block it computes the scores
``S = q·kᵀ·scale`` and their row maxima ``m̃``; when ``exp(m̃ − m) < λ`` for every row of the query tile
(``m`` the running max before the block), the block's exp, V load and P·V are skipped and the running
statistics stay as they are. Every skipped key then has normalised probability < λ, so the probability
mass dropped per row is at most ``(#skipped keys)·λ <= L_kv·λ``: the paper sets ``λ = scale_factor / L_kv``,
one ``scale_factor`` per model and phase (prefill: tiles of ``block_size`` query rows; decode: one query,
the tile is the GQA group). The op is ``sparseforge.ops.block_attention(mode="threshold")``.

Calibration (NVIDIA ModelOpt's recipe): on calibration text at a few lengths, measure the fraction of
key blocks skipped as a function of the scale factor, and fit ``scale_factor = a·exp(b·sparsity)`` per
phase; a target sparsity then gives the scale factor. Here the skip fractions are exact, not sampled:
for λ <= 1 a skipped block never raises the running max, so block ``j`` of a tile is skipped iff its
*gap* ``g_j = max_rows(m̃_j − max_{i<j} m̃_i)`` is below ``ln λ`` (:func:`block_gaps`); one dense pass
gives the skip fraction of every λ. As in TensorRT-LLM, skipping is off when ``L_kv <= scale_factor``
(λ >= 1).

Library choices: ``block_size`` 64 (the paper's kernels use 128×128; 64 suits the short CPU contexts the
op is tuned for and the PAPERS.md check), λ on post-scale natural-log scores (as the XQA reference and
ModelOpt do). Apply, then either pass ``scale_factor_prefill`` / ``scale_factor_decode`` or call
``sf.method_of(model).calibrate(input_ids)``; the fit is stored in each layer's ``fit`` buffer (state dict).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn

from sparseforge.attention import SparseAttention
from sparseforge.attention.method import AttentionMethod
from sparseforge.config import Config, ConfigError, param
from sparseforge.registry import Paper

__all__ = ["BlasstConfig", "Blasst", "BlasstLayer", "tile_gaps", "tile_gaps_phases", "block_gaps", "skip_fraction", "fit_scale_factor"]

PHASES = ("prefill", "decode")


@torch.no_grad()
def tile_gaps_phases(q: torch.Tensor, k: torch.Tensor, *, causal: bool, scale: float, block_size: int = 64,
                     phases=PHASES, dtype=torch.float64) -> dict:
    """:func:`tile_gaps` of several phases from one score matrix: ``{phase: (gaps, visible)}``; ``dtype`` of
    the scores (float32 halves time and memory, as the op's own fp32 decisions; float64 for tests)."""
    for phase in phases:
        if phase not in PHASES:
            raise ValueError(f"tile_gaps: phase must be one of {PHASES}, got {phase!r}")
    b, hq, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    if lq != lk:
        raise ValueError(f"tile_gaps: q and k must have the same length (self-attention), got {lq} and {lk}")
    g, bs = hq // hkv, block_size
    nkb, nqb = -(-lk // bs), -(-lq // bs)
    pos = torch.arange(lq)
    visible = (torch.arange(nkb)[None, :] * bs <= pos[:, None]) if causal else torch.ones(lq, nkb, dtype=torch.bool)
    out: dict = {ph: [] for ph in phases}
    hidden = torch.ones(lq, lk, dtype=torch.bool).triu(1) if causal else None
    for bi in range(b):
        s = torch.einsum("hqd,hkd->hqk", q[bi].to(dtype), k[bi].to(dtype).repeat_interleave(g, 0)) * scale
        if hidden is not None:
            s.masked_fill_(hidden, -math.inf)
        if nkb * bs != lk:
            s = nn.functional.pad(s, (0, nkb * bs - lk), value=-math.inf)
        mt = s.reshape(hq, lq, nkb, bs).amax(-1)  # [Hq, L, nkb] block row maxima
        del s
        prev = torch.cat([torch.full_like(mt[..., :1], -math.inf), mt.cummax(-1).values[..., :-1]], -1)
        gap = torch.where(prev == -math.inf, torch.full_like(mt, math.inf), mt - prev).double()
        if "decode" in out:
            out["decode"].append(gap.reshape(hkv, g, lq, nkb).amax(1))  # the GQA group votes together
        if "prefill" in out:
            gp = nn.functional.pad(gap, (0, 0, 0, nqb * bs - lq), value=-math.inf)  # padding rows abstain
            out["prefill"].append(gp.reshape(hq, nqb, bs, nkb).amax(2))
    vis_prefill = nn.functional.pad(visible, (0, 0, 0, nqb * bs - lq)).reshape(nqb, bs, nkb).any(1)
    return {ph: (torch.stack(v), vis_prefill if ph == "prefill" else visible) for ph, v in out.items()}


def tile_gaps(q: torch.Tensor, k: torch.Tensor, *, causal: bool, scale: float, block_size: int = 64,
              phase: str = "prefill") -> tuple[torch.Tensor, torch.Tensor]:
    """BLASST's skip statistic per (query tile, key block): the block is skipped at λ iff ``gap < ln λ``
    (for λ <= 1, where skipping never changes the running max).

    Args:
        q: float ``[B, Hq, L, D]``; k: ``[B, Hkv, L, D]`` (self-attention, Hq a multiple of Hkv).
        phase: "prefill" — tiles of ``block_size`` query rows per query head, as the op in prefill;
            "decode" — every query position as a decode step over keys ``0..i`` (causal) or all keys, the
            tile being the position's GQA group of heads, as the op in decode.

    Returns:
        ``(gaps, visible)``: float64 gaps ``[B, Hq, n_q_blocks, n_kv_blocks]`` (prefill) or
        ``[B, Hkv, L, n_kv_blocks]`` (decode), ``+inf`` for a tile's first visited block (never skipped),
        and the bool mask of causally visible blocks ``[n_q_blocks or L, n_kv_blocks]``. Memory: one
        ``[Hq, L, L]`` float64 score matrix per batch row.
    """
    return tile_gaps_phases(q, k, causal=causal, scale=scale, block_size=block_size, phases=(phase,))[phase]


def block_gaps(q: torch.Tensor, k: torch.Tensor, *, causal: bool, scale: float, block_size: int = 64,
               phase: str = "prefill") -> torch.Tensor:
    """The gaps of :func:`tile_gaps` over causally visible blocks only, flattened (float64)."""
    gaps, visible = tile_gaps(q, k, causal=causal, scale=scale, block_size=block_size, phase=phase)
    return gaps[:, :, visible].reshape(-1)


def skip_fraction(gaps: torch.Tensor, threshold: float) -> float:
    """Fraction of blocks skipped at ``threshold`` λ (0 < λ <= 1) given :func:`block_gaps`."""
    if threshold <= 0:
        return 0.0
    return float((gaps < math.log(threshold)).double().mean()) if gaps.numel() else 0.0


def fit_scale_factor(points: list[tuple[float, float]], lo: float = 0.02, hi: float = 0.98) -> tuple[float, float, float]:
    """Least-squares fit of ``ln scale_factor = ln a + b·sparsity`` on ``(scale_factor, sparsity)`` points with
    sparsity in ``[lo, hi]``; returns ``(a, b, r2)``."""
    pts = [(math.log(c), s) for c, s in points if lo <= s <= hi and c > 0]
    if len(pts) < 2:
        raise ValueError(f"fit_scale_factor: need >= 2 points with sparsity in [{lo}, {hi}], got {len(pts)}; "
                         f"widen the scale-factor grid or use longer calibration text")
    y = torch.tensor([p[0] for p in pts], dtype=torch.float64)
    x = torch.tensor([p[1] for p in pts], dtype=torch.float64)
    xm, ym = x.mean(), y.mean()
    b = float(((x - xm) * (y - ym)).sum() / ((x - xm) ** 2).sum().clamp_min(1e-30))
    ln_a = float(ym - b * xm)
    res = y - (ln_a + b * x)
    r2 = 1.0 - float((res ** 2).sum() / ((y - ym) ** 2).sum().clamp_min(1e-30))
    return math.exp(ln_a), b, r2


@dataclass
class BlasstConfig(Config):
    target_sparsity: float = param(0.5, "fraction of key blocks to skip; with the calibrated fit it sets the "
                                   "scale factor of each phase", range=(0.0, 0.99))
    scale_factor_prefill: float | None = param(None, "λ·L_kv in prefill; unset: from calibrate()", range=(0.0, 1e6),
                                               optional=True)
    scale_factor_decode: float | None = param(None, "λ·L_kv in decode; unset: from calibrate()", range=(0.0, 1e6),
                                              optional=True)
    block_size: int = param(64, "query-tile rows and key-block size (paper kernels: 128)", range=(1, 512))
    phases: str = param("both", "where skipping runs; the other phase is dense", choices=("both", "prefill", "decode"))

    def check(self) -> None:
        if self.phases == "both":
            return
        if self.phases not in PHASES:
            raise ConfigError(self.METHOD, "phases", self.phases, "'both', 'prefill' or 'decode'")


class BlasstLayer(SparseAttention):
    """One layer's BLASST. ``fit``: float64 buffer ``[2, 2]``, the calibrated ``(a, b)`` of prefill and
    decode (NaN until :meth:`Blasst.calibrate`); explicit config scale factors take precedence."""

    def __init__(self, layer_idx: int, cfg: BlasstConfig):
        super().__init__(layer_idx)
        self.cfg = cfg
        self.register_buffer("fit", torch.full((2, 2), math.nan, dtype=torch.float64))
        self.collect: dict | None = None  # phase -> list of gap tensors while calibrating

    def scale_factor(self, phase: str) -> float:
        explicit = getattr(self.cfg, f"scale_factor_{phase}")
        if explicit is not None:
            return explicit
        a, b = self.fit[PHASES.index(phase)].tolist()
        if math.isnan(a):
            raise RuntimeError(f"blasst: layer {self.layer_idx} has no {phase} scale factor: pass "
                               f"scale_factor_{phase}= to sparsify, or call "
                               f"sf.method_of(model).calibrate(input_ids) first")
        return a * math.exp(b * self.cfg.target_sparsity)

    def threshold(self, phase: str, kv_len: int) -> float:
        """λ = scale_factor / L_kv, or 0 (no skipping) when λ >= 1, as TensorRT-LLM does."""
        lam = self.scale_factor(phase) / kv_len
        return 0.0 if lam >= 1.0 else lam

    def attend(self, q, k, v, *, causal, scale, phase):
        from sparseforge.ops import block_attention

        if self.collect is not None:
            if q.shape[2] == k.shape[2]:
                res = tile_gaps_phases(q, k, causal=causal, scale=scale, block_size=self.cfg.block_size,
                                       dtype=torch.float32)
                for ph, (gaps, visible) in res.items():
                    self.collect[ph].append(gaps[:, :, visible].reshape(-1))
            out, st = block_attention(q, k, v, causal=causal, scale=scale, block_size=self.cfg.block_size)
            return out
        if self.cfg.phases not in ("both", phase):
            out, st = block_attention(q, k, v, causal=causal, scale=scale, block_size=self.cfg.block_size)
        else:
            out, st = block_attention(q, k, v, causal=causal, scale=scale, mode="threshold",
                                      threshold=self.threshold(phase, k.shape[2]), block_size=self.cfg.block_size)
        self.record(phase, st)
        return out


class Blasst(AttentionMethod):
    name = "blasst"
    paper = Paper("BLASST: Dynamic BLocked Attention Sparsity via Softmax Thresholding", 2025, "2512.12087")
    Config = BlasstConfig
    summary = ("Skip a key block when exp(block max - running max) < λ for every row of the query tile, "
               "λ = scale_factor / L_kv, scale factor calibrated per model and phase (prefill, decode).")

    def make_layer(self, layer_idx, module, model):
        return BlasstLayer(layer_idx, self.config)

    @torch.no_grad()
    def calibrate(self, input_ids, *, lengths=(256, 512, 1024), grid=None, forward=None) -> dict:
        """Fits ``scale_factor = a·exp(b·sparsity)`` per phase on calibration text and stores it in every layer.

        Args:
            input_ids: int64 ``[N, T]`` token ids (e.g. :func:`sparseforge.data.text.bbc_token_ids`); each row
                is cut to every length in ``lengths`` <= T, giving ``N·len(lengths)`` samples.
            grid: scale factors to measure (default 30 values log-spaced over [1e-3, 1e3]).
            forward: ``forward(model, ids)``; default ``model(input_ids=ids)``.

        Returns ``{phase: {"a", "b", "r2", "points": [(scale_factor, sparsity), ...]}}``; a phase whose
        skip fractions never reach [0.02, 0.98] on the grid is not fitted (NaN, with a RuntimeWarning).
        """
        from sparseforge.attention import handlers

        model = self.model
        hs = [h for h in handlers(model) if isinstance(h, BlasstLayer)]
        if not hs:
            raise ValueError("blasst.calibrate: the model has no BLASST layers; apply the method first")
        ids = torch.as_tensor(input_ids)
        if ids.dim() != 2:
            raise ValueError(f"blasst.calibrate: input_ids must be [N, T] token ids, got shape {tuple(ids.shape)}")
        grid = list(grid) if grid is not None else [10 ** (-3 + 6 * i / 29) for i in range(30)]
        lengths = [int(length) for length in lengths if length <= ids.shape[1]]
        if not lengths:
            raise ValueError(f"blasst.calibrate: no length in lengths fits input_ids of {ids.shape[1]} tokens")
        forward = forward or (lambda m, x: m(input_ids=x))
        points = {ph: [] for ph in PHASES}
        try:
            for length in lengths:
                for row in ids[:, :length]:
                    for h in hs:
                        h.collect = {ph: [] for ph in PHASES}
                    forward(model, row[None])
                    for ph in PHASES:
                        gaps = torch.cat([g for h in hs for g in h.collect[ph]])
                        for c in grid:
                            lam = c / length
                            points[ph].append((c, skip_fraction(gaps, lam) if lam < 1 else 0.0))
        finally:
            for h in hs:
                h.collect = None
        result = {}
        for i, ph in enumerate(PHASES):
            try:
                a, b, r2 = fit_scale_factor(points[ph])
            except ValueError as exc:  # e.g. short text where prefill tiles never skip: that phase stays unset
                warnings.warn(f"blasst.calibrate: no {ph} fit: {exc}", RuntimeWarning, stacklevel=2)
                result[ph] = {"a": math.nan, "b": math.nan, "r2": math.nan, "points": points[ph]}
                continue
            for h in hs:
                h.fit[i] = torch.tensor([a, b], dtype=torch.float64)
            result[ph] = {"a": a, "b": b, "r2": r2, "points": points[ph]}
        self.calibration = result
        return result
