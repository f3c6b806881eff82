"""Backends: where a sparsified model runs. One question, "which backends are here?", one answer.

* ``reference``: pure torch, masks baked into dense weights (always present; the correctness anchor).
* ``cpu``: the compiled kernels in ``sparseforge._C`` through each method's ``export()``.
* ``wasm`` / ``cuda``: listed with the reason they are missing until those builds exist here.
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

    out = {
        "reference": BackendInfo("reference", True, "pure torch, dense weights with zeros", ()),
        "cpu": BackendInfo("cpu", True, f"compiled kernels, ISA {_C.isa()}", tuple(_C.ops())),
        "wasm": BackendInfo("wasm", False, "no WebAssembly module is built in this install"),
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
    """A copy of a sparsified ``model`` prepared to run on ``backend`` (the original is untouched)."""
    from ..api import method_of
    from ..masking import bake_masks, plain_copy

    get_backend(backend)
    if backend == "reference":
        return plain_copy(model).eval()
    clone = copy.deepcopy(model)
    try:
        method = method_of(model)
    except ValueError:
        return bake_masks(clone).eval()
    # export() rebinds to the clone: the bound method's own model reference stays with the original.
    return method.export(clone).eval()
