"""The wasm backend: every kernel of sparseforge.wasm, in both of its variants (SIMD128 "wasm" and the
scalar references compiled to wasm), against the native scalar reference (SPARSEFORGE_ISA=scalar) on the
same random inputs, with odd shapes and poisoned outputs; plus argument errors and a model run.

Skips, saying why, when wasmtime or the module is missing; scripts/test.sh builds the module and sets
SPARSEFORGE_REQUIRE_WASM=1, so in CI a missing module is a failure, not a skip.
"""

import math
import os

import numpy as np
import pytest
import torch

from sparseforge import _C
from sparseforge.backends import wasm
from sparseforge.formats import NMSparse, SparseConvWeight

WHY_NOT = wasm.unavailable_reason()
REQUIRED = os.environ.get("SPARSEFORGE_REQUIRE_WASM") == "1"


def test_module_is_there_when_required():
    if WHY_NOT and not REQUIRED:
        pytest.skip(f"wasm backend unavailable: {WHY_NOT}")
    assert WHY_NOT is None, WHY_NOT


pytestmark = pytest.mark.skipif(WHY_NOT is not None and not REQUIRED, reason=f"wasm backend unavailable: {WHY_NOT}")


@pytest.fixture(params=wasm.ISAS)
def k(request):
    kern = wasm.kernels(request.param)
    assert kern.isa == request.param
    return kern


@pytest.fixture
def native_scalar(monkeypatch):
    monkeypatch.setenv("SPARSEFORGE_ISA", "scalar")
    return _C


# ---- group_nnz --------------------------------------------------------------------------------------

@pytest.mark.parametrize("rows,cols,m", [(1, 4, 4), (7, 40, 4), (33, 96, 8), (5, 6, 2), (3, 9, 3), (16, 64, 16), (2, 0, 4)])
def test_group_nnz(k, native_scalar, rows, cols, m):
    rng = np.random.default_rng(rows * 100 + cols)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    w[rng.random(w.shape) < 0.5] = 0.0
    if w.size >= 3:  # the x != 0 rule: NaN counts, -0.0 does not
        w.flat[0], w.flat[1], w.flat[2] = np.nan, -0.0, np.inf
    np.testing.assert_array_equal(k.group_nnz(w, m), native_scalar.group_nnz(w, m))


# ---- nm_gemm ----------------------------------------------------------------------------------------

NM_SHAPES = [(1, 8, 1), (5, 12, 1), (7, 24, 1), (9, 40, 2), (33, 72, 9), (13, 1032, 17), (64, 256, 16), (3, 48, 37)]


def nm_case(rows, k, n, m, batch, seed, bias=True):
    g = torch.Generator().manual_seed(seed)
    s = NMSparse.from_dense(torch.randn(rows, k, generator=g), n, m, prune=True)
    x = torch.randn(batch, k, generator=g).numpy()
    b = torch.randn(rows, generator=g).numpy() if bias else None
    return s, x, b


def tolerance(x, s):  # as tests/test_nm_gemm.py: from the float64 magnitudes of the products
    mag = np.abs(x.astype(np.float64)) @ np.abs(s.to_dense().double().numpy()).T
    return 1e-6 * mag * max(8, s.shape[1] ** 0.5) + 1e-6


@pytest.mark.parametrize("n,m", [(2, 4), (1, 2), (4, 8), (3, 6), (2, 8)])
@pytest.mark.parametrize("rows,kdim,batch", NM_SHAPES)
def test_nm_gemm(k, native_scalar, n, m, rows, kdim, batch):
    kdim = -(-kdim // m) * m
    s, x, bias = nm_case(rows, kdim, n, m, batch, seed=rows * 1000 + kdim + batch, bias=batch % 2 == 1)
    args = (x, s.values.numpy(), s.meta.numpy(), n, m, kdim, bias)
    ref = native_scalar.nm_gemm(*args)
    out = np.full((batch, rows), np.nan, np.float32)  # poisoned: every element must be written
    y = k.nm_gemm(*args, out=out)
    assert y is out
    gemv = k.isa == "wasm" and batch == 1 and (n, m) == (2, 4)
    if gemv:  # lane-wise partial sums: a different summation order
        assert np.all(np.abs(y.astype(np.float64) - ref) <= tolerance(x, s))
    else:  # same order, no FMA in wasm: bit for bit
        np.testing.assert_array_equal(y, ref)


@pytest.mark.parametrize("batch", [1, 6, 20])
def test_nm_gemm_bf16_and_plan(k, native_scalar, batch):
    s, x, bias = nm_case(19, 136, 2, 4, batch, seed=batch)
    vb = s.values.to(torch.bfloat16).view(torch.uint16).numpy()
    ref = native_scalar.nm_gemm(x, vb, s.meta.numpy(), 2, 4, 136, bias, None, "bf16")
    y = k.nm_gemm(x, vb, s.meta.numpy(), 2, 4, 136, bias, values_format="bf16")
    plan = k.nm_gemm_plan(vb, s.meta.numpy(), 2, 4, 136, bias, "bf16")
    y2, y3 = plan.run(x), plan.run(x)
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(y3, y)
    if k.isa == "wasm" and batch == 1:
        assert np.all(np.abs(y.astype(np.float64) - ref) <= 1e-5 * (np.abs(ref) + 1))
    else:
        np.testing.assert_array_equal(y, ref)


# ---- spmm_conv --------------------------------------------------------------------------------------

CONV_SHAPES = [(1, 1, 1, 1), (7, 13, 3, 1), (8, 16, 49, 2), (17, 33, 37, 1), (32, 24, 67, 3), (6, 64, 196, 1)]


def conv_case(c_out, c_in, hw, n, block, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((c_out, c_in)).astype(np.float32)
    w[rng.random(w.shape) < 0.7] = 0.0
    packed = SparseConvWeight.from_dense(w, block=block)
    x = rng.standard_normal((n, c_in, hw)).astype(np.float32)
    bias = rng.standard_normal(c_out).astype(np.float32)
    return packed, x, bias


@pytest.mark.parametrize("block", [1, 2, 4])
@pytest.mark.parametrize("c_out,c_in,hw,n", CONV_SHAPES)
@pytest.mark.parametrize("act", [None, "relu6"])
def test_spmm_conv(k, native_scalar, block, c_out, c_in, hw, n, act):
    p, x, bias = conv_case(c_out, c_in, hw, n, block, seed=c_out * 7 + hw)
    lo, hi = (-math.inf, math.inf) if act is None else (0.0, 6.0)
    packed = (p.nnz, p.offsets, p.idx_delta, p.values, c_out, c_in, block)
    ref = native_scalar.spmm_conv(x, *packed, bias, lo, hi)
    out = np.full(ref.shape, np.nan, np.float32)
    y = k.spmm_conv(x, *packed, bias, lo, hi, out=out)
    assert y is out
    np.testing.assert_array_equal(y, ref)  # same order, no FMA: bit for bit in both variants
    plan = k.spmm_conv_plan(*packed)
    np.testing.assert_array_equal(plan.run(x, bias, lo, hi), ref)
    np.testing.assert_array_equal(plan.run(x, None), native_scalar.spmm_conv(x, *packed))


# ---- spgemm -----------------------------------------------------------------------------------------

def rand_csr(rows, cols, per_row, rng, vt, it):
    indptr = [0]
    indices, data = [], []
    for i in range(rows):
        cnt = 0 if i % 5 == 3 else int(rng.integers(0, per_row + 1))  # empty rows too
        idx = np.sort(rng.choice(cols, size=min(cnt, cols), replace=False))
        indices += idx.tolist()
        data += rng.standard_normal(len(idx)).tolist()
        indptr.append(len(indices))
    return np.array(indptr, it), np.array(indices, it), np.array(data, vt), (rows, cols)


@pytest.mark.parametrize("vt", [np.float32, np.float64])
@pytest.mark.parametrize("it", [np.int32, np.int64])
@pytest.mark.parametrize("m,kk,n,per_row", [(1, 1, 1, 1), (17, 23, 9, 4), (64, 80, 300, 12), (40, 40, 40, 40)])
def test_spgemm(k, native_scalar, vt, it, m, kk, n, per_row):
    rng = np.random.default_rng(m * 31 + n)
    a = rand_csr(m, kk, per_row, rng, vt, it)
    b = rand_csr(kk, n, per_row, rng, vt, it)
    ref = native_scalar.spgemm(*a, *b)
    got = k.spgemm(*a, *b)
    for r, g in zip(ref, got):
        assert g.dtype == r.dtype
        np.testing.assert_array_equal(g, r)


# ---- errors and the backend interface ---------------------------------------------------------------

def test_errors_name_the_argument():
    kern = wasm.kernels()
    x = np.zeros((2, 8), np.float32)
    s, _, _ = nm_case(3, 8, 2, 4, 1, seed=0)
    with pytest.raises(TypeError, match="argument 'x' must have dtype float32"):
        kern.nm_gemm(x.astype(np.float64), s.values.numpy(), s.meta.numpy(), 2, 4, 8)
    with pytest.raises(ValueError, match="argument 'meta' has shape"):
        kern.nm_gemm(x, s.values.numpy(), s.meta.numpy()[:, :0], 2, 4, 8)
    with pytest.raises(ValueError, match="C-contiguous"):
        kern.group_nnz(np.zeros((4, 8), np.float32)[:, ::2], 2)
    p, xc, _ = conv_case(4, 8, 5, 1, 1, seed=1)
    bad = p.idx_delta.copy()
    bad[-1] += 100  # walks past c_in: the module's own check refuses it
    with pytest.raises(ValueError, match="idx_delta.*outside"):
        kern.spmm_conv(xc, p.nnz, p.offsets, bad, p.values, 4, 8, 1)
    a = rand_csr(3, 4, 2, np.random.default_rng(0), np.float64, np.int32)
    unsorted = a[1].copy()
    row = int(np.argmax(np.diff(a[0]) >= 2))
    s0 = a[0][row]
    unsorted[s0], unsorted[s0 + 1] = unsorted[s0 + 1], unsorted[s0]
    with pytest.raises(ValueError, match="not canonical CSR"):
        kern.spgemm(a[0], unsorted, a[2], a[3], *rand_csr(4, 2, 2, np.random.default_rng(1), np.float64, np.int32))


def test_listing_and_kernel_names():
    from sparseforge.backends import get_backend, list_backends

    info = list_backends()["wasm"]
    assert info.available and set(info.ops) == set(wasm.kernels().ops)  # the export section, read without compiling
    assert {"group_nnz", "nm_gemm", "spgemm", "spmm_conv"} <= set(info.ops)
    assert get_backend("wasm").name == "wasm"
    assert wasm.kernels("wasm").kernel_for("nm_gemm") == "nm_gemm_f32__wasm"
    assert wasm.kernels("scalar").kernel_for("spmm_conv") == "spmm_conv_f32__scalar"
    with pytest.raises(ValueError, match="SPARSEFORGE_WASM_ISA"):
        wasm.WasmKernels("avx2")


def test_model_layers_run_in_wasm():
    import torch.nn as nn

    import sparseforge as sf
    from sparseforge.backends import for_inference
    from sparseforge.backends.wasm_modules import WasmNMLinear

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 8))
    sf.sparsify(model, "magnitude", pattern="2:4", exclude=":last")
    runnable = for_inference(model, "wasm")
    assert isinstance(runnable[0], WasmNMLinear)
    for batch in (1, 5):
        x = torch.randn(batch, 64)
        torch.testing.assert_close(runnable(x), model(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(NotImplementedError, match="nothing would run in wasm"):
        for_inference(nn.Sequential(nn.Linear(8, 8)), "wasm")


def test_sparse_conv_layer_runs_in_wasm():
    import torch.nn as nn

    from sparseforge.backends.wasm_modules import WasmSparseConv2d, to_wasm
    from sparseforge.nn import SparseConv2d

    torch.manual_seed(0)
    conv = nn.Conv2d(16, 24, 1)
    with torch.no_grad():
        conv.weight[torch.rand_like(conv.weight) < 0.8] = 0.0
    model = nn.Sequential(SparseConv2d.from_dense(conv, activation="relu"))
    x = torch.randn(2, 16, 7, 5)
    ref = model(x)
    to_wasm(model)
    assert isinstance(model[0], WasmSparseConv2d)
    torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-6)  # native may use FMA, wasm cannot


def test_a_trap_is_an_exception_and_the_instance_survives():
    import wasmtime

    kern = wasm.kernels()
    with pytest.raises((wasmtime.Trap, wasmtime.WasmtimeError)):
        kern._call("sf_group_nnz", -16, 4, 1 << 20, 4, 0)  # reads past the end of linear memory
    w = np.ones((2, 8), np.float32)
    np.testing.assert_array_equal(kern.group_nnz(w, 4), np.full((2, 2), 4, np.int32))


# ---- block_attention -------------------------------------------------------------------------------

def _attention_ready(k):
    # The kernel folder is in the tree, so a module without the export is a broken build, not a skip.
    assert "block_attention" in k.ops and hasattr(_C, "block_attention"), k.ops


@pytest.mark.parametrize("mode", [0, 1, 3])
@pytest.mark.parametrize("B,Hq,Hkv,Lq,Lk,D,causal", [(1, 2, 1, 7, 13, 8, True), (2, 4, 2, 33, 70, 16, False)])
def test_block_attention(k, native_scalar, mode, B, Hq, Hkv, Lq, Lk, D, causal):
    _attention_ready(k)
    rng = np.random.default_rng(Lq * 10 + mode)
    q, kk, v = (rng.standard_normal(s).astype(np.float32) for s in ((B, Hq, Lq, D), (B, Hkv, Lk, D), (B, Hkv, Lk, D)))
    bq, bk = 8, 16
    order = None
    if mode == 3:
        nq, nkv = -(-Lq // bq), -(-Lk // bk)
        order = np.ascontiguousarray(np.argsort(rng.random((1, 1, nq, nkv)), axis=-1).astype(np.int32))
    args = (mode, causal, D ** -0.5, 0.01, bq, bk, None, None, order)
    ref, st_ref = np.empty_like(q), np.zeros(4, np.int64)
    native_scalar.block_attention(q, kk, v, ref, st_ref, *args)
    out, st = np.full_like(q, np.nan), np.zeros(4, np.int64)
    k.block_attention(q, kk, v, out, st, *args)
    np.testing.assert_array_equal(st, st_ref)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_gathered_and_double_sparsity_decode(k, native_scalar):
    _attention_ready(k)
    rng = np.random.default_rng(5)
    B, Hq, Hkv, Lk, D, r = 2, 4, 2, 50, 16, 4
    q, kk, v = (rng.standard_normal(s).astype(np.float32) for s in ((B, Hq, 1, D), (B, Hkv, Lk, D), (B, Hkv, Lk, D)))
    idx = rng.integers(0, Lk, (B, Hkv, 9)).astype(np.int32)
    ref, out = np.empty_like(q), np.full_like(q, np.nan)
    native_scalar.gathered_decode_attention(q, kk, v, idx, ref, 0.25)
    k.gathered_decode_attention(q, kk, v, idx, out, 0.25)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    ch = np.ascontiguousarray(rng.permutation(D)[: Hq * r].reshape(Hq, r) % D).astype(np.int32)
    label = np.ascontiguousarray(np.take_along_axis(kk, np.zeros((1, 1, 1, r), np.int64) + np.arange(r), axis=3))
    native_scalar.double_sparsity_decode(q, kk, v, label, ch, 12, ref, 0.25)
    out[...] = np.nan
    k.double_sparsity_decode(q, kk, v, label, ch, 12, out, 0.25)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
