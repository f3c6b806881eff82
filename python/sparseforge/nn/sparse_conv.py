"""SparseConv2d: a 1x1 stride-1 convolution backed by the CHW SpMM kernel, and the export that swaps it in."""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from sparseforge.formats import SparseConvWeight
from sparseforge.nn.fold import fold_batchnorm
from sparseforge.nn.fuse import fuse_activations
from sparseforge.ops.sparse_conv1x1 import ACTIVATIONS, _plan, _sparse_conv1x1, eager_call, run_plan

__all__ = ["SparseConv2d", "export_sparse_conv", "is_eligible_conv"]


def is_eligible_conv(m: nn.Module) -> bool:
    """A plain 1x1, stride-1, unpadded, ungrouped, undilated 2-D convolution."""
    return (isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (1, 1) and tuple(m.stride) == (1, 1)
            and tuple(m.dilation) == (1, 1) and m.groups == 1
            and (m.padding == "valid" or tuple(m.padding) == (0, 0)))


class SparseConv2d(nn.Module):
    """Inference-only 1x1 convolution with a packed sparse weight (float32, CPU, NCHW, batch >= 1).

    The packed arrays are buffers, so ``state_dict`` carries them; packing happens once in
    :meth:`from_dense`.
    """

    def __init__(self, packed: SparseConvWeight, bias: torch.Tensor | None = None, activation: str | None = None):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"SparseConv2d: activation must be None, 'relu' or 'relu6', got {activation!r}")
        packed.validate()
        self.in_channels, self.out_channels, self.block, self.activation = packed.c_in, packed.c_out, packed.block, activation
        for name in ("nnz", "offsets", "idx_delta", "values"):
            self.register_buffer(name, torch.from_numpy(getattr(packed, name)))
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).contiguous().clone())

    @property
    def packed(self) -> SparseConvWeight:
        return SparseConvWeight(self.out_channels, self.in_channels, self.block, self.nnz.numpy(), self.offsets.numpy(),
                                self.idx_delta.numpy(), self.values.numpy())

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, block: int | str = "auto", activation: str | None = None) -> "SparseConv2d":
        """Packs ``conv``'s effective weight (masks of sparseforge.masking applied) and bias."""
        if not is_eligible_conv(conv):
            raise ValueError(f"SparseConv2d.from_dense(): argument 'conv' must be a 1x1 stride-1 unpadded Conv2d with "
                             f"groups=1, got {conv}")
        with torch.no_grad():
            w = conv.weight.detach().to(torch.float32).cpu()  # parametrized: the masked weight
            packed = SparseConvWeight.from_dense(w[:, :, 0, 0].numpy(), block=block)
            bias = None if conv.bias is None else conv.bias.detach().to(torch.float32).cpu()
        return cls(packed, bias, activation)

    def to_dense_weight(self) -> torch.Tensor:
        return torch.from_numpy(self.packed.to_dense()).reshape(self.out_channels, self.in_channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"SparseConv2d: input must be float32 CPU [N, {self.in_channels}, H, W], got "
                             f"{x.dtype} on {x.device} with shape {tuple(x.shape)}")
        lo, hi = ACTIVATIONS[self.activation]
        if eager_call(x):
            return run_plan(self._eager_plan(), x, self._buffers["bias"], self.out_channels, lo, hi)
        # The buffers go straight to the op, which keeps one checked plan per buffer set.
        return _sparse_conv1x1(x, self.nnz, self.offsets, self.idx_delta, self.values, self.bias, self.out_channels,
                               self.in_channels, self.block, lo, hi)

    def _eager_plan(self):
        # The op's plan cache, remembered here with the buffers' identities and in-place versions: a
        # load_state_dict (in-place copy) or a reassigned buffer gets a fresh plan.
        b = self._buffers  # one dict read instead of four nn.Module.__getattr__ calls (~0.5 us each)
        bufs = (b["nnz"], b["offsets"], b["idx_delta"], b["values"])
        key = tuple((id(t), t._version) for t in bufs)
        cached = self.__dict__.get("_plan_cache")
        if cached is None or cached[0] != key:
            cached = (key, _plan(*bufs, self.out_channels, self.in_channels, self.block))
            self.__dict__["_plan_cache"] = cached
        return cached[1]

    def extra_repr(self) -> str:
        p = self.packed
        return (f"{self.in_channels}, {self.out_channels}, block={self.block}, density={p.density:.3f}, "
                f"activation={self.activation}")


def _sparsity(conv: nn.Conv2d) -> float:
    w = conv.weight.detach()
    return 1.0 - float(torch.count_nonzero(w)) / w.numel()


def export_sparse_conv(model: nn.Module, min_sparsity: float = 0.5, block: int | str = "auto",
                       fold_bn: bool | str = False, fuse_activation: bool = False) -> nn.Module:
    """Swaps, in place, every eligible 1x1 conv at least ``min_sparsity`` sparse for a SparseConv2d;
    leaves every other module alone. Returns ``model`` (switch it to eval mode: SparseConv2d is inference-only).

    ``fold_bn``: fold each BatchNorm2d that follows a conv into it first (:func:`sparseforge.nn.fold_batchnorm`;
    the model must be in eval mode) -- ``True`` raises when the model cannot be traced, ``"auto"`` then warns
    and exports without folding.

    ``fuse_activation``: also move each ReLU / ReLU6 that directly follows a swapped conv (after folding)
    into the kernel's store (:func:`sparseforge.nn.fuse.fuse_activations`). Activation modules are often
    shared between call sites, so this returns a new ``torch.fx.GraphModule`` (same submodules and
    state_dict keys) instead of ``model``; use the return value. Raises RuntimeError if the model cannot be
    traced.
    """
    if not 0.0 <= min_sparsity <= 1.0:
        raise ValueError(f"export_sparse_conv(): argument 'min_sparsity' must be in [0, 1], got {min_sparsity}")
    if fold_bn not in (True, False, "auto"):
        raise ValueError(f"export_sparse_conv(): argument 'fold_bn' must be True, False or 'auto', got {fold_bn!r}")
    if fold_bn:
        try:
            fold_batchnorm(model)
        except RuntimeError as e:
            if fold_bn is True:
                raise
            warnings.warn(f"export_sparse_conv(): BatchNorm left unfolded: {e}", stacklevel=2)
    def swappable(m: nn.Module) -> bool:
        return is_eligible_conv(m) and m.weight.dtype == torch.float32 and _sparsity(m) >= min_sparsity

    result, fused = (fuse_activations(model, swappable) if fuse_activation else (model, {}))
    swaps = []
    for name, mod in model.named_modules():
        for child_name, child in mod.named_children():
            if swappable(child):
                swaps.append((mod, f"{name}.{child_name}" if name else child_name, child_name, child))
    for parent, path, child_name, child in swaps:
        setattr(parent, child_name, SparseConv2d.from_dense(child, block=block, activation=fused.get(path)))
    if result is not model:  # the GraphModule copied the old convs: point it at the swapped modules
        for path in (p for _, p, _, _ in swaps):
            parent_name, _, child_name = path.rpartition(".")
            owner = result.get_submodule(parent_name) if parent_name else result
            setattr(owner, child_name, model.get_submodule(path))
    return result
