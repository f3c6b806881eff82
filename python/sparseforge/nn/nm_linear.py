"""``NMLinear``: an ``nn.Linear`` whose weight is stored N:M sparse and run by the ``nm_gemm`` kernel,
with a per-shape dispatcher that falls back to dense ``F.linear`` wherever the sparse kernel would lose.

The dispatcher measures once per (weight shape, N:M, batch bucket, threads, ISA): the sparse op and
``F.linear`` on the same input, interleaved, best of a few repeats (robust to other jobs on a shared
machine); sparse runs if it is faster. The
decision is cached in-process (``dispatch_cache()``), and ``sparseforge.explain(model)`` shows it.
Force a choice with ``NMLinear(..., mode="sparse"|"dense")`` or the environment variable
``SPARSEFORGE_NM_DISPATCH=sparse|dense|auto`` (read on every call).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import _C
from ..formats.nm import NMSparse
from ..ops.nm_linear import nm_dense, nm_linear

__all__ = ["NMLinear", "export_nm", "is_nm_sparse", "Decision", "dispatch_cache", "clear_dispatch_cache"]

_MODES = ("auto", "sparse", "dense")


@dataclass
class Decision:
    choice: str  # "sparse" | "dense"
    ratio: float | None  # best dense time / best sparse time (> 1: sparse is faster); None when forced
    sparse_ms: float | None = None
    dense_ms: float | None = None
    reason: str = "measured"


_CACHE: dict[tuple, Decision] = {}


def dispatch_cache() -> dict[tuple, Decision]:
    """The in-process decisions, keyed by (out, in, n, m, batch bucket, torch threads, kernel threads, isa)."""
    return _CACHE


def clear_dispatch_cache() -> None:
    _CACHE.clear()


def batch_bucket(batch: int) -> int:
    """1 stays 1 (GEMV); larger batches round up to a power of two, capped at 256."""
    if batch <= 1:
        return 1
    return min(256, 1 << (int(batch) - 1).bit_length())


def _measure(sparse_fn, dense_fn, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Best-of-``repeats`` times (ms) of both, interleaved. On a shared machine other jobs only ever add
    time, so the minimum is the stable estimate of each path's own cost; a median can flip the decision
    when a burst of load hits one side."""
    with torch.no_grad():
        sparse_fn(x), dense_fn(x)  # warm up both (page faults, pool start)
        ts, td = [], []
        for _ in range(repeats):
            t = time.perf_counter(); sparse_fn(x); ts.append(time.perf_counter() - t)
            t = time.perf_counter(); dense_fn(x); td.append(time.perf_counter() - t)
    return 1e3 * min(ts), 1e3 * min(td)


def is_nm_sparse(w: torch.Tensor, n: int, m: int) -> bool:
    """True if the 2-D ``w`` has at most ``n`` nonzeros in every group of ``m`` along its last dimension."""
    if w.dim() != 2 or w.shape[1] % m:
        return False
    w = w.detach()
    if w.dtype == torch.float32 and w.device.type == "cpu" and w.is_contiguous():
        return bool((torch.from_numpy(_C.group_nnz(w.numpy(), m)) <= n).all())
    return bool(((w != 0).reshape(w.shape[0], -1, m).sum(-1) <= n).all())


class NMLinear(nn.Module):
    """Linear layer with an N:M sparse weight (groups along ``in_features``).

    ``values`` is a Parameter (fine-tunable: gradients reach the kept weights only), ``meta`` a buffer.
    """

    def __init__(self, weight: NMSparse, bias: torch.Tensor | None = None, *, mode: str = "auto"):
        super().__init__()
        if not isinstance(weight, NMSparse):
            raise TypeError(f"NMLinear: argument 'weight' must be an NMSparse, got {type(weight).__name__}")
        if weight.values.dtype not in (torch.float32, torch.bfloat16):
            raise TypeError(f"NMLinear: the kernel runs float32 or bfloat16 weights, got {weight.values.dtype}")
        if mode not in _MODES:
            raise ValueError(f"NMLinear: mode must be one of {_MODES}, got {mode!r}")
        self.out_features, self.in_features = int(weight.shape[0]), int(weight.shape[1])
        self.n, self.m = weight.n, weight.m
        self.mode = mode
        self.values = nn.Parameter(weight.values.detach().clone())
        self.register_buffer("meta", weight.meta.clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone().float())
        self._dense_cache: tuple[int, torch.Tensor] | None = None

    @classmethod
    def from_dense(cls, linear: nn.Linear, n: int = 2, m: int = 4, *, prune: bool = False, mode: str = "auto",
                   weight_dtype: torch.dtype = torch.float32) -> "NMLinear":
        """From an ``nn.Linear`` (masked or not: its effective ``weight`` is used). ``prune=False`` requires
        the weight to be N:M already (raises naming the first bad group); ``prune=True`` keeps the n largest.
        ``weight_dtype=torch.bfloat16`` stores the kept values in bf16 (activations and sums stay fp32)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"NMLinear.from_dense(): argument 'linear' must be an nn.Linear, got {type(linear).__name__}")
        w = linear.weight.detach()
        if w.dtype != torch.float32:
            raise TypeError(f"NMLinear.from_dense(): the weight must be float32, got {w.dtype}")
        weight = NMSparse.from_dense(w.cpu().contiguous(), n, m, prune=prune)
        if weight_dtype != torch.float32:
            weight = weight.to(weight_dtype)
        bias = None if linear.bias is None else linear.bias.detach().cpu()
        return cls(weight, bias, mode=mode)

    # -- views -----------------------------------------------------------------------------------------

    @property
    def weight_nm(self) -> NMSparse:
        return NMSparse(self.values.detach(), self.meta, (self.out_features, self.in_features), self.n, self.m, check=False)

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight (differentiable w.r.t. ``values``)."""
        return nm_dense(self.values, self.meta, self.n, self.m, self.in_features)

    def _dense_weight(self) -> torch.Tensor:
        if torch.is_grad_enabled() and self.values.requires_grad:
            return self.weight.float()  # training through the dense path: gradients reach `values`
        version = self.values._version
        if self._dense_cache is None or self._dense_cache[0] != version:
            with torch.no_grad():
                self._dense_cache = (version, self.weight.float().contiguous())
        return self._dense_cache[1]

    # -- dispatch -------------------------------------------------------------------------------------

    def _key(self, batch: int) -> tuple:
        return (self.out_features, self.in_features, self.n, self.m, batch_bucket(batch), torch.get_num_threads(),
                _C.num_threads(), _C.isa())

    def decide(self, batch: int = 1, *, repeats: int = 9) -> Decision:
        """The dispatcher's choice for inputs of ``batch`` rows (measured once, then cached)."""
        mode = os.environ.get("SPARSEFORGE_NM_DISPATCH", "").strip() or self.mode
        if mode not in _MODES:
            raise ValueError(f"SPARSEFORGE_NM_DISPATCH must be one of {_MODES}, got {mode!r}")
        if mode != "auto":
            return Decision(mode, None, reason="forced")
        key = self._key(batch)
        d = _CACHE.get(key)
        if d is None:
            if torch.compiler.is_compiling():
                return Decision("sparse", None, reason="not measured (inside torch.compile)")
            x = torch.randn(batch_bucket(batch), self.in_features)
            weight, bias = self.weight_nm, None if self.bias is None else self.bias.detach()
            with torch.no_grad():
                dense_w = self._dense_weight()  # builds the cached dense copy the fallback would use
            sparse_ms, dense_ms = _measure(lambda t: nm_linear(t, weight, bias), lambda t: F.linear(t, dense_w, bias),
                                           x, repeats)
            ratio = dense_ms / sparse_ms
            d = Decision("sparse" if ratio > 1.0 else "dense", ratio, sparse_ms, dense_ms)
            _CACHE[key] = d
            if d.choice == "sparse":
                self._dense_cache = None  # sparse wins: keep only the ~0.53x sparse bytes
        return d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.numel() // max(1, x.shape[-1]) if x.dim() else 1
        usable = x.dtype == torch.float32 and x.device.type == "cpu"
        if usable and self.decide(batch).choice == "sparse":
            return torch.ops.sparseforge.nm_linear(x, self.values, self.meta, self.bias, self.n, self.m, self.in_features)
        w = self._dense_weight()
        return F.linear(x, w if w.dtype == x.dtype else w.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"{self.n}:{self.m}, mode={self.mode}")


def export_nm(model: nn.Module, n: int = 2, m: int = 4, *, mode: str = "auto") -> nn.Module:
    """Swaps every eligible ``nn.Linear`` of ``model`` (in place) for :class:`NMLinear`.

    Eligible: float32 weight on CPU whose effective value (masks applied) is ``n:m`` sparse along
    ``in_features``. Others are left as they are. Returns ``model``.
    """
    if isinstance(model, nn.Linear):
        raise TypeError("export_nm(): pass a model that contains the Linear (the root module cannot be swapped); "
                        "use NMLinear.from_dense() for a single layer")
    swaps = []
    for name, module in model.named_modules():
        for child_name, child in module.named_children():
            if isinstance(child, nn.Linear) and not isinstance(child, NMLinear):
                w = child.weight
                if w.dtype == torch.float32 and w.device.type == "cpu" and w.shape[1] % m == 0 and is_nm_sparse(w, n, m):
                    swaps.append((module, child_name, child))
    for parent, child_name, child in swaps:
        setattr(parent, child_name, NMLinear.from_dense(child, n, m, mode=mode))
    return model
