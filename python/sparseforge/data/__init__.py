"""Loaders for the offline data sets and models listed in DESIGN.md (nothing downloads at run time),
and deterministic generators of the SpGEMM test matrices (``sparseforge.data.spgemm_matrices``)."""

from .datasets import DATASETS, Dataset, load_dataset
from .models import MODELS, build_model

__all__ = ["DATASETS", "Dataset", "load_dataset", "MODELS", "build_model"]
