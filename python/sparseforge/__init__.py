"""sparseforge: neural-network sparsity made real and measurable.

    import sparseforge as sf
    model = sf.sparsify(model, "magnitude", sparsity=0.5)
    print(sf.sparsity_report(model))

Methods come from plugins (``sf.list_methods()``, ``sf.describe(name)``); kernels from the compiled
core ``sparseforge._C`` (``sf.info()`` says which ISA runs).
"""

from ._version import __version__
from . import _C
from .api import describe, export, history, list_methods, make_config, method_of, sparsify
from .config import Config, ConfigError
from .explain import explain
from .info import info
from .registry import Method, Paper, get_method, register
from .report import sparsity_report
from .serialization import load, save
from . import formats, nn, ops  # noqa: E402  (public subpackages: sf.ops.nm_linear, sf.formats.NMSparse, ...)

__all__ = [
    "__version__", "sparsify", "list_methods", "describe", "make_config", "method_of", "export", "history",
    "sparsity_report", "save", "load", "info", "Config", "ConfigError", "Method", "Paper", "get_method",
    "register", "explain", "formats", "nn", "ops",
]
