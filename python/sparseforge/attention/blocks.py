"""Block-level helpers shared by the block-skip methods: visibility, pooled block scores, block masks.

Conventions follow ``sparseforge.ops.block_attention``: query blocks of ``block_q`` rows and key blocks of
``block_k`` keys starting at 0; causal attention is bottom-right aligned (query ``i`` sees keys
``j <= i + Lk - Lq``); block masks are FlexAttention's ``(kv_num_blocks int32 [B, H, nqb],
kv_indices int32 [B, H, nqb, nkb])``.
"""

from __future__ import annotations

import math

import torch

__all__ = ["visible_blocks", "pooled_block_scores", "mask_from_keep", "keep_from_mask", "topk_keep",
           "sink_local_keep"]


def visible_blocks(lq: int, lk: int, *, causal: bool, block_q: int, block_k: int) -> torch.Tensor:
    """bool ``[nqb, nkb]``: key block ``j`` holds a key that some row of query block ``i`` may see."""
    nqb, nkb = -(-lq // block_q), -(-lk // block_k)
    if not causal:
        return torch.ones(nqb, nkb, dtype=torch.bool)
    last_row = torch.clamp(torch.arange(nqb) * block_q + block_q - 1, max=lq - 1)
    return torch.arange(nkb)[None, :] * block_k <= last_row[:, None] + (lk - lq)


def sink_local_keep(lq: int, lk: int, *, causal: bool, block_q: int, block_k: int, sink: int = 1,
                    local: int = 1) -> torch.Tensor:
    """bool ``[nqb, nkb]``: the first ``sink`` key blocks and the ``local`` last visible key blocks of each
    query block (the diagonal one and those before it; without ``causal``: the blocks around the rows)."""
    nqb, nkb = -(-lq // block_q), -(-lk // block_k)
    vis = visible_blocks(lq, lk, causal=causal, block_q=block_q, block_k=block_k)
    keep = torch.zeros(nqb, nkb, dtype=torch.bool)
    keep[:, :min(sink, nkb)] = True
    if causal:
        last = vis.long().cumsum(1).argmax(1)  # index of the last visible key block
    else:
        mid = torch.clamp(torch.arange(nqb) * block_q + (lk - lq), 0, lk - 1)
        last = mid // block_k
    j = torch.arange(nkb)[None, :]
    keep |= (j <= last[:, None]) & (j > last[:, None] - local)
    return keep & vis


@torch.no_grad()
def pooled_block_scores(q: torch.Tensor, k: torch.Tensor, *, causal: bool, scale: float, block_q: int,
                        block_k: int, key_reduce: str = "max") -> torch.Tensor:
    """Block-level importance estimate: each query block's mean-pooled query scores every key
    (``q̄_b · k_j · scale``), reduced over the keys of a key block (``"max"`` or ``"mean"``).

    q: float ``[B, Hq, Lq, D]``; k: ``[B, Hkv, Lk, D]``. Returns float32 ``[B, Hq, nqb, nkb]`` with ``-inf``
    on causally invisible blocks (keys a block's rows cannot see are left out of its reduction). Cost
    ``O(nqb · Lk · D)`` per head instead of ``O(Lq · Lk · D)``.
    """
    b, hq, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    nqb, nkb = -(-lq // block_q), -(-lk // block_k)
    qp = torch.nn.functional.pad(q, (0, 0, 0, nqb * block_q - lq)).reshape(b, hq, nqb, block_q, d)
    rows = torch.nn.functional.pad(torch.ones(lq), (0, nqb * block_q - lq)).reshape(nqb, block_q)
    qbar = (qp * rows[None, None, :, :, None]).sum(3) / rows.sum(1)[None, None, :, None]
    s = torch.einsum("bhqd,bhkd->bhqk", qbar, k.repeat_interleave(hq // hkv, 1)) * scale  # [B, Hq, nqb, Lk]
    valid = torch.ones(nqb, lk, dtype=torch.bool)
    if causal:
        last_row = torch.clamp(torch.arange(nqb) * block_q + block_q - 1, max=lq - 1)
        valid = torch.arange(lk)[None, :] <= last_row[:, None] + (lk - lq)
    valid = torch.nn.functional.pad(valid, (0, nkb * block_k - lk)).reshape(nqb, nkb, block_k)
    s = torch.nn.functional.pad(s, (0, nkb * block_k - lk)).reshape(b, hq, nqb, nkb, block_k)
    if key_reduce == "max":
        out = s.masked_fill(~valid, -math.inf).amax(-1)
    elif key_reduce == "mean":
        cnt = valid.sum(-1)
        out = (s * valid).sum(-1) / cnt.clamp_min(1)
        out = out.masked_fill(cnt == 0, -math.inf)
    else:
        raise ValueError(f"pooled_block_scores: key_reduce must be 'max' or 'mean', got {key_reduce!r}")
    return out.float()


def mask_from_keep(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FlexAttention block mask from bool ``keep [B, H, nqb, nkb]``: ``(kv_num_blocks int32 [B, H, nqb],
    kv_indices int32 [B, H, nqb, nkb])``, kept blocks first in ascending order."""
    nkb = keep.shape[-1]
    num = keep.sum(-1).to(torch.int32)
    key = torch.where(keep, torch.arange(nkb), nkb + torch.arange(nkb))
    idx = key.argsort(-1).to(torch.int32)
    return num, idx


def keep_from_mask(num: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`mask_from_keep`: bool ``[B, H, nqb, nkb]``."""
    nkb = idx.shape[-1]
    used = torch.arange(nkb) < num.unsqueeze(-1).long()
    hits = torch.zeros(*idx.shape[:-1], nkb, dtype=torch.int32)
    hits.scatter_add_(-1, idx.long().clamp(0, nkb - 1), used.to(torch.int32))
    return hits > 0


def topk_keep(scores: torch.Tensor, k: torch.Tensor | int, always: torch.Tensor | None = None) -> torch.Tensor:
    """bool ``[..., nqb, nkb]``: per query block the ``k`` highest-scoring blocks (``k`` an int or an int
    tensor broadcastable to ``[..., nqb]``), counting the ``always`` blocks (bool ``[nqb, nkb]``) first; ``-inf`` scores never."""
    s = scores.clone()
    if always is not None:
        s = torch.where(always & torch.isfinite(s), torch.full_like(s, math.inf), s)
    rank = s.argsort(-1, descending=True).argsort(-1)
    kk = k.unsqueeze(-1) if torch.is_tensor(k) else k
    return (rank < kk) & (s > -math.inf)
