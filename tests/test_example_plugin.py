"""A third-party package adds a method through the entry point, with no change to sparseforge."""

import os
import subprocess
import sys

import pytest

PLUGIN = os.path.join(os.path.dirname(__file__), "..", "plugins", "example-plugin")


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    import shutil

    # Build from a copy: setuptools leaves build/ and *.egg-info next to the sources it builds.
    src = tmp_path_factory.mktemp("plugin") / "example-plugin"
    shutil.copytree(PLUGIN, src, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    pip = [sys.executable, "-m", "pip"]
    proc = subprocess.run(pip + ["install", "-q", "--no-build-isolation", "--no-deps", str(src)],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"pip install of the example plugin failed:\n{proc.stderr}")
    yield
    subprocess.run(pip + ["uninstall", "-y", "-q", "sparseforge-example-plugin"], capture_output=True, timeout=300)


def test_plugin_appears_and_runs(installed_plugin, cli):
    out = cli("list", check=True)
    assert "row_norm" in out.stdout and "Pruning Filters" in out.stdout
    code = """
import torch, torch.nn as nn, sparseforge as sf
assert "row_norm" in sf.list_methods()
m = sf.sparsify(nn.Sequential(nn.Linear(8, 10), nn.Linear(10, 4)), "row_norm", sparsity=0.5)
rows = (m[0].weight != 0).any(1)
assert rows.sum().item() == 5, rows
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr
    run = cli("run", "row_norm", "--epochs", "2", "--no-progress", check=True)
    assert "test accuracy" in run.stdout
