"""Every N:M method hands over a model whose export runs on the nm_gemm kernel with the same outputs."""

import pytest
import torch
import torch.nn as nn

import sparseforge as sf
from sparseforge.nn import NMLinear


@pytest.mark.parametrize("name,cfg", [("magnitude", {"pattern": "2:4"}), ("srste", {}), ("pgf", {"n": 1, "m": 8}),
                                      ("bdwp", {"n": 2, "m": 8}), ("cast", {})])
def test_export_swaps_linears_for_nm_kernels(name, cfg):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    sf.sparsify(model, name, exclude=":last", **cfg)
    method = sf.method_of(model)
    if method.is_training_method():
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        method.prepare(model, opt, total_steps=6)
        for i in range(6):
            loss = model(torch.randn(8, 64)).pow(2).mean()
            loss = method.training_loss(model, None, None, loss) if name != "cast" else loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            method.step(i)
        model = method.finalize()
    x = torch.randn(5, 64)
    with torch.no_grad():
        expected = model(x)
    exported = sf.export(model)
    kinds = [type(m) for m in exported]
    assert kinds[0] is NMLinear and kinds[2] is NMLinear and kinds[4] is nn.Linear, kinds
    with torch.no_grad():
        torch.testing.assert_close(exported(x), expected, rtol=1e-4, atol=1e-5)
