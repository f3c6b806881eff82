"""``sparseforge::sparse_conv1x1``: a 1x1 stride-1 convolution with a packed sparse weight (CHW SpMM).

``sparse_conv1x1(x, packed, bias=None, activation=None)`` takes NCHW float32 CPU activations and a
:class:`sparseforge.formats.SparseConvWeight`; ``activation`` is ``None``, ``"relu"`` or ``"relu6"``
(fused into the kernel's store). The custom op itself takes the packed arrays as tensors so that
``torch.library.opcheck`` and ``torch.compile`` see plain tensors.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch

from sparseforge import _C

__all__ = ["sparse_conv1x1", "ACTIVATIONS"]

ACTIVATIONS = {None: (-math.inf, math.inf), "relu": (0.0, math.inf), "relu6": (0.0, 6.0)}

# Checked, core-owned copies of packed weights (_C.SpmmConvPlan), so a call skips the O(nnz) index
# check. The key holds the tensors' addresses and in-place versions (a mutated buffer gets a new plan),
# and the entry holds the tensors, so an address cannot be reused while its plan is cached.
_PLANS: "OrderedDict[tuple, tuple]" = OrderedDict()
_MAX_PLANS = 512


def _version(t: torch.Tensor) -> int:
    try:
        return t._version
    except RuntimeError:  # an inference tensor (made under torch.inference_mode) tracks no version
        return -1


def _plan(nnz, offsets, idx_delta, values, c_out, c_in, block):
    ts = (nnz, offsets, idx_delta, values)
    key = tuple((t.data_ptr(), t.numel(), _version(t)) for t in ts) + (c_out, c_in, block)
    hit = _PLANS.get(key)
    if hit is not None:
        _PLANS.move_to_end(key)
        return hit[1]
    plan = _C.SpmmConvPlan(*(t.numpy() for t in ts), c_out, c_in, block)
    _PLANS[key] = (ts, plan)
    if len(_PLANS) > _MAX_PLANS:
        _PLANS.popitem(last=False)
    return plan


@torch.library.custom_op("sparseforge::sparse_conv1x1", mutates_args=())
def _sparse_conv1x1(x: torch.Tensor, nnz: torch.Tensor, offsets: torch.Tensor, idx_delta: torch.Tensor,
                    values: torch.Tensor, bias: torch.Tensor | None, c_out: int, c_in: int, block: int,
                    out_min: float, out_max: float) -> torch.Tensor:
    if x.dim() != 4:
        raise ValueError(f"sparse_conv1x1(): argument 'x' must be 4-D NCHW, got shape {tuple(x.shape)}")
    return run_plan(_plan(nnz, offsets, idx_delta, values, c_out, c_in, block), x, bias, c_out, out_min, out_max)


def run_plan(plan, x: torch.Tensor, bias: torch.Tensor | None, c_out: int, out_min: float, out_max: float) -> torch.Tensor:
    """The custom op's body on an already-checked plan: y [N, c_out, H, W] for x [N, c_in, H, W]."""
    n, c, h, w = x.shape
    # NCHW is the kernel's layout; a channels_last or strided view is made contiguous here, once.
    xc = x.detach().contiguous()
    out = torch.empty((n, c_out, h, w), dtype=torch.float32)
    plan.run(xc.numpy().reshape(n, c, h * w), None if bias is None else bias.detach().numpy(), out_min, out_max,
             out.numpy().reshape(n, c_out, h * w))
    return out


def eager_call(x) -> bool:
    """True when a plain eager call may skip the torch.library dispatch (about 15 us a call, a sixth of
    EfficientNet-lite0's sparse forward on two threads): a real CPU tensor, no autograd, no compile,
    tracing or tensor subclass (FakeTensor, functionalization) that the custom op exists for."""
    return (type(x) is torch.Tensor and not (x.requires_grad and torch.is_grad_enabled())
            and not torch.compiler.is_compiling() and not torch.jit.is_tracing())


@_sparse_conv1x1.register_fake
def _(x, nnz, offsets, idx_delta, values, bias, c_out, c_in, block, out_min, out_max):
    torch._check(x.dim() == 4, lambda: "sparse_conv1x1(): argument 'x' must be 4-D NCHW")
    torch._check(x.shape[1] == c_in, lambda: "sparse_conv1x1(): argument 'x' has the wrong channel count")
    return x.new_empty((x.shape[0], c_out, x.shape[2], x.shape[3]), dtype=torch.float32)


def packed_tensors(packed) -> tuple:
    """The packed arrays as CPU tensors sharing their memory (no copy)."""
    return tuple(torch.from_numpy(a) for a in (packed.nnz, packed.offsets, packed.idx_delta, packed.values))


def sparse_conv1x1(x: torch.Tensor, packed, bias: torch.Tensor | None = None, activation: str | None = None) -> torch.Tensor:
    """y = act(conv2d(x, W, bias)) for a 1x1 stride-1 conv whose weight W is ``packed``."""
    from sparseforge.formats import SparseConvWeight

    if not isinstance(packed, SparseConvWeight):
        raise TypeError(f"sparse_conv1x1(): argument 'packed' must be a SparseConvWeight, got {type(packed).__name__}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"sparse_conv1x1(): argument 'activation' must be None, 'relu' or 'relu6', got {activation!r}")
    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32 or x.device.type != "cpu":
        raise TypeError("sparse_conv1x1(): argument 'x' must be a float32 CPU tensor"
                        + (f", got {x.dtype} on {x.device}" if isinstance(x, torch.Tensor) else f", got {type(x).__name__}"))
    if x.dim() != 4 or x.shape[1] != packed.c_in:
        raise ValueError(f"sparse_conv1x1(): argument 'x' must be [N, {packed.c_in}, H, W], got {tuple(x.shape)}")
    if bias is not None and (bias.dtype != torch.float32 or bias.shape != (packed.c_out,)):
        raise ValueError(f"sparse_conv1x1(): argument 'bias' must be float32 [{packed.c_out}], got {bias.dtype} {tuple(bias.shape)}")
    lo, hi = ACTIVATIONS[activation]
    return _sparse_conv1x1(x, *packed_tensors(packed), bias, packed.c_out, packed.c_in, packed.block, lo, hi)
