"""sparsebytenn: group masks, function-preserving channel rearrangement, and the paper's claims at small
scale on Fashion-MNIST (30% group sparsity with G=4 costs little after fine-tuning; rearrangement helps)."""

import pytest
import torch
import torch.nn as nn

import sparseforge as sf
from sparseforge.masking import get_mask
from sparseforge.nn import SparseConv2d
from sparseforge.training import TrainConfig, evaluate, train
from conftest import small_mobilenet as _net
from sparseforge_methods.sparsebytenn import group_mask, rearrange_network, rearrangement, retained_importance


def _randomize_bn(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)


@pytest.mark.parametrize("g", [2, 4])
def test_group_mask_is_block_valid_and_exact(g):
    torch.manual_seed(0)
    w = torch.randn(32, 16, 3, 3)
    m = group_mask(w, 0.3, g)
    kern = m.reshape(32, 16, 9)
    assert torch.all(kern.all(-1) | ~kern.any(-1))  # whole k x k kernels
    blocks = kern[:, :, 0].reshape(32 // g, g, 16)
    assert torch.all(blocks.all(1) | ~blocks.any(1))  # whole groups of g output channels
    assert 1 - kern[:, :, 0].float().mean().item() == pytest.approx(0.3, abs=1 / (32 * 16 / g))


def test_rearrangement_alone_preserves_outputs():
    model = _net(0).eval()
    _randomize_bn(model)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups == 1]
    done = rearrange_network(model, convs, 4, probe=torch.randn(2, 1, 28, 28))
    assert len(done) == len(convs)  # the stem and all three pointwise convs
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=1e-6, atol=1e-6)


def test_rearrangement_never_keeps_less_importance_on_structured_weights():
    # Channels drawn from 4 hidden profiles, shuffled: rearranging recovers the grouping.
    torch.manual_seed(0)
    prof = (torch.rand(4, 32) > 0.6).float()
    w = (prof[torch.randperm(32) % 4] * torch.randn(32, 32)).reshape(32, 32, 1, 1)
    perm = rearrangement(w, 4)
    assert sorted(perm.tolist()) == list(range(32))
    assert retained_importance(w[perm], 0.5, 4) > retained_importance(w, 0.5, 4) + 0.03


def test_apply_and_export_through_blocked_kernel():
    model = _net(0)
    _randomize_bn(model)
    sf.sparsify(model, "sparsebytenn", sparsity=0.5, group_size=4, exclude=":last")
    for conv in [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups == 1]:
        mask = get_mask(conv)
        assert mask is not None and 1 - mask.float().mean().item() == pytest.approx(0.5, abs=0.03)
    model.eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)
        exported = sf.export(model)
    sparse = [m for m in exported.modules() if isinstance(m, SparseConv2d)]
    assert len(sparse) == 3 and all(m.block == 4 for m in sparse)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_claim_group_sparsity_with_rearrangement_on_fashion_mnist(fashion):
    x, y, xt, yt = fashion
    x, y = x[:8000], y[:8000]
    dense = train(_net(0), x, y, TrainConfig(epochs=3, batch_size=128, lr=3e-3), progress=False)
    acc_dense = evaluate(dense, xt, yt)
    state = dense.state_dict()
    one_shot = {}
    for rearrange in (False, True):
        m = _net(0)
        m.load_state_dict(state)
        sf.sparsify(m, "sparsebytenn", sparsity=0.5, group_size=4, rearrange=rearrange, exclude=[":first", ":last"])
        one_shot[rearrange] = evaluate(m.eval(), xt, yt)
    # (b) 30% groups of 4, fine-tuned briefly with the static masks.
    m = _net(0)
    m.load_state_dict(state)
    sf.sparsify(m, "sparsebytenn", sparsity=0.3, group_size=4, exclude=[":first", ":last"])
    m = train(m, x, y, TrainConfig(epochs=1, batch_size=128, lr=1e-3, seed=1), progress=False)
    acc_ft = evaluate(m, xt, yt)
    print(f"dense {acc_dense:.4f}; one-shot 50% G=4: plain {one_shot[False]:.4f}, rearranged {one_shot[True]:.4f}; "
          f"30% G=4 fine-tuned {acc_ft:.4f}")
    assert acc_dense > 0.75
    assert acc_ft >= acc_dense - 0.01  # the paper: -0.224% top-1 at 30% on ImageNet; 1 point here
    assert one_shot[True] >= one_shot[False] - 0.005  # soft: rearrangement does not hurt (usually helps)
