"""Gated attention, from "Gated Attention for Large Language Models: Non-linearity, Sparsity, and
Attention-Sink-Free" (2025, arXiv 2505.06708; qiuzh20/gated_attention).

A head-specific sigmoid gate on the attention output, after SDPA and before ``o_proj`` (the paper's G1):
``Y'_h = Y_h ⊙ σ(X W_θ + b)_h`` with ``X`` the attention layer's input (after the pre-attention norm, the
same input as q/k/v). ``variant="headwise"``: ``W_θ ∈ R^{d_model × n_heads}``, one scalar per token and
head; ``"elementwise"``: ``R^{d_model × n_heads·d_head}``. The gate is query-dependent and sparse after
training (mean scores well below 0.5), which removes the attention sink on the first token.

Transform (architecture, Llama-family models of transformers: attention modules with ``q_proj``/``o_proj``):
each attention module gets a separate ``attn_gate`` Linear, a forward pre-hook that computes the gate from
the module's ``hidden_states``, and a forward pre-hook on ``o_proj`` that multiplies its input (``[B, L,
n_heads·d_head]``, head-major) by the gate. No model code is patched, the attention implementation is
untouched (so it composes with the sparse attention methods), and the state dict gains
``<attn>.attn_gate.weight`` (and ``.bias``).

Library choices (not from the paper): the official code fuses the gate into ``q_proj`` (columns interleaved
per KV group, bias = ``qkv_bias``, standard init, trained from scratch); here the gate is a separate Linear.
For retrofitting a pretrained model σ(0) = 0.5 would halve every attention output, so the default init is
zero weights and bias ``+5`` (σ ≈ 0.993, nearly the ungated model); ``bias=None, init_std=0.02`` is the
paper's from-scratch form.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from sparseforge.config import Config, param
from sparseforge.registry import Method, Paper

__all__ = ["GatedAttentionConfig", "GatedAttention", "gated_modules", "gate_scores"]

GATE = "attn_gate"


class _CaptureGate:
    """Forward pre-hook on the attention module: computes σ(gate(hidden_states)) for its o_proj hook."""

    def __call__(self, module, args, kwargs):
        x = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        module._sf_gate_scores = torch.sigmoid(getattr(module, GATE)(x))


class _ApplyGate:
    """Forward pre-hook on ``o_proj``: multiplies its input ``[B, L, H·D]`` by the gate (per head or element)."""

    def __init__(self, attn: nn.Module, heads: int):
        self.attn, self.heads = attn, heads

    def __call__(self, o_proj, args):
        (y,) = args
        g = self.attn._sf_gate_scores
        if g.shape[-1] == self.heads:  # headwise: broadcast over d_head
            y = (y.unflatten(-1, (self.heads, -1)) * g.unsqueeze(-1)).flatten(-2)
        else:
            y = y * g
        return (y,)


def gated_modules(model: nn.Module) -> list[nn.Module]:
    """The attention modules that carry a gate."""
    return [m for m in model.modules() if isinstance(getattr(m, GATE, None), nn.Linear)]


def gate_scores(model: nn.Module) -> list[torch.Tensor]:
    """The gate scores σ(·) of the last forward pass, one tensor ``[B, L, H or H·D]`` per gated layer."""
    return [m._sf_gate_scores for m in gated_modules(model) if getattr(m, "_sf_gate_scores", None) is not None]


@dataclass
class GatedAttentionConfig(Config):
    variant: str = param("elementwise", "'headwise' (one gate per head and token) or 'elementwise' (per "
                         "channel)", choices=("headwise", "elementwise"))
    bias: float | None = param(5.0, "initial gate bias; None: no bias (the paper's from-scratch form); +5 keeps "
                               "a pretrained model nearly unchanged (library choice)", range=(-100.0, 100.0),
                               optional=True)
    init_std: float = param(0.0, "std of the normal init of the gate weight (0: zeros, for retrofitting)",
                            range=(0.0, 10.0))
    seed: int = param(0, "seed of the gate weight init", range=(0, 2 ** 31 - 1))


class GatedAttention(Method):
    name = "gated_attention"
    paper = Paper("Gated Attention for Large Language Models: Non-linearity, Sparsity, and Attention-Sink-Free",
                  2025, "2505.06708", "https://github.com/qiuzh20/gated_attention")
    kind = "architecture"
    kernel = "none"
    Config = GatedAttentionConfig
    summary = ("Head-specific sigmoid gate on the SDPA output before o_proj (headwise or elementwise): "
               "sparse, query-dependent gates that remove the attention sink.")
    stage = "init"
    needs_targets = False
    reapply_on_load = True

    def apply(self, model: nn.Module, targets) -> nn.Module:
        cfg = self.config
        attn = [m for m in model.modules() if isinstance(getattr(m, "q_proj", None), nn.Linear)
                and isinstance(getattr(m, "o_proj", None), nn.Linear)]
        if not attn:
            raise TypeError(f"gated_attention: {type(model).__name__} has no Llama-style attention module "
                            f"(q_proj and o_proj Linears)")
        gen = torch.Generator().manual_seed(cfg.seed)
        for m in attn:
            if GATE in m._modules:
                raise ValueError("gated_attention: the model already has attention gates")
            mc = getattr(m, "config", None)
            heads = getattr(mc, "num_attention_heads", None) or getattr(m, "num_heads")
            d_in, d_out = m.q_proj.in_features, m.o_proj.in_features
            gate = nn.Linear(d_in, heads if cfg.variant == "headwise" else d_out, bias=cfg.bias is not None,
                             dtype=m.q_proj.weight.dtype, device=m.q_proj.weight.device)
            with torch.no_grad():
                gate.weight.copy_(torch.randn(gate.weight.shape, generator=gen) * cfg.init_std)
                if cfg.bias is not None:
                    gate.bias.fill_(cfg.bias)
            m.add_module(GATE, gate)
            m.register_forward_pre_hook(_CaptureGate(), with_kwargs=True)
            m.o_proj.register_forward_pre_hook(_ApplyGate(m, heads))
        return model

    def export(self, model: nn.Module) -> nn.Module:
        return model  # a dense architecture: nothing to bake
