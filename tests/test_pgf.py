"""pgf: decaying gradient flow (MdGf) and structure decay (SdGf), phase by phase."""

import math

import pytest
import torch
import torch.nn as nn

import sparseforge as sf
from sparseforge.masking import get_mask
from sparseforge.patterns import nm_mask
from sparseforge_methods.pgf import sdgf_schedule

from conftest import fashion_mlp


def layer(k=32):
    torch.manual_seed(0)
    return nn.Linear(k, 8)


def sgd_steps(lin, method, steps, x=None):
    opt = torch.optim.SGD(lin.parameters(), lr=0.01)
    method.prepare(lin, opt, total_steps=steps)
    for i in range(steps):
        loss = lin(torch.randn(4, lin.in_features)).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.step(i)
    return method.finalize()


def test_mdgf_starts_dense_and_ends_binary():
    lin = layer()
    sf.sparsify(lin, "pgf", n=1, m=8, mode="mdgf_exp")
    m = sf.method_of(lin)
    w = lin.parametrizations.weight.original
    x = torch.randn(3, 32)
    torch.testing.assert_close(lin(x), x @ w.detach().t() + lin.bias)  # α(0) = 1: W̃ = W
    m.prepare(lin, torch.optim.SGD(lin.parameters(), lr=0.0), total_steps=100)
    assert m.state_at(0)[3] == 1.0
    assert m.state_at(99)[3] == pytest.approx(math.exp(-math.log(1e3) * 99 / 100))
    assert m.state_at(100)[0] == "frozen"
    m.step(49)  # now at step 50: α = exp(-c·50)
    alpha = math.exp(-math.log(1e3) * 50 / 100)
    mask = nm_mask(w.detach().abs(), 1, 8)
    expected = w.detach() * (mask + (~mask) * alpha)
    torch.testing.assert_close(lin(x), x @ expected.t() + lin.bias)


def test_mdgf_gradient_is_dense_ste():
    lin = layer()
    sf.sparsify(lin, "pgf", n=1, m=4, decay_coef=0.5, mode="mdgf_linear", total_steps=10)
    m = sf.method_of(lin)
    m.prepare(lin, torch.optim.SGD(lin.parameters(), lr=0.0))
    m.step(0)  # step 1: α = 0.5
    w = lin.parametrizations.weight.original
    x, r = torch.randn(5, 32), torch.randn(5, 8)
    (lin(x) * r).sum().backward()
    torch.testing.assert_close(w.grad, r.t() @ x)  # unchanged, pruned entries included


def test_linear_decay_reaches_zero_then_freezes():
    lin = layer()
    sf.sparsify(lin, "pgf", n=2, m=4, mode="mdgf_linear", finetune_steps=5)
    m = sf.method_of(lin)
    out = sgd_steps(lin, m, 25)
    assert m.state_at(19)[3] == pytest.approx(1 / 20)
    assert m.state_at(20)[0] == "frozen"
    assert sf.sparsity_report(out).layers[0].nm_valid(2, 4)
    assert torch.equal(get_mask(out), out.weight != 0)


def test_dense_phase():
    lin = layer()
    sf.sparsify(lin, "pgf", dense_steps=3)
    m = sf.method_of(lin)
    m.prepare(lin, torch.optim.SGD(lin.parameters(), lr=0.0), total_steps=10)
    assert [m.state_at(i)[0] for i in range(5)] == ["dense"] * 3 + ["sparse"] * 2
    x = torch.randn(2, 32)
    torch.testing.assert_close(lin(x), x @ lin.parametrizations.weight.original.detach().t() + lin.bias)


def test_sdgf_schedules():
    assert sdgf_schedule(1, 8, "sdgf_stepwise") == [(7, 8), (4, 8), (2, 8), (1, 8)]
    assert sdgf_schedule(1, 32, "sdgf_stepwise") == [(31, 32), (16, 32), (8, 32), (4, 32), (2, 32), (1, 32)]
    assert sdgf_schedule(2, 4, "sdgf_stepwise") == [(3, 4), (2, 4)]
    assert sdgf_schedule(1, 4, "sdgf_geometric", [64]) == [(8, 32), (4, 16), (2, 8), (1, 4)]
    assert sdgf_schedule(1, 4, "sdgf_geometric", [16]) == [(4, 16), (2, 8), (1, 4)]


def test_sdgf_emits_patterns_at_frame_boundaries():
    lin = layer(64)
    sf.sparsify(lin, "pgf", n=1, m=8, mode="sdgf_stepwise")
    m = sf.method_of(lin)
    opt = torch.optim.SGD(lin.parameters(), lr=0.01)
    m.prepare(lin, opt, total_steps=40)
    seen = []
    for i in range(40):
        seen.append(tuple(m.state_at(i)[1:3]))
        report = sf.sparsity_report(lin).layers[0]
        n, mm = m.state_at(i)[1:3]
        assert report.group_max.get(8, 8) <= n if mm == 8 else True
        loss = lin(torch.randn(4, 64)).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.step(i)
    frames = [seen[0]] + [b for a, b in zip(seen, seen[1:]) if a != b]
    assert frames == [(7, 8), (4, 8), (2, 8), (1, 8)]
    assert [seen.index(f) for f in frames] == [0, 10, 20, 30]
    out = m.finalize()
    assert sf.sparsity_report(out).layers[0].nm_valid(1, 8)


def test_needs_run_length():
    lin = layer()
    sf.sparsify(lin, "pgf")
    with pytest.raises(ValueError, match="total_steps"):
        sf.method_of(lin).prepare(lin, torch.optim.SGD(lin.parameters(), lr=0.1))


def test_mdgf_at_1_16_on_fashion_mnist(fashion):
    """The paper claims MdGf beats SR-STE at high N:M sparsity (+2-5% on ViT/LLMs). On a Fashion-MNIST
    MLP at 1:16 that advantage does not reproduce (measured, 2 seeds, 5 epochs: STE 0.833/0.797, SR-STE
    0.834/0.821, MdGf-exp 0.829/0.810, MdGf-linear 0.805/0.782, SdGf-stepwise 0.816/0.804). What holds,
    and is asserted: MdGf-exp trains a valid 1:16 model ahead of plain STE and within 1.5 points of SR-STE."""
    from sparseforge.training import TrainConfig, evaluate, train

    xtr, ytr, xte, yte = fashion
    acc = {"ste": [], "srste": [], "mdgf_exp": []}
    for seed in (0, 1):
        for name, method, kw in (("ste", "srste", {"decay": 0.0}), ("srste", "srste", {"decay": 2e-3}),
                                 ("mdgf_exp", "pgf", {"mode": "mdgf_exp"})):
            model = sf.sparsify(fashion_mlp(seed), method, n=1, m=16, exclude=":last", **kw)
            cfg = TrainConfig(epochs=5, lr=0.05, optimizer="sgd", batch_size=128, seed=seed)
            model = train(model, xtr, ytr, cfg, method=sf.method_of(model), progress=False)
            assert sf.sparsity_report(model)["1"].nm_valid(1, 16)
            acc[name].append(evaluate(model, xte, yte))
    mean = {k: sum(v) / len(v) for k, v in acc.items()}
    assert mean["mdgf_exp"] > mean["ste"], mean
    assert mean["mdgf_exp"] >= mean["srste"] - 0.015, mean
