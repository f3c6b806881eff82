"""Runs the method × backend matrix: quality and sparsity on the main job's workload, and inference
speed of the exported model against the dense model on a larger MLP, per backend."""

from __future__ import annotations

import copy
import dataclasses
import statistics
import time

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..api import method_of, sparsify
from ..backends import for_inference, get_backend
from ..jobs import JobSpec, run_job, train_dense
from ..registry import PluginLoadError, get_method, method_names


@dataclasses.dataclass
class BenchConfig:
    methods: list[str] | None = None   # None: every registered method
    backends: tuple = ("cpu", "reference")
    quick: bool = False
    speed_width: int = 2048            # hidden width of the speed workload (Linear width x width)
    batches: tuple = (1, 16)
    repeats: int = 15
    progress: bool = True


def speed_model(width: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 16))


def _apply_for_speed(name: str, model: nn.Module) -> nn.Module:
    """The method's pattern on an untrained model: one-shot methods apply, lifecycle methods apply,
    prepare and finalize with no steps in between, so the exported structure is the final one."""
    cls = get_method(name)
    if not cls.needs_targets:
        raise NotImplementedError(f"{name} acts on whole models, not on Linear weights")
    model = sparsify(model, name, exclude=[":last"])
    if cls.is_training_method():
        m = method_of(model)
        m.prepare(model, torch.optim.SGD(model.parameters(), lr=0.0), total_steps=1)
        model = m.finalize()
    return model


def _time(model: nn.Module, x: torch.Tensor) -> float:
    with torch.inference_mode():
        t0 = time.perf_counter()
        model(x)
        return time.perf_counter() - t0


def measure_speed(dense: nn.Module, sparse: nn.Module, batch: int, width: int, repeats: int) -> dict:
    """Median speedup of ``sparse`` over ``dense``, timed interleaved in one run."""
    x = torch.randn(batch, width)
    for _ in range(3):
        _time(dense, x), _time(sparse, x)
    d, s = [], []
    for _ in range(repeats):
        d.append(_time(dense, x))
        s.append(_time(sparse, x))
    ratios = sorted(a / b for a, b in zip(d, s))
    return {"dense_ms": statistics.median(d) * 1e3, "sparse_ms": statistics.median(s) * 1e3,
            "speedup": statistics.median(d) / statistics.median(s),
            "speedup_p25": ratios[len(ratios) // 4], "speedup_p75": ratios[(3 * len(ratios)) // 4]}


def run_bench(cfg: BenchConfig) -> dict:
    """Returns ``{"rows": [...], "backends": {...}, "errors": {...}}``; one row per method."""
    for b in cfg.backends:
        get_backend(b)
    names = cfg.methods or method_names()
    epochs = 4 if cfg.quick else 15
    width = min(cfg.speed_width, 1024) if cfg.quick else cfg.speed_width
    repeats = 5 if cfg.quick else cfg.repeats
    base_spec = JobSpec("", epochs=epochs, progress=False)
    baseline = train_dense(base_spec)
    rows, errors = [], {}
    for name in tqdm(names, desc="bench", disable=not cfg.progress, unit="method"):
        try:
            cls = get_method(name)
        except PluginLoadError as exc:
            errors[name] = str(exc)
            continue
        row = {"method": name, "kind": cls.kind, "kernel": cls.kernel, "speed": {}}
        try:
            _, result = run_job(dataclasses.replace(base_spec, method=name), baseline)
            row.update(quality=result)
        except NotImplementedError as exc:
            errors[name] = str(exc)
            continue
        except Exception as exc:  # one method failing must not hide the others' numbers
            errors[name] = f"quality: {type(exc).__name__}: {exc}"
            continue
        try:
            dense = speed_model(width).eval()
            sparse = _apply_for_speed(name, copy.deepcopy(dense))
            for backend in cfg.backends:
                try:
                    runnable = for_inference(sparse, backend)
                except NotImplementedError as exc:  # e.g. wasm: this method exports no kernel-backed layer
                    row.setdefault("speed_skipped_backends", {})[backend] = str(exc)
                    continue
                row["speed"][backend] = {str(b): measure_speed(dense, runnable, b, width, repeats) for b in cfg.batches}
        except NotImplementedError as exc:
            row["speed_skipped"] = str(exc)
        rows.append(row)
    return {"rows": rows, "errors": errors, "backends": list(cfg.backends), "batches": list(cfg.batches),
            "speed_workload": f"MLP {width}-{width}-{width}-16, fp32", "quality_workload": "MLP on digits",
            "threads": torch.get_num_threads()}
