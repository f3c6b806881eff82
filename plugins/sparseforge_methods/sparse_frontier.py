"""The training-free sparse attention patterns compared in "The Sparse Frontier: Sparse Attention Trade-offs in
Transformer LLMs" (2025, arXiv 2504.17768; PiotrNawrot/sparse-frontier), as block masks for the op.

The paper is a benchmark, not a method; this plugin offers its patterns under one ``pattern`` choice,
each turned into a FlexAttention block mask run by ``sparseforge.ops.block_attention(mode="block_mask")``:

* ``vertical_and_slash`` (MInference, prefill): the last ``last_q`` queries attend to every key; per head,
  the ``vertical_size`` key columns and the ``slash_size`` diagonals (offsets ``i - j``) with the most
  attention mass are kept, plus the first ``sink_tokens`` columns and the ``local_tokens`` nearest
  diagonals; a block is computed when it holds any kept (query, key) pair.
* ``block_sparse`` (prefill): queries and keys mean-pooled per block; per query block the ``top_chunks``
  key blocks with the largest pooled score, always with the sink (first) and the local (diagonal) block.
* ``quest`` (decode): keys split into pages of ``page_size``; per page the elementwise key min and max;
  a page scores ``Σ_d max(q_d·min_d, q_d·max_d)`` summed over the GQA group's query heads (pages shared
  across the group); the top pages within ``token_budget`` tokens are read, the current (last) page always.

Defaults: the repository's (``configs/attention/*.yaml``: vertical 512, slash 512, approximation 256;
block_sparse chunk 16 × top 64; quest page 16, budget 1024 tokens) target 16K-128K contexts; here they
are scaled by 1/8 for 1K-4K contexts (vertical 64, slash 64, last_q 64; 64-token blocks × top 8; page 16,
budget 128 tokens) — a library choice. The op reads whole blocks, so token patterns (vertical/slash)
cost the blocks they touch. Patterns that do not cover a phase run it dense; ``prefill="per_query"``
applies Quest's rule to every prefill row (each row reads its own top pages), for perplexity evaluation.
With budgets >= the context every pattern keeps every block and equals dense attention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sparseforge.attention import SparseAttention
from sparseforge.attention.method import AttentionMethod
from sparseforge.attention.blocks import mask_from_keep, pooled_block_scores, sink_local_keep, topk_keep, visible_blocks
from sparseforge.config import Config, param
from sparseforge.registry import Paper

__all__ = ["SparseFrontierConfig", "SparseFrontier", "SparseFrontierLayer", "vertical_slash_keep",
           "block_sparse_keep", "quest_pages", "quest_per_query"]


@torch.no_grad()
def vertical_slash_keep(q, k, *, scale: float, block_size: int, vertical_size: int, slash_size: int, last_q: int,
                        sink_tokens: int = 4, local_tokens: int = 64) -> torch.Tensor:
    """bool ``[B, Hq, nqb, nkb]`` blocks of the causal vertical-and-slash pattern (self-attention, Lq == Lk).

    q: float32 ``[B, Hq, L, D]``; k: ``[B, Hkv, L, D]``."""
    b, hq, n, d = q.shape
    g, bs = hq // k.shape[1], block_size
    nb = -(-n // bs)
    lq = min(last_q, n)
    kq = k.repeat_interleave(g, 1)
    s = (q[:, :, -lq:] @ kq.transpose(-1, -2)) * scale  # [B, Hq, lq, L]
    rows = torch.arange(n - lq, n)
    s = s.masked_fill(torch.arange(n)[None, :] > rows[:, None], -math.inf)
    a = torch.softmax(s, -1)
    vertical = a.sum(2)  # [B, Hq, L]
    off = (rows[:, None] - torch.arange(n)[None, :]).clamp(min=0)  # diagonal offset i - j of each entry
    slash = torch.zeros(b, hq, n).scatter_add_(2, off.expand(b, hq, lq, n).reshape(b, hq, -1), a.reshape(b, hq, -1))
    vertical[..., :sink_tokens] = math.inf
    slash[..., :local_tokens] = math.inf
    vcols = vertical.topk(min(vertical_size, n), -1).indices  # [B, Hq, V]
    soffs = slash.topk(min(slash_size, n), -1).indices  # [B, Hq, S]
    vis = visible_blocks(n, n, causal=True, block_q=bs, block_k=bs)
    keep = torch.zeros(b, hq, nb, dtype=torch.bool).scatter_(2, vcols // bs, True)[:, :, None, :] & vis
    r0 = torch.arange(nb) * bs  # rows of query block qb: [r0, r1]; keys j = i - o lie in [r0 - o, r1 - o]
    r1 = torch.clamp(r0 + bs - 1, max=n - 1)
    lo = ((r0[None, None, None, :] - soffs[..., None]).clamp(min=0)) // bs  # [B, Hq, S, nqb]
    hi = (r1[None, None, None, :] - soffs[..., None]) // bs  # negative: the diagonal misses this block row
    kb = torch.arange(nb)
    hit = (kb >= lo[..., None]) & (kb <= hi[..., None])  # [B, Hq, S, nqb, nkb]
    return (keep | hit.any(2)) & vis


@torch.no_grad()
def block_sparse_keep(q, k, *, causal: bool, scale: float, block_size: int, top_chunks: int) -> torch.Tensor:
    """bool ``[B, Hq, nqb, nkb]``: per query block the ``top_chunks`` key blocks by mean-pooled q·k (the sink
    and diagonal block counted first)."""
    lq, lk = q.shape[2], k.shape[2]
    bs = block_size
    kb = -(-lk // bs)
    kp = torch.nn.functional.pad(k, (0, 0, 0, kb * bs - lk)).reshape(k.shape[0], k.shape[1], kb, bs, -1)
    cnt = torch.nn.functional.pad(torch.ones(lk), (0, kb * bs - lk)).reshape(kb, bs).sum(1)
    kbar = kp.sum(3) / cnt[None, None, :, None]  # mean-pooled keys [B, Hkv, nkb, D]
    scores = pooled_block_scores(q, kbar, causal=False, scale=scale, block_q=bs, block_k=1)
    vis = visible_blocks(lq, lk, causal=causal, block_q=bs, block_k=bs)
    scores = scores.masked_fill(~vis, -math.inf)
    return topk_keep(scores, top_chunks, sink_local_keep(lq, lk, causal=causal, block_q=bs, block_k=bs))


def _page_scores(q, k, page_size: int):
    """Quest page scores ``[B, Hq, Lq, n_pages]`` for every query row (upper bound of q·k over the page)."""
    b, hkv, lk, d = k.shape
    g = q.shape[1] // hkv
    npg = -(-lk // page_size)
    kp = torch.nn.functional.pad(k, (0, 0, 0, npg * page_size - lk), value=math.nan).reshape(b, hkv, npg, page_size, d)
    kmin = torch.nan_to_num(kp, nan=math.inf).amin(3).repeat_interleave(g, 1)
    kmax = torch.nan_to_num(kp, nan=-math.inf).amax(3).repeat_interleave(g, 1)
    # Σ_d max(q_d·min_d, q_d·max_d) = q⁺·max + q⁻·min (min <= max): two matmuls, no [.., pages, D] tensor.
    return q.clamp(min=0) @ kmax.transpose(-1, -2) + q.clamp(max=0) @ kmin.transpose(-1, -2)


@torch.no_grad()
def quest_pages(q, k, *, page_size: int, token_budget: int):
    """Decode block mask ``(kv_num_blocks [B, Hkv, 1], kv_indices [B, Hkv, 1, n_pages])`` for one query
    ``q [B, Hq, 1, D]`` over ``k [B, Hkv, Lk, D]``: the top pages by Quest's bound (summed over the GQA group)
    within ``token_budget`` tokens, the last page always."""
    b, hkv, lk, _ = k.shape
    npg = -(-lk // page_size)
    sc = _page_scores(q, k, page_size)[:, :, 0].reshape(b, hkv, -1, npg).sum(2)  # [B, Hkv, n_pages]
    sc[..., -1] = math.inf  # the current page
    n_keep = max(1, min(npg, token_budget // page_size))
    keep = torch.zeros(b, hkv, npg, dtype=torch.bool).scatter_(2, sc.topk(n_keep, -1).indices, True)
    num, idx = mask_from_keep(keep[:, :, None])
    return num, idx


@torch.no_grad()
def quest_per_query(q, k, v, *, scale: float, page_size: int, token_budget: int) -> torch.Tensor:
    """Quest's decode rule on every causal prefill row (each row: its visible pages, its current page
    always, pages chosen per KV head by the group's summed bound). Returns float32 ``[B, Hq, L, D]``."""
    b, hq, n, d = q.shape
    hkv = k.shape[1]
    g = hq // hkv
    npg = -(-n // page_size)
    sc = _page_scores(q, k, page_size).reshape(b, hkv, g, n, npg).sum(2)  # [B, Hkv, L, n_pages]
    cur = torch.arange(n) // page_size
    pg = torch.arange(npg)
    sc = sc.masked_fill(pg[None, :] > cur[:, None], -math.inf)
    sc = torch.where(pg[None, :] == cur[:, None], torch.full_like(sc, math.inf), sc)
    n_keep = max(1, min(npg, token_budget // page_size))
    top = sc.topk(n_keep, -1)
    keep = torch.zeros_like(sc, dtype=torch.bool).scatter_(-1, top.indices, top.values > -math.inf)
    tok = keep.repeat_interleave(page_size, -1)[..., :n].repeat_interleave(g, 1)  # [B, Hq, L, L]
    tok &= torch.ones(n, n, dtype=torch.bool).tril()
    s = (q @ k.repeat_interleave(g, 1).transpose(-1, -2)) * scale
    return torch.softmax(s.masked_fill(~tok, -math.inf), -1) @ v.repeat_interleave(g, 1)


@dataclass
class SparseFrontierConfig(Config):
    pattern: str = param("vertical_and_slash", "which pattern: 'vertical_and_slash' and 'block_sparse' (prefill), "
                         "'quest' (decode)", choices=("vertical_and_slash", "block_sparse", "quest"))
    block_size: int = param(64, "op block size for the prefill patterns (blocks of queries and keys)", range=(1, 512))
    vertical_size: int = param(64, "vertical_and_slash: key columns kept per head (repo: 512)", range=(0, 1 << 20))
    slash_size: int = param(64, "vertical_and_slash: diagonals kept per head (repo: 512)", range=(0, 1 << 20))
    last_q: int = param(64, "vertical_and_slash: queries used for the estimate (repo: 256)", range=(1, 1 << 20))
    top_chunks: int = param(8, "block_sparse: key blocks kept per query block (repo: 64 chunks of 16)",
                            range=(1, 1 << 20))
    page_size: int = param(16, "quest: tokens per page (repo: 16)", range=(1, 512))
    token_budget: int = param(128, "quest: tokens read per decode step (repo: 1024)", range=(1, 1 << 30))
    prefill: str = param("pattern", "quest only: 'pattern' (prefill dense) or 'per_query' (the decode rule on "
                         "every prefill row)", choices=("pattern", "per_query"))


class SparseFrontierLayer(SparseAttention):
    """One layer's Sparse Frontier pattern (no learned state)."""

    def __init__(self, layer_idx: int, cfg: SparseFrontierConfig):
        super().__init__(layer_idx)
        self.cfg = cfg

    def attend(self, q, k, v, *, causal, scale, phase):
        from sparseforge.ops import block_attention

        cfg = self.cfg
        kw: dict = {"block_size": cfg.block_size}
        if cfg.pattern == "quest":
            if phase == "decode":
                kw = {"mode": "block_mask", "block_size": cfg.page_size,
                      "block_mask": quest_pages(q, k, page_size=cfg.page_size, token_budget=cfg.token_budget)}
            elif cfg.prefill == "per_query" and causal and q.shape[2] == k.shape[2]:
                self.record(phase)
                out = quest_per_query(q, k, v, scale=scale, page_size=cfg.page_size, token_budget=cfg.token_budget)
                n_pages = max(1, cfg.token_budget // cfg.page_size)  # keys read per row: at most the pages' keys
                self.record_tokens(phase, q, k, causal, n_pages * cfg.page_size)
                return out
        elif phase == "prefill" and cfg.pattern == "block_sparse":
            keep = block_sparse_keep(q, k, causal=causal, scale=scale, block_size=cfg.block_size,
                                     top_chunks=cfg.top_chunks)
            kw.update(mode="block_mask", block_mask=mask_from_keep(keep))
        elif phase == "prefill" and causal and q.shape[2] == k.shape[2]:
            keep = vertical_slash_keep(q, k, scale=scale, block_size=cfg.block_size, vertical_size=cfg.vertical_size,
                                       slash_size=cfg.slash_size, last_q=cfg.last_q)
            kw.update(mode="block_mask", block_mask=mask_from_keep(keep))
        out, st = block_attention(q, k, v, causal=causal, scale=scale, **kw)
        self.record(phase, st)
        return out


class SparseFrontier(AttentionMethod):
    name = "sparse_frontier"
    paper = Paper("The Sparse Frontier: Sparse Attention Trade-offs in Transformer LLMs", 2025, "2504.17768",
                  "https://github.com/PiotrNawrot/sparse-frontier")
    Config = SparseFrontierConfig
    summary = ("The training-free patterns of the Sparse Frontier benchmark as block masks: vertical-and-slash "
               "and block top-k for prefill, Quest page selection for decode.")

    def make_layer(self, layer_idx, module, model):
        return SparseFrontierLayer(layer_idx, self.config)
