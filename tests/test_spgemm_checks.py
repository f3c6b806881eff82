"""spgemm's input checks (every ISA has its own copy: spgemm_checks.h): bad rows and bad indptr found and
named before any row is computed, and B's longest row (which sizes C's reservation) found in every lane."""

from __future__ import annotations

import numpy as np
import pytest

sp = pytest.importorskip("scipy.sparse")

from sparseforge import _C
from sparseforge.ops import spgemm
# isa and threads are test_spgemm's fixtures (every ISA monkeypatched; 1 and 2 threads).
from test_spgemm import _fused_case, isa, rand_csr, rows_from_lists, scipy_ref, threads  # noqa: F401


@pytest.mark.parametrize("it", [np.int32, np.int64])
def test_validation_finds_every_kind_of_bad_row(it, isa):
    # The check passes over the entries without per-row branches (drops in the flat sequence must all be
    # row starts): canonical matrices with empty rows and rows that start below their predecessor's end
    # pass; one corrupted entry anywhere is caught and its row named.
    rng = np.random.default_rng(27)
    for trial in range(40):
        lens = rng.integers(0, 6, 300) * (rng.random(300) < 0.8)
        b = rows_from_lists([rng.choice(50, m, replace=False) for m in lens], 50, rng, np.float64, it)
        a = rand_csr(7, 300, 5, rng, np.float64, it)
        c = spgemm(a, b)
        np.testing.assert_array_equal(c.data, scipy_ref(a, b).data)
        r = int(rng.choice(np.flatnonzero(lens >= 2)))
        s0, s1 = b.indptr[r], b.indptr[r + 1]
        bad = b.copy()
        bad.indices = b.indices.copy()
        k = int(rng.integers(s0 + 1, s1))
        kind = trial % 3
        if kind == 0:
            bad.indices[k] = bad.indices[k - 1]
            msg = "duplicate"
        elif kind == 1:
            bad.indices[[k - 1, k]] = bad.indices[[k, k - 1]]
            msg = "unsorted"
        else:
            bad.indices[k] = -1 if trial % 2 else 50
            msg = "outside"
        with pytest.raises(ValueError, match=rf"'b' is not canonical CSR: row {r} has .*{msg}"):
            spgemm(a, bad)


@pytest.mark.parametrize("it", [np.int32, np.int64])
def test_indptr_check_finds_a_drop_in_every_lane(it, isa):
    # indptr's order and longest row come from one vectorised pass per ISA: a drop at any position (every
    # lane of a 16-wide vector, the tail) is found and named, and values whose difference would wrap are
    # compared, not subtracted.
    rng = np.random.default_rng(31)
    a = rand_csr(40, 30, 3, rng, np.float64, it)
    b = rand_csr(30, 20, 3, rng, np.float64, it)
    for k in range(1, 40):
        bad = a.copy()
        bad.indptr = a.indptr.copy()
        bad.indptr[k] = bad.indptr[k + 1] + 1 if k % 3 else np.iinfo(it).max
        with pytest.raises(ValueError, match=rf"'a' is not canonical CSR: indptr must be non-decreasing, but "
                                             rf"indptr\[{k + 1}\]"):
            spgemm(bad, b)
    c = spgemm(a, b)
    np.testing.assert_array_equal(c.toarray(), scipy_ref(a, b).toarray())


@pytest.mark.parametrize("it", [np.int32, np.int64])
def test_reservation_is_sized_by_bs_longest_row(it, isa, threads):
    # C's reservation is nnz(A) times B's longest row (from the vectorised indptr pass): a single long row
    # anywhere in B (any lane, the tail) must be the one found, or rows would be written past the end.
    rng = np.random.default_rng(32)
    n = 40_000
    a = sp.random(n, n, density=8 / n, format="csr", random_state=rng, dtype=np.float64)
    a.indices, a.indptr = a.indices.astype(it), a.indptr.astype(it)
    short = rng.integers(0, n // 4, (n, 4)) + np.arange(4) * (n // 4)  # 4 sorted distinct columns per row
    for p in (0, 1, 15, 16, 17, 31, 12_345, n - 1):
        long_row = np.sort(rng.choice(n, 60, replace=False))
        indices = np.concatenate([short[:p].ravel(), long_row, short[p + 1:].ravel()]).astype(it)
        indptr = np.concatenate([[0], np.cumsum(np.where(np.arange(n) == p, 60, 4))]).astype(it)
        b = sp.csr_matrix((rng.standard_normal(indices.size), indices, indptr), shape=(n, n))
        b.indptr, b.indices = b.indptr.astype(it), b.indices.astype(it)  # scipy narrows them on construction
        c = spgemm(a, b)
        stats = _C.spgemm_last_stats()
        assert stats["direct"], stats
        assert stats["reserved"] == a.nnz * 60, (p, stats)
        ref = scipy_ref(a, b)
        np.testing.assert_array_equal(c.indptr, ref.indptr)
        np.testing.assert_array_equal(c.data, ref.data)


@pytest.mark.parametrize("which", ["a", "b"])
def test_bad_rows_stop_the_product_before_any_row_is_computed(which, threads):
    # The row check runs inside the first pass's parallel region, shared by the threads that arrive;
    # no row may be computed before it is complete. A column index of 2**30 would be written far outside
    # the accumulators if one were.
    rng = np.random.default_rng(28)
    a, b = _fused_case(rng)
    bad = (a if which == "a" else b).copy()
    bad.indices = bad.indices.copy()
    r = bad.shape[0] - 7  # a late row: in the upper half on two threads
    bad.indices[bad.indptr[r + 1] - 1] = 2**30
    args = (bad, b) if which == "a" else (a, bad)
    with pytest.raises(ValueError, match=rf"'{which}' is not canonical CSR: row {r} has column index 1073741824 outside"):
        spgemm(*args)
    c = spgemm(a, b)  # the next product is unaffected
    np.testing.assert_array_equal(c.data, scipy_ref(a, b).data)
