"""sparse_frontier: with budgets >= the context every pattern equals dense exactly; smaller budgets skip
blocks; Quest's decode block mask agrees with its per-row rule; the patterns run on HF models."""

from __future__ import annotations

import pytest
import torch

import sparseforge as sf
from sparseforge.attention import block_skip_summary, handlers
from sparseforge.attention.blocks import keep_from_mask, mask_from_keep, visible_blocks
from sparseforge.ops import block_attention
from sparseforge_methods.sparse_frontier import (block_sparse_keep, quest_pages, quest_per_query,
                                                 vertical_slash_keep)

from _attention_helpers import dense_reference, tiny_llama


def _qkv(n=200, seed=0):
    torch.manual_seed(seed)
    return torch.randn(1, 4, n, 16) * 2, torch.randn(1, 2, n, 16) * 2, torch.randn(1, 2, n, 16)


def test_full_budget_is_dense():
    q, k, v = _qkv()
    dense, _ = block_attention(q, k, v, causal=True, block_size=32)
    vis = visible_blocks(200, 200, causal=True, block_q=32, block_k=32)
    for keep in (vertical_slash_keep(q, k, scale=0.25, block_size=32, vertical_size=200, slash_size=200, last_q=200),
                 block_sparse_keep(q, k, causal=True, scale=0.25, block_size=32, top_chunks=7)):
        assert torch.equal(keep, vis.expand_as(keep))
        out, st = block_attention(q, k, v, causal=True, mode="block_mask", block_mask=mask_from_keep(keep),
                                  block_size=32)
        assert st.skipped == 0 and torch.equal(out, dense)
    out = quest_per_query(q, k, v, scale=0.25, page_size=16, token_budget=208)
    torch.testing.assert_close(out.double(), dense_reference(q, k, v, causal=True, scale=0.25), atol=1e-5, rtol=0)
    num, idx = quest_pages(q[:, :, -1:], k, page_size=16, token_budget=208)
    out, st = block_attention(q[:, :, -1:], k, v, mode="block_mask", block_mask=(num, idx), block_size=16)
    assert st.skipped == 0 and torch.equal(out, block_attention(q[:, :, -1:], k, v, block_size=16)[0])


def test_small_budgets_skip_and_keep_sink_and_local():
    q, k, v = _qkv(n=256)
    vis = visible_blocks(256, 256, causal=True, block_q=32, block_k=32)
    vs = vertical_slash_keep(q, k, scale=0.25, block_size=32, vertical_size=8, slash_size=8, last_q=32,
                             local_tokens=16)
    bsk = block_sparse_keep(q, k, causal=True, scale=0.25, block_size=32, top_chunks=3)
    for keep in (vs, bsk):
        assert keep.sum() < vis.sum() * keep.shape[1] and bool(keep[..., 0].all())  # sink block
        assert bool(keep[..., torch.arange(8), torch.arange(8)].all())  # diagonal (local) blocks
    assert int(bsk.sum(-1).max()) == 3
    num, idx = quest_pages(q[:, :, -1:], k, page_size=16, token_budget=64)
    keep = keep_from_mask(num, idx)[:, :, 0]
    assert keep.sum(-1).eq(4).all() and bool(keep[..., -1].all())  # 4 pages, the current one included


def test_quest_decode_mask_matches_per_row_rule():
    q, k, v = _qkv(n=120, seed=3)
    rows = quest_per_query(q, k, v, scale=0.25, page_size=16, token_budget=48)
    num, idx = quest_pages(q[:, :, -1:], k, page_size=16, token_budget=48)
    dec, _ = block_attention(q[:, :, -1:], k, v, scale=0.25, mode="block_mask", block_mask=(num, idx), block_size=16)
    torch.testing.assert_close(dec, rows[:, :, -1:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("pattern", ["vertical_and_slash", "block_sparse", "quest"])
def test_sparsify_on_llama(pattern):
    model = tiny_llama(sharpness=8.0)
    ids = torch.randint(0, 100, (1, 256), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids).logits
        gen_ref = model.generate(ids[:, :200], max_new_tokens=3, do_sample=False)
        sf.sparsify(model, "sparse_frontier", pattern=pattern, block_size=32, vertical_size=16, slash_size=16,
                    last_q=32, top_chunks=3, token_budget=64)
        out = model(ids).logits
        gen = model.generate(ids[:, :200], max_new_tokens=3, do_sample=False)
    assert gen.shape == gen_ref.shape and not block_skip_summary(model)["fallbacks"]
    if pattern == "quest":
        assert torch.equal(out, ref) or float((out - ref).abs().max()) < 1e-4  # prefill dense
        assert block_skip_summary(model, "decode")["skipped"] > 0
    else:
        assert block_skip_summary(model)["skipped"] > 0
        assert 0 < float((out - ref).abs().max()) < 5.0
    assert all(h.layer_idx == i for i, h in enumerate(handlers(model)))
