"""blasst: exactness at λ=0, the calibration statistic equals the op's skips, the dropped-mass bound on real
SmolLM2 attention, length invariance of c = λ·L, calibration and the HF integration."""

from __future__ import annotations

import math

import pytest
import torch

import sparseforge as sf
from sparseforge.ops import block_attention
from sparseforge_methods.blasst import block_gaps, fit_scale_factor, skip_fraction, tile_gaps

from _attention_helpers import dense_reference, tiny_llama


def test_lambda_zero_is_dense():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 130, 32), torch.randn(1, 2, 130, 32), torch.randn(1, 2, 130, 32)
    dense, _ = block_attention(q, k, v, causal=True)
    out, st = block_attention(q, k, v, causal=True, mode="threshold", threshold=0.0)
    assert torch.equal(out, dense) and st.skipped == 0
    torch.testing.assert_close(out, dense_reference(q, k, v, causal=True).float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("causal", [True, False])
def test_gaps_predict_the_op_synthetic(causal):
    torch.manual_seed(1)
    q, k, v = torch.randn(1, 4, 200, 16) * 2, torch.randn(1, 2, 200, 16) * 2, torch.randn(1, 2, 200, 16)
    gaps = block_gaps(q, k, causal=causal, scale=0.25, block_size=32)
    for lam in (1e-3, 1e-2, 0.1, 0.5):
        _, st = block_attention(q, k, v, causal=causal, scale=0.25, mode="threshold", threshold=lam, block_size=32)
        assert st.total == gaps.numel()
        assert st.skipped == int((gaps < math.log(lam)).sum())


@pytest.mark.models
def test_gaps_predict_the_op_decode(smollm2_qkv):
    x = smollm2_qkv["qkv"][15]
    q, k, v = x["q"], x["k"], x["v"]
    gaps, visible = tile_gaps(q, k, causal=True, scale=x["scale"], phase="decode")
    for i in (0, 63, 64, 200, 511):
        lam = 30 / (i + 1)
        lam = 0.0 if lam >= 1 else lam
        _, st = block_attention(q[:, :, i:i + 1], k[:, :, :i + 1], v[:, :, :i + 1], scale=x["scale"],
                                mode="threshold", threshold=lam)
        expect = int((gaps[0, :, i, visible[i]] < math.log(lam)).sum()) if lam > 0 else 0
        assert st.total == 3 * int(visible[i].sum()) and st.skipped == expect


@pytest.mark.models
@pytest.mark.parametrize("layer", [2, 15, 29])
def test_dropped_mass_bound_on_real_attention(smollm2_qkv, layer):
    """Every skipped key has probability < λ, so a row loses at most (#skipped keys)·λ <= L·λ = c."""
    x = smollm2_qkv["qkv"][layer]
    q, k, v, scale = x["q"], x["k"], x["v"], x["scale"]
    length, bs = q.shape[2], 64
    dense = dense_reference(q, k, v, causal=True, scale=scale)
    p = dense_reference(q, k, v, causal=True, scale=scale, probs=True)[0]  # [Hq, L, L] float64
    gaps, visible = tile_gaps(q, k, causal=True, scale=scale, block_size=bs)
    for c in (1.0, 10.0, 100.0):
        lam = c / length
        skip = (gaps[0] < math.log(lam)) & visible  # [Hq, nqb, nkb]
        key_skip = skip.repeat_interleave(bs, 1).repeat_interleave(bs, 2)[:, :length, :length]
        dropped = (p * key_skip).sum(-1)  # [Hq, L]
        n_skipped = (key_skip & (p > 0)).sum(-1)  # skipped keys the row can see
        assert bool((dropped <= n_skipped * lam + 1e-12).all()) and float(dropped.max()) <= c
        out, st = block_attention(q, k, v, causal=True, scale=scale, mode="threshold", threshold=lam)
        assert st.skipped == int(skip.sum())
        rel = float((out.double() - dense).norm() / dense.norm())
        if c == 1.0:
            assert rel < 1e-2


@pytest.mark.models
def test_scale_factor_is_length_invariant(smollm2_qkv):
    """Skip fraction vs c = λ·L varies less across lengths than skip fraction vs raw λ (decode phase)."""
    x = smollm2_qkv["qkv"][15]
    lengths = (128, 256, 512)
    gaps = {n: block_gaps(x["q"][:, :, :n], x["k"][:, :, :n], causal=True, scale=x["scale"], phase="decode")
            for n in lengths}
    spread_c = max(max(skip_fraction(gaps[n], c / n) for n in lengths) - min(skip_fraction(gaps[n], c / n)
                                                                            for n in lengths) for c in (3, 10, 30))
    spread_l = max(max(skip_fraction(gaps[n], lam) for n in lengths) - min(skip_fraction(gaps[n], lam)
                                                                          for n in lengths) for lam in (0.02, 0.05, 0.1))
    assert spread_c < spread_l


def test_fit_scale_factor_recovers_exponential():
    pts = [(2.0 * math.exp(6.0 * s), s) for s in (0.1, 0.3, 0.5, 0.7)]
    a, b, r2 = fit_scale_factor(pts)
    assert abs(a - 2.0) < 1e-9 and abs(b - 6.0) < 1e-9 and r2 > 0.999
    with pytest.raises(ValueError, match="scale-factor grid"):
        fit_scale_factor([(1.0, 0.0), (2.0, 0.0)])


def test_sparsify_calibrate_save_load(tmp_path):
    model = tiny_llama(sharpness=20.0)
    ids = torch.randint(0, 100, (2, 160), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids[:1]).logits
    sf.sparsify(model, "blasst", block_size=16, target_sparsity=0.04)
    with pytest.raises(RuntimeError, match="calibrate"):
        model(ids[:1])
    res = sf.method_of(model).calibrate(ids, lengths=(96, 160), grid=[10 ** (i / 4) for i in range(-8, 12)])
    assert set(res) == {"prefill", "decode"} and all(math.isfinite(res[p]["a"]) for p in res)
    assert res["decode"]["b"] > 0  # more sparsity needs a larger scale factor
    from sparseforge.attention import block_skip_summary, handlers

    for h in handlers(model):
        h.reset_stats()
    with torch.no_grad():
        out = model(ids[:1]).logits
        model.generate(ids[:1, :150], max_new_tokens=3, do_sample=False)  # decode: λ = decode scale / L_kv
    summary = block_skip_summary(model)
    assert summary["skipped"] > 0 and not summary["fallbacks"]
    assert handlers(model)[0].stats["decode_calls"] == 2 and block_skip_summary(model, "decode")["total"] > 0
    assert (out - ref).abs().max() < 0.5
    sf.save(model, tmp_path / "m.sf")
    sf.save(model, tmp_path / "w.sf", include_module=False)  # tensors only: load re-applies blasst
    for loaded in (sf.load(tmp_path / "m.sf"), sf.load(tmp_path / "w.sf", model=tiny_llama(sharpness=20.0))):
        with torch.no_grad():
            assert torch.equal(loaded(ids[:1]).logits, out)


def test_explicit_scale_factor_and_errors():
    model = tiny_llama()
    ids = torch.randint(0, 100, (1, 128), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids).logits
        sf.sparsify(model, "blasst", scale_factor_prefill=0.0, scale_factor_decode=0.0, block_size=16)
        torch.testing.assert_close(model(ids).logits, ref, atol=1e-4, rtol=0)  # λ = 0: dense
    with pytest.raises(TypeError, match="PreTrainedModel"):
        sf.sparsify(torch.nn.Linear(2, 2), "blasst")
    with pytest.raises(ValueError, match="target_sparsity"):
        sf.sparsify(tiny_llama(), "blasst", target_sparsity=1.5)
