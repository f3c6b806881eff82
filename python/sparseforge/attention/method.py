"""AttentionMethod: the shared base of the sparse-attention plugins (blasst, s2o, double_sparsity,
sparse_frontier). Each is post-training, acts on a whole transformers model rather than on selected
weights, and attaches one :class:`~sparseforge.attention.SparseAttention` per attention layer; a
subclass only says how to build that layer."""

from __future__ import annotations

import torch.nn as nn

from sparseforge.registry import Method


class AttentionMethod(Method):
    kind = "attention"
    kernel = "block_attention"
    stage = "post_training"
    needs_targets = False
    reapply_on_load = True  # sf.load(path, model=...) re-attaches the layers before loading their state

    def make_layer(self, layer_idx: int, module: nn.Module, model: nn.Module):
        """The SparseAttention for attention layer ``layer_idx`` (``module``), or None to keep it on SDPA."""
        raise NotImplementedError

    def apply(self, model: nn.Module, targets) -> nn.Module:
        from .hf import install

        install(model, lambda idx, mod: self.make_layer(idx, mod, model))
        return model
