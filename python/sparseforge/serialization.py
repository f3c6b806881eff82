"""save / load of sparsified models: weights, masks and the method configs that produced them."""

from __future__ import annotations

import io
import os

import torch
import torch.nn as nn

from .masking import apply_mask, iter_masks, plain_copy

__all__ = ["save", "load", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_MAGIC = "sparseforge"


def _pack(mask: torch.Tensor) -> dict:
    """1 bit per entry: a mask costs numel/8 bytes on disk, not numel."""
    flat = mask.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    flat = torch.cat([flat, flat.new_zeros(pad)]).reshape(-1, 8)
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
    return {"bits": (flat * weights).sum(1, dtype=torch.uint8), "shape": tuple(mask.shape)}


def _unpack(packed: dict) -> torch.Tensor:
    bits = packed["bits"].to(torch.uint8)
    shifts = torch.arange(8, dtype=torch.uint8)
    flat = ((bits.unsqueeze(1) >> shifts) & 1).reshape(-1).to(torch.bool)
    shape = torch.Size(packed["shape"])
    return flat[: shape.numel()].reshape(shape)


def save(model: nn.Module, path: str | os.PathLike | io.BufferedIOBase, *, include_module: bool = True) -> None:
    """Writes ``model``'s weights, masks and sparsification history to ``path``.

    ``include_module=True`` also pickles the (mask-free) architecture so :func:`load` can rebuild the
    model from the file alone; with ``False`` the file holds tensors and plain data only, and loading
    needs the architecture passed as ``load(path, model=...)``.
    """
    from .api import history

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    masks, originals = {}, {}
    for fqn, module, name, mask in iter_masks(model):
        key = f"{fqn}.{name}" if fqn else name
        masks[key] = _pack(mask.cpu())
        original = module.parametrizations[name].original.detach()
        # Training methods keep live values under pruned entries (SR-STE, decaying masks); keep them.
        if bool((original * ~mask).any()):
            originals[key] = original.cpu().clone()
    payload = {
        "format": _MAGIC,
        "version": FORMAT_VERSION,
        "history": history(model),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "masks": masks,
        "originals": originals,
    }
    if include_module:
        skeleton = plain_copy(model)
        skeleton.__dict__.pop("_sparseforge_method", None)
        skeleton.__dict__.pop("_sparseforge_history", None)
        payload["module"] = skeleton
    torch.save(payload, path)


def load(path: str | os.PathLike | io.BufferedIOBase, model: nn.Module | None = None,
         map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuilds a model written by :func:`save`: same weights, same masks, same outputs.

    ``model``: an instance of the architecture to load into (its weights are replaced). When omitted,
    the architecture pickled in the file is used, which unpickles code: only load files you trust.
    """
    from .api import _BOUND_ATTR, _HISTORY_ATTR
    from .registry import get_method

    payload = torch.load(path, map_location=map_location, weights_only=model is not None)
    if not isinstance(payload, dict) or payload.get("format") != _MAGIC:
        raise ValueError(f"{path!r} is not a sparseforge file (written by sparseforge.save)")
    if payload["version"] > FORMAT_VERSION:
        raise ValueError(f"{path!r} has format version {payload['version']}; this sparseforge reads up to "
                         f"{FORMAT_VERSION}")
    if model is None:
        if "module" not in payload:
            raise ValueError(f"{path!r} was saved with include_module=False: pass the architecture as model=")
        model = payload["module"]
    modules = dict(model.named_modules())
    for key, packed in payload["masks"].items():
        fqn, _, name = key.rpartition(".")
        if fqn not in modules:
            raise ValueError(f"the file masks {key!r}, but the model has no module {fqn!r}")
        apply_mask(modules[fqn], _unpack(packed).to(getattr(modules[fqn], name).device), name)
    model.load_state_dict(payload["state_dict"])
    with torch.no_grad():
        for key, original in payload["originals"].items():
            fqn, _, name = key.rpartition(".")
            modules[fqn].parametrizations[name].original.copy_(original)
    hist = payload["history"]
    object.__setattr__(model, _HISTORY_ATTR, hist)
    if hist:
        last = hist[-1]
        cls = get_method(last["method"])
        bound = cls(cls.Config.from_dict(last["config"]))
        bound.model = model
        object.__setattr__(model, _BOUND_ATTR, bound)
    return model
