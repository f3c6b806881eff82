"""Which parameters a method acts on: by module type, FQN glob or regex, minus an exclusion list."""

from __future__ import annotations

import fnmatch
import re
from typing import Iterable, Sequence, Union

import torch.nn as nn

from .registry import Target

__all__ = ["select_targets", "require_reduction_multiple", "Selector"]

#: A selector is a module type, a glob on the module's fully-qualified name ("encoder.*.fc1"), a regex
#: written "re:<pattern>" (full match), or, in ``exclude`` only, ":first" / ":last" for the first and
#: last selected layer in module order (the stem and the classifier in most networks).
Selector = Union[str, type]


def _as_list(sel: Selector | Sequence[Selector] | None) -> list[Selector]:
    if sel is None:
        return []
    if isinstance(sel, (str, type)):
        return [sel]
    return list(sel)


def _matches(sel: Selector, fqn: str, module: nn.Module) -> bool:
    if isinstance(sel, type):
        return isinstance(module, sel)
    if sel.startswith("re:"):
        return re.fullmatch(sel[3:], fqn) is not None
    return fnmatch.fnmatchcase(fqn, sel)


def _check_selector(sel: object, arg: str) -> None:
    if isinstance(sel, type):
        if not issubclass(sel, nn.Module):
            raise TypeError(f"{arg}: {sel.__name__} is not an nn.Module type")
        return
    if not isinstance(sel, str):
        raise TypeError(f"{arg}: each selector must be a module type, a glob or 're:<regex>', got {sel!r}")
    if sel.startswith("re:"):
        try:
            re.compile(sel[3:])
        except re.error as exc:
            raise ValueError(f"{arg}: invalid regex {sel[3:]!r}: {exc}") from None


def select_targets(model: nn.Module, default_types: Iterable[type], targets=None, exclude=None,
                   param: str = "weight") -> list[Target]:
    """Returns the targets in module order.

    ``targets=None`` selects every module of ``default_types``; otherwise the modules matched by any
    selector. Only modules with a ``param`` of 2 or more dimensions qualify. Every selector must match
    something, so a typo fails loudly instead of leaving layers untouched.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    include, excl = _as_list(targets), _as_list(exclude)
    for s in include:
        if s in (":first", ":last"):
            raise ValueError("targets: ':first' / ':last' are only meaningful in exclude")
        _check_selector(s, "targets")
    for s in excl:
        if s not in (":first", ":last"):
            _check_selector(s, "exclude")

    eligible = []
    for fqn, module in model.named_modules():
        p = getattr(module, param, None)
        if p is not None and hasattr(p, "dim") and p.dim() >= 2:
            eligible.append((fqn, module))
    if not eligible:
        raise ValueError(f"model has no module with a {param!r} of 2 or more dimensions to sparsify")

    selectors = include or list(default_types)
    chosen = [(f, m) for f, m in eligible if any(_matches(s, f, m) for s in selectors)]
    for s in include:
        if not any(_matches(s, f, m) for f, m in eligible):
            names = ", ".join(f for f, _ in eligible[:12]) + (" ..." if len(eligible) > 12 else "")
            raise ValueError(f"targets selector {s!r} matched no module with a {param}; candidates: {names}")

    drop: set[str] = set()
    for s in excl:
        if s == ":first" and chosen:
            drop.add(chosen[0][0])
        elif s == ":last" and chosen:
            drop.add(chosen[-1][0])
        elif s not in (":first", ":last"):
            hit = [f for f, m in chosen if _matches(s, f, m)]
            if not hit:
                raise ValueError(f"exclude selector {s!r} matched none of the selected modules: "
                                 + ", ".join(f for f, _ in chosen[:12]))
            drop.update(hit)
    result = [Target(f, m, param) for f, m in chosen if f not in drop]
    if not result:
        raise ValueError("no module left to sparsify after applying targets/exclude")
    return result


def require_reduction_multiple(method: str, targets: list[Target], m: int, pattern: str) -> None:
    """Raises ValueError naming every target whose reduction (input) dimension is not a multiple of
    ``m``, so an N:M method fails before touching any layer."""
    from .patterns import reduction_size

    bad = [t.key for t in targets if reduction_size(getattr(t.module, t.param)) % m]
    if bad:
        raise ValueError(f"{method}: pattern {pattern} needs the input dimension to be a multiple of {m}; "
                         f"these layers are not: {', '.join(bad)} (leave them out with exclude=)")
