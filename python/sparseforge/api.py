"""The public entry points: sparsify a model with a registered method, list and describe methods."""

from __future__ import annotations

import dataclasses

import torch.nn as nn

from .config import Config, ConfigError
from .registry import KINDS, Method, PluginLoadError, get_method, method_names
from .targets import select_targets

__all__ = ["sparsify", "list_methods", "describe", "make_config", "method_of", "export", "MethodInfo"]

_HISTORY_ATTR = "_sparseforge_history"
_BOUND_ATTR = "_sparseforge_method"


def make_config(method: str | type[Method], **values) -> Config:
    """Builds and validates ``method``'s config; unknown fields raise :class:`ConfigError`."""
    cls = get_method(method) if isinstance(method, str) else method
    names = {f.name for f in dataclasses.fields(cls.Config)}
    for key in values:
        if key not in names:
            raise ConfigError(cls.name, key, values[key], f"a field of {cls.Config.__name__}: {', '.join(sorted(names))}")
    return cls.Config(**values)


def sparsify(model: nn.Module, method: str | Config, *, targets=None, exclude=None, **config) -> nn.Module:
    """Applies a registered method to ``model`` in place and returns it.

    Args:
        model: any ``torch.nn.Module``.
        method: a registered method name (see :func:`list_methods`) or a ready config instance.
        targets: which layers to act on: module types, FQN globs (``"encoder.*.fc1"``) or
            ``"re:<regex>"``; default: the method's ``default_targets`` (Linear and Conv layers).
        exclude: selectors to leave dense, plus ``":first"`` / ``":last"`` for the first and last
            selected layers (e.g. the stem conv and the classifier).
        **config: the method's config fields (``sparseforge info NAME`` lists them with defaults).

    Training methods return the model ready for training; drive them with
    ``m = method_of(model); m.prepare(model, optimizer); ...; m.step(i); ...; m.finalize()``.
    """
    if isinstance(method, Config):
        if config:
            raise TypeError("pass config fields either in the Config instance or as keywords, not both")
        cls, cfg = get_method(method.METHOD), method
        cfg.validate()
    else:
        cls = get_method(method)
        cfg = make_config(cls, **config)
    if cls.needs_targets:
        chosen = select_targets(model, cls.default_targets, targets, exclude)
    elif targets is not None or exclude is not None:
        raise ValueError(f"{cls.name} acts on the whole model; it takes no targets= or exclude=")
    else:
        chosen = []
    bound = cls(cfg)
    bound.model, bound.targets = model, chosen
    out = bound.apply(model, chosen)
    if not isinstance(out, nn.Module):
        raise PluginLoadError(f"{cls.name}.apply() returned {type(out).__name__}, not an nn.Module")
    bound.model = out
    history = list(getattr(out, _HISTORY_ATTR, []))
    history.append({"method": cls.name, "config": cfg.to_dict(), "targets": [t.key for t in chosen]})
    object.__setattr__(out, _HISTORY_ATTR, history)
    object.__setattr__(out, _BOUND_ATTR, bound)
    return out


def method_of(model: nn.Module) -> Method:
    """The bound method last applied to ``model`` by :func:`sparsify` (for the training lifecycle)."""
    bound = getattr(model, _BOUND_ATTR, None)
    if bound is None:
        raise ValueError("model was not sparsified with sparseforge.sparsify()")
    return bound


def history(model: nn.Module) -> list[dict]:
    """Methods applied to ``model``, in order, with their configs and targets."""
    return list(getattr(model, _HISTORY_ATTR, []))


def export(model: nn.Module) -> nn.Module:
    """Turns a sparsified model into its inference form (kernel-backed modules where they exist)."""
    return method_of(model).export(model)


def list_methods(kind: str | None = None) -> list[str]:
    """Names of the registered methods, sorted. ``kind`` filters by :data:`sparseforge.registry.KINDS`.

    Without ``kind`` no plugin is imported; with it, each plugin is loaded to read its kind, and a
    broken one is skipped (see :func:`sparseforge.registry.plugin_errors`).
    """
    names = method_names()
    if kind is None:
        return names
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    out = []
    for name in names:
        try:
            if get_method(name).kind == kind:
                out.append(name)
        except PluginLoadError:
            continue
    return out


@dataclasses.dataclass
class MethodInfo:
    name: str
    kind: str
    kernel: str
    paper: object
    summary: str
    training: bool
    fields: list[dict]

    def __str__(self) -> str:
        from ._table import format_table

        head = (f"{self.name}  [{self.kind}; kernel: {self.kernel}; "
                f"{'training-time lifecycle' if self.training else 'one call'}]\n"
                f"paper: {self.paper}\n{self.summary}\n\n")
        rows = [[f["name"], f["type"], repr(f["default"]), f["allowed"], f["help"]] for f in self.fields]
        return head + format_table(["field", "type", "default", "allowed", "help"], rows)


def describe(name: str) -> MethodInfo:
    """Metadata and config fields (with defaults and help) of the method ``name``."""
    cls = get_method(name)
    return MethodInfo(cls.name, cls.kind, cls.kernel, cls.paper, cls.summary, cls.is_training_method(),
                      cls.Config.describe_fields())
