"""The compiled core: ISA detection and forcing, and group_nnz against its scalar reference."""

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from _isa import kernel_isa
from sparseforge import _C

ISAS = _C.supported_isas()


def reference_group_nnz(w: np.ndarray, m: int) -> np.ndarray:
    return (w.astype(np.float64).reshape(w.shape[0], w.shape[1] // m, m) != 0).sum(-1).astype(np.int32)


def test_isa_reporting():
    assert "scalar" in _C.compiled_isas()
    assert _C.isa() in _C.supported_isas()
    assert set(_C.supported_isas()) <= set(_C.compiled_isas())
    assert _C.kernel_for("group_nnz") == f"group_nnz_f32__{kernel_isa('group_nnz', _C.isa())}"
    assert "group_nnz" in _C.ops()


def test_avx512_level_needs_f_bw_vl_dq():
    f = _C.cpu_features()
    needed = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq")
    assert ("avx512" in _C.supported_isas()) == ("avx512" in _C.compiled_isas() and all(f[k] for k in needed))


@pytest.mark.parametrize("isa", ISAS)
def test_forcing_isa_changes_the_kernel(monkeypatch, isa):
    monkeypatch.setenv("SPARSEFORGE_ISA", isa)
    assert _C.isa() == isa
    assert _C.kernel_for("group_nnz").endswith("__" + kernel_isa("group_nnz", isa))


def test_bad_forced_isa_raises(monkeypatch):
    monkeypatch.setenv("SPARSEFORGE_ISA", "sse9")
    with pytest.raises(ValueError, match="SPARSEFORGE_ISA"):
        _C.isa()
    with pytest.raises(ValueError, match="SPARSEFORGE_ISA"):
        _C.group_nnz(np.ones((2, 4), np.float32), 2)
    if "neon" not in _C.supported_isas():
        monkeypatch.setenv("SPARSEFORGE_ISA", "neon")
        with pytest.raises(RuntimeError, match="cannot run here"):
            _C.isa()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("rows,cols,m", [(1, 4, 4), (7, 12, 4), (3, 200, 8), (33, 130, 2), (5, 96, 3),
                                         (2, 64, 64), (4, 72, 1), (0, 8, 4), (300, 1024, 4)])
@pytest.mark.parametrize("density", [0.0, 0.3, 1.0])
def test_group_nnz_matches_reference(monkeypatch, isa, rows, cols, m, density):
    monkeypatch.setenv("SPARSEFORGE_ISA", isa)
    rng = np.random.default_rng(rows * 1000 + cols + m)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    w[rng.random((rows, cols)) >= density] = 0.0
    got = _C.group_nnz(w, m)
    assert got.dtype == np.int32 and got.shape == (rows, cols // m)
    np.testing.assert_array_equal(got, reference_group_nnz(w, m))


@pytest.mark.parametrize("isa", ISAS)
def test_group_nnz_special_values(monkeypatch, isa):
    monkeypatch.setenv("SPARSEFORGE_ISA", isa)
    w = np.array([[np.nan, -0.0, 0.0, np.inf, 1e-45, -1.0, 0.0, 0.0] * 3], dtype=np.float32)
    # NaN, inf and denormals are nonzero; -0.0 is zero (the rule x != 0).
    np.testing.assert_array_equal(_C.group_nnz(w, 4), [[2, 2] * 3])


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_group_nnz_threads_agree(threads):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((517, 256)).astype(np.float32)
    w[rng.random(w.shape) < 0.5] = 0
    try:
        _C.set_num_threads(threads)
        assert _C.num_threads() == threads
        np.testing.assert_array_equal(_C.group_nnz(w, 4), reference_group_nnz(w, 4))
    finally:
        _C.set_num_threads(0)


def test_never_copies_or_casts_silently():
    w = np.ones((8, 16), np.float32)
    with pytest.raises(ValueError, match="argument 'w' must be C-contiguous"):
        _C.group_nnz(w.T, 4)
    with pytest.raises(ValueError, match="C-contiguous"):
        _C.group_nnz(w[:, ::2], 4)
    with pytest.raises(TypeError, match="argument 'w' must have dtype float32, got float64"):
        _C.group_nnz(w.astype(np.float64), 4)
    with pytest.raises(TypeError, match="argument 'w' must be a numpy.ndarray"):
        _C.group_nnz(w.tolist(), 4)
    import torch

    with pytest.raises(TypeError, match=r"tensor.numpy\(\)"):
        _C.group_nnz(torch.ones(8, 16), 4)
    with pytest.raises(ValueError, match="must be 2-D"):
        _C.group_nnz(np.ones(16, np.float32), 4)
    with pytest.raises(ValueError, match="not a multiple of m=3"):
        _C.group_nnz(w, 3)
    with pytest.raises(ValueError, match="argument 'm'"):
        _C.group_nnz(w, 0)


def test_kernel_for_unknown_op():
    with pytest.raises(ValueError, match="argument 'op'"):
        _C.kernel_for("no_such_op")


def test_set_num_threads_rejects_negative():
    with pytest.raises(ValueError, match="argument 'n'"):
        _C.set_num_threads(-1)


@pytest.mark.parametrize("backend", ["pool", "openmp"])
@pytest.mark.parametrize("threads", [2, 3])
def test_threading_backends_agree(monkeypatch, backend, threads):
    # torch is imported by the suite, so its libgomp is loaded and "openmp" has a team to run on.
    monkeypatch.setenv("SPARSEFORGE_THREADING", backend)
    assert _C.threading_backend() == backend
    rng = np.random.default_rng(threads)
    w = rng.standard_normal((4099, 64)).astype(np.float32)
    w[rng.random(w.shape) < 0.6] = 0
    try:
        _C.set_num_threads(threads)
        np.testing.assert_array_equal(_C.group_nnz(w, 4), reference_group_nnz(w, 4))
    finally:
        _C.set_num_threads(0)


def test_threading_backend_rejects_unknown(monkeypatch):
    monkeypatch.setenv("SPARSEFORGE_THREADING", "tbb")
    with pytest.raises(ValueError, match="SPARSEFORGE_THREADING must be auto, pool or openmp, got 'tbb'"):
        _C.threading_backend()


def test_threading_finds_torch_openmp_only_once_loaded():
    # _C alone (no torch) has no OpenMP runtime to share and uses its pool; after `import torch` the
    # same process switches to torch's team. Loaded straight from its file so that sparseforge's
    # __init__ (which imports torch) does not run first.
    code = textwrap.dedent(f"""
        import importlib.machinery, importlib.util, sys
        spec = importlib.util.spec_from_file_location("sparseforge._C", {_C.__file__!r})
        C = importlib.util.module_from_spec(spec); spec.loader.exec_module(C)
        print(C.threading_backend(), C.openmp_runtime() == "")
        import torch
        print(C.threading_backend(), "omp" in C.openmp_runtime())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["pool", "True", "openmp", "True"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_forked_child_runs_threaded_kernels(monkeypatch):
    # libgomp keeps its team across fork() without the threads; the child must use the pool (no hang).
    monkeypatch.delenv("SPARSEFORGE_THREADING", raising=False)
    w = np.random.default_rng(1).standard_normal((4096, 64)).astype(np.float32)
    _C.set_num_threads(2)
    try:
        _C.group_nnz(w, 4)  # the parent's team exists now
        pid = os.fork()
        if pid == 0:  # child: exit code says whether the result was right
            ok = np.array_equal(_C.group_nnz(w, 4), reference_group_nnz(w, 4))
            os._exit(0 if ok else 1)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                assert os.waitstatus_to_exitcode(status) == 0
                return
            time.sleep(0.05)
        os.kill(pid, 9)
        pytest.fail("a forked child hung in a threaded kernel")
    finally:
        _C.set_num_threads(0)
