"""Double Sparsity, from "Post-Training Sparse Attention with Double Sparsity" (2024, arXiv 2408.07092;
andy-yang-1/DoubleSparse).

Decode attention reads only the tokens that matter, found cheaply through a few *outlier channels*:

* **Offline calibration** (:meth:`DoubleSparsity.calibrate`): on calibration text, per layer and key/value
  head, the token-mean of ``|q|`` ("q"), ``|k|`` ("k") and ``|q ⊙ k|`` for the same token ("qk"); channels
  sorted by it, descending. The ``r = head_dim / group_factor`` first channels ``C`` are the outliers.
* **Label cache**: ``K[:, C]`` for every token (optionally pseudo-quantised to ``label_bits`` per token).
* **Decode**: approximate scores ``q[C]·K_labelᵀ``, per query head the top ``k`` tokens
  (``heavy_const``, or ``token_fraction`` of the context), exact attention over only those
  (``sparseforge.ops.double_sparsity_decode``: label GEMV, top-k, gathered attention).

As in the official code, layers 0 and 1 stay dense (``dense_layers``) and prefill is dense. For
perplexity evaluation the official code applies the decode rule to every query row of a prefill
(causal top-k per row): ``prefill="per_query"`` does that (:func:`label_topk_attention`).

Differences from the official code: statistics are taken on post-RoPE q/k (what the attention function
sees; the official q/k statistics are pre-RoPE ``q_proj``/``k_proj`` outputs, its qk statistic post-RoPE);
with GQA the channels are chosen per key/value head (the group's query heads share the label cache) and
each query head still picks its own tokens; the qk statistic averages every calibration batch (the
official hook keeps only the last one). The label cache is kept per layer and extended by one token per
decode step when the cache grows by one; otherwise it is rebuilt from the keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sparseforge.attention import SparseAttention
from sparseforge.attention.method import AttentionMethod
from sparseforge.config import Config, param
from sparseforge.registry import Paper

__all__ = ["DoubleSparsityConfig", "DoubleSparsity", "DoubleSparsityLayer", "label_topk_attention",
           "pseudo_quantize", "KINDS"]

KINDS = ("qk", "q", "k")


def pseudo_quantize(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Asymmetric per-row (last dim) round-to-nearest to ``bits`` bits, dequantised; 16 returns ``x``."""
    if bits >= 16:
        return x
    top = 2 ** bits - 1
    lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
    rng = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    return torch.round((x - lo) * (top / rng)).clamp(0, top) * (rng / top) + lo


@torch.no_grad()
def label_topk_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, channels: torch.Tensor, k_sel: int, *,
                         causal: bool, scale: float, label_bits: int = 16) -> torch.Tensor:
    """The decode rule applied to every query row (the official perplexity evaluation).

    q: float32 ``[B, Hq, Lq, D]``; k, v: ``[B, Hkv, Lk, D]``; channels: int ``[Hkv, r]``. Each query row keeps
    the ``k_sel`` keys with the largest label scores among those it may see (bottom-right causal) and
    attends over them exactly. Returns float32 ``[B, Hq, Lq, D]``. Memory ``O(Hq·Lq·Lk)``.
    """
    b, hq, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    g = hq // hkv
    ch = channels.long().repeat_interleave(g, 0)  # [Hq, r]
    kq, vq = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    ql = torch.gather(q, 3, ch[None, :, None, :].expand(b, hq, lq, -1))
    kl = pseudo_quantize(torch.gather(kq, 3, ch[None, :, None, :].expand(b, hq, lk, -1)), label_bits)
    approx = ql @ kl.transpose(-1, -2)
    s = (q @ kq.transpose(-1, -2)) * scale
    if causal:
        hidden = torch.ones(lq, lk, dtype=torch.bool).triu(lk - lq + 1)
        approx = approx.masked_fill(hidden, -math.inf)
        s = s.masked_fill(hidden, -math.inf)
    kk = min(int(k_sel), lk)
    top = approx.topk(kk, dim=-1).indices
    keep = torch.zeros_like(s, dtype=torch.bool).scatter_(-1, top, True)
    s = s.masked_fill(~keep, -math.inf)
    return torch.softmax(s, -1) @ vq


@dataclass
class DoubleSparsityConfig(Config):
    channel: str = param("qk", "outlier-channel statistic: 'qk' (paper), 'q' (official ppl eval default), 'k' "
                         "(official model default), or 'random' (baseline)", choices=("qk", "q", "k", "random"))
    group_factor: int = param(16, "r = head_dim / group_factor label channels (paper: 1/16)", range=(1, 1024))
    token_fraction: float = param(1 / 16, "tokens kept per head as a fraction of the context (paper: 1/16)",
                                  range=(0.0, 1.0, "(]"))
    heavy_const: int | None = param(None, "tokens kept per head, overriding token_fraction (official eval: 128)",
                                    range=(1, 1 << 30), optional=True)
    label_bits: int = param(16, "label-cache bits (official: 4 with pseudo-quantisation; 16 = fp32 labels)",
                            choices=(2, 4, 8, 16))
    dense_layers: int = param(2, "the first layers stay dense (official code: 2)", range=(0, 1 << 16))
    prefill: str = param("dense", "'dense' (deployment) or 'per_query' (the decode rule on every prefill row, "
                         "as the official perplexity evaluation)", choices=("dense", "per_query"))
    seed: int = param(0, "seed of the 'random' channels", range=(0, 2 ** 31 - 1))


class DoubleSparsityLayer(SparseAttention):
    """One layer's Double Sparsity. Buffers: ``channel_stats`` float64 ``[3, Hkv, D]`` (token-mean |q|·, |k|, |q⊙k|
    per key/value head, kinds in :data:`KINDS` order; NaN until calibrated)."""

    def __init__(self, layer_idx: int, cfg: DoubleSparsityConfig, num_kv_heads: int, head_dim: int):
        super().__init__(layer_idx)
        self.cfg = cfg
        self.register_buffer("channel_stats", torch.full((3, num_kv_heads, head_dim), math.nan, dtype=torch.float64))
        self.collect: list | None = None
        self._labels: torch.Tensor | None = None

    def channels(self) -> torch.Tensor:
        """int64 ``[Hkv, r]``: the label channels of each key/value head."""
        hkv, d = self.channel_stats.shape[1:]
        r = max(1, d // self.cfg.group_factor)
        if self.cfg.channel == "random":
            gen = torch.Generator().manual_seed(self.cfg.seed * 100003 + self.layer_idx)
            return torch.stack([torch.randperm(d, generator=gen)[:r] for _ in range(hkv)])
        st = self.channel_stats[KINDS.index(self.cfg.channel)]
        if bool(torch.isnan(st).any()):
            raise RuntimeError(f"double_sparsity: layer {self.layer_idx} has no channel statistics: call "
                               f"sf.method_of(model).calibrate(input_ids) first (or use channel='random')")
        return st.argsort(-1, descending=True)[:, :r]

    def k_sel(self, kv_len: int) -> int:
        if self.cfg.heavy_const is not None:
            return min(self.cfg.heavy_const, kv_len)
        return max(1, min(kv_len, math.ceil(self.cfg.token_fraction * kv_len)))

    def _label_cache(self, k: torch.Tensor, ch: torch.Tensor) -> torch.Tensor:
        lab = self._labels
        if lab is not None and lab.shape[0] == k.shape[0] and lab.shape[2] == k.shape[2] - 1:
            new = torch.gather(k[:, :, -1:], 3, ch[None, :, None, :].expand(k.shape[0], -1, 1, -1))
            lab = torch.cat([lab, pseudo_quantize(new, self.cfg.label_bits)], 2)
        else:
            lab = pseudo_quantize(torch.gather(k, 3, ch[None, :, None, :].expand(k.shape[0], -1, k.shape[2], -1)),
                                  self.cfg.label_bits)
        self._labels = lab.contiguous()
        return self._labels

    def attend(self, q, k, v, *, causal, scale, phase):
        from sparseforge.ops import block_attention, double_sparsity_decode

        if self.collect is not None:
            g = q.shape[1] // k.shape[1]
            qa = q.abs().reshape(q.shape[0], k.shape[1], g, q.shape[2], -1)
            kk = k[:, :, -q.shape[2]:]
            qk = (q.reshape(qa.shape) * kk[:, :, None]).abs()
            self.collect.append(torch.stack([qa.double().mean((0, 2, 3)), kk.abs().double().mean((0, 2)),
                                             qk.double().mean((0, 2, 3))]))
        if self.collect is not None or self.layer_idx < self.cfg.dense_layers or \
                (phase == "prefill" and self.cfg.prefill == "dense"):
            out, st = block_attention(q, k, v, causal=causal, scale=scale)
            self.record(phase, st)
            self.record_tokens(phase, q, k, causal, None)
            return out
        ch = self.channels()
        if phase == "prefill":
            self._labels = None
            out = label_topk_attention(q, k, v, ch, self.k_sel(k.shape[2]), causal=causal, scale=scale,
                                       label_bits=self.cfg.label_bits)
        else:
            labels = self._label_cache(k, ch)
            g = q.shape[1] // k.shape[1]
            out = double_sparsity_decode(q, k, v, labels, ch.repeat_interleave(g, 0), self.k_sel(k.shape[2]),
                                         scale)
        self.record(phase)
        self.record_tokens(phase, q, k, causal, self.k_sel(k.shape[2]))
        return out


class DoubleSparsity(AttentionMethod):
    name = "double_sparsity"
    paper = Paper("Post-Training Sparse Attention with Double Sparsity", 2024, "2408.07092",
                  "https://github.com/andy-yang-1/DoubleSparse")
    # kernel "block_attention" (the base's): sparseforge.ops.double_sparsity_decode lives in that folder
    Config = DoubleSparsityConfig
    summary = ("Decode attention over the top-k tokens found with a label cache of a few offline-calibrated "
               "outlier channels (q, k or q⊙k statistics); layers 0-1 and prefill dense.")

    def make_layer(self, layer_idx, module, model):
        cfg = model.config
        hkv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        d = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return DoubleSparsityLayer(layer_idx, self.config, hkv, d)

    @torch.no_grad()
    def calibrate(self, input_ids, *, forward=None) -> None:
        """Per layer and key/value head, the token-means of |q|, |k| and |q⊙k| over ``input_ids`` (int64
        ``[N, T]``, one forward per row), stored in every layer's ``channel_stats`` buffer."""
        from sparseforge.attention import handlers

        hs = [h for h in handlers(self.model) if isinstance(h, DoubleSparsityLayer)]
        if not hs:
            raise ValueError("double_sparsity.calibrate: the model has no Double Sparsity layers; apply it first")
        ids = torch.as_tensor(input_ids)
        if ids.dim() != 2:
            raise ValueError(f"double_sparsity.calibrate: input_ids must be [N, T], got shape {tuple(ids.shape)}")
        forward = forward or (lambda m, x: m(input_ids=x))
        try:
            for h in hs:
                h.collect = []
            for row in ids:
                forward(self.model, row[None])
            for h in hs:
                h.channel_stats.copy_(torch.stack(h.collect).mean(0))
        finally:
            for h in hs:
                h.collect = None
