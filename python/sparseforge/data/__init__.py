"""Loaders for the offline models and data sets, and deterministic generators of test matrices."""
