"""pytest-benchmark for block_attention (dense and BLASST-threshold prefill) against torch SDPA.

Runs once as a plain test under ``--benchmark-disable``; ``pytest tests/bench --benchmark-enable`` times it.
The full mode matrix and the speed targets live in benchmarks/bench_block_attention.py, not here."""

import pytest
import torch
import torch.nn.functional as F

from sparseforge.ops import block_attention


@pytest.fixture(scope="module")
def qkv():
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(1, 4, 256, 64, generator=g) for _ in range(3))


@pytest.mark.parametrize("mode,threshold", [("dense", None), ("threshold", 1e-3)])
def test_bench_block_attention(benchmark, qkv, mode, threshold):
    q, k, v = qkv
    out, stats = benchmark(block_attention, q, k, v, causal=True, mode=mode, threshold=threshold, block_size=64)
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True).float()
    if mode == "dense":
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    else:  # each skipped block holds < threshold of a row's softmax weight: error <~ blocks * 1e-3 * 2max|v|
        assert (out - ref).abs().max() < 0.05 and stats.computed <= stats.total


def test_bench_sdpa_anchor(benchmark, qkv):
    benchmark(F.scaled_dot_product_attention, *qkv, is_causal=True)
