"""CSR: compressed sparse rows, scipy-compatible, with sorted unique column indices guaranteed.

``CSR(indptr, indices, data, shape)`` holds three 1-D numpy arrays:

* ``indptr``  int32 or int64 ``[rows + 1]``, non-decreasing from 0 to nnz;
* ``indices`` the same dtype as ``indptr``, ``[nnz]``, every row's columns in ``[0, cols)``, strictly
  increasing (sorted, no duplicates);
* ``data``    float32 or float64 ``[nnz]``.

The arrays are used as given (no copy, no cast); :meth:`validate` (run by the constructor unless
``check=False``) raises ``TypeError``/``ValueError`` naming the offending argument and, for structure
errors, the first offending row.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CSR"]

_INDEX_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))
_VALUE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class CSR:
    """A CSR matrix ``[rows, cols]`` over numpy arrays; see the module docstring for the contract."""

    __slots__ = ("indptr", "indices", "data", "shape")

    def __init__(self, indptr, indices, data, shape, *, check: bool = True):
        self.indptr, self.indices, self.data = indptr, indices, data
        self.shape = tuple(int(s) for s in shape)
        if check:
            self.validate()

    # -- checks -----------------------------------------------------------------------------------
    def validate(self) -> "CSR":
        """Checks types, dtypes, lengths and the canonical structure; returns self."""
        if len(self.shape) != 2 or min(self.shape) < 0:
            raise ValueError(f"CSR: shape must be (rows, cols) with both >= 0, got {self.shape}")
        rows, cols = self.shape
        for name, arr, dts in (("indptr", self.indptr, _INDEX_DTYPES), ("indices", self.indices, _INDEX_DTYPES),
                               ("data", self.data, _VALUE_DTYPES)):
            if not isinstance(arr, np.ndarray):
                raise TypeError(f"CSR: '{name}' must be a numpy.ndarray, got {type(arr).__name__}")
            if arr.dtype not in dts:
                raise TypeError(f"CSR: '{name}' must have dtype {' or '.join(map(str, dts))}, got {arr.dtype}")
            if arr.ndim != 1:
                raise ValueError(f"CSR: '{name}' must be 1-D, got shape {arr.shape}")
            if not arr.flags.c_contiguous:
                raise ValueError(f"CSR: '{name}' must be contiguous")
        if self.indices.dtype != self.indptr.dtype:
            raise TypeError(f"CSR: 'indices' ({self.indices.dtype}) and 'indptr' ({self.indptr.dtype}) must share a dtype")
        if self.indptr.shape[0] != rows + 1:
            raise ValueError(f"CSR: 'indptr' must have rows + 1 = {rows + 1} entries for shape {self.shape}, "
                             f"got {self.indptr.shape[0]}")
        nnz = self.indices.shape[0]
        if self.data.shape[0] != nnz:
            raise ValueError(f"CSR: 'indices' has {nnz} entries but 'data' has {self.data.shape[0]}")
        p = self.indptr
        if p[0] != 0:
            raise ValueError(f"CSR: 'indptr[0]' must be 0, got {p[0]}")
        if p[-1] != nnz:
            raise ValueError(f"CSR: 'indptr[-1]' must equal len(indices) = {nnz}, got {p[-1]}")
        steps = np.diff(p)
        if (steps < 0).any():
            i = int(np.argmax(steps < 0))
            raise ValueError(f"CSR: 'indptr' must be non-decreasing, but indptr[{i + 1}] = {p[i + 1]} < indptr[{i}] = {p[i]}")
        if nnz:
            j = self.indices
            bad = (j < 0) | (j >= cols)
            if bad.any():
                t = int(np.argmax(bad))
                raise ValueError(f"CSR: 'indices' row {self._row_of(t)} has column index {j[t]} outside [0, {cols})")
            new_row = np.zeros(nnz, dtype=bool)
            new_row[p[:-1][p[:-1] < nnz]] = True
            same = ~new_row[1:]
            d = np.diff(j)
            for cond, what in ((same & (d == 0), "duplicate column index"), (same & (d < 0), "unsorted column indices")):
                if cond.any():
                    t = int(np.argmax(cond)) + 1
                    raise ValueError(f"CSR: 'indices' row {self._row_of(t)} has {what} ({j[t]} after {j[t - 1]}); "
                                     "CSR here is canonical: sum duplicates and sort each row first")
        return self

    def _row_of(self, t: int) -> int:
        return int(np.searchsorted(self.indptr, t, side="right") - 1)

    # -- facts ------------------------------------------------------------------------------------
    @property
    def nnz(self) -> int:
        return int(self.indices.shape[0])

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def nbytes(self) -> int:
        """Bytes of the three arrays."""
        return int(self.indptr.nbytes + self.indices.nbytes + self.data.nbytes)

    def __repr__(self) -> str:
        return (f"CSR(shape={self.shape}, nnz={self.nnz}, dtype={self.data.dtype}, "
                f"index_dtype={self.indptr.dtype})")

    def __matmul__(self, other: "CSR") -> "CSR":
        from ..ops.spgemm import spgemm

        return spgemm(self, other)

    def to_dense(self) -> np.ndarray:
        out = np.zeros(self.shape, dtype=self.data.dtype)
        rows = np.repeat(np.arange(self.shape[0]), np.diff(self.indptr))
        out[rows, self.indices] = self.data
        return out

    # -- interop ----------------------------------------------------------------------------------
    @classmethod
    def from_scipy(cls, m) -> "CSR":
        """Wraps a scipy CSR matrix/array's arrays (no copy). Raises if it is not canonical CSR
        (call ``m.sum_duplicates()``, which also sorts, first)."""
        import scipy.sparse as sp

        if not sp.issparse(m) or m.format != "csr":
            raise TypeError(f"CSR.from_scipy: expected a scipy CSR matrix or array, got {type(m).__name__}"
                            + (f" in {m.format} format (call .tocsr())" if sp.issparse(m) else ""))
        return cls(m.indptr, m.indices, m.data, m.shape)

    def to_scipy(self, kind: str = "matrix"):
        """A ``scipy.sparse.csr_matrix`` (or ``csr_array`` with ``kind='array'``) sharing the arrays."""
        import scipy.sparse as sp

        ctor = sp.csr_array if kind == "array" else sp.csr_matrix
        m = ctor(self.shape, dtype=self.data.dtype)
        # Assigned rather than passed to the constructor, which would narrow int64 indices to int32.
        m.data, m.indices, m.indptr = self.data, self.indices, self.indptr
        m.has_sorted_indices = True
        return m

    @classmethod
    def from_torch(cls, t) -> "CSR":
        """Wraps a 2-D CPU ``torch.sparse_csr`` tensor's buffers (no copy; values are detached)."""
        import torch

        if not isinstance(t, torch.Tensor) or t.layout != torch.sparse_csr:
            raise TypeError(f"CSR.from_torch: expected a torch sparse CSR tensor, got "
                            f"{type(t).__name__}{'' if not isinstance(t, torch.Tensor) else ' with layout ' + str(t.layout)}")
        if t.dim() != 2 or t.values().dim() != 1:
            raise ValueError(f"CSR.from_torch: only 2-D CSR tensors without batch or dense dimensions, got shape "
                             f"{tuple(t.shape)}")
        if t.device.type != "cpu":
            raise ValueError(f"CSR.from_torch: the tensor is on {t.device}; move it to the CPU explicitly")
        return cls(t.crow_indices().numpy(), t.col_indices().numpy(), t.values().detach().numpy(), tuple(t.shape))

    def to_torch(self):
        """A 2-D ``torch.sparse_csr`` tensor sharing the arrays."""
        import torch

        return torch.sparse_csr_tensor(torch.from_numpy(self.indptr), torch.from_numpy(self.indices),
                                       torch.from_numpy(self.data), self.shape, check_invariants=False)
