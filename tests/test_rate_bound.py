"""benchmarks/rate_bound.py measures what it says: its workloads compute correct results, bad specs are
refused by name, and one round of the three phases (alone, pair, two) runs across its two worker processes."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def rate_bound():
    # An importable module, not a file loaded under a made-up name: the spawned workers import it by name.
    sys.path.insert(0, str(BENCH))
    try:
        import rate_bound

        yield rate_bound
    finally:
        sys.path.remove(str(BENCH))


def test_conv_workload_matches_float64(rate_bound):
    call, desc, err = rate_bound.build("conv:40x24x49:0.8", quick=True)
    assert err < 1e-5 and "40x24x49" in desc
    call(1)
    call(2)


def test_spgemm_workload_matches_scipy(rate_bound):
    call, desc, err = rate_bound.build("spgemm:poisson2d", quick=True)
    assert err < 1e-12 and "Poisson" in desc
    assert call(1).nnz == call(2).nnz


@pytest.mark.parametrize("spec, words", [
    ("conv:40x24:0.8", "conv:<C_in>x<C_out>x<HW>"),
    ("spgemm:nope", "unknown spgemm case 'nope'"),
    ("dense:1", "expected spgemm:<case> or conv:"),
])
def test_bad_specs_are_named(rate_bound, spec, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        rate_bound.build(spec, quick=True)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="the pair phase needs 2 CPUs")
def test_one_round_of_three_phases(rate_bound):
    row = rate_bound.measure("conv:64x64x196:0.9", quick=True, rounds=1, seconds=0.02, settle=0.0)
    assert row["rel_err"] < 1e-5
    assert set(row["times_s"]) == {"alone", "pair", "two"}
    assert all(len(v) == 1 and v[0] > 0 for v in row["times_s"].values())
    t = {k: v[0] for k, v in row["times_s"].items()}
    r = row["ratios"]
    assert np.isclose(r["speedup"]["median"], t["alone"] / t["two"])
    assert np.isclose(r["bound"]["median"], 2 * t["alone"] / t["pair"])
    assert np.isclose(r["efficiency"]["median"], r["speedup"]["median"] / r["bound"]["median"])


def test_worker_failure_names_the_spec(rate_bound):
    with pytest.raises(RuntimeError, match="spgemm:nope"):
        rate_bound.measure("spgemm:nope", quick=True, rounds=1, seconds=0.01, settle=0.0)



def test_worker_reports_a_missing_package_apart_from_errors(rate_bound, monkeypatch):
    # In-process (the spawned workers do not see monkeypatch): an ImportError is "missing", which the parent
    # turns into Unavailable (the table says "skipped"); anything else stays an error.
    import multiprocessing as mp

    for exc, status in ((ImportError("No module named 'pyamg'"), "missing"), (KeyError("x"), "error")):
        def boom(spec, quick, exc=exc):
            raise exc

        monkeypatch.setattr(rate_bound, "build", boom)
        parent, child = mp.Pipe()
        rate_bound.worker("spgemm:fem_elasticity", True, child, None)
        got = parent.recv()
        assert got[0] == status and type(exc).__name__ in got[1]
