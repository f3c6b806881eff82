"""spgemm's band rows (csrc/kernels/spgemm/spgemm_band.h): stencil rows whose columns are the row's index
plus fixed offsets, computed in runs with no accumulator. Every layout (in place or buffered, one or two
threads) must give the scalar oracle's and scipy's bits, and rows that break the pattern must fall back."""
from __future__ import annotations

import itertools
import zlib

import numpy as np
import pytest

sp = pytest.importorskip("scipy.sparse")

from sparseforge import _C

ISAS = _C.supported_isas()


def stencil(shape, offsets, rng, dtype=np.float64, index_dtype=np.int32):
    """CSR over the points of a grid `shape`: point p couples to p + o for each offset vector o inside the
    grid (so rows near the faces are shorter), random values of both signs."""
    shape = np.asarray(shape)
    pts = np.indices(shape).reshape(len(shape), -1).T
    strides = np.r_[np.cumprod(shape[::-1])[::-1][1:], 1]
    rows, cols = [], []
    for o in offsets:
        q = pts + np.asarray(o)
        ok = np.all((q >= 0) & (q < shape), axis=1)
        rows.append(np.flatnonzero(ok))
        cols.append(q[ok] @ strides)
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    vals = rng.uniform(0.5, 2.0, rows.size) * rng.choice([-1.0, 1.0], rows.size)
    n = int(np.prod(shape))
    m = sp.csr_matrix((vals.astype(dtype), (rows, cols)), shape=(n, n))
    m.sort_indices()
    m.indptr, m.indices = m.indptr.astype(index_dtype), m.indices.astype(index_dtype)
    return m


def cross(dim):
    """The (2*dim + 1)-point Laplacian neighbourhood."""
    return [tuple(0 for _ in range(dim))] + [tuple(s * (d == k) for d in range(dim)) for k in range(dim) for s in (-1, 1)]


BOX2 = list(itertools.product((-1, 0, 1), repeat=2))  # 9 points


def drop_entries(m, rows, rng):
    """m with one (non-diagonal) entry dropped from each of `rows`: rows that break the band pattern."""
    m = m.tolil()
    for r in rows:
        cols = [c for c in m.rows[r] if c != r]
        m[r, cols[rng.integers(len(cols))]] = 0
    m = m.tocsr()
    m.eliminate_zeros()
    return m


def case(name, rng):
    if name == "poisson3d":  # 7 x 7 terms, 25 slots: four registers of doubles
        a = stencil((40, 40, 40), cross(3), rng)
        return a, a
    if name == "box9_times_cross5_f32_i64":  # A and B different, 9 x 5 terms, float32 / int64
        return (stencil((300, 300), BOX2, rng, np.float32, np.int64),
                stencil((300, 300), cross(2), rng, np.float32, np.int64))
    if name == "box9_squared_f32":  # 9 entries per row of B: one register of floats, not of doubles
        a = stencil((300, 300), BOX2, rng, np.float32)
        return a, a
    if name == "box9_squared_f64":
        a = stencil((300, 300), BOX2, rng)
        return a, a
    if name == "broken_rows":  # rows of A and of B (the same matrix here) off the pattern, scattered
        a = stencil((400, 400), cross(2), rng)
        a = drop_entries(a, rng.choice(np.arange(800, 159_000), 300, replace=False), rng)
        return a, a
    if name == "many_patterns":  # a new pattern every 40 rows: ~300 probes, past the memo's 255 epochs
        return (banded_blocks(12_000, 40, rng),) * 2
    raise KeyError(name)


def banded_blocks(n, block, rng):
    """Rows in blocks of `block`, each block with its own three column offsets in [-6, 6] (clipped to the
    matrix): runs of band rows under a pattern that changes every block."""
    lists = []
    for b0 in range(0, n, block):
        offs = rng.choice(np.arange(-6, 7), 3, replace=False)
        for i in range(b0, min(n, b0 + block)):
            lists.append(np.unique(np.clip(i + offs, 0, n - 1)))
    indptr = np.r_[0, np.cumsum([len(l) for l in lists])]
    data = rng.uniform(0.5, 2.0, indptr[-1]) * rng.choice([-1.0, 1.0], indptr[-1])
    return sp.csr_matrix((data, np.concatenate(lists), indptr), shape=(n, n))


# The least share of rows the AVX-512 policy takes as band rows (0: none; a row of B must fit one register).
# The rows near the faces have patterns of their own, met again on every grid line: band rows too. So are
# most broken rows: each drops one of four neighbours, so their shapes recur.
BANDED = {"poisson3d": 0.99, "box9_times_cross5_f32_i64": 0.99, "box9_squared_f32": 0.99,
          "box9_squared_f64": 0, "broken_rows": 0.9, "many_patterns": 0.1}  # 0.19-0.33 over 40 seeds


def raw(a, b):
    return _C.spgemm(a.indptr, a.indices, a.data, a.shape, b.indptr, b.indices, b.data, b.shape)


@pytest.mark.parametrize("name", sorted(BANDED))
@pytest.mark.parametrize("direct", ["0", "1"], ids=["buffered", "direct"])
@pytest.mark.parametrize("threads", [1, 2], ids=["1t", "2t"])
@pytest.mark.parametrize("isa", ISAS)
def test_band_rows_equal_oracle_and_scipy(name, direct, threads, isa, monkeypatch):
    rng = np.random.default_rng(zlib.crc32(name.encode()))  # hash() of a str changes from run to run
    a, b = case(name, rng)
    monkeypatch.setenv("SPARSEFORGE_SPGEMM_DIRECT", direct)
    monkeypatch.delenv("SPARSEFORGE_SPGEMM_FUSE_MB", raising=False)
    monkeypatch.setenv("SPARSEFORGE_ISA", isa)
    _C.set_num_threads(threads)
    try:
        p, j, x = raw(a, b)
        stats = _C.spgemm_last_stats()
        monkeypatch.setenv("SPARSEFORGE_SPGEMM_BAND", "0")
        p1, j1, x1 = raw(a, b)
        assert _C.spgemm_last_stats()["band_rows"] == 0
    finally:
        _C.set_num_threads(0)
    if name != "many_patterns":  # its 470 KB product stays below the in-place threshold
        assert stats["direct"] == (direct == "1")
    if isa == "avx512" and BANDED[name]:
        assert stats["band_rows"] > a.shape[0] * BANDED[name]
    else:
        assert stats["band_rows"] == 0
    monkeypatch.setenv("SPARSEFORGE_ISA", "scalar")
    p0, j0, x0 = raw(a, b)
    for got in ((p, j, x), (p1, j1, x1)):
        for u, v in zip(got, (p0, j0, x0)):
            np.testing.assert_array_equal(u, v)
    r = (a @ b).tocsr()
    r.sort_indices()
    r.eliminate_zeros()
    np.testing.assert_array_equal(p, r.indptr)
    np.testing.assert_array_equal(j, r.indices)
    np.testing.assert_array_equal(x, r.data)
