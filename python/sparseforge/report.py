"""Per-layer sparsity accounting: density, N:M validity and storage bytes, summed over the model."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn as nn

from . import _C
from ._table import format_table
from .patterns import as_rows

__all__ = ["LayerSparsity", "SparsityReport", "sparsity_report", "nm_counts"]

# Checked from sparsest to densest; the first that holds is the layer's tightest N:M pattern.
_NM_CANDIDATES = ((1, 32), (1, 16), (1, 8), (2, 16), (1, 4), (2, 8), (1, 2), (2, 4), (4, 8))


def nm_counts(w: torch.Tensor, m: int) -> np.ndarray:
    """Nonzeros per N:M group (groups along the reduction dim), int32 ``[rows, K // m]``, via ``_C``."""
    rows = as_rows(w.detach()).to(device="cpu", dtype=torch.float32).contiguous()
    return _C.group_nnz(rows.numpy(), m)


def _group_max(w: torch.Tensor) -> dict[int, int]:
    """Most nonzeros found in any group of m, for each m in (2, 4, 8, 16, 32) dividing the reduction size."""
    k = as_rows(w).shape[1]
    return {m: (int(nm_counts(w, m).max()) if w.numel() else 0) for m in (2, 4, 8, 16, 32) if k % m == 0}


@dataclasses.dataclass
class LayerSparsity:
    name: str
    kind: str
    shape: tuple
    numel: int
    nnz: int
    group_max: dict  # m -> most nonzeros in any group of m consecutive reduction-dim values

    @property
    def nm(self) -> str | None:
        """Tightest N:M pattern the layer satisfies (fewest kept per group), e.g. "2:4"."""
        for n, m in _NM_CANDIDATES:
            if self.nm_valid(n, m):
                return f"{n}:{m}"
        return None

    def nm_valid(self, n: int, m: int) -> bool:
        if m in self.group_max:
            return self.group_max[m] <= n
        return False

    @property
    def density(self) -> float:
        return self.nnz / self.numel if self.numel else 0.0

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    def storage_bytes(self, value_bytes: int = 4) -> dict:
        """Bytes to store this weight as dense, CSR and N:M (values + index bits).

        CSR counts int16 column indices when a row has at most 65536 columns (as sparse inference
        kernels store them), int32 otherwise, plus an int32 row pointer.
        """
        rows = self.shape[0]
        cols = self.numel // rows if rows else 0
        index_bytes = 2 if cols <= 65536 else 4
        out = {"dense": self.numel * value_bytes,
               "csr": self.nnz * (value_bytes + index_bytes) + (rows + 1) * 4}
        if self.nm:
            n, m = map(int, self.nm.split(":"))
            kept = self.numel * n // m
            out["nm"] = kept * value_bytes + (kept * max(1, (m - 1).bit_length()) + 7) // 8
        return out

    def best_bytes(self, value_bytes: int = 4) -> int:
        return min(self.storage_bytes(value_bytes).values())


@dataclasses.dataclass
class SparsityReport:
    layers: list[LayerSparsity]

    @property
    def numel(self) -> int:
        return sum(layer.numel for layer in self.layers)

    @property
    def nnz(self) -> int:
        return sum(layer.nnz for layer in self.layers)

    @property
    def density(self) -> float:
        return self.nnz / self.numel if self.numel else 0.0

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    def dense_bytes(self) -> int:
        return sum(layer.storage_bytes()["dense"] for layer in self.layers)

    def sparse_bytes(self) -> int:
        """Bytes if each layer is stored in its smallest format (dense, CSR or N:M)."""
        return sum(layer.best_bytes() for layer in self.layers)

    def nm_valid(self, n: int, m: int) -> bool:
        """True when every layer satisfies N:M with at most n nonzeros per group of m."""
        return bool(self.layers) and all(layer.nm_valid(n, m) for layer in self.layers)

    def __getitem__(self, name: str) -> LayerSparsity:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {"layers": [dict(dataclasses.asdict(x), density=x.density, nm=x.nm) for x in self.layers],
                "numel": self.numel, "nnz": self.nnz, "density": self.density,
                "dense_bytes": self.dense_bytes(), "sparse_bytes": self.sparse_bytes()}

    def __str__(self) -> str:
        rows = [[x.name, x.kind, "x".join(map(str, x.shape)), f"{x.numel:,}", f"{x.density:.4f}", x.nm or "-"]
                for x in self.layers]
        rows.append(["total", "", "", f"{self.numel:,}", f"{self.density:.4f}", ""])
        return format_table(["layer", "type", "shape", "params", "density", "N:M"], rows)


@torch.no_grad()
def sparsity_report(model: nn.Module) -> SparsityReport:
    """Density and N:M validity of every weight with 2+ dimensions in ``model`` (masks applied).

    Only matrices and convolution kernels are counted: biases and norm scales stay dense in every
    method, so including them would blur the number users compare against papers.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    layers = []
    for fqn, module in model.named_modules():
        w = getattr(module, "weight", None)
        if not isinstance(w, torch.Tensor) or w.dim() < 2:
            continue
        w = w.detach()
        kind = type(module).__bases__[0] if hasattr(module, "parametrizations") else type(module)
        layers.append(LayerSparsity(fqn, kind.__name__, tuple(w.shape), w.numel(),
                                    int(torch.count_nonzero(w)), _group_max(w)))
    return SparsityReport(layers)
