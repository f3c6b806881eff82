"""Argument checks shared by the block-attention op, its pure-torch reference and the decode entries.

Every check raises ``TypeError``/``ValueError`` naming the argument, so a mistake is reported where the
caller made it, not deep inside the kernel.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

MODES = ("dense", "threshold", "block_mask", "early_stop")
MAX_BLOCK = 512


class AttnArgs(NamedTuple):
    mode: str
    causal: bool
    scale: float
    threshold: float  # 0.0 when the mode takes none
    block_q: int
    block_k: int
    kv_num_blocks: Optional[torch.Tensor]  # int32 [Bm, Hm, n_q_blocks]
    kv_indices: Optional[torch.Tensor]  # int32 [Bm, Hm, n_q_blocks, cap]
    order: Optional[torch.Tensor]  # int32 [Bm, Hm, n_q_blocks, n_kv_blocks]


def check_qkv(fn: str, q, k, v, *, decode: bool = False, dtypes=(torch.float32,)):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{fn}(): argument '{name}' must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in dtypes:
            want = " or ".join(str(d) for d in dtypes)
            raise TypeError(f"{fn}(): argument '{name}' must have dtype {want}, got {t.dtype}")
        if t.device.type != "cpu":
            raise ValueError(f"{fn}(): argument '{name}' must be on the CPU, got device {t.device}")
        if t.dim() != 4:
            raise ValueError(f"{fn}(): argument '{name}' must be 4-D [B, H, L, D], got shape {tuple(t.shape)}")
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise TypeError(f"{fn}(): arguments 'q', 'k', 'v' must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    B, Hq, Lq, D = q.shape
    if k.shape != v.shape:
        raise ValueError(f"{fn}(): arguments 'k' and 'v' must have the same shape, got {tuple(k.shape)} and "
                         f"{tuple(v.shape)}")
    if k.shape[0] != B:
        raise ValueError(f"{fn}(): argument 'k' has batch {k.shape[0]}, 'q' has batch {B}")
    if k.shape[3] != D:
        raise ValueError(f"{fn}(): argument 'k' has head_dim {k.shape[3]}, 'q' has head_dim {D}")
    if D < 1:
        raise ValueError(f"{fn}(): argument 'q' must have head_dim >= 1, got shape {tuple(q.shape)}")
    Hkv = k.shape[1]
    if Hkv < 1 or Hq % Hkv:
        raise ValueError(f"{fn}(): the query heads of 'q' ({Hq}) must be a multiple of the key/value heads of 'k' "
                         f"({Hkv}) (GQA/MQA)")
    if k.shape[2] < 1:
        raise ValueError(f"{fn}(): argument 'k' must hold at least one key, got shape {tuple(k.shape)}")
    if decode and Lq != 1:
        raise ValueError(f"{fn}(): argument 'q' must be a single decode query [B, Hq, 1, D], got shape "
                         f"{tuple(q.shape)}")


def check_scale(fn: str, scale, D: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(D)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"{fn}(): argument 'scale' must be a finite number or None, got {scale!r}")
    return float(scale)


def _block_sizes(fn: str, block_size):
    bs = (block_size, block_size) if isinstance(block_size, int) and not isinstance(block_size, bool) else block_size
    if (not isinstance(bs, (tuple, list)) or len(bs) != 2 or
            not all(isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= MAX_BLOCK for b in bs)):
        raise ValueError(f"{fn}(): argument 'block_size' must be an int or a (query, key) pair of ints in "
                         f"[1, {MAX_BLOCK}], got {block_size!r}")
    return int(bs[0]), int(bs[1])


def _head_broadcast(fn: str, name: str, t: torch.Tensor, B: int, Hq: int, Hkv: int, nq: int):
    if t.shape[0] not in (1, B):
        raise ValueError(f"{fn}(): argument '{name}' has batch {t.shape[0]}, expected 1 or {B}")
    if t.shape[1] not in (1, Hkv, Hq):
        raise ValueError(f"{fn}(): argument '{name}' has {t.shape[1]} heads, expected 1, {Hkv} (key/value heads) "
                         f"or {Hq} (query heads)")
    if t.shape[2] != nq:
        raise ValueError(f"{fn}(): argument '{name}' has {t.shape[2]} query blocks in dim 2, expected "
                         f"ceil(Lq / block_q) = {nq}")


def _int_tensor(fn: str, name: str, t, ndim: int) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn}(): argument '{name}' must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{fn}(): argument '{name}' must have dtype int32 or int64, got {t.dtype}")
    if t.device.type != "cpu":
        raise ValueError(f"{fn}(): argument '{name}' must be on the CPU, got device {t.device}")
    if t.dim() != ndim:
        raise ValueError(f"{fn}(): argument '{name}' must be {ndim}-D, got shape {tuple(t.shape)}")
    return t


def _unpack_block_mask(fn: str, block_mask):
    """(kv_num_blocks, kv_indices) from a tuple or a FlexAttention-style object (partial + full blocks)."""
    if isinstance(block_mask, (tuple, list)):
        if len(block_mask) != 2:
            raise ValueError(f"{fn}(): argument 'block_mask' must be (kv_num_blocks, kv_indices), got a sequence "
                             f"of length {len(block_mask)}")
        return block_mask[0], block_mask[1], None
    if hasattr(block_mask, "kv_num_blocks") and hasattr(block_mask, "kv_indices"):
        num, idx = block_mask.kv_num_blocks, block_mask.kv_indices
        full_num, full_idx = getattr(block_mask, "full_kv_num_blocks", None), getattr(block_mask, "full_kv_indices", None)
        if full_num is not None and full_idx is not None:
            # FlexAttention splits visited blocks into partial and full ones; here both are just "visited".
            cap = idx.shape[-1]
            ar = torch.arange(cap)
            merged = torch.cat([idx, full_idx], dim=-1)
            keep = torch.cat([ar < num.unsqueeze(-1), ar[: full_idx.shape[-1]] < full_num.unsqueeze(-1)], dim=-1)
            # Stable sort puts the kept entries first, in order.
            order = torch.sort((~keep).to(torch.int8), dim=-1, stable=True).indices
            num = num + full_num
            idx = merged.gather(-1, order)
        bs = getattr(block_mask, "BLOCK_SIZE", None)
        return num, idx, (tuple(bs) if isinstance(bs, (tuple, list)) else bs)
    raise TypeError(f"{fn}(): argument 'block_mask' must be a (kv_num_blocks, kv_indices) tuple or an object with "
                    f"those attributes (e.g. a FlexAttention BlockMask), got {type(block_mask).__name__}")


def check_attention_args(fn, q, k, v, *, causal, scale, mode, threshold, block_mask, order, block_size) -> AttnArgs:
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    if mode not in MODES:
        raise ValueError(f"{fn}(): argument 'mode' must be one of {', '.join(MODES)}, got {mode!r}")
    if not isinstance(causal, bool):
        raise TypeError(f"{fn}(): argument 'causal' must be a bool, got {type(causal).__name__}")
    scale = check_scale(fn, scale, D)
    bq, bk = _block_sizes(fn, block_size)
    thr = 0.0
    if mode in ("threshold", "early_stop"):
        if threshold is None:
            raise ValueError(f"{fn}(): mode={mode!r} needs argument 'threshold' (a float >= 0; 0 never skips)")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not (threshold >= 0) \
                or math.isinf(threshold):
            raise ValueError(f"{fn}(): argument 'threshold' must be a finite float >= 0, got {threshold!r}")
        thr = float(threshold)
    elif threshold is not None:
        raise ValueError(f"{fn}(): argument 'threshold' is only used by mode 'threshold' or 'early_stop', "
                         f"got it with mode={mode!r}")
    if mode != "block_mask" and block_mask is not None:
        raise ValueError(f"{fn}(): argument 'block_mask' is only used by mode 'block_mask', got it with mode={mode!r}")
    if mode != "early_stop" and order is not None:
        raise ValueError(f"{fn}(): argument 'order' is only used by mode 'early_stop', got it with mode={mode!r}")
    nq, nkv = -(-Lq // bq), -(-Lk // bk)
    num = idx = ordt = None
    if mode == "block_mask":
        if block_mask is None:
            raise ValueError(f"{fn}(): mode='block_mask' needs argument 'block_mask' (kv_num_blocks, kv_indices)")
        num, idx, mask_bs = _unpack_block_mask(fn, block_mask)
        if mask_bs is not None and tuple(mask_bs if isinstance(mask_bs, tuple) else (mask_bs, mask_bs)) != (bq, bk):
            raise ValueError(f"{fn}(): argument 'block_mask' was built with BLOCK_SIZE={mask_bs}, but block_size is "
                             f"{(bq, bk)}; pass block_size={mask_bs}")
        num = _int_tensor(fn, "block_mask.kv_num_blocks", num, 3)
        idx = _int_tensor(fn, "block_mask.kv_indices", idx, 4)
        _head_broadcast(fn, "block_mask.kv_num_blocks", num, B, Hq, Hkv, nq)
        if tuple(idx.shape[:3]) != tuple(num.shape) or idx.shape[3] < 1:
            raise ValueError(f"{fn}(): argument 'block_mask.kv_indices' must have shape {tuple(num.shape)} + (cap,) "
                             f"with cap >= 1 (cap = {nkv} key blocks in FlexAttention's convention), got "
                             f"{tuple(idx.shape)}")
        if num.numel():
            if int(num.min()) < 0 or int(num.max()) > idx.shape[3]:
                raise ValueError(f"{fn}(): argument 'block_mask.kv_num_blocks' must lie in [0, {idx.shape[3]}], got "
                                 f"values in [{int(num.min())}, {int(num.max())}]")
            used = torch.arange(idx.shape[3]) < num.unsqueeze(-1)
            vals = idx[used]
            if vals.numel() and (int(vals.min()) < 0 or int(vals.max()) >= nkv):
                raise ValueError(f"{fn}(): argument 'block_mask.kv_indices' must list key blocks in [0, {nkv}) "
                                 f"(Lk={Lk}, block_k={bk}), got values in [{int(vals.min())}, {int(vals.max())}]")
            if vals.numel():
                s = torch.where(used, idx.long(), -1 - torch.arange(idx.shape[3])).sort(-1).values
                if bool((s[..., 1:] == s[..., :-1]).any()):
                    raise ValueError(f"{fn}(): argument 'block_mask.kv_indices' lists a key block twice for one "
                                     f"query block")
        num, idx = num.to(torch.int32).contiguous(), idx.to(torch.int32).contiguous()
    if mode == "early_stop":
        if order is None:
            raise ValueError(f"{fn}(): mode='early_stop' needs argument 'order' (int32 [B, H, n_q_blocks, "
                             f"n_kv_blocks], a visiting order of key blocks per query block)")
        ordt = _int_tensor(fn, "order", order, 4)
        _head_broadcast(fn, "order", ordt, B, Hq, Hkv, nq)
        if ordt.shape[3] != nkv:
            raise ValueError(f"{fn}(): argument 'order' must list all ceil(Lk / block_k) = {nkv} key blocks in dim 3, "
                             f"got shape {tuple(ordt.shape)}")
        if ordt.numel() and not torch.equal(ordt.long().sort(-1).values,
                                            torch.arange(nkv).expand(ordt.shape)):
            raise ValueError(f"{fn}(): argument 'order' must be a permutation of 0..{nkv - 1} for every query block")
        ordt = ordt.to(torch.int32).contiguous()
    return AttnArgs(mode, causal, scale, thr, bq, bk, num, idx, ordt)


def check_token_indices(fn: str, idx, B: int, Hq: int, Hkv: int, Lk: int) -> torch.Tensor:
    idx = _int_tensor(fn, "token_indices", idx, 3)
    if idx.shape[0] != B or idx.shape[1] not in (Hq, Hkv) or idx.shape[2] < 1:
        raise ValueError(f"{fn}(): argument 'token_indices' must have shape [B={B}, Hkv={Hkv} or Hq={Hq}, k_sel>=1], "
                         f"got {tuple(idx.shape)}")
    if int(idx.min()) < 0 or int(idx.max()) >= Lk:
        raise ValueError(f"{fn}(): argument 'token_indices' must lie in [0, Lk={Lk}), got values in "
                         f"[{int(idx.min())}, {int(idx.max())}]")
    s = idx.sort(-1).values
    if bool((s[..., 1:] == s[..., :-1]).any()):
        raise ValueError(f"{fn}(): argument 'token_indices' selects a token twice for one head")
    return idx.to(torch.int32).contiguous()


def check_label_args(fn: str, q, k, k_label, q_channels, k_sel):
    B, Hq, _, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    if not isinstance(k_label, torch.Tensor) or k_label.dtype != q.dtype or k_label.device.type != "cpu":
        raise TypeError(f"{fn}(): argument 'k_label' must be a {q.dtype} CPU tensor, got "
                        + (f"{k_label.dtype} on {k_label.device}" if isinstance(k_label, torch.Tensor)
                           else type(k_label).__name__))
    qc = _int_tensor(fn, "q_channels", q_channels, 2)
    if qc.shape[0] not in (Hq, Hkv) or qc.shape[1] < 1:
        raise ValueError(f"{fn}(): argument 'q_channels' must have shape [Hq={Hq} or Hkv={Hkv}, r>=1], got "
                         f"{tuple(qc.shape)}")
    r = qc.shape[1]
    if k_label.dim() != 4 or tuple(k_label.shape) != (B, Hkv, Lk, r):
        raise ValueError(f"{fn}(): argument 'k_label' must have shape [B, Hkv, Lk, r] = {(B, Hkv, Lk, r)}, got "
                         f"{tuple(k_label.shape)}")
    if int(qc.min()) < 0 or int(qc.max()) >= D:
        raise ValueError(f"{fn}(): argument 'q_channels' must lie in [0, D={D}), got values in "
                         f"[{int(qc.min())}, {int(qc.max())}]")
    if isinstance(k_sel, bool) or not isinstance(k_sel, int) or k_sel < 1:
        raise ValueError(f"{fn}(): argument 'k_sel' must be an int >= 1, got {k_sel!r}")
    return qc.to(torch.int32).contiguous(), min(int(k_sel), Lk)
