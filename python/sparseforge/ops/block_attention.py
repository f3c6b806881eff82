"""``sparseforge::block_attention``: tiled (FlashAttention-style) fp32 attention that can skip key blocks.

Entry points (all fp32, CPU, inference only):

* :func:`block_attention` — prefill or decode attention with one of four skip modes (dense, threshold,
  block_mask, early_stop) and per-call block statistics;
* :func:`gathered_decode_attention` — one decode query over an explicit subset of tokens (gather);
* :func:`double_sparsity_decode` — label-cache scoring, top-k and gathered attention in one call.

Each has a pure-torch twin in :mod:`sparseforge.ops.block_attention_reference` (same contract, float32 or
float64), the semantic oracle of the tests and the ``reference`` backend. The compiled kernel is
``csrc/kernels/block_attention/`` (README there: algorithm, skip rules, measured speed).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from . import block_attention_reference as _ref
from ._attention_args import check_attention_args, check_label_args, check_qkv, check_scale, check_token_indices

__all__ = ["block_attention", "BlockAttentionStats", "gathered_decode_attention", "double_sparsity_decode"]

try:  # the compiled kernel; until a build has it, the ops run the reference (same results, slower)
    from .. import _C

    _HAVE_KERNEL = hasattr(_C, "block_attention")
except ImportError:  # pragma: no cover
    _C = None
    _HAVE_KERNEL = False

_MODE_ID = {"dense": 0, "threshold": 1, "block_mask": 2, "early_stop": 3}


class BlockAttentionStats(NamedTuple):
    """Per-call totals over all (query tile, key block) pairs; see :func:`block_attention`."""

    total: int  # pairs with at least one causally visible (query, key) pair: what dense computes
    computed: int  # pairs whose exp and P·V were done (the block took part in the softmax)
    skipped: int  # total - computed
    scored_only: int  # skipped pairs whose Q·Kᵀ was still computed (threshold rejections, the early-stop block)

    @property
    def skip_fraction(self) -> float:
        return self.skipped / self.total if self.total else 0.0

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> "BlockAttentionStats":
        return cls(*(int(x) for x in t.tolist()))


@torch.library.custom_op("sparseforge::block_attention", mutates_args=(), device_types="cpu")
def _block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_num_blocks: Optional[torch.Tensor],
                     kv_indices: Optional[torch.Tensor], order: Optional[torch.Tensor], causal: bool, scale: float,
                     mode: str, threshold: float, block_q: int, block_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    qc, kc, vc = (t.detach().contiguous() for t in (q, k, v))
    if not _HAVE_KERNEL:
        from ._attention_args import AttnArgs

        a = AttnArgs(mode, causal, scale, threshold, block_q, block_k, kv_num_blocks, kv_indices, order)
        return _ref.attention_core_reference(qc, kc, vc, a)
    out = torch.empty_like(qc)
    stats = torch.zeros(4, dtype=torch.int64)
    none = lambda t: None if t is None else t.contiguous().numpy()  # noqa: E731
    _C.block_attention(qc.numpy(), kc.numpy(), vc.numpy(), out.numpy(), stats.numpy(), _MODE_ID[mode], causal,
                       scale, threshold, block_q, block_k, none(kv_num_blocks), none(kv_indices), none(order))
    return out, stats


@_block_attention.register_fake
def _(q, k, v, kv_num_blocks, kv_indices, order, causal, scale, mode, threshold, block_q, block_k):
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(4, dtype=torch.int64)


def block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                    scale: Optional[float] = None, mode: str = "dense", threshold: Optional[float] = None,
                    block_mask=None, order: Optional[torch.Tensor] = None, block_size=64):
    """Tiled attention ``softmax(q·kᵀ·scale)·v`` that skips key blocks; returns ``(out, stats)``.

    Args:
        q: float32 ``[B, Hq, Lq, D]`` on the CPU (prefill: Lq > 1; decode: Lq == 1).
        k, v: float32 ``[B, Hkv, Lk, D]``; ``Hq`` must be a multiple of ``Hkv`` (GQA; MQA is Hkv = 1):
            query head ``h`` reads key/value head ``h // (Hq // Hkv)``. Non-contiguous inputs are copied.
        causal: bottom-right aligned: query ``i`` sees keys ``j <= i + Lk - Lq``. For Lq == Lk this is
            torch SDPA's ``is_causal=True``; a decode query (Lq == 1) sees all keys. A query that sees no
            key (only when Lq > Lk) gets zeros.
        scale: score scale, default ``1 / sqrt(D)``.
        mode: which key blocks take part; the softmax runs online over the visited blocks in order.

            * ``"dense"``: every block (matches SDPA to fp32 rounding).
            * ``"threshold"`` (BLASST): for each key block in natural order compute ``S = q·kᵀ·scale`` and
              its row maxima ``m̃``; skip the block's exp and P·V when ``exp(m̃ - m) < threshold`` for every
              row of the query tile (``m`` the running max before the block). Skipped blocks leave the
              running statistics untouched. A row that has seen no key yet votes against skipping, so the
              first block is never skipped. ``threshold=0`` never skips (equals dense).
            * ``"block_mask"``: only the blocks listed in ``block_mask`` are read (others cost nothing), in
              the listed order; causal masking still applies inside them.
            * ``"early_stop"`` (S2O): visit key blocks in ``order``; compute each block's real ``S`` and
              stop — skipping it and every later block — when ``exp(m̃ - m) < threshold`` for every row
              (same vote as above). ``threshold=0`` never stops and equals dense.
        threshold: float >= 0 in the probability domain (compared as ``m̃ - m < ln threshold`` on the
            scaled natural-log scores); required by "threshold" and "early_stop", rejected otherwise.
        block_mask: for mode "block_mask": ``(kv_num_blocks, kv_indices)`` or an object with those
            attributes (a FlexAttention ``BlockMask``: its ``full_kv_*`` blocks are visited too, its
            ``mask_mod`` is not applied, its ``BLOCK_SIZE`` must equal ``block_size``).
            ``kv_num_blocks`` int32/int64 ``[Bm, Hm, n_q_blocks]``, ``kv_indices`` int32/int64
            ``[Bm, Hm, n_q_blocks, cap]`` (cap = n_kv_blocks in FlexAttention); query block ``i`` of head
            ``h`` visits key blocks ``kv_indices[b, h, i, :kv_num_blocks[b, h, i]]`` (distinct, in
            ``[0, n_kv_blocks)``). ``Bm`` is 1 or B; ``Hm`` is 1, Hkv (shared by a GQA group) or Hq.
        order: for mode "early_stop": int32/int64 ``[Bm, Hm, n_q_blocks, n_kv_blocks]``, per query block a
            permutation of the key blocks (most important first); ``Bm``/``Hm`` broadcast as above.
        block_size: ``int`` or ``(block_q, block_k)``, each in [1, 512] (32-128 is the tuned range);
            ``n_q_blocks = ceil(Lq / block_q)``, ``n_kv_blocks = ceil(Lk / block_k)``, blocks start at 0.

    Query tiles: one query block of one query head — except in decode (Lq == 1) when Hq > Hkv and the
    mode's per-head input (block_mask / order) has 1 or Hkv heads (or there is none): then the tile is the
    GQA group, the G query heads sharing a K/V head, so the K/V block is read once and the skip vote runs
    over the group's heads.

    Returns:
        ``out`` float32 ``[B, Hq, Lq, D]`` (contiguous) and ``stats``, a :class:`BlockAttentionStats` of
        Python ints counted over (query tile, key block) pairs: ``total`` (pairs with a causally visible
        query/key pair: what dense computes), ``computed`` (exp and P·V done), ``skipped`` (total -
        computed), ``scored_only`` (skipped but Q·Kᵀ computed); ``stats.skip_fraction`` = skipped / total.
        Blocks listed in a block mask but causally invisible cost nothing and count nowhere.

    Raises ``TypeError``/``ValueError`` naming the offending argument.
    """
    fn = "block_attention"
    check_qkv(fn, q, k, v)
    a = check_attention_args(fn, q, k, v, causal=causal, scale=scale, mode=mode, threshold=threshold,
                             block_mask=block_mask, order=order, block_size=block_size)
    out, st = torch.ops.sparseforge.block_attention(q, k, v, a.kv_num_blocks, a.kv_indices, a.order, a.causal,
                                                    a.scale, a.mode, a.threshold, a.block_q, a.block_k)
    return out, BlockAttentionStats.from_tensor(st)


@torch.library.custom_op("sparseforge::gathered_decode_attention", mutates_args=(), device_types="cpu")
def _gathered_decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, token_indices: torch.Tensor,
                               scale: float) -> torch.Tensor:
    qc, kc, vc = (t.detach().contiguous() for t in (q, k, v))
    idx = token_indices.contiguous()
    if not _HAVE_KERNEL:
        return _ref.gathered_core_reference(qc, kc, vc, idx, scale)
    out = torch.empty_like(qc)
    _C.gathered_decode_attention(qc.numpy(), kc.numpy(), vc.numpy(), idx.numpy(), out.numpy(), scale)
    return out


@_gathered_decode_attention.register_fake
def _(q, k, v, token_indices, scale):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


def gathered_decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, token_indices: torch.Tensor, *,
                              scale: Optional[float] = None) -> torch.Tensor:
    """Decode attention of ``q`` over only the selected tokens (a gather, not a block skip).

    Args:
        q: float32 ``[B, Hq, 1, D]``; k, v: float32 ``[B, Hkv, Lk, D]`` (Hq a multiple of Hkv).
        token_indices: int32/int64 ``[B, Hkv or Hq, k_sel]``: distinct token positions in ``[0, Lk)`` per
            K/V head (shared by the GQA group) or per query head; their order does not matter.
        scale: default ``1 / sqrt(D)``.

    Returns ``out`` float32 ``[B, Hq, 1, D]`` = softmax over the selected keys only.
    """
    fn = "gathered_decode_attention"
    check_qkv(fn, q, k, v, decode=True)
    idx = check_token_indices(fn, token_indices, q.shape[0], q.shape[1], k.shape[1], k.shape[2])
    return torch.ops.sparseforge.gathered_decode_attention(q, k, v, idx, check_scale(fn, scale, q.shape[3]))


@torch.library.custom_op("sparseforge::double_sparsity_decode", mutates_args=(), device_types="cpu")
def _double_sparsity_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_label: torch.Tensor,
                            q_channels: torch.Tensor, k_sel: int, scale: float) -> torch.Tensor:
    qc, kc, vc, lc = (t.detach().contiguous() for t in (q, k, v, k_label))
    ch = q_channels.contiguous()
    if not _HAVE_KERNEL:
        idx = _ref.label_topk_reference(qc, lc, ch, k_sel)
        return _ref.gathered_core_reference(qc, kc, vc, idx, scale)
    out = torch.empty_like(qc)
    _C.double_sparsity_decode(qc.numpy(), kc.numpy(), vc.numpy(), lc.numpy(), ch.numpy(), k_sel, out.numpy(), scale)
    return out


@_double_sparsity_decode.register_fake
def _(q, k, v, k_label, q_channels, k_sel, scale):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


def double_sparsity_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_label: torch.Tensor,
                           q_channels: torch.Tensor, k_sel: int, scale: Optional[float] = None) -> torch.Tensor:
    """Double Sparsity decode in one call: label scores → top-k tokens → attention over them.

    Args:
        q: float32 ``[B, Hq, 1, D]``; k, v: float32 ``[B, Hkv, Lk, D]`` (Hq a multiple of Hkv).
        k_label: float32 ``[B, Hkv, Lk, r]``, the label cache: ``k[..., q_channels]`` per token, contiguous.
        q_channels: int32/int64 ``[Hq or Hkv, r]``, channel indices in ``[0, D)``. With ``[Hq, r]`` every query
            head scores ``q[b, h, 0, q_channels[h]] · k_label[b, h // G]ᵀ`` and picks its own tokens; with
            ``[Hkv, r]`` (Hkv < Hq) each GQA group picks one token set by the max over its heads' scores.
        k_sel: tokens to keep per head (clamped to Lk).
        scale: attention scale, default ``1 / sqrt(D)`` (label scores are only ranked, never scaled).

    Returns ``out`` float32 ``[B, Hq, 1, D]``. Ties in the top-k may resolve differently than ``torch.topk``.
    """
    fn = "double_sparsity_decode"
    check_qkv(fn, q, k, v, decode=True)
    qc, ks = check_label_args(fn, q, k, k_label, q_channels, k_sel)
    return torch.ops.sparseforge.double_sparsity_decode(q, k, v, k_label, qc, ks, check_scale(fn, scale, q.shape[3]))
