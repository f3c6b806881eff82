"""A small, deterministic training loop for the CLI's main job and the method tests.

It drives a method's lifecycle (``prepare -> step -> finalize``) when the method has one, so the
same loop trains dense models, static-mask models and training-time sparsity methods.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .registry import Method

__all__ = ["TrainConfig", "train", "evaluate"]


@dataclasses.dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"  # "adam" | "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"optimizer must be 'adam' or 'sgd', got {cfg.optimizer!r}")


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig | None = None,
          method: Method | None = None, desc: str = "train", progress: bool = True,
          loss_fn=None) -> nn.Module:
    """Trains ``model`` on ``(x, y)``; calls ``method.prepare/step/finalize`` when given.

    x: float32 ``[N, ...]``; y: int64 ``[N]``. Returns the (finalized) model.
    """
    cfg = cfg or TrainConfig()
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = make_optimizer(model, cfg)
    n = len(x)
    steps_per_epoch = (n + cfg.batch_size - 1) // cfg.batch_size
    if method is not None:
        method.prepare(model, opt, total_steps=cfg.epochs * steps_per_epoch)
    loss_fn = loss_fn or (lambda m, xb, yb: F.cross_entropy(m(xb), yb))
    step = 0
    model.train()
    bar = tqdm(total=cfg.epochs * steps_per_epoch, desc=desc, disable=not progress, leave=False, unit="step")
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=gen)
        for b in range(steps_per_epoch):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            loss = loss_fn(model, x[idx], y[idx])
            if method is not None:
                loss = method.training_loss(model, x[idx], y[idx], loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if method is not None:
                method.step(step)
            step += 1
            bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    if method is not None:
        model = method.finalize()
    return model


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``."""
    was_training = model.training
    model.eval()
    correct = 0
    for b in range(0, len(x), batch_size):
        correct += (model(x[b:b + batch_size]).argmax(1) == y[b:b + batch_size]).sum().item()
    model.train(was_training)
    return correct / max(1, len(x))
