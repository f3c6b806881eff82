"""_C.nm_gemm: every ISA variant against the scalar reference and a float64 torch reference."""

import numpy as np
import pytest
import torch

from _isa import kernel_isa
from sparseforge import _C
from sparseforge.formats import NMSparse

ISAS = _C.supported_isas()
PATTERNS = [(2, 4), (1, 2), (4, 8), (2, 8), (1, 4), (3, 6)]
# K tails (not a multiple of 16 inputs), 1 row, rows not a multiple of 8 or 4, batch tails around the 8/64 tiles.
SHAPES = [(1, 16, 1), (1, 8, 3), (7, 24, 1), (9, 40, 2), (33, 72, 9), (64, 256, 16), (13, 1032, 65), (100, 48, 64)]


def make(rows, k, n, m, batch, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, k, generator=g)
    s = NMSparse.from_dense(w, n, m, prune=True)
    x = torch.randn(batch, k, generator=g)
    bias = torch.randn(rows, generator=g)
    return s, x, bias


def run(s, x, bias, out=None):
    rows = s.shape[0]
    if out is None:
        out = np.full((x.shape[0], rows), np.nan, np.float32)  # poisoned: every element must be written
    _C.nm_gemm(x.numpy(), s.values.numpy(), s.meta.numpy(), s.n, s.m, s.shape[1],
               None if bias is None else bias.numpy(), out)
    return torch.from_numpy(out)


def tolerance(x, s):
    # fp32 accumulation of K/m*n products: bound from the float64 magnitudes, not guessed.
    mag = x.double().abs() @ s.to_dense().double().abs().T
    return 1e-6 * mag * max(8, s.shape[1] ** 0.5) + 1e-6


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n,m", PATTERNS)
@pytest.mark.parametrize("rows,k,batch", SHAPES)
def test_matches_float64_reference(monkeypatch, isa, n, m, rows, k, batch):
    if k % m:
        k = (k // m + 1) * m
    monkeypatch.setenv("SPARSEFORGE_ISA", isa)
    s, x, bias = make(rows, k, n, m, batch, seed=rows * 1000 + k + batch)
    ref = x.double() @ s.to_dense().double().T + bias.double()
    y = run(s, x, bias)
    assert torch.isfinite(y).all()
    assert ((y.double() - ref).abs() <= tolerance(x, s)).all(), (y.double() - ref).abs().max()


@pytest.mark.parametrize("isa", [i for i in ISAS if i != "scalar"])
@pytest.mark.parametrize("n,m", [(2, 4), (1, 2), (4, 8), (2, 8)])
@pytest.mark.parametrize("batch", [1, 5, 16, 70])
def test_isa_against_scalar_reference(monkeypatch, isa, n, m, batch):
    s, x, bias = make(37, 264, n, m, batch, seed=batch)
    monkeypatch.setenv("SPARSEFORGE_ISA", "scalar")
    y_ref = run(s, x, bias)
    monkeypatch.setenv("SPARSEFORGE_ISA", isa)
    y = run(s, x, None)
    assert torch.allclose(y + bias, y_ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_threads_give_the_same_answer(monkeypatch, threads):
    s, x, bias = make(301, 512, 2, 4, 1, seed=3)
    ys = []
    for b in (1, 24):
        xb = torch.randn(b, 512)
        _C.set_num_threads(1)
        ref = run(s, xb, bias)
        _C.set_num_threads(threads)
        try:
            ys.append(torch.equal(run(s, xb, bias), ref))
        finally:
            _C.set_num_threads(0)
    assert all(ys)


def test_kernel_names(monkeypatch):
    for isa in ISAS:
        monkeypatch.setenv("SPARSEFORGE_ISA", isa)
        assert _C.kernel_for("nm_gemm") == f"nm_gemm_f32__{kernel_isa('nm_gemm', isa)}"
    if "avx2" in ISAS:
        monkeypatch.setenv("SPARSEFORGE_ISA", "avx2")
        assert _C.nm_gemm_variant(1, 2, 4) == "gemv"
        assert _C.nm_gemm_variant(16, 2, 4) == "gemm"
        assert _C.nm_gemm_variant(1, 2, 8) == "gemm"


def test_binding_validates_arguments():
    s, x, bias = make(8, 32, 2, 4, 2, seed=0)
    v, md = s.values.numpy(), s.meta.numpy()
    xn = x.numpy()
    with pytest.raises(TypeError, match="'x' must have dtype float32"):
        _C.nm_gemm(xn.astype(np.float64), v, md, 2, 4, 32)
    with pytest.raises(TypeError, match="'x' must be a numpy.ndarray"):
        _C.nm_gemm(x, v, md, 2, 4, 32)
    with pytest.raises(TypeError, match="'meta' must have dtype uint8"):
        _C.nm_gemm(xn, v, md.astype(np.int32), 2, 4, 32)
    with pytest.raises(ValueError, match="'x' must be C-contiguous"):
        _C.nm_gemm(np.asfortranarray(np.ones((3, 32), np.float32)), v, md, 2, 4, 32)
    with pytest.raises(ValueError, match="'x' has shape"):
        _C.nm_gemm(xn[:, :16].copy(), v, md, 2, 4, 32)
    with pytest.raises(ValueError, match="'values' has shape"):
        _C.nm_gemm(xn, v[:, :8].copy(), md, 2, 4, 32)
    with pytest.raises(ValueError, match="'meta' has shape"):
        _C.nm_gemm(xn, v, md[:, :2].copy(), 2, 4, 32)
    with pytest.raises(ValueError, match="'k'.*multiple of m=4"):
        _C.nm_gemm(xn, v, md, 2, 4, 30)
    with pytest.raises(ValueError, match="'n'"):
        _C.nm_gemm(xn, v, md, 5, 4, 32)
    with pytest.raises(ValueError, match="'bias' has shape"):
        _C.nm_gemm(xn, v, md, 2, 4, 32, np.ones(3, np.float32))
    with pytest.raises(ValueError, match="'out' has shape"):
        _C.nm_gemm(xn, v, md, 2, 4, 32, None, np.ones((2, 3), np.float32))
    ro = np.ones((2, 8), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="'out' must be writable"):
        _C.nm_gemm(xn, v, md, 2, 4, 32, None, ro)


def test_empty_shapes():
    s, _, bias = make(5, 8, 2, 4, 1, seed=1)
    out = _C.nm_gemm(np.zeros((0, 8), np.float32), s.values.numpy(), s.meta.numpy(), 2, 4, 8)
    assert out.shape == (0, 5)


def test_concurrent_callers_share_the_thread_pool():
    # The kernel releases the GIL; several Python threads calling at once must each get their own answer
    # (one uses the persistent pool, the others fall back to their own threads).
    import threading

    cases = [make(129, 256, 2, 4, b, seed=b) for b in (1, 3, 16, 1, 40, 2)]
    expected = [run(s, x, bias) for s, x, bias in cases]
    errors = []

    def worker(i):
        s, x, bias = cases[i]
        for _ in range(20):
            if not torch.equal(run(s, x, bias), expected[i]):
                errors.append(i)

    _C.set_num_threads(2)
    try:
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(cases))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        _C.set_num_threads(0)
    assert not errors


def test_pool_survives_fork():
    import multiprocessing as mp

    s, x, bias = make(300, 1024, 2, 4, 16, seed=9)  # big enough to split over 2 threads
    _C.set_num_threads(2)
    try:
        expected = run(s, x, bias)  # starts the pool in the parent
        ctx = mp.get_context("fork")
        with ctx.Pool(1) as pool:
            got = pool.apply(_child_run, (s.values, s.meta, x, bias))
    finally:
        _C.set_num_threads(0)
    assert torch.equal(got, expected)


def _child_run(values, meta, x, bias):
    _C.set_num_threads(2)
    out = np.full((x.shape[0], values.shape[0]), np.nan, np.float32)
    _C.nm_gemm(x.numpy(), values.numpy(), meta.numpy(), 2, 4, x.shape[1], bias.numpy(), out)
    return torch.from_numpy(out)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n,m", [(2, 4), (1, 2), (4, 8), (2, 8)])
@pytest.mark.parametrize("rows,k,batch", [(1, 16, 1), (37, 264, 1), (37, 264, 16), (9, 40, 70)])
def test_bf16_weights_fp32_accumulate(monkeypatch, isa, n, m, rows, k, batch):
    monkeypatch.setenv("SPARSEFORGE_ISA", isa)
    s, x, bias = make(rows, k, n, m, batch, seed=rows + k + batch)
    sb = s.to(torch.bfloat16)
    ref = x.double() @ sb.to_dense().double().T + bias.double()  # the bf16-rounded weights, exactly
    out = np.full((batch, rows), np.nan, np.float32)
    _C.nm_gemm(x.numpy(), sb.values.view(torch.uint16).numpy(), sb.meta.numpy(), n, m, k, bias.numpy(), out, "bf16")
    y = torch.from_numpy(out).double()
    assert ((y - ref).abs() <= tolerance(x, sb.to(torch.float32))).all()


def test_bf16_needs_the_explicit_format():
    s, x, _ = make(8, 32, 2, 4, 1, seed=0)
    raw = s.to(torch.bfloat16).values.view(torch.uint16).numpy()
    with pytest.raises(TypeError, match="'values' must have dtype float32"):
        _C.nm_gemm(x.numpy(), raw, s.meta.numpy(), 2, 4, 32)
    with pytest.raises(TypeError, match="'values' must have dtype uint16"):
        _C.nm_gemm(x.numpy(), s.values.numpy(), s.meta.numpy(), 2, 4, 32, None, None, "bf16")
    with pytest.raises(ValueError, match="values_format"):
        _C.nm_gemm(x.numpy(), s.values.numpy(), s.meta.numpy(), 2, 4, 32, None, None, "fp8")
