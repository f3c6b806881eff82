"""What was built and what runs: the answer to "which kernels will my model use here?"."""

from __future__ import annotations

import platform

import torch

from . import _C
from ._version import __version__


def info() -> dict:
    """Build and run-time facts: version, ISAs compiled in and chosen, CPU features, threads, torch."""
    from .registry import method_names, plugin_errors

    return {
        "version": __version__,
        "isa": _C.isa(),
        "best_isa": _C.best_isa(),
        "compiled_isas": _C.compiled_isas(),
        "supported_isas": _C.supported_isas(),
        "cpu_features": _C.cpu_features(),
        "kernels": {op: _C.kernel_for(op) for op in _C.ops()},
        "num_threads": _C.num_threads(),
        "threading": _C.threading_backend(),
        "build": _C.build_info(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "methods": method_names(),
        "plugin_errors": plugin_errors(),
    }
