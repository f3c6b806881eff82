"""cast: decay only on the to-be-pruned weights, γ scaling, self-distillation, exact N:M at the end."""

import copy

import pytest
import torch
import torch.nn as nn

import sparseforge as sf

from conftest import fashion_mlp


def small():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def run(model, steps=50, **cfg):
    sf.sparsify(model, "cast", exclude=":last", **cfg)
    m = sf.method_of(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    m.prepare(model, opt, total_steps=steps)
    return m, opt


def test_decay_touches_only_masked_entries_and_never_flips_sign():
    model = small()
    m, opt = run(model, steps=100, kd_weight=0.0)
    w = model[0].parametrizations.weight.original
    scale = m.scales[0]
    before = w.detach().clone()
    m.step(0)  # no optimizer step: only the proximal decay acts
    after = w.detach()
    keep = scale.mask
    assert torch.equal(after[keep], before[keep])
    assert (after[~keep].abs() <= before[~keep].abs()).all()
    assert (after[~keep].abs() < before[~keep].abs()).any()
    assert ((after * before) >= 0).all()


def test_projection_gives_exact_nm_and_flip_rate_falls():
    model = small()
    m, opt = run(model, steps=200, mask_interval=5)
    x = torch.randn(64, 16)
    for i in range(200):
        loss = model(x).pow(2).mean()
        loss = m.training_loss(model, x, None, loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.step(i)
    assert m.projected
    out = m.finalize()
    assert sf.sparsity_report(out)["0"].nm_valid(2, 4)
    assert m.flip_rates[-1] <= m.flip_rates[0] and m.flip_rates[-1] < 0.01


def test_gamma_is_trained_and_folded_in():
    model = small()
    m, opt = run(model, steps=20, kd_weight=0.0)
    assert any(m.scales[0].gamma is p for g in opt.param_groups for p in g["params"])
    with torch.no_grad():
        m.scales[0].gamma.fill_(2.0)
    eff = model[0].weight.detach().clone()
    m._project()
    mask = model[0].weight != 0
    torch.testing.assert_close(model[0].weight[mask], eff[mask])


def test_distillation_uses_a_frozen_dense_teacher():
    model = small()
    dense_out = model(torch.ones(1, 16)).detach()
    m, opt = run(model, steps=10, kd_weight=1.0)
    assert all(not p.requires_grad for p in m.teacher.parameters())
    x = torch.randn(8, 16)
    out = model(x)
    zero = m.training_loss(model, x, None, torch.tensor(5.0))
    assert zero.item() == pytest.approx(0.0, abs=1e-6)  # student == teacher before any update
    torch.testing.assert_close(m.teacher(torch.ones(1, 16)), dense_out)


def test_cast_matches_the_baselines_on_fashion_mnist(fashion):
    """Dense → 2:4 with equal fine-tuning steps: CAST vs one-shot magnitude + masked fine-tune vs SR-STE.
    The paper reports CAST ahead on LLMs; on this MLP the three land within noise of each other (measured:
    0.8617/0.8609 CAST, 0.8615/0.8618 magnitude+FT, 0.8625/0.8639 SR-STE), all far above one-shot
    (0.832/0.837). The test holds CAST to that: within 0.6 points of the best, well above one-shot."""
    from sparseforge.training import TrainConfig, evaluate, train

    xtr, ytr, xte, yte = fashion
    dense = fashion_mlp(0)
    train(dense, xtr, ytr, TrainConfig(epochs=5, lr=1e-3, batch_size=128), progress=False)
    ft = TrainConfig(epochs=2, lr=3e-4, batch_size=128)
    res = {}
    oneshot = sf.sparsify(copy.deepcopy(dense), "magnitude", pattern="2:4", exclude=":last")
    res["oneshot"] = evaluate(oneshot, xte, yte)
    res["magnitude_ft"] = evaluate(train(oneshot, xtr, ytr, ft, progress=False), xte, yte)
    for name, kw in (("srste", {"decay": 2e-3}), ("cast", {})):
        model = sf.sparsify(copy.deepcopy(dense), name, exclude=":last", **kw)
        model = train(model, xtr, ytr, ft, method=sf.method_of(model), progress=False)
        assert sf.sparsity_report(model).layers[0].nm_valid(2, 4)
        res[name] = evaluate(model, xte, yte)
    best = max(res["magnitude_ft"], res["srste"])
    assert res["cast"] >= best - 0.006, res
    assert res["cast"] > res["oneshot"] + 0.01, res
