"""Backends: where a sparsified model runs. One question, "which backends are here?", one answer.

* ``reference``: pure torch, masks baked into dense weights (always present; the correctness anchor).
* ``cpu``: the compiled kernels in ``sparseforge._C`` through each method's ``export()``.
* ``wasm``: the same kernels compiled to WebAssembly (``scripts/build_wasm.py``) and run through wasmtime,
  single-threaded; a model's kernel-backed layers run there, the rest stays torch (``wasm_modules.py``).
  Available when the module and wasmtime are installed, else listed with the reason.
* ``cuda``: listed with the reason it is missing until that build exists here.
"""

from __future__ import annotations

import copy
import dataclasses

import torch.nn as nn

__all__ = ["BackendInfo", "list_backends", "get_backend", "for_inference"]


@dataclasses.dataclass(frozen=True)
class BackendInfo:
    name: str
    available: bool
    reason: str
    ops: tuple = ()


def list_backends() -> dict[str, BackendInfo]:
    from .. import _C
    from . import wasm

    why_not_wasm = wasm.unavailable_reason()  # cheap: finds files, compiles nothing
    out = {
        "reference": BackendInfo("reference", True, "pure torch, dense weights with zeros", ()),
        "cpu": BackendInfo("cpu", True, f"compiled kernels, ISA {_C.isa()}", tuple(_C.ops())),
        "wasm": BackendInfo("wasm", why_not_wasm is None,
                            why_not_wasm or f"WebAssembly kernels via wasmtime, 1 thread ({wasm.module_path()})",
                            () if why_not_wasm else wasm.built_ops()),
    }
    try:
        import torch

        cuda = _C.build_info().get("cuda", False) and torch.cuda.is_available()
    except Exception:  # a broken CUDA runtime must not break listing
        cuda = False
    out["cuda"] = BackendInfo("cuda", bool(cuda), "CUDA kernels and a GPU" if cuda else
                              "this build has no CUDA kernels or no GPU is visible")
    return out


def get_backend(name: str) -> BackendInfo:
    backends = list_backends()
    if name not in backends:
        raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(backends)}")
    if not backends[name].available:
        raise ValueError(f"backend {name!r} is not available here: {backends[name].reason}")
    return backends[name]


def for_inference(model: nn.Module, backend: str) -> nn.Module:
    """A copy of a sparsified ``model`` prepared to run on ``backend`` (the original is untouched).

    ``wasm``: exported as for ``cpu``, then the kernel-backed layers are swapped for wasm ones; raises
    NotImplementedError when the exported model has none (nothing would run in wasm)."""
    from ..api import method_of
    from ..masking import bake_masks, plain_copy

    get_backend(backend)
    if backend == "reference":
        return plain_copy(model).eval()
    clone = copy.deepcopy(model)
    try:
        method = method_of(model)
    except ValueError:
        runnable = bake_masks(clone).eval()
    else:
        # export() rebinds to the clone: the bound method's own model reference stays with the original.
        runnable = method.export(clone).eval()
    if backend == "wasm":
        from .wasm_modules import to_wasm

        runnable = to_wasm(runnable)
    return runnable
