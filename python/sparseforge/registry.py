"""The method registry: the Method contract and plugin discovery through entry points.

Every method, in-tree or third-party, is a :class:`Method` subclass named by an entry point in the
group ``sparseforge.methods``::

    [project.entry-points."sparseforge.methods"]
    my_method = "my_package.my_module:MyMethod"

Discovery is lazy: reading the names imports no plugin; a plugin is imported the first time its method
is described, applied or listed with its metadata. A plugin that fails to import is reported (a
:class:`PluginWarning` and :func:`plugin_errors`) and skipped; it never breaks ``import sparseforge``.
Two distributions claiming one name is an error (:class:`MethodConflictError`).
``SPARSEFORGE_DISABLE_PLUGINS=name,other`` skips the named methods without importing them.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata as md
import os
import threading
import traceback
import warnings
from typing import ClassVar, Iterable

import torch.nn as nn

from .config import Config

__all__ = [
    "ENTRY_POINT_GROUP", "KINDS", "KERNELS", "STAGES", "Paper", "Method", "Target",
    "UnknownMethodError", "MethodConflictError", "PluginLoadError", "PluginWarning",
    "register", "unregister", "get_method", "method_names", "plugin_errors", "refresh",
]

ENTRY_POINT_GROUP = "sparseforge.methods"

#: What a method does to a model (DESIGN.md, "Method plugin").
KINDS = ("pruning", "sparse_training", "dynamic_sparse_training", "nm", "activation", "attention",
         "architecture", "regularizer", "quant_sparsity", "analysis", "decoding")
#: Kernels a method's result can be exported to; "none" when it stays a dense model with zeros.
KERNELS = ("nm_gemm", "spmm_conv", "block_attention", "spgemm", "none")
STAGES = ("init", "post_training", "during_training", "fine_tuning")


class UnknownMethodError(KeyError):
    def __init__(self, name: str, known: Iterable[str]):
        known = sorted(known)
        self.name, self.suggestions = name, difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(self.suggestions)}?" if self.suggestions else ""
        super().__init__(f"unknown method {name!r}{hint} (known: {', '.join(known) or 'none'})")

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return self.args[0]


class MethodConflictError(RuntimeError):
    """Two plugins register the same method name."""


class PluginLoadError(ImportError):
    """A plugin's entry point could not be imported or does not define a valid Method."""


class PluginWarning(UserWarning):
    """A plugin was skipped because it is broken."""


@dataclasses.dataclass(frozen=True)
class Paper:
    title: str
    year: int
    arxiv: str | None = None
    code: str | None = None

    def __str__(self) -> str:
        return f"{self.title} ({self.year}{', arXiv:' + self.arxiv if self.arxiv else ''})"


@dataclasses.dataclass(frozen=True)
class Target:
    """One parameter a method acts on: ``module.<param>`` at fully-qualified name ``fqn``."""

    fqn: str
    module: nn.Module
    param: str = "weight"

    @property
    def key(self) -> str:
        return f"{self.fqn}.{self.param}" if self.fqn else self.param


class Method:
    """Base class of every sparsity method.

    A subclass sets the class attributes below and implements :meth:`apply`. Training-time methods
    also implement the lifecycle ``prepare(model, optimizer) -> step(step_idx) -> finalize()``, called
    around a user's training loop; inference methods may override :meth:`export`.

    An instance is bound to one validated config (``self.config``) and one model.
    """

    name: ClassVar[str]
    paper: ClassVar[Paper]
    kind: ClassVar[str]
    kernel: ClassVar[str] = "none"
    Config: ClassVar[type[Config]]
    summary: ClassVar[str] = ""
    #: When the method acts: "init" (before training, e.g. static random masks), "post_training"
    #: (one shot on a trained model), "during_training" (the prepare/step/finalize lifecycle from
    #: scratch) or "fine_tuning" (the lifecycle, starting from a trained dense model).
    stage: ClassVar[str] = "post_training"
    #: Module types whose ``weight`` the method acts on unless the user selects targets explicitly.
    default_targets: ClassVar[tuple[type[nn.Module], ...]] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    #: False for methods that act on the model as a whole (attention functions, decoding constraints):
    #: they get ``targets=[]`` and ``sparsify`` rejects targets/exclude for them.
    needs_targets: ClassVar[bool] = True
    #: True for methods whose transform adds modules or buffers to the model (attention handlers, gates):
    #: ``sparseforge.load(path, model=...)`` re-applies them to the given model before loading the state.
    reapply_on_load: ClassVar[bool] = False

    def __init__(self, config: Config):
        if not isinstance(config, type(self).Config):
            raise TypeError(f"{self.name}: config must be a {type(self).Config.__name__}, got {type(config).__name__}")
        self.config = config
        self.model: nn.Module | None = None
        self.targets: list[Target] = []

    # -- the transform ------------------------------------------------------------------------------
    def apply(self, model: nn.Module, targets: list[Target]) -> nn.Module:
        """Transforms ``model`` in place (masks, layers, hooks) and returns it."""
        raise NotImplementedError

    # -- training lifecycle (optional) --------------------------------------------------------------
    @classmethod
    def is_training_method(cls) -> bool:
        return cls.prepare is not Method.prepare

    def prepare(self, model: nn.Module, optimizer, total_steps: int | None = None) -> None:
        """Called once before training with the optimizer that will update ``model``; ``total_steps``
        is the run's length in optimizer steps when the loop knows it (schedules need it)."""
        raise NotImplementedError(f"{self.name} is not a training-time method")

    def step(self, step_idx: int) -> None:
        """Called after every ``optimizer.step()``; ``step_idx`` counts from 0."""

    def training_loss(self, model: nn.Module, inputs, targets, loss):
        """Lets a method change the training objective (distillation, regularisers); default: ``loss``."""
        return loss

    def finalize(self) -> nn.Module:
        """Called once after training; fixes the final masks and returns the model."""
        assert self.model is not None
        return self.model

    # -- inference --------------------------------------------------------------------------------
    def nm_pattern(self) -> tuple[int, int] | None:
        """``(n, m)`` when the method's result is N:M sparse (so export can use the N:M kernel)."""
        return None

    def export(self, model: nn.Module) -> nn.Module:
        """Returns a model for inference: N:M methods swap eligible Linears for kernel-backed
        ``NMLinear``; every other mask is baked into a plain dense weight."""
        from . import nn as sf_nn
        from .masking import bake_masks

        pattern = self.nm_pattern()
        export_nm = getattr(sf_nn, "export_nm", None)
        if pattern is not None and export_nm is not None and not isinstance(model, nn.Linear):
            model = export_nm(model, *pattern)
        return bake_masks(model)

    @classmethod
    def check_class(cls) -> None:
        """Raises PluginLoadError if the class does not honour the contract."""
        problems = []
        for attr in ("name", "paper", "kind", "Config"):
            if not hasattr(cls, attr):
                problems.append(f"missing class attribute {attr!r}")
        if not problems:
            if not isinstance(cls.name, str) or not cls.name.isidentifier() or cls.name != cls.name.lower():
                problems.append(f"name {cls.name!r} is not snake_case")
            if cls.kind not in KINDS:
                problems.append(f"kind {cls.kind!r} is not one of {KINDS}")
            if cls.stage not in STAGES:
                problems.append(f"stage {cls.stage!r} is not one of {STAGES}")
            if cls.kernel not in KERNELS:
                problems.append(f"kernel {cls.kernel!r} is not one of {KERNELS}")
            if not isinstance(cls.paper, Paper):
                problems.append("paper must be a sparseforge.registry.Paper")
            if not (isinstance(cls.Config, type) and issubclass(cls.Config, Config)):
                problems.append("Config must subclass sparseforge.config.Config")
            if cls.apply is Method.apply:
                problems.append("apply() is not implemented")
        if problems:
            raise PluginLoadError(f"{cls.__module__}.{cls.__qualname__}: " + "; ".join(problems))


# --------------------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Entry:
    name: str
    source: str  # "module:attr" or "<registered>"
    dist: str
    entry_point: md.EntryPoint | None = None
    cls: type[Method] | None = None
    error: str | None = None


class _Registry:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._entries: dict[str, list[_Entry]] | None = None
        self._manual: dict[str, _Entry] = {}

    @staticmethod
    def _disabled() -> set[str]:
        raw = os.environ.get("SPARSEFORGE_DISABLE_PLUGINS", "")
        return {n.strip() for n in raw.split(",") if n.strip()}

    def _scan(self) -> dict[str, list[_Entry]]:
        with self._lock:
            if self._entries is None:
                found: dict[str, list[_Entry]] = {}
                for ep in md.entry_points(group=ENTRY_POINT_GROUP):
                    dist = ep.dist.name if getattr(ep, "dist", None) is not None else "?"
                    entries = found.setdefault(ep.name, [])
                    # The same distribution seen twice on sys.path (an editable and a normal install) is
                    # one plugin, not a clash.
                    if any(e.source == ep.value for e in entries):
                        continue
                    entries.append(_Entry(ep.name, ep.value, dist, entry_point=ep))
                self._entries = found
            return self._entries

    def refresh(self) -> None:
        with self._lock:
            self._entries = None

    def _candidates(self, name: str) -> list[_Entry]:
        out = list(self._scan().get(name, []))
        if name in self._manual:
            out.append(self._manual[name])
        return out

    def names(self) -> list[str]:
        disabled = self._disabled()
        return sorted(n for n in set(self._scan()) | set(self._manual) if n not in disabled)

    def _load(self, entry: _Entry) -> type[Method]:
        if entry.cls is not None:
            return entry.cls
        if entry.error is not None:
            raise PluginLoadError(entry.error)
        try:
            obj = entry.entry_point.load()  # type: ignore[union-attr]
            if not (isinstance(obj, type) and issubclass(obj, Method)):
                raise PluginLoadError(f"entry point {entry.source} is {obj!r}, not a sparseforge Method subclass")
            obj.check_class()
            if obj.name != entry.name:
                raise PluginLoadError(f"entry point name {entry.name!r} differs from {obj.__qualname__}.name {obj.name!r}")
        except Exception as exc:  # a plugin may fail in any way; none of them may break the registry
            last = traceback.format_exception_only(type(exc), exc)[-1].strip()
            entry.error = f"plugin {entry.name!r} from {entry.dist} ({entry.source}) failed to load: {last}"
            warnings.warn(entry.error, PluginWarning, stacklevel=3)
            raise PluginLoadError(entry.error) from exc
        obj.Config.METHOD = obj.name
        entry.cls = obj
        return obj

    def get(self, name: str) -> type[Method]:
        with self._lock:
            if name in self._disabled():
                raise UnknownMethodError(name, self.names())
            cands = self._candidates(name)
            if not cands:
                raise UnknownMethodError(name, self.names())
            if len(cands) > 1:
                where = ", ".join(f"{c.dist} ({c.source})" for c in cands)
                raise MethodConflictError(f"method name {name!r} is registered by more than one plugin: {where}; "
                                          "uninstall one, or set SPARSEFORGE_DISABLE_PLUGINS")
            return self._load(cands[0])

    def errors(self) -> dict[str, str]:
        with self._lock:
            entries = [e for es in self._scan().values() for e in es] + list(self._manual.values())
            return {e.name: e.error for e in entries if e.error}

    def register(self, cls: type[Method]) -> type[Method]:
        cls.check_class()
        with self._lock:
            if self._candidates(cls.name):
                existing = self._candidates(cls.name)[0]
                raise MethodConflictError(f"method name {cls.name!r} is already registered by "
                                          f"{existing.dist} ({existing.source})")
            cls.Config.METHOD = cls.name
            self._manual[cls.name] = _Entry(cls.name, f"{cls.__module__}:{cls.__qualname__}", "<registered>", cls=cls)
        return cls

    def unregister(self, name: str) -> None:
        with self._lock:
            self._manual.pop(name, None)


_REGISTRY = _Registry()


def register(cls: type[Method]) -> type[Method]:
    """Registers a Method class in this process (a decorator). Packages should use the entry point."""
    return _REGISTRY.register(cls)


def unregister(name: str) -> None:
    """Removes a method added with :func:`register`."""
    _REGISTRY.unregister(name)


def get_method(name: str) -> type[Method]:
    """The Method class registered as ``name``; imports its plugin on first use."""
    if not isinstance(name, str):
        raise TypeError(f"method name must be a str, got {type(name).__name__}")
    return _REGISTRY.get(name)


def method_names() -> list[str]:
    """Every registered name, without importing any plugin (a broken one is listed until it is loaded)."""
    return _REGISTRY.names()


def plugin_errors() -> dict[str, str]:
    """Plugins that failed to load so far: name -> reason."""
    return _REGISTRY.errors()


def refresh() -> None:
    """Re-reads the entry points (after installing a plugin into the running interpreter)."""
    import importlib

    importlib.invalidate_caches()
    _REGISTRY.refresh()
