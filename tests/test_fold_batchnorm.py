"""fold_batchnorm: exact folds only, outputs unchanged, sparsity kept; export_sparse_conv(fold_bn=...)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from sparseforge.nn import SparseConv2d, export_sparse_conv, fold_batchnorm


class SamePadConv(nn.Conv2d):
    """A Conv2d subclass with its own forward, like TF-style 'same' padding in EfficientNet ports."""

    def forward(self, x):
        return F.conv2d(F.pad(x, (1, 1, 1, 1)), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.bn0 = SamePadConv(3, 16, 3, bias=False), nn.BatchNorm2d(16)
        self.pw, self.bn1 = nn.Conv2d(16, 32, 1, bias=True), nn.BatchNorm2d(32)     # folds (conv has a bias)
        self.skip, self.bn2 = nn.Conv2d(32, 32, 1, bias=False), nn.BatchNorm2d(32)  # conv output also used raw: no fold
        self.bn3 = nn.BatchNorm2d(32)                                              # after an add: no conv to fold into
        self.shared, self.bn4 = nn.Conv2d(32, 32, 1, bias=False), nn.BatchNorm2d(32)  # conv called twice: no fold

    def forward(self, x):
        x = F.relu6(self.bn0(self.stem(x)))
        x = F.relu6(self.bn1(self.pw(x)))
        y = self.skip(x)
        x = self.bn3(self.bn2(y) + y)
        return self.bn4(self.shared(x)) + self.shared(x)


def _randomise_bn(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))
    return model


def test_folds_exactly_the_foldable_pairs():
    torch.manual_seed(0)
    model = _randomise_bn(Net()).eval()
    x = torch.randn(2, 3, 12, 10)
    want = model(x)
    assert fold_batchnorm(model) == 2
    assert isinstance(model.bn0, nn.Identity) and isinstance(model.bn1, nn.Identity)
    for name in ("bn2", "bn3", "bn4"):
        assert isinstance(getattr(model, name), nn.BatchNorm2d), name
    torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-5)
    assert fold_batchnorm(model) == 0  # idempotent: nothing left to fold


def test_fold_keeps_zeros_and_export_matches_dense():
    torch.manual_seed(0)
    model = _randomise_bn(Net()).eval()
    with torch.no_grad():
        w = model.pw.weight
        w.mul_(torch.rand_like(w) > 0.8)
        model.pw.weight[3].zero_()  # a whole output channel pruned: its folded bias must survive
    zeros = model.pw.weight == 0
    x = torch.randn(1, 3, 9, 9)
    want = model(x)
    export_sparse_conv(model, min_sparsity=0.7, fold_bn=True)
    assert isinstance(model.pw, SparseConv2d) and isinstance(model.bn1, nn.Identity)
    assert torch.equal(model.pw.to_dense_weight() == 0, zeros)
    torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-5)


def test_training_mode_is_refused():
    with pytest.raises(ValueError, match="argument 'model' must be in eval mode"):
        fold_batchnorm(Net().train())


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(4, 8, 1), nn.BatchNorm2d(8)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
            x = -x
        return self.bn(self.conv(x))


def test_untraceable_model():
    model = Untraceable().eval()
    with pytest.raises(RuntimeError, match="fold_batchnorm.*could not trace argument .model."):
        fold_batchnorm(model)
    with pytest.raises(RuntimeError, match="torch.fx could not trace"):
        export_sparse_conv(Untraceable().eval(), fold_bn=True)
    with pytest.warns(UserWarning, match="BatchNorm left unfolded"):
        export_sparse_conv(model, min_sparsity=0.0, fold_bn="auto")
    assert isinstance(model.conv, SparseConv2d) and isinstance(model.bn, nn.BatchNorm2d)
    with pytest.raises(ValueError, match="argument 'fold_bn'"):
        export_sparse_conv(model, fold_bn="yes")
