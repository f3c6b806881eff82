"""Torch custom ops (``sparseforge::<op>``) over the compiled kernels in ``sparseforge._C``."""
from .spgemm import spgemm
