"""Masks behave like users expect of state_dict, training, copying, save and load."""

import copy
import io

import pytest
import torch
import torch.nn as nn

import sparseforge as sf
from sparseforge.masking import apply_mask, get_mask, iter_masks, plain_copy


def fresh_mlp():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))


def test_state_dict_has_plain_keys_and_loads_into_dense(mlp):
    sf.sparsify(mlp, "magnitude", sparsity=0.7)
    sd = mlp.state_dict()
    assert set(sd) == set(fresh_mlp().state_dict())
    assert not any("parametrizations" in k or "_orig" in k or "_mask" in k for k in sd)
    assert (sd["0.weight"] == 0).float().mean().item() == pytest.approx(0.7, abs=1e-3)
    dense = fresh_mlp()
    dense.load_state_dict(sd)  # strict
    x = torch.randn(5, 32)
    torch.testing.assert_close(dense(x), mlp(x), rtol=0, atol=0)


def test_loading_plain_weights_keeps_masks(mlp):
    sf.sparsify(mlp, "magnitude", sparsity=0.5)
    mask = get_mask(mlp[0]).clone()
    mlp.load_state_dict(fresh_mlp().state_dict())  # dense weights, no masks in the file
    assert torch.equal(get_mask(mlp[0]), mask)
    assert torch.equal(mlp[0].weight != 0, mask)


def test_training_keeps_pruned_weights_at_zero(mlp):
    sf.sparsify(mlp, "magnitude", sparsity=0.8)
    opt = torch.optim.AdamW(mlp.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(5):
        loss = mlp(torch.randn(16, 32)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for _, module, name, mask in iter_masks(mlp):
        assert (getattr(module, name)[~mask] == 0).all()
    assert sf.sparsity_report(mlp).sparsity == pytest.approx(0.8, abs=1e-3)


def test_apply_mask_shape_error(mlp):
    with pytest.raises(ValueError, match="expected \\(64, 32\\)"):
        apply_mask(mlp[0], torch.ones(3, 3, dtype=torch.bool))


def test_masks_compose(mlp):
    a = torch.rand(64, 32) > 0.5
    b = torch.rand(64, 32) > 0.5
    apply_mask(mlp[0], a)
    apply_mask(mlp[0], b)
    assert torch.equal(get_mask(mlp[0]), a & b)


@pytest.mark.parametrize("include_module", [True, False])
def test_save_load_round_trip(tmp_path, mlp, include_module):
    sf.sparsify(mlp, "magnitude", pattern="2:4", exclude=":last")
    x = torch.randn(7, 32)
    expected = mlp(x)
    path = tmp_path / "m.sf"
    sf.save(mlp, path, include_module=include_module)
    loaded = sf.load(path) if include_module else sf.load(path, model=fresh_mlp())
    torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)
    assert sf.history(loaded) == sf.history(mlp)
    assert sf.method_of(loaded).config == sf.method_of(mlp).config
    for (k1, _, _, m1), (k2, _, _, m2) in zip(iter_masks(mlp), iter_masks(loaded)):
        assert k1 == k2 and torch.equal(m1, m2)
    # Masks survive: fine-tuning the loaded model keeps the 2:4 pattern.
    assert sf.sparsity_report(loaded)["0"].nm_valid(2, 4)


def test_save_keeps_live_values_under_masks(tmp_path, mlp):
    """Training-time methods keep values under pruned entries; save/load must not lose them."""
    mask = torch.rand(64, 32) > 0.5
    apply_mask(mlp[0], mask)
    with torch.no_grad():
        mlp[0].parametrizations.weight.original.copy_(torch.randn(64, 32))
    buf = io.BytesIO()
    sf.save(mlp, buf)
    buf.seek(0)
    loaded = sf.load(buf)
    torch.testing.assert_close(loaded[0].parametrizations.weight.original, mlp[0].parametrizations.weight.original)


def test_load_rejects_foreign_files(tmp_path):
    p = tmp_path / "x.pt"
    torch.save({"a": 1}, p)
    with pytest.raises(ValueError, match="not a sparseforge file"):
        sf.load(p, model=fresh_mlp())


def test_load_without_module_needs_model(tmp_path, mlp):
    sf.sparsify(mlp, "magnitude")
    sf.save(mlp, tmp_path / "m", include_module=False)
    with pytest.raises(ValueError, match="model="):
        sf.load(tmp_path / "m")


def test_deepcopy_then_export_leaves_original_intact(mlp):
    sf.sparsify(mlp, "magnitude", sparsity=0.5)
    x = torch.randn(3, 32)
    y = mlp(x)
    clone = copy.deepcopy(mlp)
    exported = sf.export(clone)
    assert type(exported[0]) is nn.Linear
    torch.testing.assert_close(exported(x), y, rtol=0, atol=0)
    torch.testing.assert_close(mlp(x), y, rtol=0, atol=0)  # the original still has its masks
    assert get_mask(mlp[0]) is not None
    plain = plain_copy(mlp)
    assert type(plain[2]) is nn.Linear and get_mask(mlp[2]) is not None


def test_file_stores_the_weights_once(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256))
    sf.sparsify(model, "magnitude", sparsity=0.5)
    sf.save(model, tmp_path / "m.sf")
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    size, plain = (tmp_path / "m.sf").stat().st_size, (tmp_path / "sd.pt").stat().st_size
    # the architecture is pickled without its tensors; masks cost 1 bit per weight
    assert size < 1.15 * plain, (size, plain)
    loaded = sf.load(tmp_path / "m.sf")
    x = torch.randn(2, 256)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
