"""sparseforge.ops.nm_linear (custom op, fake, autograd, compile) and sparseforge.nn.NMLinear / export."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import sparseforge as sf
from sparseforge import _C
from sparseforge.formats import NMSparse
from sparseforge.nn import NMLinear, export_nm
from sparseforge.nn.nm_linear import clear_dispatch_cache
from sparseforge.ops import nm_linear

ISAS = _C.supported_isas()


@pytest.fixture
def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))


def weight(rows=24, k=32, n=2, m=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return NMSparse.from_dense(torch.randn(rows, k, generator=g), n, m, prune=True)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", [(32,), (1, 32), (3, 5, 32), (17, 32)])
def test_forward_matches_dense_masked_linear(monkeypatch, isa, shape):
    monkeypatch.setenv("SPARSEFORGE_ISA", isa)
    s = weight()
    x = torch.randn(*shape)
    b = torch.randn(24)
    ref = F.linear(x.double(), s.to_dense().double(), b.double())
    y = nm_linear(x, s, b)
    assert y.shape == ref.shape and y.dtype == torch.float32
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(nm_linear(x, s).double(), ref - b.double(), rtol=1e-5, atol=1e-5)


def test_noncontiguous_input():
    s = weight()
    x = torch.randn(32, 6).t()
    torch.testing.assert_close(nm_linear(x, s), F.linear(x, s.to_dense()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n,m", [(2, 4), (1, 2), (2, 8), (4, 8)])
def test_gradients_match_dense_masked_linear(n, m):
    s = weight(20, 48, n, m, seed=n + m)
    mask = s.mask()
    values = s.values.clone().double().requires_grad_(True)
    x = torch.randn(4, 3, 48, dtype=torch.float64, requires_grad=True)
    b = torch.randn(20, dtype=torch.float64, requires_grad=True)
    # float32 op vs float64 dense masked linear, same upstream gradient
    vf = values.detach().float().requires_grad_(True)
    xf = x.detach().float().requires_grad_(True)
    bf = b.detach().float().requires_grad_(True)
    y = torch.ops.sparseforge.nm_linear(xf, vf, s.meta, bf, n, m, 48)
    wd = torch.zeros(20, 48, dtype=torch.float64).masked_scatter(mask, values)
    yr = F.linear(x, wd, b)
    g = torch.randn_like(yr)
    y.backward(g.float())
    yr.backward(g)
    torch.testing.assert_close(xf.grad.double(), x.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(bf.grad.double(), b.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(vf.grad.double(), values.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("batch_shape", [(3,), (2, 5), ()])
def test_opcheck(with_bias, batch_shape):
    s = weight(16, 64)
    x = torch.randn(*batch_shape, 64)
    b = torch.randn(16) if with_bias else None
    torch.library.opcheck(torch.ops.sparseforge.nm_linear.default, (x, s.values, s.meta, b, 2, 4, 64))
    args = (x.clone().requires_grad_(), s.values.clone().requires_grad_(), s.meta,
            None if b is None else b.clone().requires_grad_(), 2, 4, 64)
    torch.library.opcheck(torch.ops.sparseforge.nm_linear.default, args)


def test_op_errors():
    s = weight()
    with pytest.raises(TypeError, match="'x' must be float32"):
        nm_linear(torch.randn(2, 32, dtype=torch.float64), s)
    with pytest.raises(ValueError, match="K=32"):
        nm_linear(torch.randn(2, 16), s)
    with pytest.raises(TypeError, match="NMSparse"):
        nm_linear(torch.randn(2, 32), s.to_dense())


def test_torch_compile_with_training_step():
    torch.manual_seed(0)
    lin = nn.Linear(32, 16)
    with torch.no_grad():
        lin.weight.mul_(sf.patterns.nm_mask(lin.weight.abs(), 2, 4))
    layer = NMLinear.from_dense(lin, 2, 4, mode="sparse")
    x = torch.randn(8, 32)
    ref = lin(x)
    f = torch.compile(lambda t: layer(t).relu().sum(), fullgraph=False)
    loss = f(x)
    torch.testing.assert_close(loss, ref.relu().sum(), rtol=1e-4, atol=1e-4)
    loss.backward()
    assert layer.values.grad is not None and layer.values.grad.shape == layer.values.shape
    assert layer.bias.grad is not None


def test_fine_tuning_keeps_the_pattern_and_learns():
    torch.manual_seed(0)
    lin = nn.Linear(32, 8)
    layer = NMLinear.from_dense(lin, 2, 4, prune=True, mode="sparse")
    before = layer.weight.detach() != 0
    x = torch.randn(64, 32)
    target = torch.randn(64, 8)
    opt = torch.optim.SGD(layer.parameters(), lr=0.05)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = F.mse_loss(layer(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    after = layer.weight.detach() != 0
    assert not (after & ~before).any()  # nothing outside the pattern grows


@pytest.mark.parametrize("mode", ["sparse", "dense", "auto"])
def test_module_modes_agree(monkeypatch, mode):
    clear_dispatch_cache()
    lin = nn.Linear(64, 40)
    layer = NMLinear.from_dense(lin, 2, 4, prune=True, mode=mode).eval()
    x = torch.randn(5, 64)
    ref = F.linear(x.double(), layer.weight.detach().double(), layer.bias.detach().double())
    with torch.no_grad():
        torch.testing.assert_close(layer(x).double(), ref, rtol=1e-5, atol=1e-5)
    d = layer.decide(5)
    if mode == "auto":
        assert d.reason == "measured" and d.ratio > 0 and d.choice in ("sparse", "dense")
        assert layer.decide(7) is d  # same batch bucket: cached, not re-measured
    else:
        assert d.choice == mode and d.reason == "forced"
    monkeypatch.setenv("SPARSEFORGE_NM_DISPATCH", "dense")
    assert layer.decide(5).choice == "dense"
    monkeypatch.setenv("SPARSEFORGE_NM_DISPATCH", "bogus")
    with pytest.raises(ValueError, match="SPARSEFORGE_NM_DISPATCH"):
        layer.decide(5)


def test_from_dense_uses_the_masked_weight_and_rejects_dense():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8))
    with pytest.raises(ValueError, match="not 2:4 sparse"):
        NMLinear.from_dense(model[0], 2, 4)
    sf.sparsify(model, "magnitude", pattern="2:4")
    layer = NMLinear.from_dense(model[0], 2, 4)
    torch.testing.assert_close(layer.weight.detach(), model[0].weight.detach())
    with pytest.raises(TypeError, match="nn.Linear"):
        NMLinear.from_dense(nn.Conv2d(4, 4, 1), 2, 4)


def test_export_swaps_eligible_linears_and_explain(mlp):
    model = sf.sparsify(mlp, "magnitude", pattern="2:4", exclude=["4"])
    x = torch.randn(3, 32)
    with torch.no_grad():
        ref = model(x)
    out = sf.export(model)
    assert isinstance(out[0], NMLinear) and isinstance(out[2], NMLinear)
    assert type(out[4]) is nn.Linear  # its input dim (48) is fine, but it was not pruned: not N:M
    with torch.no_grad():
        torch.testing.assert_close(out(x), ref, rtol=1e-5, atol=1e-5)
    report = sf.explain(out, batch_sizes=(1, 4))
    text = str(report)
    assert "NMLinear" in text and "not N:M exported" in text
    assert len([r for r in report.rows if r["type"] == "NMLinear"]) == 4
    assert all(r["ratio"] > 0 for r in report.rows if r["type"] == "NMLinear")


def test_export_nm_on_plain_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 6), nn.Linear(6, 2))
    with torch.no_grad():
        model[0].weight.mul_(sf.patterns.nm_mask(model[0].weight.abs(), 2, 4))
    export_nm(model, 2, 4)
    assert isinstance(model[0], NMLinear)
    assert type(model[1]) is nn.Linear and type(model[2]) is nn.Linear  # dense / K not a multiple of 4
    with pytest.raises(TypeError, match="root"):
        export_nm(nn.Linear(8, 8))


def test_magnitude_unstructured_export_still_bakes(mlp):
    model = sf.sparsify(mlp, "magnitude", sparsity=0.5)
    out = sf.export(model)
    assert not any(isinstance(m, NMLinear) for m in out.modules())


def test_bf16_weights_op_and_module():
    torch.manual_seed(0)
    lin = nn.Linear(64, 24)
    layer = NMLinear.from_dense(lin, 2, 4, prune=True, mode="sparse", weight_dtype=torch.bfloat16)
    assert layer.values.dtype == torch.bfloat16
    x = torch.randn(3, 64)
    ref = F.linear(x.double(), layer.weight.detach().double(), layer.bias.detach().double())
    torch.testing.assert_close(layer(x).double(), ref, rtol=1e-5, atol=1e-5)
    layer(x).sum().backward()
    assert layer.values.grad.dtype == torch.bfloat16
    torch.library.opcheck(torch.ops.sparseforge.nm_linear.default,
                          (x, layer.values.detach(), layer.meta, None, 2, 4, 64))


def test_sparse_choice_keeps_only_the_sparse_bytes(monkeypatch):
    clear_dispatch_cache()
    layer = NMLinear.from_dense(nn.Linear(64, 32), 2, 4, prune=True)
    from sparseforge.nn import nm_linear as mod

    monkeypatch.setattr(mod, "_measure", lambda *a, **k: (1.0, 2.0))  # sparse measured 2x faster
    assert layer.decide(1).choice == "sparse" and layer.decide(1).ratio == 2.0
    assert layer._dense_cache is None
    sparse_bytes = layer.values.numel() * 4 + layer.meta.numel()
    assert sparse_bytes <= 0.532 * 64 * 32 * 4
    monkeypatch.setattr(mod, "_measure", lambda *a, **k: (2.0, 1.0))
    clear_dispatch_cache()
    assert layer.decide(1).choice == "dense"
