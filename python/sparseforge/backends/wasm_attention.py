"""block_attention on the wasm backend: the arguments of ``_C.block_attention``,
``_C.gathered_decode_attention`` and ``_C.double_sparsity_decode`` (outputs written into ``out``/``stats``).

A mixin of :class:`sparseforge.backends.wasm.WasmKernels`; the module exports these only when it was built
with ``csrc/kernels/block_attention/`` present (``csrc/wasm/block_attention.cc``). Shapes are checked here,
index ranges in the module. The kernel runs its scalar reference in wasm (no SIMD128 variant yet).
"""

from __future__ import annotations

import numpy as np


def _qkv(fn, req, q, k, v, out):
    q, k, v = req(fn, "q", q, np.float32, 4), req(fn, "k", k, np.float32, 4), req(fn, "v", v, np.float32, 4)
    out = req(fn, "out", out, np.float32, 4, writable=True)
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    if k.shape[0] != B or k.shape[3] != D:
        raise ValueError(f"{fn}(): argument 'k' has shape {k.shape}, expected [B={B}, Hkv, Lk, D={D}]")
    if v.shape != k.shape:
        raise ValueError(f"{fn}(): argument 'v' has shape {v.shape}, expected k's {k.shape}")
    if out.shape != q.shape:
        raise ValueError(f"{fn}(): argument 'out' has shape {out.shape}, expected q's {q.shape}")
    if Hkv < 1 or Hq % Hkv:
        raise ValueError(f"{fn}(): query heads ({Hq}) must be a multiple of key/value heads ({Hkv})")
    if Lk < 1 or D < 1:
        raise ValueError(f"{fn}(): argument 'k' must hold at least one key and head_dim >= 1")
    return q, k, v, out, (B, Hq, Hkv, Lq, Lk, D)


class AttentionOps:
    def block_attention(self, q, k, v, out, stats, mode: int, causal: bool, scale: float, threshold: float,
                        block_q: int, block_k: int, kv_num_blocks=None, kv_indices=None, order=None) -> None:
        from .wasm import _require as req

        fn = "block_attention"
        q, k, v, out, (B, Hq, Hkv, Lq, Lk, D) = _qkv(fn, req, q, k, v, out)
        stats = req(fn, "stats", stats, np.int64, 1, writable=True)
        if stats.shape != (4,):
            raise ValueError(f"{fn}(): argument 'stats' must have shape (4,), got {stats.shape}")
        if mode not in (0, 1, 2, 3):
            raise ValueError(f"{fn}(): argument 'mode' must be 0 (dense), 1 (threshold), 2 (block_mask) or 3 (early_stop), got {mode}")
        if not (1 <= block_q <= 4096 and 1 <= block_k <= 4096):
            raise ValueError(f"{fn}(): arguments 'block_q' and 'block_k' must lie in [1, 4096], got {block_q}, {block_k}")
        if not threshold >= 0.0:
            raise ValueError(f"{fn}(): argument 'threshold' must be >= 0, got {threshold}")
        nq, nkv = -(-Lq // block_q), -(-Lk // block_k)
        num = lst = None

        def heads(arg, m):
            if m.shape[0] not in (1, B) or m.shape[1] not in (1, Hkv, Hq) or m.shape[2] != nq:
                raise ValueError(f"{fn}(): argument '{arg}' has shape {m.shape}, expected [1 or B={B}, 1, Hkv={Hkv} or "
                                 f"Hq={Hq}, n_q_blocks={nq}, ...]")
        if mode == 2:
            if kv_num_blocks is None or kv_indices is None:
                raise ValueError(f"{fn}(): mode block_mask needs 'kv_num_blocks' and 'kv_indices'")
            num, lst = req(fn, "kv_num_blocks", kv_num_blocks, np.int32, 3), req(fn, "kv_indices", kv_indices, np.int32, 4)
            heads("kv_num_blocks", num)
            if lst.shape[:3] != num.shape:
                raise ValueError(f"{fn}(): argument 'kv_indices' has shape {lst.shape}, expected kv_num_blocks' {num.shape} + (cap,)")
        elif mode == 3:
            if order is None:
                raise ValueError(f"{fn}(): mode early_stop needs 'order'")
            lst = req(fn, "order", order, np.int32, 4)
            heads("order", lst)
            if lst.shape[3] != nkv:
                raise ValueError(f"{fn}(): argument 'order' has shape {lst.shape}, expected n_kv_blocks={nkv} in dim 3")
        mB, mH, cap = (lst.shape[0], lst.shape[1], lst.shape[3]) if lst is not None else (1, 1, 0)
        with self.lock:
            (pq, pk, pv, pn, pl), (po, ps) = self._stage([q, k, v, num, lst], [out.nbytes, 32])
            self._check_rc(self._call("sf_block_attention", pq, pk, pv, po, B, Hq, Hkv, Lq, Lk, D, scale, int(causal),
                                      mode, threshold, block_q, block_k, pn, pl, mB, mH, cap, ps))
            self._get(po, np.float32, out.shape, out)
            self._get(ps, np.int64, (4,), stats)

    def gathered_decode_attention(self, q, k, v, token_indices, out, scale: float) -> None:
        from .wasm import _require as req

        fn = "gathered_decode_attention"
        q, k, v, out, (B, Hq, Hkv, Lq, Lk, D) = _qkv(fn, req, q, k, v, out)
        if Lq != 1:
            raise ValueError(f"{fn}(): argument 'q' must be one decode query [B, Hq, 1, D], got {q.shape}")
        idx = req(fn, "token_indices", token_indices, np.int32, 3)
        if idx.shape[0] != B or idx.shape[1] not in (Hq, Hkv) or idx.shape[2] < 1:
            raise ValueError(f"{fn}(): argument 'token_indices' has shape {idx.shape}, expected [B, Hkv or Hq, k_sel >= 1]")
        with self.lock:
            (pq, pk, pv, pi), (po,) = self._stage([q, k, v, idx], [out.nbytes])
            self._check_rc(self._call("sf_gathered_decode_attention", pq, pk, pv, pi, po, B, Hq, Hkv, Lk, D,
                                      idx.shape[1], idx.shape[2], scale))
            self._get(po, np.float32, out.shape, out)

    def double_sparsity_decode(self, q, k, v, k_label, q_channels, k_sel: int, out, scale: float) -> None:
        from .wasm import _require as req

        fn = "double_sparsity_decode"
        q, k, v, out, (B, Hq, Hkv, Lq, Lk, D) = _qkv(fn, req, q, k, v, out)
        if Lq != 1:
            raise ValueError(f"{fn}(): argument 'q' must be one decode query [B, Hq, 1, D], got {q.shape}")
        label, ch = req(fn, "k_label", k_label, np.float32, 4), req(fn, "q_channels", q_channels, np.int32, 2)
        if ch.shape[0] not in (Hq, Hkv) or ch.shape[1] < 1:
            raise ValueError(f"{fn}(): argument 'q_channels' has shape {ch.shape}, expected [Hq or Hkv, r >= 1]")
        r = ch.shape[1]
        if label.shape != (B, Hkv, Lk, r):
            raise ValueError(f"{fn}(): argument 'k_label' has shape {label.shape}, expected [B, Hkv, Lk, r={r}]")
        if k_sel < 1:
            raise ValueError(f"{fn}(): argument 'k_sel' must be >= 1, got {k_sel}")
        with self.lock:
            (pq, pk, pv, pl, pc), (po,) = self._stage([q, k, v, label, ch], [out.nbytes])
            self._check_rc(self._call("sf_double_sparsity_decode", pq, pk, pv, pl, pc, po, B, Hq, Hkv, Lk, D,
                                      ch.shape[0], r, k_sel, scale))
            self._get(po, np.float32, out.shape, out)
