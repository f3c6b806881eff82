"""static_decoding (STATIC): CSR trie index, constrained beam search equal to a plain trie search."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import sparseforge as sf
from sparseforge_methods.static_decoding import (PythonTrie, StaticDecodingConfig, StaticIndex,
                                                 python_trie_beam_search)


def random_sids(n, length, vocab, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, vocab, size=(n, length))


def bigram_step_fn(vocab, batch, seed=0):
    """Deterministic bigram scorer: logits[b, m] = table[b][last token of the beam's prefix] (BOS = vocab)."""
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(batch, vocab + 1, vocab, generator=g, dtype=torch.float64) * 3

    def step_fn(prefix):
        b, m, t = prefix.shape
        last = prefix[..., -1] if t else torch.full((b, m), vocab, dtype=torch.int64)
        last = last.clamp(min=0)  # missing beams carry -1/0 tokens; their scores are -inf anyway
        return table[torch.arange(b).unsqueeze(1), last]

    return step_fn


def test_index_structure_small():
    items = [[1, 2, 0], [1, 2, 3], [1, 0, 0], [2, 2, 2], [1, 2, 3]]
    idx = StaticIndex(items, vocab_size=4, d_dense=0)
    assert idx.num_items == 4 and idx.sids.tolist() == [[1, 0, 0], [1, 2, 0], [1, 2, 3], [2, 2, 2]]
    assert idx.num_states == [1, 2, 3, 4]
    assert idx.indptr[0].tolist() == [0, 2] and idx.indices[0].tolist() == [1, 2]
    assert idx.indptr[1].tolist() == [0, 2, 3] and idx.indices[1].tolist() == [0, 2, 2]
    assert idx.indptr[2].tolist() == [0, 1, 3, 4] and idx.indices[2].tolist() == [0, 0, 3, 2]
    assert idx.next_state[2].tolist() == [0, 1, 2, 3]  # leaves are rows of the sorted SID table
    assert idx.layer_max_branches == [2, 2, 2]
    t1 = idx.transition_matrix(1)  # a validated sparseforge CSR
    assert t1.shape == (2, 4) and t1.nnz == 3
    assert idx.contains(torch.tensor([[1, 2, 3], [1, 2, 2]])).tolist() == [True, False]


@pytest.mark.parametrize("d_dense", [0, 1, 2])
def test_matches_python_trie_and_only_valid(d_dense):
    vocab, length, n, batch, beam = 64, 4, 3000, 3, 8
    items = random_sids(n, length, vocab, seed=d_dense)
    idx = StaticIndex(items, vocab, d_dense=d_dense)
    step = bigram_step_fn(vocab, batch, seed=1)
    seqs, scores, item_ids = idx.constrained_beam_search(step, batch, beam, return_items=True)
    ref_seqs, ref_scores = python_trie_beam_search(PythonTrie(idx.sids), step, batch, beam)
    assert torch.equal(seqs, ref_seqs)
    assert torch.equal(scores, ref_scores)  # bit-identical float64 scores
    assert idx.contains(seqs).all()
    assert torch.equal(idx.sids[item_ids], seqs)
    assert (scores[:, :-1] >= scores[:, 1:]).all()


def test_paper_toy_check():
    # PAPERS.md: V=256, L=6, N=50k random unique SIDs, bigram logits, batch 4, beam 8; the dense head is
    # exact here (every allowed token is a candidate), so tokens and scores equal the dict-trie search.
    vocab, length, batch, beam = 256, 6, 4, 8
    items = np.unique(random_sids(50_000, length, vocab, seed=7), axis=0)
    idx = StaticIndex(items, vocab, d_dense=2)
    step = bigram_step_fn(vocab, batch, seed=3)
    seqs, scores = idx.constrained_beam_search(step, batch, beam)
    ref_seqs, ref_scores = python_trie_beam_search(PythonTrie(idx.sids), step, batch, beam)
    assert torch.equal(seqs, ref_seqs) and torch.equal(scores, ref_scores)
    assert idx.contains(seqs).all()
    # The unconstrained argmax path is (almost surely) not a valid SID: the constraint does something.
    prefix = torch.empty(batch, 1, 0, dtype=torch.int64)
    for _ in range(length):
        prefix = torch.cat([prefix, step(prefix).argmax(-1, keepdim=True)], -1)
    assert not idx.contains(prefix).all()


def test_fewer_items_than_beams():
    idx = StaticIndex([[0, 1], [0, 2], [3, 3]], vocab_size=4, d_dense=1)
    step = bigram_step_fn(4, 2, seed=4)
    seqs, scores = idx.constrained_beam_search(step, 2, 5)
    ref_seqs, ref_scores = python_trie_beam_search(PythonTrie(idx.sids), step, 2, 5)
    assert torch.equal(seqs, ref_seqs) and torch.equal(scores, ref_scores)
    assert torch.isinf(scores[:, 3:]).all() and (seqs[:, 3:] == -1).all()
    assert idx.contains(seqs[:, :3]).all()


def test_step_work_is_independent_of_item_count():
    # The gathered width per beam is K = layer_max_branches[d] <= V, whatever N is (timing in the benchmark).
    vocab, length = 32, 5
    for n in (1_000, 30_000):
        idx = StaticIndex(random_sids(n, length, vocab, seed=n), vocab, d_dense=1)
        assert max(idx.layer_max_branches) <= vocab


def test_bad_items_raise():
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        StaticIndex([[0, 4]], vocab_size=4)
    with pytest.raises(ValueError, match="non-empty"):
        StaticIndex(np.zeros((0, 3), dtype=np.int64), vocab_size=4)
    with pytest.raises(ValueError, match="d_dense"):
        StaticIndex([[0, 1]], vocab_size=4, d_dense=3)


class TinyDecoder(nn.Module):
    """A GRU next-token scorer over SID tokens (BOS = vocab)."""

    def __init__(self, vocab, hidden=32, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.vocab = vocab
        self.emb = nn.Embedding(vocab + 1, hidden)
        self.rnn = nn.GRU(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, prefix):
        bos = torch.full((prefix.shape[0], 1), self.vocab, dtype=torch.int64)
        x = self.emb(torch.cat([bos, prefix.clamp(min=0)], 1))
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def test_apply_on_a_model():
    vocab, length = 48, 3
    model = TinyDecoder(vocab)
    model.static_items = random_sids(500, length, vocab, seed=11)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = sf.sparsify(model, "static_decoding", vocab_size=vocab, d_dense=1, beam_size=4)
    assert out is model and isinstance(sf.method_of(model).config, StaticDecodingConfig)
    seqs, scores = model.static_generate(batch_size=1)
    assert seqs.shape == (1, 4, length) and model.static_index.contains(seqs).all()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])  # weights untouched

    def step(prefix):
        b, m, t = prefix.shape
        with torch.no_grad():
            return model(prefix.reshape(b * m, t)).reshape(b, m, -1)

    ref_seqs, ref_scores = python_trie_beam_search(PythonTrie(model.static_index.sids), step, 1, 4)
    assert torch.equal(seqs, ref_seqs)
    torch.testing.assert_close(scores, ref_scores, rtol=0, atol=1e-12)


def test_registered_with_metadata():
    info = sf.describe("static_decoding")
    assert info.kind == "decoding" and info.paper.arxiv == "2602.22647" and info.paper.year == 2026
    with pytest.raises(ValueError, match="static_items"):
        sf.sparsify(TinyDecoder(8), "static_decoding", vocab_size=8)
    with pytest.raises(ValueError, match="no targets"):
        sf.sparsify(TinyDecoder(8), "static_decoding", targets=["head"], vocab_size=8)
