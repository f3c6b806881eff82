"""The asv suites stay runnable: every class imports, sets up and runs on the cpu backend (one call each),
and the method suite lists every registered method, so `asv run` never meets a suite that rotted."""

import importlib.util
import itertools
from pathlib import Path

import pytest

from sparseforge.registry import method_names

SUITES = Path(__file__).resolve().parents[1] / "asv_bench" / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"asv_suite_{name}", SUITES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_method_suite_lists_every_registered_method():
    mod = _load("bench_methods")
    assert mod.MethodInference.params[0] == method_names()
    assert mod.MethodQuality.params[0] == method_names()


@pytest.mark.parametrize("cls_name", ["NmGemm", "SpmmConv", "SpGEMM", "BlockAttention"])
def test_kernel_suite_runs_on_cpu(cls_name):
    cls = getattr(_load("bench_kernels"), cls_name)
    tracks = [m for m in dir(cls) if m.startswith("track_")]
    assert tracks, f"{cls_name} has no track_ benchmark"
    cpu = [p for p in itertools.product(*cls.params) if p[0] == "cpu"]
    for params in (cpu[0], cpu[-1]):  # the first and last shapes, modes and sparsities
        bench = cls()
        bench.setup(*params)
        try:
            bench.time_sparse(*params)
            r = getattr(bench, tracks[0])(*params)
            assert 0 < r < 1e4  # a ratio: positive and finite
        finally:
            bench.teardown(*params)


def test_unavailable_backend_is_skipped_not_failed(monkeypatch):
    mod = _load("bench_kernels")
    from sparseforge import backends

    real = backends.list_backends()
    fake = dict(real, wasm=backends.BackendInfo("wasm", False, "not built here"))
    monkeypatch.setattr(mod, "list_backends", lambda: fake)
    with pytest.raises(NotImplementedError, match="not built here"):
        mod.NmGemm().setup("wasm", (4096, 4096), 1)


def test_method_quality_reads_the_shared_cache():
    cls = _load("bench_methods").MethodQuality
    result = {"dense": {"accuracy": 0.9}, "sparse": {"accuracy": 0.85, "sparsity": 0.5}}
    bench = cls()
    bench.setup({"m": result}, "m")
    assert bench.track_accuracy_drop(None, "m") == pytest.approx(0.05)
    assert bench.track_sparsity(None, "m") == 0.5
    with pytest.raises(NotImplementedError, match="nothing to act on"):
        cls().setup({"m": "nothing to act on"}, "m")
    with pytest.raises(NotImplementedError, match="registered after"):
        cls().setup({}, "m")
