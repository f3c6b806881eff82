"""A model on the ``wasm`` backend: its kernel-backed layers run inside the WebAssembly module.

``for_inference(model, "wasm")`` exports the model exactly as for ``cpu`` (the method's ``export()``),
then swaps every ``NMLinear`` and ``SparseConv2d`` for a layer that runs the same kernel in the wasm
module, with the weight copied into the module once (a plan). Everything else (dense layers, ReLU,
pooling) stays torch on the host: there is no wasm torch, and this is what a browser deployment of
sparseforge's kernels would look like next to a host runtime. Unlike ``NMLinear``'s dispatcher, a
wasm layer always runs the sparse kernel: the backend exists to measure that kernel, not to avoid it.
A model with no such layer cannot run on this backend (``NotImplementedError`` with the reason).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..nn.nm_linear import NMLinear
from ..nn.sparse_conv import SparseConv2d
from ..ops.sparse_conv1x1 import ACTIVATIONS
from .wasm import WasmKernels, kernels

__all__ = ["WasmNMLinear", "WasmSparseConv2d", "to_wasm"]


def _check_input(name: str, x: torch.Tensor) -> None:
    if x.dtype != torch.float32 or x.device.type != "cpu":
        raise TypeError(f"{name}: the wasm kernels take float32 CPU tensors, got {x.dtype} on {x.device}")


class WasmNMLinear(nn.Module):
    """Inference-only N:M linear layer run by the wasm module's nm_gemm (weights resident there)."""

    def __init__(self, layer: NMLinear, k: WasmKernels):
        super().__init__()
        self.in_features, self.out_features, self.n, self.m = layer.in_features, layer.out_features, layer.n, layer.m
        values = layer.values.detach().contiguous()
        bf16 = values.dtype == torch.bfloat16
        bias = None if layer.bias is None else layer.bias.detach().float().contiguous().numpy()
        self.plan = k.nm_gemm_plan((values.view(torch.uint16) if bf16 else values).numpy(),
                                   layer.meta.contiguous().numpy(), self.n, self.m, self.in_features, bias,
                                   "bf16" if bf16 else "f32")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input("WasmNMLinear", x)
        y = self.plan.run(x.detach().reshape(-1, self.in_features).contiguous().numpy())
        return torch.from_numpy(y).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.n}:{self.m}, wasm"


class WasmSparseConv2d(nn.Module):
    """Inference-only sparse 1x1 convolution run by the wasm module's spmm_conv (weights resident there)."""

    def __init__(self, layer: SparseConv2d, k: WasmKernels):
        super().__init__()
        self.in_channels, self.out_channels = layer.in_channels, layer.out_channels
        self.lo, self.hi = ACTIVATIONS[layer.activation]
        self.plan = k.spmm_conv_plan(layer.nnz.numpy(), layer.offsets.numpy(), layer.idx_delta.numpy(),
                                     layer.values.numpy(), layer.out_channels, layer.in_channels, layer.block)
        self.bias_np = None if layer.bias is None else layer.bias.detach().float().contiguous().numpy()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input("WasmSparseConv2d", x)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"WasmSparseConv2d: input must be [N, {self.in_channels}, H, W], got {tuple(x.shape)}")
        n, c, h, w = x.shape
        y = self.plan.run(x.detach().contiguous().numpy().reshape(n, c, h * w), self.bias_np, self.lo, self.hi)
        return torch.from_numpy(y).reshape(n, self.out_channels, h, w)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, wasm"


def to_wasm(model: nn.Module, k: WasmKernels | None = None) -> nn.Module:
    """Swaps, in place, every NMLinear / SparseConv2d of an exported ``model`` for its wasm twin."""
    k = k or kernels()
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if isinstance(child, (NMLinear, SparseConv2d))]
    if not swaps:
        raise NotImplementedError("no layer of the exported model runs on a sparseforge kernel (no NMLinear or "
                                  "SparseConv2d), so nothing would run in wasm")
    for parent, name, child in swaps:
        twin = WasmNMLinear(child, k) if isinstance(child, NMLinear) else WasmSparseConv2d(child, k)
        setattr(parent, name, twin)
    return model
