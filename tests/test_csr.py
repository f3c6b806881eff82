"""sparseforge.formats.CSR: validation, interop and nbytes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from sparseforge.formats import CSR

sp = pytest.importorskip("scipy.sparse")


def good():
    return CSR(np.array([0, 2, 2, 3], np.int32), np.array([0, 3, 1], np.int32), np.array([1.0, 2.0, 3.0]), (3, 4))


def test_valid_and_facts():
    m = good()
    assert m.nnz == 3 and m.shape == (3, 4) and m.dtype == np.float64
    assert m.nbytes == 4 * 4 + 3 * 4 + 3 * 8
    np.testing.assert_array_equal(m.to_dense(), [[1, 0, 0, 2], [0, 0, 0, 0], [0, 3, 0, 0]])


@pytest.mark.parametrize("mutate, err, match", [
    (lambda a: a.__setitem__(0, np.array([1, 2, 2, 3], np.int32)), ValueError, r"indptr\[0\]"),
    (lambda a: a.__setitem__(0, np.array([0, 2, 1, 3], np.int32)), ValueError, "non-decreasing"),
    (lambda a: a.__setitem__(0, np.array([0, 2, 2, 2], np.int32)), ValueError, r"indptr\[-1\]"),
    (lambda a: a.__setitem__(0, np.array([0, 2, 3], np.int32)), ValueError, "rows \\+ 1"),
    (lambda a: a.__setitem__(1, np.array([0, 4, 1], np.int32)), ValueError, "row 0 has column index 4 outside"),
    (lambda a: a.__setitem__(1, np.array([0, -1, 1], np.int32)), ValueError, "outside"),
    (lambda a: a.__setitem__(1, np.array([3, 3, 1], np.int32)), ValueError, "row 0 has duplicate"),
    (lambda a: a.__setitem__(1, np.array([3, 0, 1], np.int32)), ValueError, "row 0 has unsorted"),
    (lambda a: a.__setitem__(2, np.array([1.0, 2.0])), ValueError, "'data' has 2"),
    (lambda a: a.__setitem__(2, np.array([1, 2, 3])), TypeError, "'data' must have dtype"),
    (lambda a: a.__setitem__(1, np.array([0, 3, 1], np.int64)), TypeError, "share a dtype"),
    (lambda a: a.__setitem__(1, [0, 3, 1]), TypeError, "'indices' must be a numpy.ndarray"),
])
def test_bad_structure_raises(mutate, err, match):
    arrs = [np.array([0, 2, 2, 3], np.int32), np.array([0, 3, 1], np.int32), np.array([1.0, 2.0, 3.0])]
    mutate(arrs)
    before = [np.array(x, copy=True) for x in arrs]
    with pytest.raises(err, match=match):
        CSR(*arrs, (3, 4))
    for x, y in zip(arrs, before):  # nothing written
        np.testing.assert_array_equal(x, y)


def test_scipy_round_trip_shares_memory():
    s = sp.random(20, 30, 0.2, format="csr", random_state=0)
    s.sort_indices()
    m = CSR.from_scipy(s)
    assert np.shares_memory(m.data, s.data)
    back = m.to_scipy()
    assert isinstance(back, sp.csr_matrix) and (back != s).nnz == 0
    assert isinstance(m.to_scipy("array"), sp.csr_array)
    with pytest.raises(TypeError, match="tocsr"):
        CSR.from_scipy(s.tocoo())


def test_torch_round_trip():
    torch = pytest.importorskip("torch")
    m = good()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = m.to_torch()
        assert t.layout == torch.sparse_csr
        back = CSR.from_torch(t)
    np.testing.assert_array_equal(back.to_dense(), m.to_dense())
    with pytest.raises(TypeError, match="sparse CSR"):
        CSR.from_torch(torch.zeros(2, 2))


def test_matmul_operator():
    m = good()
    t = CSR(np.array([0, 1, 1, 2, 3], np.int32), np.array([0, 1, 0], np.int32), np.array([1.0, 1.0, 2.0]), (4, 2))
    np.testing.assert_array_equal((m @ t).to_dense(), m.to_dense() @ t.to_dense())
