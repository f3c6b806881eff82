"""sparseforge.attention: the transformers integration on Llama (causal, GQA, padding, KV-cache decode) and
BERT (bidirectional, padding) models; SDPA fallbacks by reason; real MiniLM embeddings."""

from __future__ import annotations

import pytest
import torch

import sparseforge as sf
from sparseforge.attention import (ATTN_IMPLEMENTATION, OpAttention, block_skip_summary, capture_qkv, handlers,
                                   install, uninstall)

from _attention_helpers import tiny_bert, tiny_llama


def test_llama_dense_op_matches_sdpa_with_padding_and_cache():
    model = tiny_llama()
    ids = torch.randint(0, 100, (2, 150), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 150, dtype=torch.long)
    mask[0, :20] = 0  # left padding
    with torch.no_grad():
        ref = model(ids, attention_mask=mask).logits
        gen_ref = model.generate(ids[:1, :30], max_new_tokens=4, do_sample=False)
        hs = install(model, lambda idx, mod: OpAttention(idx))
        assert model.config._attn_implementation == ATTN_IMPLEMENTATION and [h.layer_idx for h in hs] == [0, 1]
        out = model(ids, attention_mask=mask).logits
        gen = model.generate(ids[:1, :30], max_new_tokens=4, do_sample=False)
    assert float((out[0, 20:] - ref[0, 20:]).abs().max()) < 1e-4 and float((out[1] - ref[1]).abs().max()) < 1e-4
    assert torch.equal(gen, gen_ref)
    assert hs[0].stats["decode_calls"] == 3 and not block_skip_summary(model)["fallbacks"]


def test_bert_padding_and_fallbacks():
    model = tiny_bert()
    ids = torch.randint(0, 100, (2, 70), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 70, dtype=torch.long)
    mask[1, 50:] = 0  # right padding
    with torch.no_grad():
        ref = model(ids, attention_mask=mask).last_hidden_state
        install(model, lambda idx, mod: OpAttention(idx))
        out = model(ids, attention_mask=mask).last_hidden_state
        assert float((out[0] - ref[0]).abs().max()) < 1e-4 and float((out[1, :50] - ref[1, :50]).abs().max()) < 1e-4
        assert not block_skip_summary(model)["fallbacks"]
        model(ids, attention_mask=mask, output_attentions=True)  # sdpa itself warns; counted as a fallback
    assert block_skip_summary(model)["fallbacks"] == {"output_attentions": 2}
    uninstall(model)
    assert model.config._attn_implementation == "sdpa" and not handlers(model)


def test_capture_restores_the_model():
    model = tiny_llama()
    ids = torch.randint(0, 100, (1, 40), generator=torch.Generator().manual_seed(2))
    store = capture_qkv(model, ids, layers=[1])
    assert list(store) == [1] and store[1]["q"].shape == (1, 4, 40, 16) and store[1]["k"].shape == (1, 2, 40, 16)
    assert store[1]["causal"] and model.config._attn_implementation != ATTN_IMPLEMENTATION and not handlers(model)


@pytest.mark.models
def test_minilm_methods_match_dense_at_zero_thresholds():
    """The same plugins on a real BERT-family model (bidirectional, padded batch)."""
    from sparseforge.data.models import load_minilm
    from sparseforge.data.text import bbc_sentences

    try:
        tok, model = load_minilm()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    batch = tok(bbc_sentences(4), padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = model(**batch).last_hidden_state
        keep = batch["attention_mask"].bool()
        for method, cfg in (("blasst", {"scale_factor_prefill": 0.0, "block_size": 16}),
                            ("s2o", {"threshold": 0.0, "block_size": 16}),
                            ("sparse_frontier", {"pattern": "block_sparse", "block_size": 16, "top_chunks": 64})):
            sf.sparsify(model, method, **cfg)
            out = model(**batch).last_hidden_state
            assert float((out - ref)[keep].abs().max()) < 1e-4, method
            assert block_skip_summary(model)["total"] > 0 and not block_skip_summary(model)["fallbacks"]
        sf.sparsify(model, "s2o", threshold=0.05, block_size=16)
        out = model(**batch).last_hidden_state
    cos = torch.nn.functional.cosine_similarity(out[keep], ref[keep], dim=-1)
    assert float(cos.min()) > 0.9
