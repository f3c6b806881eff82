"""srste: the SR-STE gradient rule, exact N:M, and the paper's claim on Fashion-MNIST."""

import io

import pytest
import torch
import torch.nn as nn

import sparseforge as sf
from sparseforge.masking import get_mask
from sparseforge.patterns import nm_mask

from conftest import fashion_mlp


@pytest.mark.parametrize("decay", [0.0, 2e-4, 0.05])
def test_gradient_is_ste_plus_sparse_refined_decay(decay):
    torch.manual_seed(0)
    lin = nn.Linear(16, 8)
    sf.sparsify(lin, "srste", decay=decay)
    w = lin.parametrizations.weight.original
    x, r = torch.randn(5, 16), torch.randn(5, 8)
    (lin(x) * r).sum().backward()
    mask = nm_mask(w.detach().abs(), 2, 4)
    expected = r.t() @ x + decay * (~mask) * w.detach()  # dense STE gradient + λ(1 − m)W
    torch.testing.assert_close(w.grad, expected)
    torch.testing.assert_close(lin(x), x @ (w.detach() * mask).t() + lin.bias)


def test_mask_follows_weights_and_finalize_freezes():
    torch.manual_seed(0)
    lin = nn.Linear(32, 8)
    sf.sparsify(lin, "srste", n=1, m=4)
    m = sf.method_of(lin)
    opt = torch.optim.SGD(lin.parameters(), lr=0.5)
    m.prepare(lin, opt)
    for i in range(20):
        loss = lin(torch.randn(8, 32)).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.step(i)
        assert sf.sparsity_report(lin).layers[0].nm_valid(1, 4)
    assert len(m.mask_flips) == 20 and sum(m.mask_flips) > 0
    model = m.finalize()
    assert torch.equal(get_mask(model), model.weight != 0)
    assert type(model.parametrizations.weight[0]).__name__ == "Mask"


def test_save_load_mid_training_keeps_the_dynamic_mask():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    sf.sparsify(model, "srste", exclude=":last")
    buf = io.BytesIO()
    sf.save(model, buf)
    buf.seek(0)
    loaded = sf.load(buf)
    x = torch.randn(3, 16)
    torch.testing.assert_close(loaded(x), model(x))
    assert type(loaded[0].parametrizations.weight[0]).__name__ == "SRSTEMask"
    # pruned values were kept (they are live during SR-STE training)
    torch.testing.assert_close(loaded[0].parametrizations.weight.original, model[0].parametrizations.weight.original)


def test_rejects_incompatible_layers():
    with pytest.raises(ValueError, match="multiple of 4"):
        sf.sparsify(nn.Linear(6, 4), "srste")
    with pytest.raises(sf.ConfigError, match="'n'"):
        sf.sparsify(nn.Linear(8, 4), "srste", n=5, m=4)


def test_srste_matches_dense_and_beats_ste_on_fashion_mnist(fashion):
    """Paper claim at small scale: 2:4 SR-STE trained from scratch stays within ~1 point of dense and
    ahead of plain STE, with fewer mask flips (the SAD metric). λ_W = 2e-3 instead of the paper's 2e-4:
    with ~800 steps instead of ImageNet's 600k, 2e-4 moves pruned weights too little to matter.
    Measured while writing this test (2 seeds): dense 0.852/0.840, STE 0.844/0.842,
    SR-STE 0.853/0.847; flips 491k/486k vs 344k/340k."""
    from sparseforge.training import TrainConfig, evaluate, train

    xtr, ytr, xte, yte = fashion
    acc = {"dense": [], "ste": [], "srste": []}
    flips = {"ste": [], "srste": []}
    for seed in (0, 1):
        for name, decay in (("dense", None), ("ste", 0.0), ("srste", 2e-3)):
            model = fashion_mlp(seed)
            method = None
            if decay is not None:
                sf.sparsify(model, "srste", decay=decay, exclude=":last")
                method = sf.method_of(model)
            cfg = TrainConfig(epochs=5, lr=0.05, optimizer="sgd", batch_size=128, seed=seed)
            model = train(model, xtr, ytr, cfg, method=method, progress=False)
            acc[name].append(evaluate(model, xte, yte))
            if method is not None:
                flips[name].append(sum(method.mask_flips))
                assert sf.sparsity_report(model).layers[0].nm_valid(2, 4)
    mean = {k: sum(v) / len(v) for k, v in acc.items()}
    assert mean["srste"] >= mean["dense"] - 0.01, mean
    assert mean["srste"] > mean["ste"], mean
    assert all(a < b for a, b in zip(flips["srste"], flips["ste"])), flips
