"""``sparseforge::nm_linear``: Y = X·Wᵀ + bias with W in :class:`sparseforge.formats.NMSparse` form.

Weights may be float32 or bfloat16 (bf16 weights, fp32 activations and accumulation: half the bytes
again for the memory-bound batch-1 case). The op takes the format's plain tensors (``values``, ``meta``) plus ``n``, ``m``, ``k`` so that it has a
fixed schema; :func:`nm_linear` is the user-facing wrapper that takes an ``NMSparse``. Forward runs the
compiled ``nm_gemm`` kernel (fp32, CPU). Backward gives gradients for ``x``, ``bias`` and the kept
``values`` (the pattern itself is fixed), so an N:M model can be fine-tuned, and it is built from plain
torch ops so ``torch.compile`` traces through it.
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import _C
from ..formats.nm import NMSparse, index_bits

__all__ = ["nm_linear", "nm_columns", "nm_dense"]


def nm_columns(meta: torch.Tensor, n: int, m: int, k: int) -> torch.Tensor:
    """Absolute column (0..k-1) of every kept value, ``int64 [rows, k // m * n]``, from packed ``meta``.

    Plain torch ops (traceable, any device)."""
    rows = meta.shape[0]
    bits = index_bits(m)
    nnz = k // m * n
    shifts = torch.arange(8, device=meta.device)
    stream = ((meta.to(torch.int64).unsqueeze(-1) >> shifts) & 1).reshape(rows, -1)[:, : nnz * bits]
    idx = (stream.reshape(rows, nnz, bits) << torch.arange(bits, device=meta.device)).sum(-1)
    base = (torch.arange(nnz, device=meta.device) // n) * m
    return idx + base


def nm_dense(values: torch.Tensor, meta: torch.Tensor, n: int, m: int, k: int) -> torch.Tensor:
    """The dense ``[rows, k]`` weight (differentiable w.r.t. ``values``)."""
    cols = nm_columns(meta, n, m, k)
    out = values.new_zeros(values.shape[0], k)
    return out.scatter(1, cols, values)


def _check(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: Optional[torch.Tensor], n: int, m: int, k: int):
    if x.dtype != torch.float32:
        raise TypeError(f"nm_linear(): argument 'x' must be float32, got {x.dtype}")
    if values.dtype not in (torch.float32, torch.bfloat16):
        raise TypeError(f"nm_linear(): the weight's values must be float32 or bfloat16, got {values.dtype}")
    if meta.dtype != torch.uint8:
        raise TypeError(f"nm_linear(): the weight's meta must be uint8, got {meta.dtype}")
    if bias is not None and bias.dtype != torch.float32:
        raise TypeError(f"nm_linear(): argument 'bias' must be float32, got {bias.dtype}")
    if x.shape[-1] != k:
        raise ValueError(f"nm_linear(): argument 'x' has {x.shape[-1]} features in its last dimension, the weight "
                         f"expects K={k}")


@torch.library.custom_op("sparseforge::nm_linear", mutates_args=(), device_types="cpu")
def _nm_linear(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: Optional[torch.Tensor],
               n: int, m: int, k: int) -> torch.Tensor:
    _check(x, values, meta, bias, n, m, k)
    rows = values.shape[0]
    x2 = x.detach().reshape(-1, k).contiguous()
    out = torch.empty(x2.shape[0], rows, dtype=torch.float32)
    v = values.detach().contiguous()
    bf16 = v.dtype == torch.bfloat16  # bf16 weights, fp32 activations and accumulation
    _C.nm_gemm(x2.numpy(), (v.view(torch.uint16) if bf16 else v).numpy(), meta.contiguous().numpy(), n, m, k,
               None if bias is None else bias.detach().contiguous().numpy(), out.numpy(), "bf16" if bf16 else "f32")
    return out.reshape(*x.shape[:-1], rows)


@_nm_linear.register_fake
def _(x, values, meta, bias, n, m, k):
    _check(x, values, meta, bias, n, m, k)
    return x.new_empty(*x.shape[:-1], values.shape[0])


def _setup_context(ctx, inputs, output):
    x, values, meta, bias, n, m, k = inputs
    ctx.save_for_backward(x, values, meta)
    ctx.nmk = (n, m, k)
    ctx.has_bias = bias is not None


def _backward(ctx, grad):
    x, values, meta = ctx.saved_tensors
    n, m, k = ctx.nmk
    rows = values.shape[0]
    g2 = grad.reshape(-1, rows)
    x2 = x.reshape(-1, k)
    cols = nm_columns(meta, n, m, k)
    gx = gv = gb = None
    if ctx.needs_input_grad[0]:
        w = g2.new_zeros(rows, k).scatter(1, cols, values.to(g2.dtype))
        gx = (g2 @ w).reshape(x.shape)
    if ctx.needs_input_grad[1]:
        # dL/dv[r, j] = sum_b g[b, r] * x[b, cols[r, j]]: the dense gradient read at the kept positions.
        gv = (g2.t() @ x2).gather(1, cols).to(values.dtype)
    if ctx.has_bias and ctx.needs_input_grad[3]:
        gb = g2.sum(0)
    return gx, gv, None, gb, None, None, None


_nm_linear.register_autograd(_backward, setup_context=_setup_context)


def nm_linear(x: torch.Tensor, weight: NMSparse, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x @ weight.to_dense().T + bias`` through the N:M kernel; ``x`` is ``[..., K]`` float32 on CPU."""
    if not isinstance(weight, NMSparse):
        raise TypeError(f"nm_linear(): argument 'weight' must be a sparseforge.formats.NMSparse, got {type(weight).__name__}")
    return torch.ops.sparseforge.nm_linear(x, weight.values, weight.meta, bias, weight.n, weight.m, int(weight.shape[1]))
