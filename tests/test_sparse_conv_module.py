"""sparseforge::sparse_conv1x1 (opcheck, torch.compile) and SparseConv2d / export_sparse_conv against dense conv."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import sparseforge
from sparseforge import _C
from sparseforge.formats import SparseConvWeight
from sparseforge.masking import apply_mask, is_masked
from sparseforge.nn import SparseConv2d, export_sparse_conv
from sparseforge.ops import sparse_conv1x1
from sparseforge.ops.sparse_conv1x1 import _sparse_conv1x1, packed_tensors


def masked_conv(c_in, c_out, sparsity, seed=0, bias=True):
    torch.manual_seed(seed)
    conv = nn.Conv2d(c_in, c_out, 1, bias=bias)
    apply_mask(conv, (torch.rand_like(conv.weight) >= sparsity).float())
    return conv


@pytest.mark.parametrize("activation", [None, "relu", "relu6"])
def test_op_matches_conv2d(activation):
    torch.manual_seed(0)
    w = torch.randn(24, 20, 1, 1) * (torch.rand(24, 20, 1, 1) > 0.7)
    b = torch.randn(24)
    x = torch.randn(2, 20, 9, 11) * 4
    y = sparse_conv1x1(x, SparseConvWeight.from_dense(w), b, activation)
    ref = F.conv2d(x.double(), w.double(), b.double())
    ref = {None: ref, "relu": F.relu(ref), "relu6": F.relu6(ref)}[activation]
    torch.testing.assert_close(y, ref.float(), rtol=1e-5, atol=1e-5)


def test_opcheck():
    torch.manual_seed(0)
    p = SparseConvWeight.from_dense(torch.randn(8, 6) * (torch.rand(8, 6) > 0.5), block=2)
    for bias in (None, torch.randn(8)):
        args = (torch.randn(2, 6, 5, 3), *packed_tensors(p), bias, p.c_out, p.c_in, p.block, 0.0, 6.0)
        torch.library.opcheck(_sparse_conv1x1, args)


def test_torch_compile():
    conv = masked_conv(16, 12, 0.8)
    m = SparseConv2d.from_dense(conv).eval()
    x = torch.randn(1, 16, 7, 7)
    compiled = torch.compile(m, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), conv(x), rtol=1e-5, atol=1e-5)


def test_op_argument_errors():
    p = SparseConvWeight.from_dense(torch.randn(4, 3))
    with pytest.raises(TypeError, match="'packed'"):
        sparse_conv1x1(torch.randn(1, 3, 2, 2), torch.randn(4, 3))
    with pytest.raises(TypeError, match="'x'"):
        sparse_conv1x1(torch.randn(1, 3, 2, 2).double(), p)
    with pytest.raises(ValueError, match="'x'"):
        sparse_conv1x1(torch.randn(1, 5, 2, 2), p)
    with pytest.raises(ValueError, match="'activation'"):
        sparse_conv1x1(torch.randn(1, 3, 2, 2), p, activation="gelu")


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("block", ["auto", 1, 2, 4])
def test_from_dense_equals_masked_conv(batch, block):
    conv = masked_conv(32, 40, 0.8)
    m = SparseConv2d.from_dense(conv, block=block)
    x = torch.randn(batch, 32, 14, 14)
    torch.testing.assert_close(m(x), conv(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m.to_dense_weight(), conv.weight.detach())
    sd = m.state_dict()
    m2 = SparseConv2d(m.packed, m.bias)
    m2.load_state_dict(sd)
    torch.testing.assert_close(m2(x), m(x))


def test_channels_last_input():
    conv = masked_conv(8, 8, 0.5)
    x = torch.randn(2, 8, 5, 5).to(memory_format=torch.channels_last)
    torch.testing.assert_close(SparseConv2d.from_dense(conv)(x), conv(x), rtol=1e-5, atol=1e-5)


def test_from_dense_rejects_ineligible():
    for conv in (nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 1, stride=2), nn.Conv2d(4, 4, 1, groups=2), nn.Conv2d(4, 4, 1, padding=1)):
        with pytest.raises(ValueError, match="1x1 stride-1"):
            SparseConv2d.from_dense(conv)


def test_export_swaps_only_eligible_sparse_convs():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16),
        nn.Conv2d(16, 32, 1), nn.ReLU6(),                # sparse -> swapped
        nn.Sequential(nn.Conv2d(32, 32, 1), nn.ReLU()),  # dense -> kept
        nn.Conv2d(32, 24, 1, stride=2),                  # strided -> kept
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10),
    ).eval()
    apply_mask(model[3], (torch.rand_like(model[3].weight) > 0.85).float())
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        ref = model(x)
    export_sparse_conv(model, min_sparsity=0.7)
    assert isinstance(model[3], SparseConv2d) and not is_masked(model[3])
    assert isinstance(model[5][0], nn.Conv2d) and isinstance(model[6], nn.Conv2d) and isinstance(model[0], nn.Conv2d)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)


def test_plan_cache_follows_in_place_updates():
    conv = masked_conv(16, 8, 0.7, bias=False)
    m = SparseConv2d.from_dense(conv)
    x = torch.randn(1, 16, 6, 6)
    y1 = m(x)
    with torch.no_grad():
        m.values.mul_(2.0)  # a new buffer version: the op must not reuse the old checked plan
    torch.testing.assert_close(m(x), 2 * y1)
    with torch.inference_mode():
        torch.testing.assert_close(m(x), 2 * y1)


def test_eager_fast_path_matches_the_custom_op_and_follows_load_state_dict():
    from sparseforge.ops.sparse_conv1x1 import _sparse_conv1x1, eager_call

    conv = masked_conv(24, 12, 0.8, bias=True)
    m = SparseConv2d.from_dense(conv, activation="relu6")
    x = torch.randn(2, 24, 5, 7) * 4
    assert eager_call(x) and not eager_call(x.requires_grad_(True))
    x = x.detach()
    via_op = _sparse_conv1x1(x, m.nnz, m.offsets, m.idx_delta, m.values, m.bias, 12, 24, m.block, 0.0, 6.0)
    torch.testing.assert_close(m(x), via_op, rtol=0, atol=0)
    twin = masked_conv(24, 12, 0.8, bias=True)  # same seed: same mask, so the packed shapes match
    with torch.no_grad():
        twin.parametrizations.weight.original.mul_(-3.0)
    other = SparseConv2d.from_dense(twin, activation="relu6")
    y_before = m(x)
    m.load_state_dict(other.state_dict())  # in-place copies: the cached plan must be replaced
    torch.testing.assert_close(m(x), other(x), rtol=0, atol=0)
    assert not torch.equal(m(x), y_before)
    with torch.no_grad():
        m.bias.add_(1.0)  # bias is read per call, never cached
    ref = torch.clamp(nn.functional.conv2d(x, m.to_dense_weight(), m.bias), 0, 6)
    torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)
