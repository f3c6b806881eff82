"""Shared helpers of the attention-method tests: a float64 dense reference and tiny HF models."""

from __future__ import annotations

import math

import torch


def dense_reference(q, k, v, *, causal: bool, scale: float | None = None, probs: bool = False):
    """float64 softmax attention, GQA by head repetition, bottom-right causal; ``probs`` returns P instead."""
    g = q.shape[1] // k.shape[1]
    qd, kd, vd = q.double(), k.double().repeat_interleave(g, 1), v.double().repeat_interleave(g, 1)
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    s = qd @ kd.transpose(-1, -2) * scale
    if causal:
        lq, lk = q.shape[2], k.shape[2]
        s = s.masked_fill(torch.ones(lq, lk, dtype=torch.bool).triu(lk - lq + 1), -math.inf)
    p = torch.softmax(s, -1)
    return p if probs else p @ vd


def tiny_llama(seed: int = 0, layers: int = 2, vocab: int = 100, sharpness: float = 1.0):
    """A random Llama (GQA: 4 query heads, 2 key/value heads, d_head 16) in eval mode; ``sharpness`` scales
    the q/k projections (random attention is nearly uniform; sharper attention gives skippable blocks)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(sharpness)
            layer.self_attn.k_proj.weight.mul_(sharpness)
    return model


def tiny_bert(seed: int = 0):
    """A random BERT encoder (4 heads, d_head 16, 2 layers) in eval mode."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=512)
    return BertModel(cfg).eval()
