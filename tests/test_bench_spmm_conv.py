"""The spmm_conv benchmark harness computes what it claims: sparseforge and XNNPACK's sparse path (when
Debian's libxnnpack-dev + libpthreadpool-dev are installed) both match a float64 dense conv."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_spmm_conv.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_spmm_conv", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_case_is_correct_and_compares_with_xnnpack():
    bench = load_bench()
    xnn = bench.Xnnpack()
    row = bench.bench_case(64, 48, 49, 0.8, 1, 1, 2, xnn, np.random.default_rng(0))
    assert row["rel_err"] < 1e-5 and row["sparse_us"] > 0 and row["dense_us"] > 0
    if xnn.lib is None:
        pytest.skip(f"XNNPACK comparison not exercised: {xnn.error}")
    assert row["xnnpack_rel_err"] < 1e-5 and row["xnnpack_us"] > 0


def test_summary_ignores_stalled_dense_rows():
    bench = load_bench()
    base = {"c_in": 1, "c_out": 1, "hw": 1, "block": 1}
    rows = []
    for sp in bench.SPARSITIES:
        rows.append({**base, "sparsity": sp, "threads": 1, "dense_us": 100.0, "vs_dense": 9.0})
        rows.append({**base, "sparsity": sp, "threads": 2, "dense_us": 30000.0, "vs_dense": 300.0})
    s = bench.summarize(rows)
    assert s["vs_dense_t1_0.9"]["met"] and s["vs_dense_t2_0.9"]["worst"] is None and not s["vs_dense_t2_0.9"]["met"]
