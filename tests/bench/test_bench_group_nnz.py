"""pytest-benchmark for group_nnz (N:M group counts), the kernel behind density and N:M-validity reports.

Runs once as a plain test under ``--benchmark-disable`` (the default addopts); ``pytest tests/bench
--benchmark-enable`` times it. Speed targets live in asv_bench/benchmarks/bench_group_nnz.py, not here."""

import numpy as np
import pytest

from sparseforge import _C


@pytest.fixture(scope="module")
def weight():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((1024, 1024)).astype(np.float32)
    w[rng.random(w.shape) < 0.5] = 0.0
    return w


@pytest.mark.parametrize("m", [4, 8])
def test_bench_group_nnz(benchmark, weight, m):
    got = benchmark(_C.group_nnz, weight, m)
    np.testing.assert_array_equal(got, (weight.reshape(1024, 1024 // m, m) != 0).sum(-1))


def test_bench_numpy_anchor(benchmark, weight):
    benchmark(lambda: (weight.reshape(1024, 256, 4) != 0).sum(-1))
