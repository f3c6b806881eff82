"""export_sparse_conv(fuse_activation=True): ReLU / ReLU6 after a swapped conv move into the kernel's store."""

import copy

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from sparseforge.nn import SparseConv2d, export_sparse_conv


class Block(nn.Module):
    """The EfficientNet-lite pattern: one ReLU6 module shared by three call sites, BatchNorm between."""

    def __init__(self):
        super().__init__()
        self.expand, self.bn0 = nn.Conv2d(8, 24, 1, bias=False), nn.BatchNorm2d(24)
        self.dw, self.bn1 = nn.Conv2d(24, 24, 3, padding=1, groups=24, bias=False), nn.BatchNorm2d(24)
        self.act = nn.ReLU6()
        self.b, self.c, self.d, self.e = (nn.Conv2d(24, 16, 1), nn.Conv2d(16, 16, 1), nn.Conv2d(16, 16, 1),
                                          nn.Conv2d(16, 16, 1))

    def forward(self, x):
        y = self.act(self.bn0(self.expand(x)))
        y = self.act(self.bn1(self.dw(y)))
        z = F.relu(self.b(y))
        w = torch.clamp(self.c(z), 0, 6)
        u = self.d(w)  # feeds two users: not fusable
        v = self.e(u + F.relu(u))
        return torch.sigmoid(v)  # not a ReLU: stays


@pytest.fixture()
def block():
    torch.manual_seed(0)
    m = Block().eval()
    with torch.no_grad():
        for conv in (m.expand, m.b, m.c, m.d, m.e):
            conv.weight.mul_(torch.rand_like(conv.weight) > 0.7)
        for bn in (m.bn0, m.bn1):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 1.5)
    return m


def _acts(model):
    return {n: m.activation for n, m in model.named_modules() if isinstance(m, SparseConv2d)}


def test_fuses_exactly_the_single_use_activations(block):
    x = torch.randn(2, 8, 9, 7) * 3
    with torch.no_grad():
        ref = block(x)
        fused = export_sparse_conv(copy.deepcopy(block), fold_bn=True, fuse_activation=True).eval()
        out = fused(x)
    assert isinstance(fused, fx.GraphModule)
    assert _acts(fused) == {"expand": "relu6", "b": "relu", "c": "relu6", "d": None, "e": None}
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    nodes = list(fused.graph.nodes)
    # The depthwise conv's ReLU6 call stays, the expansion's is gone; of the functional ones only the ReLU
    # whose input is also used elsewhere is left.
    assert [n.target for n in nodes if n.op == "call_module"].count("act") == 1
    assert [n.target for n in nodes if n.op == "call_function" and n.target in (F.relu, torch.clamp)] == [F.relu]
    # The activations really run inside the kernel: outputs of fused convs are clamped.
    seen = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: seen.__setitem__(n, o))
             for n, m in fused.named_modules() if isinstance(m, SparseConv2d)]
    with torch.no_grad():
        fused(x)
    for h in hooks:
        h.remove()
    assert seen["expand"].min() >= 0 and seen["expand"].max() <= 6 and seen["b"].min() >= 0
    assert seen["d"].min() < 0  # unfused: raw conv output


def test_same_state_dict_keys_as_plain_export(block):
    plain = export_sparse_conv(copy.deepcopy(block), fold_bn=True)
    fused = export_sparse_conv(copy.deepcopy(block), fold_bn=True, fuse_activation=True)
    assert sorted(plain.state_dict()) == sorted(fused.state_dict())
    for k, v in plain.state_dict().items():
        assert torch.equal(v, fused.state_dict()[k]), k


def test_nothing_to_fuse_returns_the_model_itself():
    m = nn.Sequential(nn.Conv2d(4, 4, 1), nn.Sigmoid()).eval()
    with torch.no_grad():
        m[0].weight.mul_(torch.arange(16).reshape(4, 4, 1, 1) % 4 == 0)
    out = export_sparse_conv(m, fuse_activation=True)
    assert out is m and isinstance(m[0], SparseConv2d) and m[0].activation is None


def test_dense_conv_keeps_its_activation():
    # Below min_sparsity the conv is not swapped, so its ReLU must stay in the graph.
    m = nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU()).eval()
    out = export_sparse_conv(m, min_sparsity=0.5, fuse_activation=True)
    assert out is m and isinstance(m[1], nn.ReLU) and not isinstance(m[0], SparseConv2d)


def test_untraceable_model_raises_naming_the_cause():
    class Dynamic(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else x  # data-dependent control flow

    with pytest.raises(RuntimeError, match="fuse_activations.*could not trace"):
        export_sparse_conv(Dynamic().eval(), fuse_activation=True)
