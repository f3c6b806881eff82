"""Sparse storage formats: pack/unpack, validate, interop with torch and scipy."""
from .nm import NMSparse
from .csr import CSR
from .sparse_conv import SparseConvWeight  # noqa: F401
