"""Sparse storage formats: pack/unpack, validate, interop with torch and scipy."""
from .nm import NMSparse
from .csr import CSR
