"""spgemm's stage for large products (csrc/kernels/spgemm/spgemm_stream.h): rows written in place go
through a small buffer and out to C in whole 64-byte lines with non-temporal stores, the partial lines at
either end with ordinary ones. SPARSEFORGE_SPGEMM_STREAM=all stages every part written in place from its
first row, so products of test size reach it; every layout must give the scalar oracle's and scipy's bits."""
from __future__ import annotations

import zlib

import numpy as np
import pytest

sp = pytest.importorskip("scipy.sparse")

from sparseforge import _C
from sparseforge.data import spgemm_matrices as mats
from test_spgemm import rows_from_lists

ISAS = _C.supported_isas()
STAGED = [i for i in ISAS if i != "scalar"]  # the scalar oracle writes in place


@pytest.fixture(params=[1, 2], ids=["1t", "2t"])
def threads(request):
    _C.set_num_threads(request.param)
    yield request.param
    _C.set_num_threads(0)


def typed(m, dt, it):
    m = mats.canonical(m, dt)
    m.indptr, m.indices = m.indptr.astype(it), m.indices.astype(it)
    return m


# Products large enough for C to be reserved up front (written in place), each reaching other paths
# through the stage.
def random_rows(rng, dt, it):
    # ESC and distinct-pair rows, 8..15 entries a row: every offset within a line.
    a = typed(sp.random(12_000, 12_000, density=10 / 12_000, format="csr", random_state=rng), dt, it)
    b = typed(sp.random(12_000, 15_000, density=10 / 15_000, format="csr", random_state=rng), dt, it)
    return a, b


def mixed_lengths(rng, dt, it):
    # Mostly short rows; every 7th row ~700 products (fills the stage past its capacity: flushed first),
    # every 50th ~1200 (longer than a staged row may be: written in place between staged ones).
    n, k = 12_000, 30_000
    lens = np.where(np.arange(n) % 50 == 0, 60, np.where(np.arange(n) % 7 == 0, 35, 3))
    a = rows_from_lists([rng.choice(n, m, replace=False) for m in lens], n, rng, dt, it)
    b = rows_from_lists([rng.choice(k, 20, replace=False) for _ in range(n)], k, rng, dt, it)
    return a, b


def deferred_rows(rng, dt, it):
    # Rows with >= 8x more products than columns are only counted in the first pass: their slots are
    # skipped by the stage and filled by the second pass.
    n, k = 6000, 2000
    lens = np.where(np.arange(n) % 3 == 0, 40, 3)
    a = rows_from_lists([rng.choice(k, m, replace=False) for m in lens], k, rng, dt, it)
    b = typed(sp.random(k, 64, density=20 / 64, format="csr", random_state=rng), dt, it)
    return a, b


def poisson(rng, dt, it):
    # Band rows, staged a run at a time.
    a = typed(mats.poisson2d(300)[0], dt, it)
    a.data = (rng.uniform(0.5, 2.0, a.nnz) * rng.choice([-1.0, 1.0], a.nnz)).astype(dt)
    return a, a


CASES = {"random_rows": random_rows, "mixed_lengths": mixed_lengths, "deferred_rows": deferred_rows,
         "poisson": poisson}


def raw(a, b):
    return _C.spgemm(a.indptr, a.indices, a.data, a.shape, b.indptr, b.indices, b.data, b.shape)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dt,it", [(np.float64, np.int32), (np.float32, np.int64)], ids=["f64i32", "f32i64"])
@pytest.mark.parametrize("isa", ISAS)
def test_staged_rows_match_the_oracle(case, dt, it, isa, threads, monkeypatch):
    rng = np.random.default_rng(zlib.crc32(f"{case}-{np.dtype(dt).name}".encode()))
    a, b = CASES[case](rng, dt, it)
    monkeypatch.setenv("SPARSEFORGE_ISA", isa)
    monkeypatch.setenv("SPARSEFORGE_SPGEMM_STREAM", "all")
    p, j, x = raw(a, b)
    stats = _C.spgemm_last_stats()
    assert stats["direct"]
    if isa == "scalar":
        assert stats["streamed_rows"] == 0
    else:
        # Every row the first pass wrote in place went through the stage (on two threads, rows taken from
        # the far end of the other thread's half go through its buffer instead).
        assert stats["streamed_rows"] > 0.5 * stats["fused_rows"]
    monkeypatch.setenv("SPARSEFORGE_SPGEMM_STREAM", "0")
    p1, j1, x1 = raw(a, b)
    assert _C.spgemm_last_stats()["streamed_rows"] == 0
    monkeypatch.setenv("SPARSEFORGE_ISA", "scalar")
    p0, j0, x0 = raw(a, b)
    for got in ((p, j, x), (p1, j1, x1)):
        np.testing.assert_array_equal(got[0], p0)
        np.testing.assert_array_equal(got[1], j0)
        np.testing.assert_array_equal(got[2], x0)
    r = (a @ b).tocsr()
    r.sort_indices()
    np.testing.assert_array_equal(np.asarray(p, np.int64), r.indptr)
    np.testing.assert_array_equal(np.asarray(j, np.int64), r.indices)
    np.testing.assert_array_equal(x, r.data)


@pytest.mark.parametrize("isa", STAGED)
def test_staged_rows_rewrite_a_poisoned_pooled_block(isa, threads, monkeypatch):
    # The output pool hands the next product the block of a dead result: every entry of it, the partial
    # lines at the ends of each flush included, must be written again.
    monkeypatch.setenv("SPARSEFORGE_ISA", isa)
    monkeypatch.setenv("SPARSEFORGE_SPGEMM_STREAM", "all")
    rng = np.random.default_rng(31)
    a, b = random_rows(rng, np.float64, np.int32)
    r = (a @ b).tocsr()
    r.sort_indices()
    _C.spgemm_release_buffers()
    for _ in range(3):
        p, j, x = raw(a, b)
        np.testing.assert_array_equal(j, r.indices)
        np.testing.assert_array_equal(x, r.data)
        j[:] = -1
        x[:] = np.nan
        del p, j, x


def test_large_products_stream_and_small_ones_do_not(monkeypatch):
    monkeypatch.delenv("SPARSEFORGE_SPGEMM_STREAM", raising=False)
    if not STAGED:
        pytest.skip("only the scalar kernel is built")
    _C.set_num_threads(1)
    try:
        rng = np.random.default_rng(32)
        # ~1.8 M entries of C (21 MB): past the 8 MB at which rows are streamed.
        a = typed(sp.random(30_000, 30_000, density=8 / 30_000, format="csr", random_state=rng), np.float64, np.int32)
        raw(a, a)
        stats = _C.spgemm_last_stats()
        assert stats["streamed_rows"] > 0.9 * a.shape[0]
        monkeypatch.setenv("SPARSEFORGE_SPGEMM_STREAM", "0")
        raw(a, a)
        assert _C.spgemm_last_stats()["streamed_rows"] == 0
        monkeypatch.delenv("SPARSEFORGE_SPGEMM_STREAM")
        # Dense 40 x 40 blocks on the diagonal: 13 M products (the estimate: 150 MB of C), but C is only
        # 5 MB, which the part finds out on its first rows; it stays in cache for whoever reads it.
        blk = sp.block_diag([sp.csr_matrix(rng.uniform(0.5, 2.0, (40, 40))) for _ in range(200)], format="csr")
        blk = typed(blk, np.float64, np.int32)
        raw(blk, blk)
        assert _C.spgemm_last_stats()["direct"]
        assert _C.spgemm_last_stats()["streamed_rows"] == 0
    finally:
        _C.set_num_threads(0)
