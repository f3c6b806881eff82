"""fast_sparse_convnets: the Zhu & Gupta schedule, block masks, SpMM export, and the paper's claim
(80% sparse 1x1 convs cost <= 2% accuracy) on Fashion-MNIST with a small MobileNet-style CNN."""

import pytest
import torch
import torch.nn as nn

import sparseforge as sf

from conftest import small_mobilenet as _net
from sparseforge.masking import get_mask
from sparseforge.nn import SparseConv2d
from sparseforge.training import TrainConfig, evaluate, train
from sparseforge_methods.fast_sparse_convnets import block_magnitude_mask, zhu_gupta_sparsity


def test_schedule_is_cubic_and_monotone():
    s = [zhu_gupta_sparsity(t, 0.0, 0.9, 10, 100) for t in range(0, 130)]
    assert s[0] == 0.0 and s[10] == 0.0 and s[110] == pytest.approx(0.9) and s[129] == pytest.approx(0.9)
    assert all(b >= a for a, b in zip(s, s[1:]))
    assert s[60] == pytest.approx(0.9 * (1 - 0.5 ** 3))


@pytest.mark.parametrize("block", [1, 2, 4])
def test_block_masks_are_block_valid_and_exact(block):
    torch.manual_seed(0)
    w = torch.randn(32, 24, 1, 1)
    m = block_magnitude_mask(w, 0.8, block)
    assert m.shape == w.shape
    blocks = m[:, :, 0, 0].reshape(32 // block, block, 24)
    assert torch.all(blocks.all(1) | ~blocks.any(1))  # each block all kept or all pruned
    assert abs(1 - m.float().mean().item() - 0.8) < 1.0 / (32 * 24 // block)


def test_only_pointwise_convs_are_pruned_and_export_is_exact():
    model = _net(0)
    sf.sparsify(model, "fast_sparse_convnets", sparsity=0.8, block=4, frequency=1)
    m = sf.method_of(model)
    pw = [mod for mod in model.modules() if isinstance(mod, nn.Conv2d) and mod.kernel_size == (1, 1)]
    assert len(m.targets) == len(pw) == 3
    x = torch.randn(64, 1, 28, 28)
    y = torch.randint(0, 10, (64,))
    train(model, x, y, TrainConfig(epochs=2, batch_size=16), method=m, progress=False)
    for conv in pw:
        mask = get_mask(conv)
        assert abs(1 - mask.float().mean().item() - 0.8) < 0.02
        blocks = mask[:, :, 0, 0].reshape(conv.out_channels // 4, 4, -1)
        assert torch.all(blocks.all(1) | ~blocks.any(1))
    assert get_mask(model[0]) is None and get_mask(model[-1]) is None  # stem and classifier dense
    model.eval()
    with torch.no_grad():
        ref = model(x[:4])
        exported = sf.export(model)
        assert sum(isinstance(mod, SparseConv2d) for mod in exported.modules()) == 3
        assert all(mod.block == 4 for mod in exported.modules() if isinstance(mod, SparseConv2d))
        torch.testing.assert_close(exported(x[:4]), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_claim_80_percent_pointwise_sparsity_costs_at_most_2_points(fashion):
    x, y, xt, yt = fashion
    x, y = x[:8000], y[:8000]
    cfg = TrainConfig(epochs=3, batch_size=128, lr=3e-3)
    dense = train(_net(0, ch=32), x, y, cfg, progress=False)
    acc_dense = evaluate(dense, xt, yt)
    model = _net(0, ch=32)
    # Prune over the first half of training, fine-tune at 80% for the second half.
    sf.sparsify(model, "fast_sparse_convnets", sparsity=0.8, begin_fraction=0.0, end_fraction=0.5, frequency=10)
    model = train(model, x, y, cfg, method=sf.method_of(model), progress=False)
    acc_sparse = evaluate(model, xt, yt)
    print(f"Fashion-MNIST dense {acc_dense:.4f}, 80% sparse 1x1 convs {acc_sparse:.4f}")
    assert acc_dense > 0.75
    assert acc_sparse >= acc_dense - 0.02
    with torch.no_grad():
        exported = sf.export(model)
        assert evaluate(exported, xt[:2000], yt[:2000]) == pytest.approx(evaluate(model, xt[:2000], yt[:2000]), abs=1e-3)
