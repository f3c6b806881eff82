"""pytest-benchmark for the sparse 1x1 conv (CHW SpMM) against torch's dense conv2d, MobileNet-like shape.

Runs once as a plain test under ``--benchmark-disable``; ``pytest tests/bench --benchmark-enable`` times it.
The XNNPACK head-to-head and the speed targets live in benchmarks/bench_spmm_conv.py, not here.
(Not named test_bench_spmm_conv.py: tests/ has that test of the harness, and pytest needs unique basenames.)"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sparseforge.formats import SparseConvWeight
from sparseforge.ops import sparse_conv1x1


@pytest.fixture(scope="module", params=[1, 4], ids=["block1", "block4"])
def case(request):
    block = request.param
    rng = np.random.default_rng(block)
    c_out, c_in = 128, 64
    keep = np.repeat(rng.random((c_out // block, c_in)) >= 0.8, block, axis=0)  # 80% sparse
    w = torch.from_numpy(rng.standard_normal((c_out, c_in)).astype(np.float32) * keep)
    x = torch.from_numpy(rng.standard_normal((1, c_in, 28, 28)).astype(np.float32))
    return SparseConvWeight.from_dense(w, block), w[:, :, None, None].contiguous(), x


def test_bench_sparse_conv1x1(benchmark, case):
    packed, dense, x = case
    y = benchmark(sparse_conv1x1, x, packed, None, "relu")
    ref = F.relu(F.conv2d(x.double(), dense.double())).float()
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)


def test_bench_dense_anchor(benchmark, case):
    _, dense, x = case
    benchmark(F.conv2d, x, dense)
