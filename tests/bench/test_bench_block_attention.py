"""pytest-benchmark for block_attention against torch SDPA; skipped until the op lands (branch attn-kernel).

Written against the op API on attn-kernel (``block_attention(q, k, v, causal=, mode=, threshold=,
block_size=) -> (out, stats)``, checked there against its pure-torch reference): when that branch merges,
this runs with no edit (on the reference until ``_C.block_attention`` exists, then on the kernel)."""

import pytest
import torch
import torch.nn.functional as F

import sparseforge.ops as ops

if not hasattr(ops, "block_attention"):
    pytest.skip("sparseforge.ops.block_attention is not on this branch yet (attn-kernel)", allow_module_level=True)


@pytest.fixture(scope="module")
def qkv():
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(1, 4, 256, 64, generator=g) for _ in range(3))


@pytest.mark.parametrize("mode,threshold", [("dense", None), ("threshold", 1e-3)])
def test_bench_block_attention(benchmark, qkv, mode, threshold):
    q, k, v = qkv
    out, stats = benchmark(ops.block_attention, q, k, v, causal=True, mode=mode, threshold=threshold, block_size=64)
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True).float()
    if mode == "dense":
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    else:  # skipped blocks carry < threshold of the softmax mass per row, so the error is bounded by it
        assert (out - ref).abs().max() < 0.05 and stats.computed <= stats.total


def test_bench_sdpa_anchor(benchmark, qkv):
    benchmark(F.scaled_dot_product_attention, *qkv, is_causal=True)
