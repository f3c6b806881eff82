"""Packed sparse weight of a 1x1 convolution for the CHW SpMM kernel (``_C.spmm_conv``).

The layout is XNNPACK's (Fast Sparse ConvNets) extended to SparseByteNN's output-channel blocks: the
output channels are grouped in blocks of ``block`` (1, 2 or 4) consecutive channels that share their
input-channel indices. Per block: a nonzero count (``nnz``), and per entry an input-channel delta
(``idx_delta``, the first entry of every block absolute so threads can start at any block) and
``block`` values (zero-filled where one row of the block lacks that input channel). ``offsets`` are the
prefix sums of ``nnz``. Packing happens once, at export time.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

__all__ = ["SparseConvWeight"]

_BLOCKS = (1, 2, 4)


@dataclass(frozen=True)
class SparseConvWeight:
    c_out: int
    c_in: int
    block: int
    nnz: np.ndarray  # int32 [n_blocks]
    offsets: np.ndarray  # int32 [n_blocks + 1]
    idx_delta: np.ndarray  # int32 [entries]
    values: np.ndarray  # float32 [entries * block]

    # ------------------------------------------------------------------ packing
    @classmethod
    def from_dense(cls, weight, block: int | str = 1) -> "SparseConvWeight":
        """Packs a dense [c_out, c_in] (or [c_out, c_in, 1, 1]) float weight; zeros are dropped.

        ``block="auto"`` takes the largest of 4, 2, 1 for which the weight is block-valid (every block of
        output channels shares its zero pattern), so no zeros are stored.
        """
        w = weight.detach().cpu().numpy() if hasattr(weight, "detach") else np.asarray(weight)
        if w.ndim == 4:
            if w.shape[2:] != (1, 1):
                raise ValueError(f"SparseConvWeight.from_dense(): argument 'weight' must be a 1x1 kernel, got shape {w.shape}")
            w = w[:, :, 0, 0]
        if w.ndim != 2:
            raise ValueError(f"SparseConvWeight.from_dense(): argument 'weight' must be 2-D [c_out, c_in], got shape {w.shape}")
        if not np.issubdtype(w.dtype, np.floating):
            raise TypeError(f"SparseConvWeight.from_dense(): argument 'weight' must be floating point, got {w.dtype}")
        if not np.all(np.isfinite(w)):
            raise ValueError("SparseConvWeight.from_dense(): argument 'weight' has NaN or inf entries")
        w = w.astype(np.float32)
        c_out, c_in = w.shape
        if block == "auto":
            block = next(b for b in (4, 2, 1) if cls._block_valid(w, b))
        if block not in _BLOCKS:
            raise ValueError(f"SparseConvWeight.from_dense(): argument 'block' must be 1, 2, 4 or 'auto', got {block!r}")
        nb = -(-c_out // block)
        wp = np.zeros((nb * block, c_in), np.float32)
        wp[:c_out] = w
        wp = wp.reshape(nb, block, c_in)
        keep = (wp != 0).any(axis=1)  # [nb, c_in]
        nnz = keep.sum(axis=1).astype(np.int32)
        offsets = np.zeros(nb + 1, np.int32)
        np.cumsum(nnz, out=offsets[1:])
        bi, ki = np.nonzero(keep)  # row-major: sorted by block, then channel
        delta = np.diff(ki, prepend=0).astype(np.int32)
        first = offsets[:-1][nnz > 0]
        delta[first] = ki[first]
        values = np.ascontiguousarray(wp[bi, :, ki].reshape(-1), dtype=np.float32)
        return cls(int(c_out), int(c_in), int(block), nnz, offsets, delta, values)

    @staticmethod
    def _block_valid(w: np.ndarray, block: int) -> bool:
        c_out, c_in = w.shape
        if block == 1:
            return True
        nb = -(-c_out // block)
        m = np.zeros((nb * block, c_in), bool)
        m[:c_out] = w != 0
        m = m.reshape(nb, block, c_in)
        full = m.all(axis=1) | ~m.any(axis=1)
        return bool(full[: c_out // block].all())  # a partial last block is packed zero-filled anyway

    # ------------------------------------------------------------------ inspection
    @property
    def n_blocks(self) -> int:
        return int(self.nnz.shape[0])

    @property
    def entries(self) -> int:
        return int(self.offsets[-1])

    @property
    def nbytes(self) -> int:
        return int(self.nnz.nbytes + self.offsets.nbytes + self.idx_delta.nbytes + self.values.nbytes)

    @property
    def density(self) -> float:
        """Stored values over c_out * c_in (zero fill of partial blocks included)."""
        return float(np.count_nonzero(self.values)) / float(self.c_out * self.c_in)

    def indices(self) -> np.ndarray:
        """Absolute input-channel index of every entry (undoes the delta coding)."""
        idx = self.idx_delta.astype(np.int64)
        if idx.size == 0:
            return idx
        starts = self.offsets[:-1][self.nnz > 0]  # first entry of every non-empty block
        seg = np.zeros(idx.shape[0], np.int64)
        seg[starts] = 1
        seg = np.cumsum(seg) - 1  # which non-empty block each entry belongs to
        csum = np.cumsum(idx)
        before = np.concatenate([[0], csum])[starts]  # deltas summed before each block's first entry
        return csum - before[seg]

    def to_dense(self) -> np.ndarray:
        """The [c_out, c_in] float32 weight this packs."""
        nb, B = self.n_blocks, self.block
        out = np.zeros((nb, B, self.c_in), np.float32)
        bi = np.repeat(np.arange(nb), self.nnz)
        out[bi, :, self.indices()] = self.values.reshape(-1, B)
        return out.reshape(nb * B, self.c_in)[: self.c_out]

    def validate(self) -> "SparseConvWeight":
        """Raises ValueError when the arrays disagree with each other; returns self."""
        def err(msg):
            raise ValueError(f"SparseConvWeight: {msg}")
        if self.block not in _BLOCKS:
            err(f"block must be 1, 2 or 4, got {self.block}")
        for name, dt in (("nnz", np.int32), ("offsets", np.int32), ("idx_delta", np.int32), ("values", np.float32)):
            a = getattr(self, name)
            if not isinstance(a, np.ndarray) or a.dtype != dt or a.ndim != 1 or not a.flags.c_contiguous:
                err(f"'{name}' must be a 1-D C-contiguous {np.dtype(dt).name} numpy array")
        nb = -(-self.c_out // self.block)
        if self.nnz.shape[0] != nb or self.offsets.shape[0] != nb + 1:
            err(f"'nnz' needs {nb} and 'offsets' {nb + 1} entries for c_out={self.c_out}, block={self.block}")
        if self.offsets[0] != 0 or np.any(np.diff(self.offsets) != self.nnz) or np.any(self.nnz > self.c_in):
            err("'offsets' must be the prefix sums of 'nnz' (each count <= c_in)")
        if self.idx_delta.shape[0] != self.entries or self.values.shape[0] != self.entries * self.block:
            err("'idx_delta' / 'values' lengths disagree with offsets[-1]")
        k = self.indices()
        if k.size and (k.min() < 0 or k.max() >= self.c_in):
            err(f"input-channel indices must lie in [0, {self.c_in})")
        return self

    @cached_property
    def plan(self):
        """The weight checked once and owned by the compiled core (``_C.SpmmConvPlan``)."""
        from sparseforge import _C

        return _C.SpmmConvPlan(*self.arrays())

    def arrays(self) -> tuple:
        """Positional arguments of ``_C.spmm_conv`` after ``x``."""
        return (self.nnz, self.offsets, self.idx_delta, self.values, self.c_out, self.c_in, self.block)

    def __repr__(self) -> str:
        return (f"SparseConvWeight(c_out={self.c_out}, c_in={self.c_in}, block={self.block}, "
                f"entries={self.entries}, density={self.density:.3f}, nbytes={self.nbytes})")
