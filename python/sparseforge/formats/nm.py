"""N:M structured-sparse weights: kept values plus packed in-group indices.

Layout (the compiled ``nm_gemm`` kernel reads exactly this, nothing is repacked per call):

* ``values``: ``[rows, K // m * n]``, the ``n`` kept values of every group of ``m`` consecutive entries
  along the reduction dimension K, in ascending index order. A group with fewer than ``n`` nonzeros keeps
  explicit zeros (at its lowest unused indices).
* ``meta``: ``uint8 [rows, ceil(K // m * n * bits / 8)]`` with ``bits = ceil(log2 m)`` (2 for 2:4): the
  in-group index of every kept value, packed LSB-first as one bit stream per row.

Groups run along the input dimension, as in :mod:`sparseforge.patterns` (``nm_mask``, ``as_rows``).
For 2:4 fp32 the format takes ``0.5 + 1/32 = 0.53125`` of the dense bytes.

CUTLASS interop: :meth:`NMSparse.to_cutlass` / :meth:`NMSparse.from_cutlass` convert to and from the
(compressed values, reordered metadata) pair that ``torch.sparse.to_sparse_semi_structured`` uses with the
CUTLASS backend: 2:4 for float16/bfloat16, and 1:2 for float32 (CUTLASS's fp32 sparse tensor cores pair
elements). ``torch.sparse._semi_structured_conversions`` is the oracle the tests compare against.
"""

from __future__ import annotations

import math

import torch

__all__ = ["NMSparse", "index_bits"]

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def index_bits(m: int) -> int:
    """Bits per kept value's index: ``ceil(log2 m)`` (at least 1)."""
    return max(1, math.ceil(math.log2(m)))


def _check_nm(n: int, m: int) -> None:
    if not (isinstance(n, int) and isinstance(m, int)):
        raise TypeError(f"N:M needs integer n and m, got n={n!r}, m={m!r}")
    if not (2 <= m <= 64 and 1 <= n <= m):
        raise ValueError(f"N:M needs 2 <= m <= 64 and 1 <= n <= m, got {n}:{m}")


def _meta_row_bytes(k: int, n: int, m: int) -> int:
    return (k // m * n * index_bits(m) + 7) // 8


def _pack(idx: torch.Tensor, bits: int) -> torch.Tensor:
    """``idx [rows, nnz]`` (values < 2**bits) -> ``uint8 [rows, ceil(nnz * bits / 8)]``, LSB-first."""
    rows, nnz = idx.shape
    shifts = torch.arange(bits, dtype=torch.int64)
    stream = ((idx.to(torch.int64).unsqueeze(-1) >> shifts) & 1).reshape(rows, nnz * bits)
    pad = (-stream.shape[1]) % 8
    if pad:
        stream = torch.cat([stream, stream.new_zeros(rows, pad)], dim=1)
    weights = 1 << torch.arange(8, dtype=torch.int64)
    return (stream.reshape(rows, -1, 8) * weights).sum(-1).to(torch.uint8)


def _unpack(meta: torch.Tensor, nnz: int, bits: int) -> torch.Tensor:
    """Inverse of :func:`_pack`: ``int64 [rows, nnz]``."""
    rows = meta.shape[0]
    stream = ((meta.to(torch.int64).unsqueeze(-1) >> torch.arange(8)) & 1).reshape(rows, -1)[:, : nnz * bits]
    return (stream.reshape(rows, nnz, bits) << torch.arange(bits)).sum(-1)


def _cutlass_meta_offsets(rows: int, meta_ncols: int) -> torch.Tensor:
    """Scatter offsets of CUTLASS's ColumnMajorInterleaved<2> int16 metadata layout (reorder_meta in
    CUTLASS's host_reorder.h), for int16 metadata."""
    dst_rows = torch.arange(rows)[:, None].repeat(1, meta_ncols)
    dst_cols = torch.arange(meta_ncols).repeat(rows, 1)
    group, interweave = 32, 4
    dst_rows = dst_rows // group * group + (dst_rows % 8) * interweave + (dst_rows % group) // 8
    topright = ((dst_rows % 2 == 0) & (dst_cols % 2 == 1)).to(torch.int64)
    bottomleft = ((dst_rows % 2 == 1) & (dst_cols % 2 == 0)).to(torch.int64)
    dst_rows = dst_rows + topright - bottomleft
    dst_cols = dst_cols - (topright - bottomleft)
    return ((dst_cols // 2) * rows * 2 + dst_rows * 2 + dst_cols % 2).reshape(-1)


class NMSparse:
    """An N:M sparse 2-D weight ``[rows, K]`` (groups of ``m`` along K keep at most ``n`` values).

    Build with :meth:`from_dense`; ``values`` / ``meta`` are plain tensors (see the module docstring).
    """

    def __init__(self, values: torch.Tensor, meta: torch.Tensor, shape, n: int, m: int, *, check: bool = True):
        _check_nm(n, m)
        self.values = values
        self.meta = meta
        self.shape = torch.Size(tuple(int(s) for s in shape))
        self.n, self.m = n, m
        if check:
            self.validate()

    # -- construction -----------------------------------------------------------------------------

    @classmethod
    def from_dense(cls, w: torch.Tensor, n: int, m: int, *, prune: bool = False) -> "NMSparse":
        """Packs a 2-D ``[rows, K]`` weight.

        ``prune=False`` (default): ``w`` is declared N:M sparse already; a group with more than ``n``
        nonzeros raises ValueError naming it. ``prune=True``: keeps the ``n`` largest ``|w|`` of every
        group (ties by lower index) and drops the rest.
        """
        _check_nm(n, m)
        if not isinstance(w, torch.Tensor):
            raise TypeError(f"NMSparse.from_dense(): argument 'w' must be a torch.Tensor, got {type(w).__name__}")
        if w.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"NMSparse.from_dense(): argument 'w' must be float32, float16 or bfloat16, got {w.dtype}")
        if w.dim() != 2:
            raise ValueError(f"NMSparse.from_dense(): argument 'w' must be 2-D [rows, K], got shape {tuple(w.shape)}")
        if w.is_sparse or w.layout != torch.strided:
            raise TypeError("NMSparse.from_dense(): argument 'w' must be a dense (strided) tensor")
        rows, k = w.shape
        if k % m:
            raise ValueError(f"NMSparse.from_dense(): argument 'w' has K={k} columns, which is not a multiple of m={m}")
        w = w.detach().cpu()
        groups = w.reshape(rows, k // m, m)
        nonzero = groups != 0
        if prune:
            key = groups.abs().float().nan_to_num(nan=float("inf"))
            order = torch.sort(-key, dim=-1, stable=True).indices
        else:
            counts = nonzero.sum(-1)
            bad = (counts > n).nonzero()
            if bad.numel():
                r, g = bad[0].tolist()
                raise ValueError(
                    f"NMSparse.from_dense(): weight is not {n}:{m} sparse: {bad.shape[0]} group(s) have more than "
                    f"{n} nonzeros, first at row {r}, columns {g * m}..{g * m + m - 1} ({counts[r, g].item()} "
                    f"nonzeros); pass prune=True to keep the {n} largest per group")
            order = torch.sort((~nonzero).to(torch.int8), dim=-1, stable=True).indices
        idx = torch.sort(order[..., :n], dim=-1).values  # [rows, groups, n], ascending
        values = groups.gather(-1, idx).reshape(rows, k // m * n).contiguous()
        meta = _pack(idx.reshape(rows, -1), index_bits(m))
        return cls(values, meta, (rows, k), n, m, check=False)

    def to_dense(self) -> torch.Tensor:
        rows, k = self.shape
        idx = self.indices().reshape(rows, k // self.m, self.n)
        out = torch.zeros(rows, k // self.m, self.m, dtype=self.values.dtype, device=self.values.device)
        out.scatter_(-1, idx.to(out.device), self.values.reshape(rows, k // self.m, self.n))
        return out.reshape(rows, k)

    def indices(self) -> torch.Tensor:
        """In-group index of every kept value, ``int64 [rows, K // m * n]``."""
        rows, k = self.shape
        return _unpack(self.meta.cpu(), k // self.m * self.n, index_bits(self.m))

    def mask(self) -> torch.Tensor:
        """Boolean ``[rows, K]`` of the positions the format keeps (its explicit zeros included)."""
        rows, k = self.shape
        idx = self.indices().reshape(rows, k // self.m, self.n)
        out = torch.zeros(rows, k // self.m, self.m, dtype=torch.bool)
        out.scatter_(-1, idx, True)
        return out.reshape(rows, k)

    # -- facts --------------------------------------------------------------------------------------

    @property
    def nbytes(self) -> int:
        return self.values.numel() * self.values.element_size() + self.meta.numel() * self.meta.element_size()

    @property
    def dense_nbytes(self) -> int:
        return self.shape.numel() * self.values.element_size()

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    def validate(self) -> "NMSparse":
        """Checks shapes, dtypes, layout and that every group's indices are distinct, ascending and < m."""
        n, m = self.n, self.m
        if len(self.shape) != 2:
            raise ValueError(f"NMSparse: shape must be 2-D [rows, K], got {tuple(self.shape)}")
        rows, k = self.shape
        if k % m:
            raise ValueError(f"NMSparse: K={k} is not a multiple of m={m}")
        if not isinstance(self.values, torch.Tensor) or self.values.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"NMSparse: values must be a float32/float16/bfloat16 tensor, got "
                            f"{getattr(self.values, 'dtype', type(self.values).__name__)}")
        if not isinstance(self.meta, torch.Tensor) or self.meta.dtype != torch.uint8:
            raise TypeError(f"NMSparse: meta must be a uint8 tensor, got {getattr(self.meta, 'dtype', type(self.meta).__name__)}")
        if tuple(self.values.shape) != (rows, k // m * n):
            raise ValueError(f"NMSparse: values has shape {tuple(self.values.shape)}, expected {(rows, k // m * n)}")
        if tuple(self.meta.shape) != (rows, _meta_row_bytes(k, n, m)):
            raise ValueError(f"NMSparse: meta has shape {tuple(self.meta.shape)}, expected {(rows, _meta_row_bytes(k, n, m))}")
        if not (self.values.is_contiguous() and self.meta.is_contiguous()):
            raise ValueError("NMSparse: values and meta must be contiguous")
        idx = self.indices().reshape(rows, k // m, n)
        if idx.numel():
            if int(idx.max()) >= m:
                raise ValueError(f"NMSparse: meta holds an index >= m={m}")
            if n > 1 and not bool((idx[..., 1:] > idx[..., :-1]).all()):
                raise ValueError("NMSparse: the indices within a group must be distinct and ascending")
        return self

    def __repr__(self) -> str:
        return (f"NMSparse(shape={tuple(self.shape)}, {self.n}:{self.m}, dtype={self.values.dtype}, "
                f"nbytes={self.nbytes} ({self.nbytes / max(1, self.dense_nbytes):.3f}x dense))")

    def to(self, dtype: torch.dtype) -> "NMSparse":
        return NMSparse(self.values.to(dtype), self.meta, self.shape, self.n, self.m, check=False)

    # -- CUTLASS (torch.sparse.to_sparse_semi_structured) interop -------------------------------------

    def to_cutlass(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(compressed [rows, K/2], meta_reordered int16 [rows, K/16 or K/8])`` as produced by
        ``torch.sparse._semi_structured_conversions.sparse_semi_structured_from_dense_cutlass``.

        float16/bfloat16 need 2:4, float32 needs 1:2 (CUTLASS's fp32 sparsity pairs elements); rows must
        be a multiple of 32 and K of 16 (fp16/bf16) or 8 (fp32), as CUTLASS requires.
        """
        rows, k = self.shape
        fp32 = self.values.dtype == torch.float32
        want = (1, 2) if fp32 else (2, 4)
        if (self.n, self.m) != want:
            raise ValueError(f"to_cutlass(): {self.values.dtype} weights use the {want[0]}:{want[1]} CUTLASS layout, "
                             f"this one is {self.n}:{self.m}")
        quads = 4  # int16 metadata: 4 nibbles per element
        ksparse = 2 if fp32 else 4
        if rows % 32 or k % (ksparse * quads):
            raise ValueError(f"to_cutlass(): CUTLASS needs rows % 32 == 0 and K % {ksparse * quads} == 0, "
                             f"got shape {tuple(self.shape)}")
        idx = self.indices()
        if fp32:  # torch encodes a kept pair element i as the quad [i*2, i*2+1]
            nib = torch.where(idx == 0, 0b0100, 0b1110)
        else:
            idx = idx.reshape(rows, -1, 2)
            nib = idx[..., 0] | (idx[..., 1] << 2)
        meta_ncols = k // (ksparse * quads)
        nib = nib.reshape(rows, meta_ncols, quads)
        meta = (nib[..., 0] | (nib[..., 1] << 4) | (nib[..., 2] << 8) | (nib[..., 3] << 12)).to(torch.int16)
        out = meta.new_empty(rows * meta_ncols)
        out.scatter_(0, _cutlass_meta_offsets(rows, meta_ncols), meta.reshape(-1))
        return self.values.clone(), out.view(rows, meta_ncols)

    @classmethod
    def from_cutlass(cls, compressed: torch.Tensor, meta_reordered: torch.Tensor) -> "NMSparse":
        """Inverse of :meth:`to_cutlass`: 2:4 for float16/bfloat16, 1:2 for float32."""
        if compressed.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"from_cutlass(): argument 'compressed' must be float32/float16/bfloat16, got {compressed.dtype}")
        if meta_reordered.dtype != torch.int16:
            raise TypeError(f"from_cutlass(): argument 'meta_reordered' must be int16, got {meta_reordered.dtype}")
        rows, half_k = compressed.shape
        k = 2 * half_k
        fp32 = compressed.dtype == torch.float32
        ksparse = 2 if fp32 else 4
        meta_ncols = k // (ksparse * 4)
        if tuple(meta_reordered.shape) != (rows, meta_ncols):
            raise ValueError(f"from_cutlass(): argument 'meta_reordered' has shape {tuple(meta_reordered.shape)}, "
                             f"expected {(rows, meta_ncols)}")
        meta = meta_reordered.reshape(-1).cpu().to(torch.int64).gather(0, _cutlass_meta_offsets(rows, meta_ncols))
        meta = meta.reshape(rows, meta_ncols, 1) & 0xFFFF
        nib = (meta >> torch.tensor([0, 4, 8, 12])) & 0xF  # [rows, meta_ncols, 4]
        if fp32:
            idx = ((nib & 3) // 2).reshape(rows, -1)
            n, m = 1, 2
        else:
            idx = torch.stack([nib & 3, nib >> 2], dim=-1).reshape(rows, -1)
            n, m = 2, 4
        return cls(compressed.detach().cpu().contiguous(), _pack(idx, index_bits(m)), (rows, k), n, m)
