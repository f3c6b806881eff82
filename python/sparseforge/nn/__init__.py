"""Kernel-backed modules that replace dense layers at export time."""
from .nm_linear import NMLinear, export_nm
