"""Kernel-backed modules that replace dense layers at export time."""
