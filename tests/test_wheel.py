"""The shipped artifact: scripts/build_wheel.sh makes a manylinux wheel that installs and runs in a fresh
venv with no compiler anywhere on PATH.

The default test (about 40 s on 2 cores, mostly the from-scratch build) checks the torch-free core: it loads
sparseforge._C straight from the installed file (``import sparseforge`` itself needs torch) next to numpy
only, so a dependency on torch's libraries would fail here. The ``slow`` test installs the wheel with its
dependencies (torch from the machine's local wheel) and runs the public API and the CLI.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPILERS = ("gcc", "cc", "c++", "g++", "clang", "clang++", "cl")


def _run(cmd, **kw):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kw)
    assert proc.returncode == 0, f"{cmd} exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed: the wheel cannot be built here")
    out = tmp_path_factory.mktemp("wheelhouse")
    _run(["bash", ROOT / "scripts" / "build_wheel.sh", out], cwd=ROOT, env={**os.environ, "PYTHON": sys.executable})
    (whl,) = out.glob("sparseforge-*.whl")
    return whl


def _bare_env(tmp_path: Path, deps: bool, wheel: Path) -> tuple[Path, dict]:
    """A fresh venv (no system site-packages) and an environment whose PATH holds only its python."""
    env_dir = tmp_path / "env"
    _run([sys.executable, "-m", "venv", env_dir])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(env_dir / "bin" / "python")
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "CC": "/nonexistent", "CXX": "/nonexistent",
           "OMP_NUM_THREADS": "2", **{k: v for k, v in os.environ.items() if k.startswith("PIP_")}}  # the index
    for c in COMPILERS:
        assert shutil.which(c, path=env["PATH"]) is None, f"{c} is reachable on the scrubbed PATH"
    # --only-binary: pip may not fall back to building anything from source.
    pip = [bin_dir / "python", "-m", "pip", "install", "-q", "--only-binary=:all:"]
    _run(pip + ([wheel] if deps else ["--no-deps", wheel, "numpy"]), env=env, cwd=tmp_path)
    return bin_dir / "python", env


def test_wheel_is_manylinux_and_grafts_nothing(wheel):
    assert re.search(r"-manylinux_\d+_\d+_\w+\.whl$", wheel.name), wheel.name
    names = zipfile.ZipFile(wheel).namelist()
    # auditwheel copies in (grafts) any non-system library the extension needs; torch-free means none.
    assert not [n for n in names if ".libs/" in n], names
    assert any(re.match(r"sparseforge/_C\..*\.so$", n) for n in names)
    assert any(n.startswith("sparseforge_methods/") for n in names)


CORE_CHECK = r"""
import importlib.util, os, pathlib, sys, sysconfig
import numpy as np
so = next((pathlib.Path(sysconfig.get_paths()["platlib"]) / "sparseforge").glob("_C*.so"))
spec = importlib.util.spec_from_file_location("sparseforge._C", so)
C = importlib.util.module_from_spec(spec)
spec.loader.exec_module(C)
rng = np.random.default_rng(0)
w = rng.standard_normal((37, 64)).astype(np.float32)
w[rng.random(w.shape) < 0.5] = 0
a = np.where(rng.random((50, 40)) < 0.1, rng.standard_normal((50, 40)), 0.0)
b = np.where(rng.random((40, 30)) < 0.1, rng.standard_normal((40, 30)), 0.0)
def csr(d):
    r, c = np.nonzero(d)
    return np.r_[0, np.cumsum(np.bincount(r, minlength=d.shape[0]))].astype(np.int64), c.astype(np.int64), d[r, c]
for isa in C.supported_isas():
    os.environ["SPARSEFORGE_ISA"] = isa
    got = C.group_nnz(w, 4)
    assert (got == (w.reshape(37, 16, 4) != 0).sum(-1)).all(), isa
    p, j, x = C.spgemm(*csr(a), a.shape, *csr(b), b.shape)
    dense = np.zeros((50, 30))
    for i in range(50):
        dense[i, j[p[i]:p[i + 1]]] = x[p[i]:p[i + 1]]
    np.testing.assert_allclose(dense, a @ b, rtol=1e-12, atol=1e-12)
    print(isa, C.kernel_for("spgemm"))
assert not [m for m in sys.modules if m.split(".")[0] == "torch"]
"""


def test_wheel_core_runs_without_compiler_or_torch(wheel, tmp_path):
    py, env = _bare_env(tmp_path, deps=False, wheel=wheel)
    out = _run([py, "-c", CORE_CHECK], env=env, cwd=tmp_path).stdout
    assert "scalar spgemm_" in out


@pytest.mark.slow
def test_wheel_full_install_runs_the_api(wheel, tmp_path):
    py, env = _bare_env(tmp_path, deps=True, wheel=wheel)
    check = ("import torch, torch.nn.functional as F, sparseforge as sf\n"
             "torch.manual_seed(0)\n"
             "s = sf.formats.NMSparse.from_dense(torch.randn(64, 96), 2, 4, prune=True)\n"
             "x = torch.randn(5, 96)\n"
             "torch.testing.assert_close(sf.ops.nm_linear(x, s), F.linear(x, s.to_dense()), rtol=1e-4, atol=1e-4)\n"
             "print(sorted(sf.list_methods()))\n")
    out = _run([py, "-c", check], env=env, cwd=tmp_path).stdout
    assert "magnitude" in out
    cli = _run([py, "-m", "sparseforge.cli", "list"], env=env, cwd=tmp_path).stdout
    assert "srste" in cli
