"""Sparse attention on real models: the Hugging Face integration (:mod:`.hf`) and shared helpers.

Methods (``blasst``, ``s2o``, ``double_sparsity``, ``sparse_frontier``) are plugins in
``plugins/sparseforge_methods``; each attaches a per-layer :class:`SparseAttention` to the model's
attention modules and switches the model to the ``"sparseforge"`` attention implementation.
"""

from .hf import (ATTN_IMPLEMENTATION, HANDLER_ATTR, OpAttention, SparseAttention, attention_layers,
                 block_skip_summary, capture_qkv, handlers, install, register_with_transformers, sparseforge_attention,
                 uninstall)

__all__ = ["ATTN_IMPLEMENTATION", "HANDLER_ATTR", "OpAttention", "SparseAttention", "attention_layers",
           "block_skip_summary", "capture_qkv", "handlers", "install", "register_with_transformers", "sparseforge_attention",
           "uninstall"]
