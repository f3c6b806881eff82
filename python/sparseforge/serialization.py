"""save / load of sparsified models: weights, masks and the method configs that produced them."""

from __future__ import annotations

import io
import os

import torch
import torch.nn as nn

from .masking import Mask, SparseParametrization, iter_sparse_parametrizations, plain_copy, register_sparse_parametrization

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


def _strip_state(model: nn.Module) -> nn.Module:
    """Moves every parameter and persistent buffer to the meta device (in place): the state dict
    carries them, so the pickled architecture need not store the weights a second time."""
    for module in model.modules():
        for name, p in module._parameters.items():
            if p is not None:
                module._parameters[name] = nn.Parameter(p.detach().to("meta"), requires_grad=p.requires_grad)
        for name, b in module._buffers.items():
            if b is not None and name not in module._non_persistent_buffers_set:
                module._buffers[name] = b.to("meta")
    return model


def _materialize(model: nn.Module, device) -> nn.Module:
    """Inverse of :func:`_strip_state`: allocates the meta tensors (load_state_dict fills them)."""
    for module in model.modules():
        for name, p in module._parameters.items():
            if p is not None and p.is_meta:
                module._parameters[name] = nn.Parameter(torch.empty_like(p, device=device), requires_grad=p.requires_grad)
        for name, b in module._buffers.items():
            if b is not None and b.is_meta:
                module._buffers[name] = torch.empty_like(b, device=device)
    return model


def _import(path: str) -> type:
    import importlib

    mod, _, qual = path.partition(":")
    obj = importlib.import_module(mod)
    for part in qual.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, SparseParametrization)):
        raise ValueError(f"{path} is not a sparseforge parametrization")
    return obj


def save(model: nn.Module, path: str | os.PathLike | io.BufferedIOBase, *, include_module: bool = True) -> None:
    """Writes ``model``'s weights, masks and sparsification history to ``path``.

    ``include_module=True`` also pickles the (mask-free) architecture so :func:`load` can rebuild the
    model from the file alone; with ``False`` the file holds tensors and plain data only, and loading
    needs the architecture passed as ``load(path, model=...)``.
    """
    from .api import history

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    sparse, originals = {}, {}
    for fqn, module, name, plist in iter_sparse_parametrizations(model):
        key = f"{fqn}.{name}" if fqn else name
        entries = []
        for p in plist:
            if isinstance(p, Mask):
                entries.append({"class": "mask", "mask": _pack(p.mask.cpu())})
            elif isinstance(p, SparseParametrization):
                entries.append({"class": f"{type(p).__module__}:{type(p).__qualname__}", "spec": p.spec()})
            else:
                raise ValueError(f"cannot save {key}: it also carries the foreign parametrization "
                                 f"{type(p).__name__}; remove it or bake it in first")
        sparse[key] = entries
        original = plist.original.detach()
        # Training methods keep live values under pruned entries (SR-STE, decaying masks); keep them.
        if any(e["class"] != "mask" for e in entries) or bool((original * ~plist[0].current_mask(original)).any()):
            originals[key] = original.cpu().clone()
    payload = {
        "format": _MAGIC,
        "version": FORMAT_VERSION,
        "history": history(model),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "sparse": sparse,
        "originals": originals,
    }
    if include_module:
        skeleton = _strip_state(plain_copy(model))
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
        model = _materialize(payload["module"], map_location)
    else:
        # Methods that add modules (attention handlers, gates) rebuild them on the given architecture.
        for entry in payload["history"]:
            cls = get_method(entry["method"])
            if getattr(cls, "reapply_on_load", False):
                bound = cls(cls.Config.from_dict(entry["config"]))
                bound.model = model
                model = bound.apply(model, [])
    modules = dict(model.named_modules())
    for key, entries in payload["sparse"].items():
        fqn, _, name = key.rpartition(".")
        if fqn not in modules:
            raise ValueError(f"the file sparsifies {key!r}, but the model has no module {fqn!r}")
        module = modules[fqn]
        for entry in entries:
            if entry["class"] == "mask":
                p = Mask(_unpack(entry["mask"]).to(getattr(module, name).device))
            else:
                p = _import(entry["class"])(**entry["spec"])
            register_sparse_parametrization(module, p, name)
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
