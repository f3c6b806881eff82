"""Loaders for the offline data sets and models listed in DESIGN.md (nothing downloads at run time)."""

from .datasets import DATASETS, Dataset, load_dataset
from .models import MODELS, build_model

__all__ = ["DATASETS", "Dataset", "load_dataset", "MODELS", "build_model"]
