"""reconstruct_pointwise: masks kept, per-layer and end-to-end error below magnitude pruning alone on a
small MobileNet-style CNN trained on Fashion-MNIST, exact refit at sparsity 0, the batched row solver
against a per-row reference, and the argument errors."""

import copy

import pytest
import torch
import torch.nn as nn

from conftest import small_mobilenet
from sparseforge.nn import fold_batchnorm, reconstruct_pointwise
from sparseforge.nn.reconstruct import _solve_rows
from sparseforge.nn.sparse_conv import is_eligible_conv
from sparseforge.training import TrainConfig, evaluate, train


def _pointwise(model):
    return [n for n, m in model.named_modules() if is_eligible_conv(m)]


def _prune(model, sparsity):
    with torch.no_grad():
        for n in _pointwise(model):
            w = model.get_submodule(n).weight
            thr = w.abs().flatten().kthvalue(round(sparsity * w.numel())).values
            w.mul_(w.abs() > thr)
    return model


@pytest.fixture(scope="module")
def trained(fashion):
    """(dense folded net, train images, test images, test labels): 1 epoch on 6000 images, ~3 s."""
    x, y, xt, yt = fashion
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny net; on a shared machine a second OpenMP thread can stall the run
    try:
        net = train(small_mobilenet(0), x[:6000], y[:6000], TrainConfig(epochs=1, batch_size=64, lr=3e-3),
                    progress=False)
        net.eval()
        fold_batchnorm(net)
        yield net, x[6000:], xt[:2000], yt[:2000]
    finally:
        torch.set_num_threads(threads)


def _layer_outputs(model, names, x):
    out, hooks = {}, []
    for n in names:
        hooks.append(model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: out.__setitem__(n, o)))
    with torch.no_grad():
        logits = model(x)
    for h in hooks:
        h.remove()
    return out, logits


@pytest.mark.parametrize("target", ["dense_output", "dense_weights"])
def test_refit_keeps_mask_and_beats_magnitude_pruning_on_held_out_data(trained, target):
    dense, calib_pool, xt, yt = trained
    names = _pointwise(dense)
    pruned = _prune(copy.deepcopy(dense), 0.8)
    zeros = {n: pruned.get_submodule(n).weight == 0 for n in names}
    recon = copy.deepcopy(pruned)
    report = reconstruct_pointwise(recon, calib_pool[:256], dense, target=target, progress=False)

    assert list(report) == names  # network order
    for n in names:
        w = recon.get_submodule(n).weight
        assert torch.all(w[zeros[n]] == 0), n  # pruned entries stay exactly zero
        assert report[n]["after"] < report[n]["before"], (n, report[n])
        assert report[n]["density"] == pytest.approx(0.2, abs=0.01)

    # Held-out test images: every layer's output is closer to the dense one, and so is the prediction.
    want, dense_logits = _layer_outputs(dense, names, xt)
    got_mag, mag_logits = _layer_outputs(pruned, names, xt)
    got_rec, rec_logits = _layer_outputs(recon, names, xt)
    for n in names:
        e_mag = float((got_mag[n] - want[n]).square().sum() / want[n].square().sum())
        e_rec = float((got_rec[n] - want[n]).square().sum() / want[n].square().sum())
        assert e_rec < e_mag, (n, e_mag, e_rec)
    top = dense_logits.argmax(1)
    agree_mag = float((mag_logits.argmax(1) == top).float().mean())
    agree_rec = float((rec_logits.argmax(1) == top).float().mean())
    acc_dense, acc_mag, acc_rec = (evaluate(m, xt, yt) for m in (dense, pruned, recon))
    print(f"{target}: dense acc {acc_dense:.3f}; 80% magnitude acc {acc_mag:.3f} agree {agree_mag:.3f}; "
          f"reconstructed acc {acc_rec:.3f} agree {agree_rec:.3f}")
    assert acc_dense > 0.65
    assert agree_rec > agree_mag + 0.05
    assert acc_rec > acc_mag + 0.02


@pytest.mark.parametrize("ridge_to,damp", [("dense", 0.01), ("zero", 0.0)])
def test_full_mask_refit_reproduces_the_dense_layers(trained, ridge_to, damp):
    dense, calib_pool, xt, _ = trained
    names = _pointwise(dense)
    model = copy.deepcopy(dense)
    with torch.no_grad():  # start away from the answer; nothing is pruned (no exact zeros)
        for n in names:
            w = model.get_submodule(n).weight
            w.copy_(w * 1.5 + 0.05)
    report = reconstruct_pointwise(model, calib_pool[:512], dense, damp=damp, ridge_to=ridge_to, layers=names,
                                   progress=False)
    for n in names:
        assert report[n]["after"] < 1e-8 < report[n]["before"], (n, report[n])
    want, _ = _layer_outputs(dense, names, xt[:200])
    got, _ = _layer_outputs(model, names, xt[:200])
    inputs, hooks = {}, []
    for n in names:
        torch.testing.assert_close(got[n], want[n], rtol=1e-4, atol=1e-4)
        hooks.append(model.get_submodule(n).register_forward_pre_hook(lambda m, i, n=n: inputs.__setitem__(n, i[0])))
    with torch.no_grad():
        model(calib_pool[:512])
    for h in hooks:
        h.remove()
    for n in names:
        # A plain ridge fixes the weights only along input channels that fire (ReLU can leave some dead);
        # the ridge towards the dense weights fixes all of them.
        cols = (inputs[n] != 0).any(0).any(-1).any(-1) if ridge_to == "zero" else slice(None)
        torch.testing.assert_close(model.get_submodule(n).weight[:, cols], dense.get_submodule(n).weight[:, cols],
                                   rtol=1e-3, atol=1e-4)


def test_batched_row_solver_matches_per_row_solves():
    g = torch.Generator().manual_seed(0)
    d, out = 23, 17
    x = torch.randn(d, 200, generator=g, dtype=torch.float64)
    gram, cross = x @ x.T / 200, torch.randn(d, out, generator=g, dtype=torch.float64)
    keep = torch.rand(out, d, generator=g) < torch.rand(out, 1, generator=g)  # densities vary per row
    keep[3] = False
    keep[5] = True
    lam = torch.full((d,), 0.05, dtype=torch.float64)
    prior = torch.randn(out, d, generator=g, dtype=torch.float64)
    for pr in (None, prior):
        w = _solve_rows(gram, cross, keep, lam, pr)
        assert torch.all(w[~keep] == 0)
        for r in range(out):
            s = keep[r].nonzero()[:, 0]
            if len(s) == 0:
                continue
            rhs = cross[s, r] + (0 if pr is None else lam[s] * pr[r, s])
            ref = torch.linalg.solve(gram[s][:, s] + torch.diag(lam[s]), rhs)
            torch.testing.assert_close(w[r, s], ref)


def test_bad_arguments_are_named():
    torch.manual_seed(0)
    dense = small_mobilenet(0).eval()
    fold_batchnorm(dense)
    model = _prune(copy.deepcopy(dense), 0.5)
    x = torch.randn(4, 1, 28, 28)
    with pytest.raises(TypeError, match="argument 'dense'"):
        reconstruct_pointwise(model, x, None)
    with pytest.raises(ValueError, match="argument 'model' must be in eval mode"):
        reconstruct_pointwise(copy.deepcopy(model).train(), x, dense)
    with pytest.raises(ValueError, match="argument 'target'"):
        reconstruct_pointwise(model, x, dense, target="teacher")
    with pytest.raises(ValueError, match="argument 'ridge_to'"):
        reconstruct_pointwise(model, x, dense, ridge_to="magnitude")
    with pytest.raises(ValueError, match="argument 'damp'"):
        reconstruct_pointwise(model, x, dense, damp=-1.0)
    with pytest.raises(ValueError, match="argument 'layers'"):
        reconstruct_pointwise(model, x, dense, layers=["1"])  # a BatchNorm slot, not a pointwise layer
    with pytest.raises(TypeError, match="argument 'calib'"):
        reconstruct_pointwise(model, x.numpy(), dense)
    with pytest.raises(ValueError, match="argument 'calib'"):
        reconstruct_pointwise(model, x[:0], dense)
    unfolded = small_mobilenet(0).eval()  # 1x1 convs without a bias: BatchNorm folded in one model only
    with pytest.raises(ValueError, match="fold BatchNorm in both"):
        reconstruct_pointwise(model, x, unfolded)
    with pytest.raises(ValueError, match="argument 'dense'"):
        reconstruct_pointwise(model, x, nn.Sequential(nn.Conv2d(1, 2, 1)).eval())
    assert reconstruct_pointwise(copy.deepcopy(dense), x, dense, progress=False) == {}  # nothing pruned


def test_activation_masks_keep_each_rows_count_and_fit_the_calibration_better(trained):
    dense, calib_pool, xt, _ = trained
    names = _pointwise(dense)
    pruned = _prune(copy.deepcopy(dense), 0.8)
    kept = copy.deepcopy(pruned)
    rep_keep = reconstruct_pointwise(kept, calib_pool[:256], dense, progress=False)
    chosen = copy.deepcopy(pruned)
    rep_act = reconstruct_pointwise(chosen, calib_pool[:256], dense, mask="activation", progress=False)
    moved = 0
    for n in names:
        w0 = pruned.get_submodule(n).weight.reshape(pruned.get_submodule(n).weight.shape[0], -1)
        w1 = chosen.get_submodule(n).weight.reshape(w0.shape)
        # Same number of kept weights in every output row (so the layer's sparsity is unchanged) ...
        assert torch.equal((w1 != 0).sum(1), (w0 != 0).sum(1)), n
        moved += int(((w1 != 0) & (w0 == 0)).sum())
    assert moved > 0  # ... but not the same weights: the calibration activations moved some
    # Choosing by |w| * ||x|| targets each layer's output error on the calibration inputs.
    assert sum(r["after"] for r in rep_act.values()) < sum(r["after"] for r in rep_keep.values())
    _, dense_logits = _layer_outputs(dense, names, xt)
    top = dense_logits.argmax(1)
    agree = {k: float((_layer_outputs(m, names, xt)[1].argmax(1) == top).float().mean())
             for k, m in (("keep", kept), ("activation", chosen))}
    print(f"80% held-out agreement: refit on magnitude masks {agree['keep']:.3f}, on activation masks "
          f"{agree['activation']:.3f}")
    assert agree["activation"] > agree["keep"] - 0.03
