"""Sparse x sparse matrix product: ``spgemm(a, b) = a @ b`` for CSR inputs.

Row-wise (Gustavson) with per-row hash, dense or sorted-list accumulators. Stencil rows (columns = the
row's index plus fixed offsets, in A and in the rows of B they take) are computed in runs with no
accumulator at all (AVX-512; ``SPARSEFORGE_SPGEMM_BAND=0`` turns that off), and rows of A with the same
columns (FEM dofs of one node) together. A first pass computes each row once and counts the rows it
leaves; a second pass computes those in place. For large products C's
arrays are reserved up front within an upper bound (address space, from a pool of dead results' blocks,
so a loop of products does not page-fault its outputs anew) and rows are written straight into them: on
one thread all of them, on two threads two halves meeting in the middle (the lower one written
backwards). Other rows go through pooled buffers (up to 64 MiB per call, ``SPARSEFORGE_SPGEMM_FUSE_MB``)
and are copied into C after the pass. The result arrays hold exactly nnz(C) entries (views into their
blocks); ``SPARSEFORGE_OUTPUT_POOL_MB`` (default 256) bounds what the pool keeps (larger dead results
are left to the kernel with ``MADV_FREE``: their memory stays in the process until the system needs it)
and ``sparseforge._C.spgemm_release_buffers()`` frees it all. Runs on ``sparseforge._C.num_threads()`` threads
(see ``csrc/kernels/spgemm/README.md``).
"""

from __future__ import annotations

import numpy as np

from .. import _C
from ..formats.csr import CSR

__all__ = ["spgemm"]


def _kind(x) -> str:
    import scipy.sparse as sp

    if isinstance(x, CSR):
        return "csr"
    if sp.issparse(x):
        if x.format != "csr":
            raise TypeError(f"spgemm: scipy inputs must be in CSR format, got {x.format} (call .tocsr())")
        return "scipy"
    try:
        import torch
    except ImportError:  # pragma: no cover
        torch = None
    if torch is not None and isinstance(x, torch.Tensor):
        if x.layout != torch.sparse_csr:
            raise TypeError(f"spgemm: torch inputs must have layout torch.sparse_csr, got {x.layout}")
        return "torch"
    raise TypeError(f"spgemm: expected scipy CSR matrices, torch sparse CSR tensors or sparseforge CSR, got "
                    f"{type(x).__name__}")


def spgemm(a, b, *, drop_zeros: bool = False):
    """``C = a @ b`` for two sparse CSR matrices of the same kind; returns the same kind.

    Args:
        a: ``[m, k]`` — a ``scipy.sparse`` CSR matrix/array, a 2-D ``torch.sparse_csr`` CPU tensor, or a
           :class:`sparseforge.formats.CSR`.
        b: ``[k, n]`` — the same kind as ``a``.

    Dtypes: values float32 or float64 (the same for a and b; mixed raises ``TypeError``), indices int32 or
    int64. When a and b use different index dtypes, both are taken as int64 (the int32 one is copied);
    an int32 product whose nnz overflows int32 is recomputed with int64 indices.

    Returns:
        ``C`` ``[m, n]`` of the input kind (``csr_array`` for ``csr_array`` input), values of the input dtype,
        with **sorted, unique column indices in every row** and exactly nnz(C) stored entries. scipy's own
        ``a @ b`` leaves column indices unsorted and drops entries that cancel to exactly 0.0; here such
        entries are kept (the structural product) unless
        ``drop_zeros=True``, which removes them afterwards (one extra pass and a copy of the kept
        entries) and then matches scipy's structure exactly. Every value is summed in the order of a's
        row, as scipy does, so values are bit-identical to scipy's.

    Raises:
        TypeError: wrong kind, layout or dtype (the message names the argument).
        ValueError: shapes do not chain, or an input is not canonical CSR (bad indptr, an index out of
            range, a duplicate or unsorted index in a row); nothing is computed.
    """
    ka, kb = _kind(a), _kind(b)
    if ka != kb:
        raise TypeError(f"spgemm: a and b must be the same kind, got {type(a).__name__} and {type(b).__name__}")
    if ka == "scipy":
        ca, cb = CSR(a.indptr, a.indices, a.data, a.shape, check=False), CSR(b.indptr, b.indices, b.data, b.shape, check=False)
    elif ka == "torch":
        ca, cb = CSR.from_torch(a), CSR.from_torch(b) if b is not a else None
        cb = cb if cb is not None else ca
    else:
        ca, cb = a, b
    if ca.data.dtype != cb.data.dtype:
        raise TypeError(f"spgemm: a and b must have the same value dtype, got {ca.data.dtype} and {cb.data.dtype}; "
                        "convert one explicitly")
    if ca.indptr.dtype != cb.indptr.dtype or ca.indices.dtype != ca.indptr.dtype or cb.indices.dtype != cb.indptr.dtype:
        ca, cb = _as_int64(ca), _as_int64(cb)
    try:
        indptr, indices, data = _run(ca, cb)
    except ValueError as exc:
        if "not canonical CSR" in str(exc) and ka == "scipy":
            raise ValueError(f"{exc} (for a scipy matrix, m.sum_duplicates() sums duplicates and sorts the "
                             "indices in place)") from None
        if "int32 indices can address" not in str(exc):
            raise
        indptr, indices, data = _run(_as_int64(ca), _as_int64(cb))
    shape = (ca.shape[0], cb.shape[1])
    if drop_zeros:
        indptr, indices, data = _drop_zeros(indptr, indices, data)
    if ka == "csr":
        return CSR(indptr, indices, data, shape, check=False)
    out = CSR(indptr, indices, data, shape, check=False)
    if ka == "torch":
        return out.to_torch()
    import scipy.sparse as sp

    return out.to_scipy("array" if isinstance(a, sp.sparray) else "matrix")


def _drop_zeros(indptr, indices, data):
    keep = data != 0
    if keep.all():
        return indptr, indices, data
    kept_before = np.zeros(keep.size + 1, dtype=indptr.dtype)
    np.cumsum(keep, out=kept_before[1:])
    return kept_before[indptr], indices[keep], data[keep]


def _as_int64(m: CSR) -> CSR:
    if m.indptr.dtype == np.int64 and m.indices.dtype == np.int64:
        return m
    return CSR(m.indptr.astype(np.int64), m.indices.astype(np.int64), m.data, m.shape, check=False)


def _run(a: CSR, b: CSR):
    if b is a:  # the kernel validates a shared operand once
        return _C.spgemm(a.indptr, a.indices, a.data, a.shape, a.indptr, a.indices, a.data, a.shape)
    return _C.spgemm(a.indptr, a.indices, a.data, a.shape, b.indptr, b.indices, b.data, b.shape)
