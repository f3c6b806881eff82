"""Masks on parameters, kept as ``torch.nn.utils.parametrize`` parametrizations.

A masked ``module.weight`` reads as ``original * mask``; gradients reach only kept entries. The masks
stay out of the user's way in checkpoints: ``model.state_dict()`` holds the plain key ``weight`` with
the masked values (no ``parametrizations.weight.original`` / ``...mask`` keys), so it loads into the
dense architecture with a plain ``load_state_dict``, and loading a plain state dict into a masked model
keeps the model's masks. :func:`sparseforge.save` stores the masks themselves.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

__all__ = ["SparseParametrization", "Mask", "apply_mask", "register_sparse_parametrization", "get_mask",
           "iter_masks", "iter_sparse_parametrizations", "bake_masks", "plain_copy", "is_masked", "freeze_mask"]


class SparseParametrization(nn.Module):
    """Base of every parametrization sparseforge puts on a weight.

    ``forward(w)`` returns the weight the layer computes with; ``current_mask(w)`` the boolean pattern
    of kept entries for the stored value ``w``. Static masks keep the pattern in a buffer; dynamic ones
    (SR-STE, decaying masks) recompute it from ``w``, and ``spec()`` returns the JSON-able constructor
    arguments that :func:`sparseforge.save` stores to rebuild them.
    """

    def current_mask(self, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def spec(self) -> dict:
        raise NotImplementedError(f"{type(self).__name__} cannot be saved: it defines no spec()")


class Mask(SparseParametrization):
    """Parametrization ``w -> w * mask`` with a boolean ``mask`` buffer of the parameter's shape."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.detach().to(torch.bool).clone())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask

    def current_mask(self, w: torch.Tensor) -> torch.Tensor:
        return self.mask

    def extra_repr(self) -> str:
        return f"density={self.mask.float().mean().item():.4f}"


def _sparse_indices(module: nn.Module, name: str, cls=SparseParametrization) -> list[int]:
    if not parametrize.is_parametrized(module, name):
        return []
    return [i for i, p in enumerate(module.parametrizations[name]) if isinstance(p, cls)]


def _mask_index(module: nn.Module, name: str) -> int | None:
    idx = _sparse_indices(module, name, Mask)
    return idx[0] if idx else None


def is_masked(module: nn.Module, name: str = "weight") -> bool:
    return bool(_sparse_indices(module, name))


def get_mask(module: nn.Module, name: str = "weight") -> torch.Tensor | None:
    """The kept-entry pattern of ``module.<name>`` (all sparse parametrizations combined), or None."""
    idx = _sparse_indices(module, name)
    if not idx:
        return None
    plist = module.parametrizations[name]
    if len(idx) == 1 and isinstance(plist[idx[0]], Mask):
        return plist[idx[0]].mask
    with torch.no_grad():
        w = plist.original
        mask = torch.ones_like(w, dtype=torch.bool)
        for i, p in enumerate(plist):
            if i in idx:
                mask &= p.current_mask(w).to(torch.bool)
            w = p(w)
    return mask


def register_sparse_parametrization(module: nn.Module, p: SparseParametrization, name: str = "weight"):
    """Adds a sparseforge parametrization to ``module.<name>`` (after any existing ones)."""
    if not isinstance(p, SparseParametrization):
        raise TypeError(f"expected a SparseParametrization, got {type(p).__name__}")
    parametrize.register_parametrization(module, name, p, unsafe=False)
    _install_state_dict_hooks(module)
    return p


def apply_mask(module: nn.Module, mask: torch.Tensor, name: str = "weight") -> Mask:
    """Masks ``module.<name>`` (AND-ed with an existing mask) and zeroes the pruned stored values.

    ``mask``: bool (or 0/1) tensor of the parameter's shape. Returns the :class:`Mask` parametrization.
    """
    param = getattr(module, name)
    if mask.shape != param.shape:
        raise ValueError(f"mask for {type(module).__name__}.{name} has shape {tuple(mask.shape)}, "
                         f"expected {tuple(param.shape)}")
    mask = mask.to(device=param.device, dtype=torch.bool)
    i = _mask_index(module, name)
    if i is not None:
        existing = module.parametrizations[name][i]
        existing.mask &= mask
        p = existing
    else:
        p = register_sparse_parametrization(module, Mask(mask), name)
    with torch.no_grad():
        module.parametrizations[name].original.mul_(p.mask)
    return p


def freeze_mask(module: nn.Module, name: str = "weight") -> Mask:
    """Replaces the parametrizations of ``module.<name>`` by a static :class:`Mask` of the current
    pattern, with pruned values set to zero: how training-time methods hand over their final model."""
    mask = get_mask(module, name)
    if mask is None:
        raise ValueError(f"{type(module).__name__}.{name} carries no sparse parametrization")
    mask = mask.clone()
    _unparametrize(module)
    return apply_mask(module, mask, name)


def iter_sparse_parametrizations(model: nn.Module):
    """Yields ``(fqn, module, param_name, parametrization_list)`` for every parameter sparseforge manages."""
    for fqn, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for name in list(module.parametrizations.keys()):
            if _sparse_indices(module, name):
                yield fqn, module, name, module.parametrizations[name]


def iter_masks(model: nn.Module):
    """Yields ``(fqn, module, param_name, mask)`` for every sparsified parameter in ``model``."""
    for fqn, module, name, _ in iter_sparse_parametrizations(model):
        yield fqn, module, name, get_mask(module, name)


def _unparametrize(module: nn.Module) -> None:
    """Turns a parametrized module back into its plain class, each parametrized tensor baked in.

    ``parametrize.remove_parametrizations`` deletes the property from the module's class, and a
    ``copy.deepcopy`` of a parametrized module shares that class with the original, so removing it
    from one copy would break the other. This swaps the instance's class instead and never touches
    the shared one.
    """
    baked = {}
    for name, plist in module.parametrizations.items():
        original = plist.original
        baked[name] = nn.Parameter(getattr(module, name).detach().clone(), requires_grad=original.requires_grad)
    module.__class__ = module.__class__.__bases__[0]
    del module._modules["parametrizations"]
    # Our checkpoint hooks only matter while the module is masked; the load hook also holds a weak
    # reference to its module that cannot be pickled. Fresh dicts keep a shallow copy's original intact.
    ids = module.__dict__.pop("_sparseforge_hook_ids", ())
    module.__dict__.pop("_sparseforge_sd_hooks", None)
    for attr in ("_state_dict_hooks", "_load_state_dict_pre_hooks"):
        hooks = OrderedDict(getattr(module, attr))
        for i in ids:
            hooks.pop(i, None)
        setattr(module, attr, hooks)
    for name, p in baked.items():
        module._parameters[name] = p


def bake_masks(model: nn.Module) -> nn.Module:
    """Replaces every parametrized weight by its (masked) value as a plain Parameter, in place."""
    for _, module in reversed(list(model.named_modules())):
        if parametrize.is_parametrized(module):
            _unparametrize(module)
    return model


def plain_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every parametrization baked in; ``model`` is left untouched."""
    memo: dict = {}
    # Children before parents, so that a parent's deepcopy finds its children's plain copies in memo.
    for _, module in reversed(list(model.named_modules())):
        if parametrize.is_parametrized(module):
            shell = module.__class__.__new__(module.__class__)
            shell.__dict__.update(module.__dict__)
            shell._parameters = dict(module._parameters)
            shell._buffers = dict(module._buffers)
            shell._modules = dict(module._modules)
            _unparametrize(shell)
            memo[id(module)] = copy.deepcopy(shell, memo)
    return copy.deepcopy(model, memo)


# -- checkpoint semantics ---------------------------------------------------------------------------


def _state_dict_post_hook(module, state_dict, prefix, local_metadata):
    if not parametrize.is_parametrized(module):
        return
    for name in list(module.parametrizations.keys()):
        if not _sparse_indices(module, name):
            continue
        base = f"{prefix}parametrizations.{name}."
        for key in [k for k in state_dict if k.startswith(base)]:
            del state_dict[key]
        state_dict[prefix + name] = getattr(module, name).detach()


def _load_pre_hook(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    if not parametrize.is_parametrized(module):
        return
    for name in list(module.parametrizations.keys()):
        if not _sparse_indices(module, name) or prefix + name not in state_dict:
            continue
        base = f"{prefix}parametrizations.{name}."
        state_dict[base + "original"] = state_dict.pop(prefix + name)
        # A plain checkpoint carries no masks: the model keeps its own (and dynamic parametrizations
        # get the checkpoint's effective weight as their stored value).
        for j, p in enumerate(module.parametrizations[name]):
            for bname, buf in p.named_buffers():
                state_dict.setdefault(f"{base}{j}.{bname}", buf)


def _install_state_dict_hooks(module: nn.Module) -> None:
    if getattr(module, "_sparseforge_sd_hooks", False):
        return
    handles = (module.register_state_dict_post_hook(_state_dict_post_hook),
               module.register_load_state_dict_pre_hook(_load_pre_hook))
    module._sparseforge_hook_ids = tuple(h.id for h in handles)
    module._sparseforge_sd_hooks = True
