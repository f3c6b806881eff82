"""STATIC constrained decoding, from "Vectorizing the Trie: Efficient Constrained Decoding for LLM-based
Generative Retrieval on Accelerators" (2026, arXiv 2602.22647; youtube/static-constraint-decoding).

A generative-retrieval model emits an item's semantic ID (SID) token by token: L tokens over a codebook
of V. Only N of the V**L sequences are real items, so decoding is constrained to a prefix trie of the
valid SIDs. STATIC flattens that trie into sparse transition matrices and constrains beam search with
gathers of fixed width instead of pointer chasing:

* **Index** (:class:`StaticIndex`, the paper's ``build_static_index``). SIDs are made unique and sorted
  lexicographically; a trie node exists at depth d where a row's first difference from the previous row is
  at position <= d (vectorised, no Python loop over items). Level d is a CSR matrix ``T_d`` of shape
  ``[states_d, V]``: row s lists the tokens allowed after state s (sorted) and, as values, the next state;
  the last level's next state is the item's row in the sorted SID table. ``layer_max_branches[d]`` is the
  widest row of ``T_d``. The first ``d_dense`` levels are also kept as dense tables ``[states_d, V]``
  (the paper's "hot head", ``start_mask`` / ``dense_mask`` / ``dense_states``).
* **Search** (:meth:`StaticIndex.constrained_beam_search`). Per step, on log-softmax scores: a dense
  level masks the V-wide scores with its table row; a CSR level gathers K = ``layer_max_branches[d]``
  candidates per beam at ``indptr[s] + arange(K)``, masks those past the row's end with -inf, and keeps
  the top M of M*K. The cost is O(B*M*K) per step, whatever N is.

Where this differs from the official code: the dense steps consider every allowed token of each beam
(the paper keeps only ``tokens_per_beam`` per beam there, which is exact only when that is at least the
level-1 branching), so the search here is always exact; ties are broken by (beam, token) order with a
stable sort, which makes the result reproducible and equal to the plain trie search
:func:`python_trie_beam_search` token for token and score for score.

Applying the method to a model attaches the index and a ``static_generate`` method; the weights are
untouched. The model is a next-token scorer: ``model(prefix) -> logits`` with ``prefix`` a LongTensor
``[n, t]`` (t = 0 at the first step) and logits ``[n, V]``; ``model(prefix, context)`` when a context is
given.
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from sparseforge.config import Config, ConfigError, param
from sparseforge.registry import Method, Paper

__all__ = ["StaticIndex", "StaticDecodingConfig", "StaticDecoding", "PythonTrie", "python_trie_beam_search"]


class StaticIndex:
    """The STATIC index of a set of semantic IDs.

    Args:
        items: int array-like ``[N, L]`` of tokens in ``[0, vocab_size)``; duplicates are merged.
        vocab_size: V, the codebook size.
        d_dense: how many leading levels also get a dense ``[states, V]`` table (0, 1 or 2).

    Attributes:
        sids: int64 ``[N', L]`` unique SIDs in lexicographic order (the item id of a decoded SID is its row).
        indptr, indices, next_state: per level d, the CSR arrays of ``T_d`` (torch int64).
        layer_max_branches: list of K per level.
        dense: per dense level, an int64 table ``[states_d, V]`` of the next state or -1.
    """

    def __init__(self, items, vocab_size: int, d_dense: int = 2):
        sids = np.asarray(items.cpu().numpy() if isinstance(items, torch.Tensor) else items)
        if sids.ndim != 2 or sids.shape[0] == 0 or sids.shape[1] == 0:
            raise ValueError(f"StaticIndex: items must be a non-empty [N, L] array of tokens, got shape {sids.shape}")
        if not np.issubdtype(sids.dtype, np.integer):
            raise TypeError(f"StaticIndex: items must hold integer tokens, got dtype {sids.dtype}")
        if sids.min() < 0 or sids.max() >= vocab_size:
            raise ValueError(f"StaticIndex: tokens must lie in [0, {vocab_size}), got [{sids.min()}, {sids.max()}]")
        if d_dense not in (0, 1, 2):
            raise ValueError(f"StaticIndex: d_dense must be 0, 1 or 2, got {d_dense}")
        sids = np.unique(sids.astype(np.int64), axis=0)  # unique rows in lexicographic order
        n, length = sids.shape
        self.vocab_size, self.length, self.d_dense = int(vocab_size), int(length), min(int(d_dense), int(length))
        self.sids = torch.from_numpy(sids)
        # First position where each row differs from the previous one (row 0: position 0).
        first_diff = np.zeros(n, dtype=np.int64)
        if n > 1:
            diff = sids[1:] != sids[:-1]
            first_diff[1:] = diff.argmax(axis=1)
        self.indptr, self.indices, self.next_state, self.layer_max_branches, self.num_states = [], [], [], [], [1]
        prev_ids = np.zeros(n, dtype=np.int64)  # every row starts at the root, state 0 of depth 0
        for d in range(length):
            new = first_diff <= d
            ids = np.cumsum(new) - 1  # the depth-(d+1) state of every row
            starts = np.flatnonzero(new)
            parent, token, child = prev_ids[starts], sids[starts, d], ids[starts]
            counts = np.bincount(parent, minlength=self.num_states[-1])
            indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            self.indptr.append(torch.from_numpy(indptr))
            self.indices.append(torch.from_numpy(np.ascontiguousarray(token)))
            self.next_state.append(torch.from_numpy(np.ascontiguousarray(child)))
            self.layer_max_branches.append(int(counts.max()))
            self.num_states.append(int(ids[-1]) + 1)
            prev_ids = ids
        self.dense = []
        for d in range(self.d_dense):
            table = torch.full((self.num_states[d], self.vocab_size), -1, dtype=torch.int64)
            rows = torch.repeat_interleave(torch.arange(self.num_states[d]), torch.diff(self.indptr[d]))
            table[rows, self.indices[d]] = self.next_state[d]
            self.dense.append(table)

    # -- facts ------------------------------------------------------------------------------------
    @property
    def num_items(self) -> int:
        return int(self.sids.shape[0])

    def transition_matrix(self, level: int):
        """``T_level`` as a :class:`sparseforge.formats.CSR` (values: next state, as float64)."""
        from sparseforge.formats import CSR

        return CSR(self.indptr[level].numpy(), self.indices[level].numpy(),
                   self.next_state[level].numpy().astype(np.float64), (self.num_states[level], self.vocab_size))

    @property
    def nbytes(self) -> int:
        total = sum(t.numel() * t.element_size() for ts in (self.indptr, self.indices, self.next_state) for t in ts)
        return int(total + sum(t.numel() * t.element_size() for t in self.dense))

    def contains(self, seqs) -> torch.Tensor:
        """Bool mask: which rows of ``seqs`` ``[..., L]`` are valid SIDs (a test helper)."""
        seqs = torch.as_tensor(seqs, dtype=torch.int64)
        valid = {tuple(r) for r in self.sids.tolist()}
        flat = seqs.reshape(-1, self.length).tolist()
        return torch.tensor([tuple(r) in valid for r in flat], dtype=torch.bool).reshape(seqs.shape[:-1])

    # -- search -----------------------------------------------------------------------------------
    def step_candidates(self, d: int, state: torch.Tensor, logp: torch.Tensor):
        """Allowed continuations of every beam at level d.

        state: int64 ``[B, M]``; logp: float ``[B, M, V]``. Returns (scores ``[B, M, K]`` with -inf where
        not allowed, tokens ``[B, M, K]``, next states ``[B, M, K]``), K = V for a dense level, else
        ``layer_max_branches[d]``. Work is O(B*M*K), independent of the number of items.
        """
        if d < self.d_dense:
            nxt = self.dense[d][state]
            scores = torch.where(nxt >= 0, logp, torch.full_like(logp, float("-inf")))
            tokens = torch.arange(self.vocab_size).expand_as(nxt)
            return scores, tokens, nxt
        k = self.layer_max_branches[d]
        indptr, indices, next_state = self.indptr[d], self.indices[d], self.next_state[d]
        start = indptr[state]
        count = indptr[state + 1] - start
        off = torch.arange(k)
        valid = off < count.unsqueeze(-1)
        pos = (start.unsqueeze(-1) + off).clamp(max=indices.numel() - 1)
        tokens = indices[pos]
        scores = torch.where(valid, logp.gather(-1, tokens), torch.full(tokens.shape, float("-inf"), dtype=logp.dtype))
        return scores, tokens, next_state[pos]

    @torch.no_grad()
    def constrained_beam_search(self, step_fn, batch_size: int = 1, beam_size: int = 8, return_items: bool = False):
        """Beam search over the valid SIDs only.

        Args:
            step_fn: ``step_fn(prefix) -> logits``; prefix int64 ``[B, M, t]``, logits ``[B, M, V]`` (any float
                dtype; scores are kept in float64 on log-softmax values). Each beam's logits must depend
                only on that beam's own prefix.
            batch_size: B.  beam_size: M.

        Returns:
            (sequences int64 ``[B, M, L]``, scores float64 ``[B, M]``) best first; beams that do not exist
            (fewer than M valid SIDs) have score -inf and tokens -1. With ``return_items`` also the item
            ids ``[B, M]`` (row of :attr:`sids`, -1 for missing beams).
        """
        b, m, v = int(batch_size), int(beam_size), self.vocab_size
        state = torch.zeros(b, m, dtype=torch.int64)
        score = torch.full((b, m), float("-inf"), dtype=torch.float64)
        score[:, 0] = 0.0
        seqs = torch.empty(b, m, 0, dtype=torch.int64)
        for d in range(self.length):
            logits = step_fn(seqs)
            if logits.shape != (b, m, v):
                raise ValueError(f"step_fn returned shape {tuple(logits.shape)}, expected {(b, m, v)}")
            logp = torch.log_softmax(logits.to(torch.float64), dim=-1)
            cand, tok, nxt = self.step_candidates(d, state, logp)
            k = cand.shape[-1]
            total = (cand + score.unsqueeze(-1)).reshape(b, m * k)
            # Stable sort: ties go to the lower (beam, token), as in the reference trie search.
            order = torch.sort(total, dim=1, descending=True, stable=True).indices[:, :m]  # m <= m * k
            tok, nxt = tok.reshape(b, m * k), nxt.reshape(b, m * k)
            parent = order // k
            score = total.gather(1, order)
            alive = torch.isfinite(score)
            new_tok = tok.gather(1, order)
            state = torch.where(alive, nxt.gather(1, order), torch.zeros_like(order))
            seqs = torch.cat([seqs.gather(1, parent.unsqueeze(-1).expand(-1, -1, d)), new_tok.unsqueeze(-1)], dim=-1)
        alive = torch.isfinite(score)
        seqs = torch.where(alive.unsqueeze(-1), seqs, torch.full_like(seqs, -1))
        if return_items:
            return seqs, score, torch.where(alive, state, torch.full_like(state, -1))
        return seqs, score


# ------------------------------------------------------------------------------------------------
# The plain trie search the paper compares against: dict-of-dicts, a Python loop over beams and children.
# ------------------------------------------------------------------------------------------------


class PythonTrie:
    """A dict-of-dicts prefix trie of SIDs."""

    def __init__(self, items):
        self.root: dict = {}
        rows = items.tolist() if hasattr(items, "tolist") else [list(r) for r in items]
        self.length = len(rows[0])
        for row in rows:
            node = self.root
            for t in row:
                node = node.setdefault(int(t), {})


@torch.no_grad()
def python_trie_beam_search(trie: PythonTrie, step_fn, batch_size: int = 1, beam_size: int = 8):
    """Reference constrained beam search walking a :class:`PythonTrie`; same contract and tie-breaking
    (score descending, then beam, then token) as :meth:`StaticIndex.constrained_beam_search`."""
    b, m = batch_size, beam_size
    beams = [[(0.0, [], trie.root)] for _ in range(b)]
    for d in range(trie.length):
        prefix = torch.zeros(b, m, d, dtype=torch.int64)
        for bi in range(b):
            for mi, (_, toks, _) in enumerate(beams[bi]):
                prefix[bi, mi] = torch.tensor(toks, dtype=torch.int64)
        logp = torch.log_softmax(step_fn(prefix).to(torch.float64), dim=-1).tolist()
        for bi in range(b):
            cands = []
            for mi, (score, toks, node) in enumerate(beams[bi]):
                row = logp[bi][mi]
                for t in sorted(node):
                    cands.append((score + row[t], toks + [t], node[t]))
            cands.sort(key=lambda c: -c[0])  # stable: ties keep (beam, token) order
            beams[bi] = cands[:m]
    seqs = torch.full((b, m, trie.length), -1, dtype=torch.int64)
    scores = torch.full((b, m), float("-inf"), dtype=torch.float64)
    for bi in range(b):
        for mi, (score, toks, _) in enumerate(beams[bi]):
            seqs[bi, mi] = torch.tensor(toks)
            scores[bi, mi] = score
    return seqs, scores


# ------------------------------------------------------------------------------------------------
# The method
# ------------------------------------------------------------------------------------------------


@dataclass
class StaticDecodingConfig(Config):
    vocab_size: int = param(2048, "V, the semantic-ID codebook size", range=(1, 1 << 24))
    d_dense: int = param(2, "leading levels kept as dense [states, V] tables (the paper's hot head)", choices=(0, 1, 2))
    beam_size: int = param(8, "beams M of static_generate", range=(1, 4096))
    items_path: str | None = param(None, "a .npy file of valid SIDs [N, L]; unset: take model.static_items",
                                   optional=True)

    def check(self) -> None:
        if self.items_path is not None and not self.items_path.endswith(".npy"):
            raise ConfigError(self.METHOD, "items_path", self.items_path, "a path ending in .npy, or None")


def _static_generate(self, batch_size: int = 1, beam_size: int | None = None, context=None,
                     return_items: bool = False):
    """Constrained beam search with this model as the scorer; see StaticIndex.constrained_beam_search."""
    index: StaticIndex = self.static_index
    m = beam_size or self.static_beam_size

    def step_fn(prefix):
        bb, mm, t = prefix.shape
        flat = prefix.reshape(bb * mm, t)
        if context is None:
            logits = self(flat)
        else:
            logits = self(flat, context.repeat_interleave(mm, dim=0))
        return logits.reshape(bb, mm, -1)

    return index.constrained_beam_search(step_fn, batch_size=batch_size, beam_size=m, return_items=return_items)


class StaticDecoding(Method):
    name = "static_decoding"
    paper = Paper("Vectorizing the Trie: Efficient Constrained Decoding for LLM-based Generative Retrieval on "
                  "Accelerators", 2026, "2602.22647", "https://github.com/youtube/static-constraint-decoding")
    kind = "decoding"
    kernel = "none"
    Config = StaticDecodingConfig
    summary = ("Constrain generative-retrieval beam search to valid item IDs with a trie flattened into CSR "
               "transition matrices (O(K) gathers per beam and step, independent of the number of items).")
    stage = "post_training"
    needs_targets = False

    def apply(self, model: nn.Module, targets) -> nn.Module:
        cfg = self.config
        if cfg.items_path is not None:
            items = np.load(cfg.items_path)
        else:
            items = getattr(model, "static_items", None)
            if items is None:
                raise ValueError("static_decoding: the model has no 'static_items' ([N, L] valid SIDs) and config "
                                 "items_path is unset; give one of them")
        index = StaticIndex(items, cfg.vocab_size, cfg.d_dense)
        object.__setattr__(model, "static_index", index)
        object.__setattr__(model, "static_beam_size", cfg.beam_size)
        object.__setattr__(model, "static_generate", types.MethodType(_static_generate, model))
        return model

    def export(self, model: nn.Module) -> nn.Module:
        return model  # nothing to bake: the weights are untouched
