"""Hugging Face integration: sparse attention methods through transformers' attention-function registry.

transformers (>= 4.48) looks attention up by name: every attention module calls
``ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation)(module, query, key, value,
attention_mask, dropout=..., scaling=..., **kwargs)``. This module registers one function under the name
:data:`ATTN_IMPLEMENTATION` (and the SDPA mask builder for it, so purely causal / unpadded inputs arrive
with ``attention_mask=None``), and :func:`install` switches a model to it with
``model.set_attn_implementation``. No model code is patched.

The function looks for a per-layer :class:`SparseAttention` on the calling module (attribute
:data:`HANDLER_ATTR`, a registered submodule, so its calibration buffers live in the model's state dict
keyed by the layer's position) and asks it for the output. Shapes follow transformers: ``query``
``[B, Hq, Lq, D]``, ``key``/``value`` ``[B, Hkv, Lk, D]`` with ``Hq`` a multiple of ``Hkv`` (GQA); the
return value is ``([B, Lq, Hq, D], None)``.

What runs where (anything else goes to torch SDPA, counted in ``SparseAttention.fallbacks`` by reason):

* ``attention_mask is None``: causal when the module is causal and ``Lq > 1`` (bottom-right aligned, as
  the op), otherwise full attention. Phase "decode" when ``Lq == 1``, else "prefill".
* a boolean/additive 4-D mask that, per batch row after dropping padded keys (and, for self-attention,
  padded queries), is all-visible or bottom-right causal: each row runs on its unpadded slice; rows of
  padded queries get zeros. This covers padded BERT batches and left/right-padded causal LM batches.
* SDPA fallbacks: other masks (sliding windows, document masks, tree masks), dropout > 0 (training),
  ``output_attentions=True``, soft-capping, attention sinks, a handler that declines the phase
  (e.g. a decode-only method in prefill), and layers without a handler.

Compute runs in float32 (the op's dtype); other dtypes are cast and cast back.
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn as nn

__all__ = ["ATTN_IMPLEMENTATION", "HANDLER_ATTR", "SparseAttention", "sparseforge_attention", "attention_layers",
           "install", "uninstall", "handlers", "register_with_transformers", "block_skip_summary", "OpAttention", "capture_qkv"]

ATTN_IMPLEMENTATION = "sparseforge"
HANDLER_ATTR = "sparse_attention"
_REGISTERED = False


class SparseAttention(nn.Module):
    """Per-layer state and compute of one sparse attention method; subclassed by each plugin.

    Subclasses implement :meth:`attend` and may keep calibration state as buffers (saved with the model).

    Attributes:
        layer_idx: the layer's index (``module.layer_idx`` or its position among attention layers).
        fallbacks: Counter of SDPA fallbacks by reason.  stats: Counter of ``total``/``skipped`` key
            blocks and calls per phase, summed over calls (see :meth:`record`).
    """

    def __init__(self, layer_idx: int):
        super().__init__()
        self.layer_idx = int(layer_idx)
        self.enabled = True
        self.fallbacks: Counter = Counter()
        self.stats: Counter = Counter()

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, scale: float,
               phase: str) -> torch.Tensor | None:
        """Attention output float32 ``[B, Hq, Lq, D]`` for float32 q ``[B, Hq, Lq, D]`` and k, v
        ``[B, Hkv, Lk, D]`` (no mask besides ``causal``, bottom-right aligned); ``None`` declines the call
        (the caller falls back to SDPA). ``phase`` is "prefill" (Lq > 1) or "decode" (Lq == 1)."""
        raise NotImplementedError

    def record(self, phase: str, block_stats=None) -> None:
        """Adds one call (and the op's BlockAttentionStats, if any) to :attr:`stats`."""
        self.stats[f"{phase}_calls"] += 1
        if block_stats is not None:
            self.stats[f"{phase}_total"] += block_stats.total
            self.stats[f"{phase}_skipped"] += block_stats.skipped

    def record_tokens(self, phase: str, q: torch.Tensor, k: torch.Tensor, causal: bool, kept: int | None) -> None:
        """Adds the keys read by token-level methods to :attr:`stats` (``<phase>_tokens_total`` / ``_kept``):
        each query row may see its causally visible keys and reads at most ``kept`` of them (None: all)."""
        lq, lk = q.shape[2], k.shape[2]
        seen = torch.arange(lk - lq + 1, lk + 1).clamp(min=0) if causal else torch.full((lq,), lk)
        rows = q.shape[0] * q.shape[1]
        self.stats[f"{phase}_tokens_total"] += rows * int(seen.sum())
        self.stats[f"{phase}_tokens_kept"] += rows * int((seen if kept is None else seen.clamp(max=kept)).sum())

    def reset_stats(self) -> None:
        self.stats.clear()
        self.fallbacks.clear()

    def extra_repr(self) -> str:
        return f"layer_idx={self.layer_idx}"

    def __setstate__(self, state):  # an unpickled model (sparseforge.load) needs the function registered
        super().__setstate__(state)
        try:
            register_with_transformers()
        except RuntimeError:  # pragma: no cover
            pass


class OpAttention(SparseAttention):
    """``sparseforge.ops.block_attention`` in one fixed mode for every call (``mode="dense"`` by default):
    the plumbing check and the base of the block-skip methods (override :meth:`op_kwargs`)."""

    def __init__(self, layer_idx: int, mode: str = "dense", block_size: int = 64, phases=("prefill", "decode")):
        super().__init__(layer_idx)
        self.mode, self.block_size, self.phases = mode, block_size, tuple(phases)

    def op_kwargs(self, q, k, v, *, causal: bool, scale: float, phase: str) -> dict | None:
        """Extra keyword arguments of the op for this call (threshold, block_mask, order); None declines."""
        return {}

    def attend(self, q, k, v, *, causal, scale, phase):
        if phase not in self.phases:
            return None
        kw = self.op_kwargs(q, k, v, causal=causal, scale=scale, phase=phase)
        if kw is None:
            return None
        from ..ops import block_attention

        out, st = block_attention(q, k, v, causal=causal, scale=scale, mode=self.mode,
                                  block_size=self.block_size, **kw)
        self.record(phase, st)
        return out


def _sdpa(module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  is_causal=is_causal, **kwargs)


def _causal_pattern(lq: int, lk: int, device) -> torch.Tensor:
    return torch.arange(lk, device=device)[None, :] <= torch.arange(lq, device=device)[:, None] + (lk - lq)


def _split_mask(mask: torch.Tensor, lq: int, lk: int):
    """Per batch row: (query index or None, key index or None, causal) or None if the mask has another shape.

    ``mask``: bool (True = attend) or additive float, broadcastable to ``[B, H, Lq, Lk]``; must be the same
    for every head."""
    if mask.dtype != torch.bool:
        mask = mask > torch.finfo(mask.dtype).min / 2
    if mask.dim() != 4 or mask.shape[-2:] != (lq, lk):
        return None
    if mask.shape[1] != 1:
        if not bool((mask == mask[:, :1]).all()):
            return None
    mask = mask[:, 0]
    out = []
    for m in mask:
        kv = m.any(0)
        q_idx = torch.nonzero(kv).squeeze(1) if lq == lk else None
        k_idx = torch.nonzero(kv).squeeze(1)
        sub = m[:, kv]
        if q_idx is not None:
            sub = sub[q_idx]
        if bool(sub.all()):
            causal = False
        elif bool(torch.equal(sub, _causal_pattern(sub.shape[0], sub.shape[1], sub.device))):
            causal = True
        else:
            return None
        full_q = q_idx is None or q_idx.numel() == lq
        full_k = k_idx.numel() == lk
        out.append((None if full_q else q_idx, None if full_k else k_idx, causal))
    return out


def sparseforge_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                          is_causal: bool | None = None, **kwargs):
    """The attention function registered as ``"sparseforge"``; see the module docstring for the contract."""
    handler = getattr(module, HANDLER_ATTR, None)
    module_causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", False))

    def fallback(reason: str):
        if handler is not None:
            handler.fallbacks[reason] += 1
        return _sdpa(module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs)

    if handler is None or not handler.enabled:
        return fallback("no handler")
    if dropout > 0.0:
        return fallback("dropout")
    if kwargs.get("output_attentions"):
        return fallback("output_attentions")
    for name in ("softcap", "sliding_window", "s_aux", "sinks"):
        if kwargs.get(name) is not None:
            return fallback(name)
    b, hq, lq, d = query.shape
    lk = key.shape[2]
    scale = float(scaling) if scaling is not None else d ** -0.5
    phase = "decode" if lq == 1 else "prefill"
    dtype = query.dtype
    q, k, v = (t.to(torch.float32) for t in (query, key, value))

    if attention_mask is None:
        out = handler.attend(q, k, v, causal=module_causal and lq > 1, scale=scale, phase=phase)
        if out is None:
            return fallback(f"{phase} declined")
    else:
        parts = _split_mask(attention_mask, lq, lk)
        if parts is None:
            return fallback("mask pattern")
        if all(qi is None and ki is None for qi, ki, _ in parts) and len({c for *_, c in parts}) == 1:
            out = handler.attend(q, k, v, causal=parts[0][2] and lq > 1, scale=scale, phase=phase)
        else:
            out = torch.zeros_like(q)
            for i, (qi, ki, causal) in enumerate(parts):
                qs = q[i:i + 1] if qi is None else q[i:i + 1, :, qi]
                ks = k[i:i + 1] if ki is None else k[i:i + 1, :, ki]
                vs = v[i:i + 1] if ki is None else v[i:i + 1, :, ki]
                if qs.shape[2] == 0 or ks.shape[2] == 0:
                    continue
                o = handler.attend(qs, ks, vs, causal=causal and qs.shape[2] > 1, scale=scale,
                                   phase="decode" if qs.shape[2] == 1 else "prefill")
                if o is None:
                    out = None
                    break
                if qi is None:
                    out[i:i + 1] = o
                else:
                    out[i:i + 1, :, qi] = o
        if out is None:
            return fallback(f"{phase} declined")
    return out.to(dtype).transpose(1, 2).contiguous(), None


def register_with_transformers() -> None:
    """Registers :func:`sparseforge_attention` and its mask builder with transformers (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask
    except ImportError as exc:  # pragma: no cover - depends on the installed transformers
        raise RuntimeError("sparse attention on Hugging Face models needs transformers >= 4.53 "
                           "(AttentionInterface and AttentionMaskInterface)") from exc
    AttentionInterface.register(ATTN_IMPLEMENTATION, sparseforge_attention)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, ALL_MASK_ATTENTION_FUNCTIONS.get("sdpa", sdpa_mask))
    _REGISTERED = True


def attention_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(fqn, module)`` of every attention module that dispatches through ``config._attn_implementation``
    (it has ``config``, ``scaling`` and ``is_causal``, as transformers' functional attention classes do)."""
    out = []
    for name, mod in model.named_modules():
        if hasattr(mod, "config") and hasattr(mod, "scaling") and hasattr(mod, "is_causal") \
                and not isinstance(mod, SparseAttention):
            out.append((name, mod))
    return out


def install(model: nn.Module, factory, *, layers: list[int] | None = None) -> list[SparseAttention]:
    """Attaches ``factory(layer_idx, module) -> SparseAttention | None`` to every attention layer of an HF
    ``model`` (``None`` leaves that layer on SDPA) and switches the model to :data:`ATTN_IMPLEMENTATION`.

    ``layers``: only these layer indices get a handler. Returns the handlers in layer order.
    Raises ``TypeError`` for a model that is not a transformers ``PreTrainedModel`` with such layers.
    """
    try:
        from transformers import PreTrainedModel
    except ImportError as exc:  # pragma: no cover
        raise RuntimeError("sparse attention methods need transformers: pip install 'sparseforge[models]'") from exc
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"model must be a transformers PreTrainedModel (Llama-, BERT-family, ...), got "
                        f"{type(model).__name__}")
    found = attention_layers(model)
    if not found:
        raise TypeError(f"model {type(model).__name__} has no attention module that uses transformers' "
                        f"attention-function registry")
    register_with_transformers()
    out = []
    for pos, (_, mod) in enumerate(found):
        idx = getattr(mod, "layer_idx", None)
        idx = pos if idx is None else int(idx)
        if HANDLER_ATTR in mod._modules:
            del mod._modules[HANDLER_ATTR]
        if layers is not None and idx not in layers:
            continue
        h = factory(idx, mod)
        if h is not None:
            mod.add_module(HANDLER_ATTR, h)
            out.append(h)
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    return out


def uninstall(model: nn.Module, attn_implementation: str = "sdpa") -> nn.Module:
    """Removes every handler and switches the model back to ``attn_implementation``."""
    for _, mod in attention_layers(model):
        mod._modules.pop(HANDLER_ATTR, None)
    model.set_attn_implementation(attn_implementation)
    return model


def handlers(model: nn.Module) -> list[SparseAttention]:
    """The installed handlers, in module order."""
    return [m for m in model.modules() if isinstance(m, SparseAttention)]


def block_skip_summary(model: nn.Module, phase: str = "prefill") -> dict:
    """Blocks skipped / total over all handlers for ``phase`` (from the op's stats), and SDPA fallbacks."""
    hs = handlers(model)
    total = sum(h.stats[f"{phase}_total"] for h in hs)
    skipped = sum(h.stats[f"{phase}_skipped"] for h in hs)
    fb = Counter()
    for h in hs:
        fb.update(h.fallbacks)
    return {"total": total, "skipped": skipped, "skip_fraction": skipped / total if total else 0.0,
            "fallbacks": dict(fb)}


class _Capture(SparseAttention):
    def __init__(self, layer_idx: int, store: dict):
        super().__init__(layer_idx)
        self.store = store

    def attend(self, q, k, v, *, causal, scale, phase):
        self.store[self.layer_idx] = {"q": q.detach().clone(), "k": k.detach().clone(), "v": v.detach().clone(),
                                      "causal": causal, "scale": scale}
        return torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=causal and q.shape[2] == k.shape[2], scale=scale, enable_gqa=True)


@torch.no_grad()
def capture_qkv(model: nn.Module, input_ids: torch.Tensor, layers: list[int] | None = None,
                return_output: bool = False):
    """Runs ``model(input_ids=...)`` once with dense attention and returns, per layer index, the float32
    inputs its attention function saw: ``{"q": [B, Hq, L, D], "k", "v": [B, Hkv, L, D], "causal", "scale"}``
    (post-RoPE for Llama-family models); with ``return_output`` also the model's output, as
    ``(store, output)``. The model's own attention implementation is restored after."""
    previous = model.config._attn_implementation
    saved = {name: mod._modules.get(HANDLER_ATTR) for name, mod in attention_layers(model)}
    store: dict = {}
    try:
        install(model, lambda idx, mod: _Capture(idx, store), layers=layers)
        output = model(input_ids=input_ids)
    finally:
        for name, mod in attention_layers(model):
            mod._modules.pop(HANDLER_ATTR, None)
            if saved.get(name) is not None:
                mod._modules[HANDLER_ATTR] = saved[name]
        model.set_attn_implementation(previous)
    return (store, output) if return_output else store
