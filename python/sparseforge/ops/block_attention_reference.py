"""Pure-torch reference of ``sparseforge.ops.block_attention`` and the decode entries: the semantic oracle.

A Python loop over key blocks (step t), vectorized over every query tile, with the same online-softmax
and skip rules as the C++ kernel (``csrc/kernels/block_attention/README.md``). Runs in the inputs' dtype,
so tests call it on float64 copies. Slow on purpose: clear first.
"""

from __future__ import annotations

import math

import torch

from ._attention_args import (AttnArgs, check_attention_args, check_label_args, check_qkv, check_scale,
                              check_token_indices)

__all__ = ["block_attention_reference", "gathered_decode_attention_reference", "double_sparsity_decode_reference",
           "attention_core_reference", "grouped_decode"]


def grouped_decode(Lq: int, Hq: int, Hkv: int, mask_heads) -> bool:
    """True when a decode step's query tile is the GQA group (all G query heads sharing a K/V head).

    That is when Lq == 1, G > 1, and the mode's per-head inputs (block mask / order) do not differ between
    the heads of a group (no such input, or one with 1 or Hkv heads)."""
    return Lq == 1 and Hq > Hkv and (mask_heads is None or mask_heads in (1, Hkv)) and mask_heads != Hq


def _expand_heads(t: torch.Tensor, B: int, T: int, G: int, grouped: bool, Hq: int, Hkv: int) -> torch.Tensor:
    """A per-(batch, head) mask/order tensor [Bm, Hm, ...] indexed by tile heads: [B, T, ...]."""
    t = t.expand(B, *t.shape[1:])
    Hm = t.shape[1]
    if Hm == T:
        return t
    if Hm == 1:
        return t.expand(B, T, *t.shape[2:])
    # Hm == Hkv, tiles are query heads: head h reads entry h // G.
    return t.repeat_interleave(G, dim=1)


def attention_core_reference(q, k, v, a: AttnArgs):
    """(out, stats int64 [4]) for checked arguments; any float dtype."""
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    bq, bk = a.block_q, a.block_k
    dev, dt = q.device, q.dtype
    mask_t = a.kv_indices if a.mode == "block_mask" else a.order if a.mode == "early_stop" else None
    grouped = grouped_decode(Lq, Hq, Hkv, None if mask_t is None else mask_t.shape[1])
    nkv = -(-Lk // bk)
    if grouped:  # tiles: (b, kv head), rows: the G query heads, all at query position 0
        T, nq, R = Hkv, 1, G
        Qt = q.reshape(B, Hkv, 1, G, D)
        pos = torch.zeros(1, G, dtype=torch.long, device=dev)
        kvh = torch.arange(Hkv, device=dev)
    else:  # tiles: (b, query head, query block), rows: the block's query positions
        T, nq, R = Hq, -(-Lq // bq), bq
        Qt = torch.nn.functional.pad(q, (0, 0, 0, nq * bq - Lq)).reshape(B, Hq, nq, bq, D)
        pos = torch.arange(nq * bq, device=dev).reshape(nq, bq)
        kvh = torch.arange(Hq, device=dev) // G
    row_valid = pos < Lq  # [nq, R]
    shift = Lk - Lq  # bottom-right causal alignment: query i sees keys j <= i + Lk - Lq
    Kp = torch.nn.functional.pad(k, (0, 0, 0, nkv * bk - Lk)).reshape(B, Hkv, nkv, bk, D)[:, kvh]
    Vp = torch.nn.functional.pad(v, (0, 0, 0, nkv * bk - Lk)).reshape(B, Hkv, nkv, bk, D)[:, kvh]
    kpos = torch.arange(nkv * bk, device=dev).reshape(nkv, bk)

    # A key block is visible to a tile when some valid row may see some key of it (what dense computes).
    last_row = torch.where(row_valid, pos, -1).amax(-1)  # [nq]
    blk0 = torch.arange(nkv, device=dev) * bk
    visible_all = (blk0[None, :] <= last_row[:, None] + shift) if a.causal else torch.ones(nq, nkv, dtype=torch.bool,
                                                                                              device=dev)
    visible_all = visible_all & (last_row[:, None] >= 0)  # [nq, nkv]
    total = int(visible_all.sum()) * B * T

    if a.mode == "block_mask":
        num = _expand_heads(a.kv_num_blocks.long(), B, T, G, grouped, Hq, Hkv)
        idx = _expand_heads(a.kv_indices.long(), B, T, G, grouped, Hq, Hkv)
        steps = idx.shape[-1]
    elif a.mode == "early_stop":
        idx = _expand_heads(a.order.long(), B, T, G, grouped, Hq, Hkv)
        steps = nkv
    else:
        steps = nkv
    log_thr = math.log(a.threshold) if a.threshold > 0 else -math.inf

    m = torch.full((B, T, nq, R), -math.inf, dtype=dt, device=dev)
    l = torch.zeros((B, T, nq, R), dtype=dt, device=dev)
    acc = torch.zeros((B, T, nq, R, D), dtype=dt, device=dev)
    stopped = torch.zeros((B, T, nq), dtype=torch.bool, device=dev)
    computed = scored_only = 0
    qi = torch.arange(nq, device=dev)
    for t in range(steps):
        if a.mode in ("dense", "threshold"):
            kb = torch.full((B, T, nq), t, dtype=torch.long, device=dev)
            active = torch.ones((B, T, nq), dtype=torch.bool, device=dev)
        elif a.mode == "block_mask":
            kb = idx[..., t]
            active = t < num
            kb = torch.where(active, kb, 0)
        else:
            kb = idx[..., t]
            active = ~stopped
        go = active & visible_all[qi[None, None, :], kb]
        Kg = torch.gather(Kp, 2, kb[..., None, None].expand(B, T, nq, bk, D))
        Vg = torch.gather(Vp, 2, kb[..., None, None].expand(B, T, nq, bk, D))
        S = torch.einsum("btqrd,btqkd->btqrk", Qt, Kg) * a.scale
        keys = kpos[kb]  # [B, T, nq, bk]
        allowed = (keys < Lk)[..., None, :] & row_valid[None, None, :, :, None]
        if a.causal:
            allowed = allowed & (keys[..., None, :] <= pos[None, None, :, :, None] + shift)
        S = S.masked_fill(~allowed, -math.inf)
        mt = S.amax(-1)  # [B, T, nq, R]
        if a.mode in ("threshold", "early_stop"):
            # A row votes "skip" when exp(mt - m) < threshold; a row that has seen no key yet (m = -inf gives
            # nan or +inf) votes against, so the first visited tile is never skipped; padding rows abstain.
            vote = ((mt - m) < log_thr) | ~row_valid[None, None]
            skip = vote.all(-1) & go
            scored_only += int(skip.sum())
            if a.mode == "early_stop":
                stopped = stopped | skip
            go = go & ~skip
        computed += int(go.sum())
        m_new = torch.where(go[..., None], torch.maximum(m, mt), m)
        alpha = torch.where(m == -math.inf, torch.zeros_like(m), torch.exp(m - m_new))
        P = torch.where(allowed, torch.exp(S - m_new[..., None]), torch.zeros_like(S))
        g = go[..., None]
        l = torch.where(g, l * alpha + P.sum(-1), l)
        acc = torch.where(g[..., None], acc * alpha[..., None] + P @ Vg, acc)
        m = m_new
    out = torch.where(l[..., None] > 0, acc / l.clamp_min(torch.finfo(dt).tiny)[..., None], torch.zeros_like(acc))
    if grouped:
        out = out.reshape(B, Hq, 1, D)
    else:
        out = out.reshape(B, Hq, nq * bq, D)[:, :, :Lq]
    stats = torch.tensor([total, computed, total - computed, scored_only], dtype=torch.int64)
    return out.contiguous(), stats


def block_attention_reference(q, k, v, *, causal=False, scale=None, mode="dense", threshold=None, block_mask=None,
                              order=None, block_size=64):
    """Same contract as :func:`sparseforge.ops.block_attention` (float32 or float64), returns (out, stats)."""
    from .block_attention import BlockAttentionStats

    fn = "block_attention_reference"
    check_qkv(fn, q, k, v, dtypes=(torch.float32, torch.float64))
    a = check_attention_args(fn, q, k, v, causal=causal, scale=scale, mode=mode, threshold=threshold,
                             block_mask=block_mask, order=order, block_size=block_size)
    out, st = attention_core_reference(q, k, v, a)
    return out, BlockAttentionStats.from_tensor(st)


def gathered_core_reference(q, k, v, idx: torch.Tensor, scale: float) -> torch.Tensor:
    B, Hq, _, D = q.shape
    Hkv = k.shape[1]
    G = Hq // Hkv
    idx = idx.long()
    if idx.shape[1] == Hkv and Hkv != Hq:
        idx = idx.repeat_interleave(G, dim=1)
    kq = k.repeat_interleave(G, dim=1)
    vq = v.repeat_interleave(G, dim=1)
    ks = torch.gather(kq, 2, idx[..., None].expand(*idx.shape, D))
    vs = torch.gather(vq, 2, idx[..., None].expand(*idx.shape, D))
    p = torch.softmax((q @ ks.transpose(-1, -2)) * scale, dim=-1)
    return (p @ vs).contiguous()


def gathered_decode_attention_reference(q, k, v, token_indices, *, scale=None):
    """Same contract as :func:`sparseforge.ops.gathered_decode_attention` (float32 or float64)."""
    fn = "gathered_decode_attention_reference"
    check_qkv(fn, q, k, v, decode=True, dtypes=(torch.float32, torch.float64))
    idx = check_token_indices(fn, token_indices, q.shape[0], q.shape[1], k.shape[1], k.shape[2])
    return gathered_core_reference(q, k, v, idx, check_scale(fn, scale, q.shape[3]))


def label_topk_reference(q, k_label, qc: torch.Tensor, k_sel: int) -> torch.Tensor:
    """Token indices [B, Hq or Hkv, k_sel] of the largest label scores (see double_sparsity_decode)."""
    B, Hq, _, D = q.shape
    Hkv = k_label.shape[1]
    G = Hq // Hkv
    qc = qc.long()
    per_kv = qc.shape[0] == Hkv and Hkv != Hq
    heads_ch = qc.repeat_interleave(G, dim=0) if per_kv else qc  # [Hq, r]
    qsel = torch.gather(q[:, :, 0, :], 2, heads_ch[None].expand(B, Hq, qc.shape[1]))  # [B, Hq, r]
    lab = k_label.repeat_interleave(G, dim=1)  # [B, Hq, Lk, r]
    scores = torch.einsum("bhr,bhlr->bhl", qsel, lab)
    if per_kv:  # one token set per K/V head: a token counts by its best score over the group's heads
        scores = scores.reshape(B, Hkv, G, -1).amax(2)
    return torch.topk(scores, k_sel, dim=-1).indices


def double_sparsity_decode_reference(q, k, v, k_label, q_channels, k_sel, scale=None):
    """Same contract as :func:`sparseforge.ops.double_sparsity_decode` (float32 or float64)."""
    fn = "double_sparsity_decode_reference"
    check_qkv(fn, q, k, v, decode=True, dtypes=(torch.float32, torch.float64))
    qc, ks = check_label_args(fn, q, k, k_label, q_channels, k_sel)
    idx = label_topk_reference(q, k_label, qc, ks)
    return gathered_core_reference(q, k, v, idx, check_scale(fn, scale, q.shape[3]))
