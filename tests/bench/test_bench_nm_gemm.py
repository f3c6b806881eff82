"""pytest-benchmark for nm_gemm (small shapes; runs once as a test under --benchmark-disable).

The speed targets live in benchmarks/bench_nm_gemm.py, never in timed unit tests."""

import pytest
import torch
import torch.nn.functional as F

from sparseforge.formats import NMSparse
from sparseforge.ops import nm_linear


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    s = NMSparse.from_dense(torch.randn(512, 512), 2, 4, prune=True)
    return s, s.to_dense()


@pytest.mark.parametrize("batch", [1, 16])
def test_time_nm_linear(benchmark, case, batch):
    s, dense = case
    x = torch.randn(batch, 512)
    y = benchmark(nm_linear, x, s)
    torch.testing.assert_close(y, F.linear(x, dense), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("batch", [1, 16])
def test_time_dense_anchor(benchmark, case, batch):
    _, dense = case
    x = torch.randn(batch, 512)
    benchmark(F.linear, x, dense)
