"""The main job shared by ``sparseforge run`` and ``sparseforge bench``: train a small dense model on
bundled data, apply a method at the stage it is meant for, and compare quality, sparsity and size."""

from __future__ import annotations

import copy
import dataclasses
import time

import torch.nn as nn

from .api import method_of, sparsify
from .data import Dataset, build_model, load_dataset
from .registry import get_method
from .report import sparsity_report
from .training import TrainConfig, evaluate, train

__all__ = ["JobSpec", "DenseBaseline", "train_dense", "run_job"]


@dataclasses.dataclass
class JobSpec:
    method: str
    config: dict = dataclasses.field(default_factory=dict)
    model: str = "mlp"
    data: str = "digits"
    epochs: int = 15
    finetune_epochs: int = 0
    lr: float = 1e-3
    seed: int = 0
    targets: list | None = None
    exclude: list | None = dataclasses.field(default_factory=lambda: [":last"])  # the classifier stays dense
    progress: bool = True


@dataclasses.dataclass
class DenseBaseline:
    data: Dataset
    model: nn.Module
    init_state: dict
    accuracy: float


def train_dense(spec: JobSpec) -> DenseBaseline:
    """Trains the dense reference of ``spec`` (shared by every method run on the same workload)."""
    data = load_dataset(spec.data)
    model = build_model(spec.model, data.image_shape, data.num_classes, seed=spec.seed)
    init_state = copy.deepcopy(model.state_dict())
    tcfg = TrainConfig(epochs=spec.epochs, seed=spec.seed, lr=spec.lr)
    model = train(model, data.x_train, data.y_train, tcfg, desc="dense", progress=spec.progress)
    return DenseBaseline(data, model, init_state, evaluate(model, data.x_test, data.y_test))


def run_job(spec: JobSpec, baseline: DenseBaseline | None = None) -> tuple[nn.Module, dict]:
    """Applies ``spec.method`` as its stage prescribes; returns the sparse model and a result dict with
    dense/sparse accuracy, sparsity and weight bytes."""
    cls = get_method(spec.method)
    if not cls.needs_targets:
        raise NotImplementedError(f"{spec.method} acts on whole models of its own kind ({cls.kind}); it has no "
                                  "image-classification job (see `sparseforge info " + spec.method + "`)")
    t0 = time.perf_counter()
    baseline = baseline or train_dense(spec)
    data, dense = baseline.data, baseline.model
    tcfg = TrainConfig(epochs=spec.epochs, seed=spec.seed, lr=spec.lr)
    kwargs = {"targets": spec.targets, "exclude": spec.exclude or None}
    if cls.stage == "fine_tuning":
        model = sparsify(copy.deepcopy(dense), spec.method, **kwargs, **spec.config)
        ft = dataclasses.replace(tcfg, epochs=spec.finetune_epochs or max(1, spec.epochs // 2), lr=spec.lr / 3)
        model = train(model, data.x_train, data.y_train, ft, method=method_of(model), desc=spec.method,
                      progress=spec.progress)
    elif cls.stage == "post_training":
        model = sparsify(copy.deepcopy(dense), spec.method, **kwargs, **spec.config)
        if spec.finetune_epochs:
            ft = dataclasses.replace(tcfg, epochs=spec.finetune_epochs, lr=spec.lr / 10)
            model = train(model, data.x_train, data.y_train, ft, desc="fine-tune", progress=spec.progress)
    else:
        model = build_model(spec.model, data.image_shape, data.num_classes, seed=spec.seed)
        model.load_state_dict(baseline.init_state)
        model = sparsify(model, spec.method, **kwargs, **spec.config)
        bound = method_of(model) if cls.stage == "during_training" else None
        model = train(model, data.x_train, data.y_train, tcfg, method=bound, desc=spec.method,
                      progress=spec.progress)
    sparse_acc = evaluate(model, data.x_test, data.y_test)
    rd, rs = sparsity_report(dense), sparsity_report(model)
    result = {
        "method": spec.method, "stage": cls.stage, "model": spec.model, "data": spec.data,
        "config": method_of(model).config.to_dict(),
        "dense": {"accuracy": baseline.accuracy, "sparsity": rd.sparsity, "weight_bytes": rd.dense_bytes()},
        "sparse": {"accuracy": sparse_acc, "sparsity": rs.sparsity, "weight_bytes": rs.sparse_bytes()},
        "seconds": time.perf_counter() - t0,
    }
    return model, result
