"""Kernel-backed modules that replace dense layers at export time."""
from .nm_linear import NMLinear, export_nm
from .sparse_conv import SparseConv2d, export_sparse_conv  # noqa: F401
from .fold import fold_batchnorm  # noqa: F401
from .reconstruct import reconstruct_pointwise  # noqa: F401

__all__ = ["NMLinear", "export_nm", "SparseConv2d", "export_sparse_conv", "fold_batchnorm", "reconstruct_pointwise"]
