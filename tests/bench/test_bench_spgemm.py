"""pytest-benchmark timings of spgemm against scipy on small instances of each family.

Runs once as a plain test under ``--benchmark-disable`` (the default addopts); ``pytest tests/bench
--benchmark-enable`` times it. Speed targets live in benchmarks/bench_spgemm.py, not here.
"""

from __future__ import annotations

import numpy as np
import pytest

sp = pytest.importorskip("scipy.sparse")
pytest.importorskip("pytest_benchmark")

from sparseforge.data import spgemm_matrices as mats
from sparseforge.ops import spgemm

FAMILIES = {
    "erdos_renyi": lambda: mats.erdos_renyi(3000, 8, seed=0),
    "rmat": lambda: mats.rmat(11, 8, seed=0),
    "poisson2d": lambda: mats.poisson2d(60),
    "poisson3d": lambda: mats.poisson3d(14),
}


@pytest.fixture(params=sorted(FAMILIES))
def pair(request):
    return FAMILIES[request.param]()


def test_bench_spgemm(benchmark, pair):
    a, b = pair
    c = benchmark(spgemm, a, b)
    r = (a @ b).tocsr()
    r.sort_indices()
    assert np.array_equal(c.indices, r.indices) and np.array_equal(c.data, r.data)


def test_bench_scipy_anchor(benchmark, pair):
    a, b = pair
    benchmark(lambda: a @ b)
