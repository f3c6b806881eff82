"""Sparse storage formats: pack/unpack, validate, interop with torch and scipy."""
from .csr import CSR
