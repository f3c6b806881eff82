"""The sparseforge command: tables, the main job, and exit status 2 for user mistakes."""

import json

import pytest


def test_list_shows_methods_with_papers(cli):
    out = cli("list", check=True)
    assert "magnitude" in out.stdout and "Essential Sparsity" in out.stdout
    assert "random_erk" in out.stdout and "2022" in out.stdout
    data = json.loads(cli("list", "--json", check=True).stdout)
    names = {m["name"]: m for m in data["methods"]}
    assert names["random_erk"]["arxiv"] == "2202.02643"


def test_info_method_and_build(cli):
    out = cli("info", "magnitude", check=True).stdout
    assert "sparsity" in out and "pattern" in out and "'layer' | 'global'" in out
    facts = json.loads(cli("info", "--json", check=True).stdout)
    assert facts["isa"] in facts["supported_isas"] and "group_nnz" in facts["kernels"]


def test_run_main_job(cli):
    out = cli("run", "magnitude", "--sparsity", "0.8", "--epochs", "8", "--finetune-epochs", "3", "--exclude", "none",
              "--no-progress",
              "--json", check=True)
    res = json.loads(out.stdout)
    assert res["sparse"]["sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert res["dense"]["accuracy"] > 0.9 and res["sparse"]["accuracy"] > 0.85
    assert res["sparse"]["weight_bytes"] < 0.5 * res["dense"]["weight_bytes"]
    table = cli("run", "random_erk", "--epochs", "3", "--no-progress", "--layers", check=True).stdout
    assert "test accuracy" in table and "weight sparsity" in table and "N:M" in table


@pytest.mark.parametrize("args,needle", [
    (["run", "magnitud"], "did you mean magnitude"),
    (["info", "nope"], "unknown method 'nope'"),
    (["run", "magnitude", "--sparsity", "1.5"], "'sparsity' = 1.5 is invalid; allowed: [0.0, 1.0)"),
    (["run", "magnitude", "--sparsity", "lots"], "'sparsity' = 'lots' is invalid"),
    (["run", "magnitude", "--scope", "all"], "'layer' | 'global'"),
    (["run", "magnitude", "--bogus", "1"], "no config field 'bogus'"),
    (["run", "magnitude", "--target", "nothing.*"], "matched no module"),
    (["run", "magnitude", "--pattern", "2:4", "--model", "cnn", "--no-progress", "--epochs", "1"], "multiple of 4"),
    (["list", "--kind", "weird"], "--kind must be one of"),
    (["run", "static_decoding", "--no-progress"], "acts on whole models"),
])
def test_user_mistakes_exit_2_without_traceback(cli, args, needle):
    out = cli(*args)
    assert out.returncode == 2, out
    assert needle in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("name,extra", [("srste", []), ("pgf", ["--mode", "sdgf_stepwise"]), ("bdwp", ["--n", "2", "--m", "4"]),
                                        ("cast", [])])
def test_run_training_methods(cli, name, extra):
    """Each stage runs through the CLI: from scratch (srste, pgf, bdwp) and from the dense model (cast)."""
    res = json.loads(cli("run", name, *extra, "--epochs", "3", "--no-progress", "--json", check=True).stdout)
    cfg = res["config"]
    n, m = cfg["n"], cfg["m"]
    assert res["sparse"]["sparsity"] > 0.3
    assert res["sparse"]["accuracy"] > 0.6, res
    assert cfg["method"] == name and n < m
