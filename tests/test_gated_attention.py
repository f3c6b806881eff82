"""gated_attention: bias +30 reproduces the ungated model, zero weight and bias halve the attention output
exactly, layout and save/load; training a tiny causal LM on BBC text (slow): sparse gates, lower sink."""

from __future__ import annotations

import pytest
import torch

import sparseforge as sf
from sparseforge_methods.gated_attention import gate_scores, gated_modules

from _attention_helpers import tiny_llama


def _o_proj_inputs(model, ids):
    got = []
    hooks = [layer.self_attn.o_proj.register_forward_hook(lambda m, a, o: got.append(a[0].detach().clone()))
             for layer in model.model.layers]
    with torch.no_grad():
        logits = model(ids).logits
    for h in hooks:
        h.remove()
    return logits, got


@pytest.mark.parametrize("variant", ["headwise", "elementwise"])
def test_open_gate_is_the_ungated_model(variant):
    ids = torch.randint(0, 100, (2, 40), generator=torch.Generator().manual_seed(0))
    model = tiny_llama()
    ref, _ = _o_proj_inputs(model, ids)
    sf.sparsify(model, "gated_attention", variant=variant, bias=30.0, init_std=0.0)
    out, _ = _o_proj_inputs(model, ids)
    assert float((out - ref).abs().max()) < 1e-5
    heads = model.config.num_attention_heads
    assert gate_scores(model)[0].shape == (2, 40, heads if variant == "headwise" else 64)


@pytest.mark.parametrize("variant", ["headwise", "elementwise"])
def test_zero_gate_halves_the_attention_output_exactly(variant):
    ids = torch.randint(0, 100, (1, 30), generator=torch.Generator().manual_seed(1))
    model = tiny_llama(layers=1)
    _, ref = _o_proj_inputs(model, ids)
    sf.sparsify(model, "gated_attention", variant=variant, bias=0.0, init_std=0.0)
    gated_in = []
    h = model.model.layers[0].self_attn.o_proj.register_forward_hook(lambda m, a, o: gated_in.append(a[0].clone()))
    with torch.no_grad():
        model(ids)
    h.remove()
    assert torch.equal(gated_in[0], 0.5 * ref[0])


def test_default_retrofit_init_and_state_dict(tmp_path):
    ids = torch.randint(0, 100, (1, 30), generator=torch.Generator().manual_seed(2))
    model = tiny_llama()
    with torch.no_grad():
        ref = model(ids).logits
    sf.sparsify(model, "gated_attention")
    assert len(gated_modules(model)) == 2 and sf.describe("gated_attention").kind == "architecture"
    assert "model.layers.0.self_attn.attn_gate.weight" in model.state_dict()
    with torch.no_grad():
        out = model(ids).logits
    assert 0 < float((out - ref).abs().max()) < 0.05  # σ(5) ≈ 0.993: nearly the pretrained model
    sf.save(model, tmp_path / "g.sf", include_module=False)
    loaded = sf.load(tmp_path / "g.sf", model=tiny_llama())
    sf.save(model, tmp_path / "m.sf")
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, out) and torch.equal(sf.load(tmp_path / "m.sf")(ids).logits, out)
    with pytest.raises(ValueError, match="already has"):
        sf.sparsify(model, "gated_attention")
    with pytest.raises(TypeError, match="q_proj"):
        sf.sparsify(torch.nn.Sequential(torch.nn.Linear(2, 2)), "gated_attention")


def _train_tiny_lm(gated: str | None, steps: int, seed: int = 0):
    """A 2-layer, 4-head, d=64 causal Llama on BBC News bytes (BOS at position 0), AdamW; returns (model, val ids)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from sparseforge.data.text import bbc_articles

    text = "\n\n".join(t for _, t in bbc_articles(limit=400)).encode("latin-1", "replace")
    data = torch.tensor(list(text), dtype=torch.long)
    length, batch, bos = 128, 16, 256

    def sample(gen, n):
        start = torch.randint(0, len(data) - length, (n,), generator=gen)
        return torch.cat([torch.full((n, 1), bos), torch.stack([data[s:s + length - 1] for s in start])], 1)

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=257, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256)
    model = LlamaForCausalLM(cfg)
    if gated:
        sf.sparsify(model, "gated_attention", variant=gated, bias=None, init_std=0.02)  # the paper's form
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        x = sample(gen, batch)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), sample(torch.Generator().manual_seed(123), 32)


@pytest.mark.slow
def test_training_gives_sparse_gates_and_less_sink():
    """PAPERS.md §3 (c): mean gate score < 0.5 and lower attention mass on token 0 than the ungated baseline."""
    res = {}
    for arm in (None, "elementwise"):
        model, val = _train_tiny_lm(arm, steps=150)
        model.set_attn_implementation("eager")
        with torch.no_grad():
            out = model(input_ids=val, labels=val, output_attentions=True)
        sink = float(torch.stack([a[:, :, 8:, 0].mean() for a in out.attentions]).mean())
        gate = float(torch.cat([g.flatten() for g in gate_scores(model)]).mean()) if arm else None
        res[arm] = (float(out.loss), sink, gate)
    print("(val loss, token-0 attention mass, mean gate score):", res)
    assert res["elementwise"][2] < 0.5, res
    assert res["elementwise"][1] < res[None][1], res
