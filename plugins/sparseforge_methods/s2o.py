"""S2O, from "S2O: Early Stopping for Sparse Attention via Online Permutation" (2026, arXiv 2602.22575).

FlashAttention's key loop is driven by a per-query-block *order*: the key blocks most likely to matter
are visited first, and the online softmax stops as soon as a visited block no longer matters. Here:

1. **Estimate.** Each query block's queries are mean-pooled (``q̄_b``) and score every key
   (``q̄_b·k_j·scale``); a key block's estimate is the max over its keys
   (:func:`sparseforge.attention.blocks.pooled_block_scores`), ``O(L²·D / block)`` instead of ``O(L²·D)``.
2. **Permute.** Key blocks are sorted by the estimate, with the ``sink_blocks`` first blocks and the
   ``local_blocks`` blocks at the diagonal put first (local, then sink).
3. **Early stop.** ``sparseforge.ops.block_attention(mode="early_stop", order=...)`` visits the blocks in
   that order and stops — skipping the rest — at the first block whose real row maxima satisfy
   ``exp(m̃ − m_running) < τ`` for every row of the tile. ``τ = 0`` never stops, and since softmax is
   permutation invariant over keys, the output then equals dense attention.

Differences from the paper (no official code was found): the paper permutes *tokens* into virtual blocks
(index-guided loads, optionally within segments); this permutes whole key blocks, which the op can load
without gathers. The stop rule "marginal softmax gain below τ" is read as the block-max rule above, and
τ = 1e-3 is a library default [verify against paper §3]. The sink and local blocks come first, so the
first of them is always computed; the second is cut only when its scores are below τ relative to the
first (negligible by the same rule). Prefill and decode (one query: its own scores are the estimate).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparseforge.attention import SparseAttention
from sparseforge.attention.method import AttentionMethod
from sparseforge.attention.blocks import pooled_block_scores, sink_local_keep, visible_blocks
from sparseforge.config import Config, param
from sparseforge.registry import Paper

__all__ = ["S2OConfig", "S2O", "S2OLayer", "s2o_order", "early_stop_counts"]


@torch.no_grad()
def s2o_order(q: torch.Tensor, k: torch.Tensor, *, causal: bool, scale: float, block_size: int = 64,
              sink_blocks: int = 1, local_blocks: int = 1) -> torch.Tensor:
    """The visiting order: int32 ``[B, Hq, nqb, nkb]``, per query block a permutation of the key blocks —
    local blocks, sink blocks, then visible blocks by descending pooled estimate, then invisible ones.

    q: float32 ``[B, Hq, Lq, D]``; k: ``[B, Hkv, Lk, D]``.
    """
    lq, lk = q.shape[2], k.shape[2]
    scores = pooled_block_scores(q, k, causal=causal, scale=scale, block_q=block_size, block_k=block_size)
    vis = visible_blocks(lq, lk, causal=causal, block_q=block_size, block_k=block_size)
    local = sink_local_keep(lq, lk, causal=causal, block_q=block_size, block_k=block_size, sink=0,
                            local=local_blocks)
    sink = sink_local_keep(lq, lk, causal=causal, block_q=block_size, block_k=block_size, sink=sink_blocks,
                           local=0)
    # Priority: local (+2 big), sink (+1 big), estimate, invisible last; ties by block index.
    big = 1e30
    pri = torch.where(vis, scores.double().clamp(-1e20, 1e20), torch.full_like(scores, -big, dtype=torch.float64))
    pri = pri + sink.double() * big + local.double() * 2 * big
    order = torch.sort(pri, dim=-1, descending=True, stable=True).indices
    return order.to(torch.int32)


@torch.no_grad()
def early_stop_counts(q: torch.Tensor, k: torch.Tensor, order: torch.Tensor, *, causal: bool, scale: float,
                      threshold: float, block_size: int = 64) -> torch.Tensor:
    """How many key blocks the early-stopped op computes per (batch, query head, query block): int64
    ``[B, Hq, nqb]`` (causally visible blocks before the stop), from dense scores — for analysis and for
    baselines matched tile by tile. Prefill tiles only (``Lq > 1``)."""
    b, hq, lq, d = q.shape
    lk, bs = k.shape[2], block_size
    nqb, nkb = -(-lq // bs), -(-lk // bs)
    s = torch.einsum("bhqd,bhkd->bhqk", q.double(), k.double().repeat_interleave(hq // k.shape[1], 1)) * scale
    if causal:
        s = s.masked_fill(torch.ones(lq, lk, dtype=torch.bool).triu(lk - lq + 1), float("-inf"))
    s = torch.nn.functional.pad(s, (0, nkb * bs - lk, 0, nqb * bs - lq), value=float("-inf"))
    mt = s.reshape(b, hq, nqb, bs, nkb, bs).amax(-1)  # [B, Hq, nqb, rows, nkb]
    mt = torch.gather(mt, 4, order.long().expand(b, hq, nqb, nkb)[:, :, :, None, :].expand(-1, -1, -1, bs, -1))
    prev = torch.cat([torch.full_like(mt[..., :1], float("-inf")), mt.cummax(-1).values[..., :-1]], -1)
    gap = torch.where(prev == float("-inf"), torch.full_like(mt, float("inf")), mt - prev)
    rows_valid = (torch.arange(nqb * bs) < lq).reshape(nqb, bs)[None, None, :, :, None]
    gap = torch.where(rows_valid, gap, torch.full_like(gap, float("-inf"))).amax(3)  # the tile's vote
    stop = gap < (torch.log(torch.tensor(threshold, dtype=torch.float64)) if threshold > 0 else float("-inf"))
    first_stop = torch.where(stop.any(-1), stop.double().argmax(-1), torch.full(stop.shape[:-1], nkb))
    vis = visible_blocks(lq, lk, causal=causal, block_q=bs, block_k=bs)
    vis_in_order = torch.gather(vis.expand(b, hq, nqb, nkb), 3, order.long().expand(b, hq, nqb, nkb))
    before = torch.arange(nkb) < first_stop[..., None]
    return (vis_in_order & before).sum(-1)


@dataclass
class S2OConfig(Config):
    threshold: float = param(1e-3, "τ: stop when exp(block max - running max) < τ for every row of the tile "
                             "(0 never stops: dense)", range=(0.0, 1.0))
    block_size: int = param(64, "query and key block size (Bc in the paper's check)", range=(1, 512))
    sink_blocks: int = param(1, "leading key blocks (attention sink) visited first", range=(0, 64))
    local_blocks: int = param(1, "key blocks at the diagonal visited first", range=(0, 64))
    phases: str = param("both", "where early stopping runs; the other phase is dense",
                        choices=("both", "prefill", "decode"))


class S2OLayer(SparseAttention):
    """One layer's S2O: estimate, permute, early-stopped block attention (no learned state)."""

    def __init__(self, layer_idx: int, cfg: S2OConfig):
        super().__init__(layer_idx)
        self.cfg = cfg

    def attend(self, q, k, v, *, causal, scale, phase):
        from sparseforge.ops import block_attention

        cfg = self.cfg
        if cfg.phases not in ("both", phase):
            out, st = block_attention(q, k, v, causal=causal, scale=scale, block_size=cfg.block_size)
        else:
            order = s2o_order(q, k, causal=causal, scale=scale, block_size=cfg.block_size,
                              sink_blocks=cfg.sink_blocks, local_blocks=cfg.local_blocks)
            out, st = block_attention(q, k, v, causal=causal, scale=scale, mode="early_stop", threshold=cfg.threshold,
                                      order=order, block_size=cfg.block_size)
        self.record(phase, st)
        return out


class S2O(AttentionMethod):
    name = "s2o"
    paper = Paper("S2O: Early Stopping for Sparse Attention via Online Permutation", 2026, "2602.22575")
    Config = S2OConfig
    summary = ("Visit key blocks in the order of a mean-pooled-query estimate (sink and local first) and stop "
               "the online softmax when a block's exp(max - running max) < τ for every row.")

    def make_layer(self, layer_idx, module, model):
        return S2OLayer(layer_idx, self.config)

