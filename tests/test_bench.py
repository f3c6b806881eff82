"""sparseforge bench and the backends interface."""

import json

import pytest
import torch
import torch.nn as nn

import sparseforge as sf
from sparseforge.backends import for_inference, get_backend, list_backends


def test_backends_listing():
    b = list_backends()
    assert b["reference"].available and b["cpu"].available
    assert "group_nnz" in b["cpu"].ops
    assert b["wasm"].reason  # available or not, it says why (tests/test_wasm_backend.py runs it)
    missing = [name for name, info in b.items() if not info.available]
    if missing:
        with pytest.raises(ValueError, match="not available here"):
            get_backend(missing[0])
    with pytest.raises(ValueError, match="unknown backend"):
        get_backend("tpu")


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_for_inference_matches_the_masked_model(backend):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    sf.sparsify(model, "magnitude", pattern="2:4", exclude=":last")
    x = torch.randn(5, 64)
    runnable = for_inference(model, backend)
    torch.testing.assert_close(runnable(x), model(x), rtol=1e-5, atol=1e-5)
    assert sf.sparsity_report(model)["0"].nm_valid(2, 4)  # the original keeps its masks


def test_bench_quick(cli, tmp_path):
    out = cli("bench", "--quick", "--methods", "magnitude,srste", "--no-progress",
              "--json", str(tmp_path / "b.json"), "--html", str(tmp_path / "b.html"), check=True)
    assert "magnitude" in out.stdout and "srste" in out.stdout and "cpu x b=1" in out.stdout
    res = json.loads((tmp_path / "b.json").read_text())
    assert [r["method"] for r in res["rows"]] == ["magnitude", "srste"]
    for r in res["rows"]:
        assert 0.4 < r["quality"]["sparse"]["sparsity"] < 0.6
        for backend in ("cpu", "reference"):
            for batch in ("1", "16"):
                s = r["speed"][backend][batch]
                assert s["speedup"] > 0 and s["dense_ms"] > 0 and s["speedup_p25"] <= s["speedup_p75"]
    page = (tmp_path / "b.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "<pre>" in page


def test_bench_errors(cli):
    missing = [name for name, info in list_backends().items() if not info.available]
    if missing:
        out = cli("bench", "--backends", missing[0])
        assert out.returncode == 2 and "not available here" in out.stderr
    out = cli("bench", "--methods", "magnitud")
    assert out.returncode == 2 and "did you mean magnitude" in out.stderr


def test_table_puts_wasm_beside_cpu():
    from sparseforge.bench.report import table

    speed = lambda ms: {"1": {"speedup": 1.0, "sparse_ms": ms, "dense_ms": 1.0}}  # noqa: E731
    q = {"sparse": {"sparsity": 0.5, "accuracy": 0.9}, "dense": {"accuracy": 0.9}}
    rows = [{"method": "a", "kind": "N:M", "quality": q, "speed": {"cpu": speed(2.0), "wasm": speed(5.0)}},
            {"method": "b", "kind": "pruning", "quality": q, "speed": {"cpu": speed(2.0)},
             "speed_skipped_backends": {"wasm": "nothing would run in wasm"}}]
    out = table({"rows": rows, "errors": {}, "backends": ["cpu", "wasm"], "batches": [1], "threads": 2,
                 "quality_workload": "q", "speed_workload": "s"})
    assert "wasm/cpu time b=1" in out and "2.50" in out
    assert "not measured on wasm: b: nothing would run in wasm" in out
