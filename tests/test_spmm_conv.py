"""spmm_conv (sparse 1x1 conv over CHW) on every ISA against a float64 reference."""

import numpy as np
import pytest

from sparseforge import _C
from sparseforge.formats import SparseConvWeight

ISAS = _C.supported_isas()


def sparse_weight(rng, c_out, c_in, sparsity, block=1):
    nb = -(-c_out // block)
    keep = rng.random((nb, c_in)) >= sparsity
    w = rng.standard_normal((nb * block, c_in)).astype(np.float32) * np.repeat(keep, block, axis=0)
    return np.ascontiguousarray(w[:c_out])


def reference(w, x, bias=None, lo=-np.inf, hi=np.inf):
    y = np.einsum("ok,nkp->nop", w.astype(np.float64), x.astype(np.float64))
    if bias is not None:
        y += bias.astype(np.float64)[None, :, None]
    mag = np.einsum("ok,nkp->nop", np.abs(w.astype(np.float64)), np.abs(x.astype(np.float64)))
    return np.clip(y, lo, hi), mag


def check(y, ref, mag, c_in):
    tol = 4 * (c_in + 1) * np.finfo(np.float32).eps * (mag + 1.0)
    assert np.all(np.isfinite(y))
    assert np.all(np.abs(y - ref) <= tol), np.abs(y - ref).max()


SHAPES = [  # (n, c_in, c_out, hw): tails of every tile width, 1 pixel, 1 channel, batch > 1
    (1, 5, 7, 13), (2, 17, 9, 100), (1, 64, 33, 196), (3, 3, 1, 1), (1, 40, 30, 49), (2, 24, 10, 197), (1, 1, 5, 70),
    (1, 9, 6, 255),  # AVX-512's widest tail: 127 px = 7 full vectors + 15 lanes
    (1, 300, 11, 130),  # c_in spans several L1 panel groups (partial sums in y), not a multiple of 32
    (1, 20, 7, 35),  # 1-4 px past whole vectors go through the 4-lane tail buffer (here 3; 49, 100, 130, 196 too)
    (1, 33, 9, 144),  # a last remainder of one whole vector joins the tile before it (AVX-512: 128 + 16 px)
]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("block", [1, 2, 4])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("act", ["none", "relu", "relu6"])
def test_matches_float64_reference(monkeypatch, isa, block, shape, act):
    monkeypatch.setenv("SPARSEFORGE_ISA", isa)
    n, c_in, c_out, hw = shape
    rng = np.random.default_rng(hash((isa, block, shape, act)) % 2**32)
    w = sparse_weight(rng, c_out, c_in, 0.7, block)
    w[0] = 0  # an output channel with no nonzeros
    w[-1] = rng.standard_normal(c_in)  # a fully dense one
    if block > 1:
        w[(c_out - 1) // block * block:] = rng.standard_normal((c_out - (c_out - 1) // block * block, c_in))
    x = rng.standard_normal((n, c_in, hw)).astype(np.float32)
    bias = rng.standard_normal(c_out).astype(np.float32) if act != "none" else None
    lo, hi = {"none": (-np.inf, np.inf), "relu": (0.0, np.inf), "relu6": (0.0, 6.0)}[act]
    p = SparseConvWeight.from_dense(w, block=block).validate()
    assert p.block == block and np.array_equal(p.to_dense(), w)
    out = np.full((n, c_out, hw), np.nan, np.float32)  # poisoned: every element must be written
    y = _C.spmm_conv(x, *p.arrays(), bias=bias, out_min=lo, out_max=hi, out=out)
    assert y is out or np.shares_memory(y, out)
    ref, mag = reference(w, x, bias, lo, hi)
    check(out, ref, mag, c_in)
    assert _C.kernel_for("spmm_conv") == f"spmm_conv_f32__{isa}"


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", [1, 2, 3])
# Sizes past the dispatcher's ~1M multiply-add threshold, one per split: pixel ranges (a large map),
# output-channel blocks (a 7x7 map), whole images (a batch), and a small problem that stays inline.
@pytest.mark.parametrize("shape", [(1, 256, 130, 790), (1, 512, 300, 49), (5, 128, 96, 196), (2, 48, 40, 300)])
def test_threads_agree(monkeypatch, isa, threads, shape):
    monkeypatch.setenv("SPARSEFORGE_ISA", isa)
    n, c_in, c_out, hw = shape
    rng = np.random.default_rng(threads)
    w = sparse_weight(rng, c_out, c_in, 0.8)
    x = rng.standard_normal((n, c_in, hw)).astype(np.float32)
    p = SparseConvWeight.from_dense(w)
    _C.set_num_threads(threads)
    try:
        y = _C.spmm_conv(x, *p.arrays(), out=np.full((n, c_out, hw), np.nan, np.float32))
    finally:
        _C.set_num_threads(0)
    ref, mag = reference(w, x)
    check(y, ref, mag, c_in)


def test_auto_block_and_nbytes():
    rng = np.random.default_rng(0)
    w4 = sparse_weight(rng, 64, 128, 0.9, block=4)
    assert SparseConvWeight.from_dense(w4, block="auto").block == 4
    w1 = sparse_weight(rng, 64, 128, 0.9, block=1)
    p = SparseConvWeight.from_dense(w1, block="auto")
    assert p.block == 1
    assert p.nbytes <= 0.25 * w1.nbytes  # values + 1 int32 index per nonzero + per-channel counts at 90%
    assert abs(p.density - np.count_nonzero(w1) / w1.size) < 1e-12
    assert "density" in repr(p)


def _args(rng):
    w = sparse_weight(rng, 8, 6, 0.5)
    p = SparseConvWeight.from_dense(w)
    x = rng.standard_normal((1, 6, 10)).astype(np.float32)
    return x, list(p.arrays())


def test_argument_errors():
    rng = np.random.default_rng(1)
    x, a = _args(rng)
    with pytest.raises(TypeError, match="argument 'x'"):
        _C.spmm_conv(x.astype(np.float64), *a)
    with pytest.raises(TypeError, match="argument 'x'"):
        _C.spmm_conv(x.tolist(), *a)
    with pytest.raises(ValueError, match="argument 'x'"):
        _C.spmm_conv(x[:, :, ::2], *a)
    with pytest.raises(ValueError, match="argument 'x'"):
        _C.spmm_conv(x[:, :5], *a)
    with pytest.raises(TypeError, match="argument 'nnz'"):
        _C.spmm_conv(x, a[0].astype(np.int64), *a[1:])
    bad = a[2].copy(); bad[0] = 6
    with pytest.raises(ValueError, match="argument 'idx_delta'"):
        _C.spmm_conv(x, a[0], a[1], bad, *a[3:])
    with pytest.raises(ValueError, match="argument 'offsets'"):
        _C.spmm_conv(x, a[0], a[1][::-1].copy(), *a[2:])
    with pytest.raises(ValueError, match="argument 'values'"):
        _C.spmm_conv(x, a[0], a[1], a[2], a[3][:-1].copy(), *a[4:])
    with pytest.raises(ValueError, match="argument 'block'"):
        _C.spmm_conv(x, *a[:6], 3)
    with pytest.raises(ValueError, match="argument 'bias'"):
        _C.spmm_conv(x, *a, bias=np.zeros(7, np.float32))
    with pytest.raises(TypeError, match="argument 'bias'"):
        _C.spmm_conv(x, *a, bias=np.zeros(8, np.float64))
    with pytest.raises(ValueError, match="argument 'out'"):
        _C.spmm_conv(x, *a, out=np.zeros((1, 8, 9), np.float32))
    ro = np.zeros((1, 8, 10), np.float32); ro.flags.writeable = False
    with pytest.raises(ValueError, match="argument 'out'"):
        _C.spmm_conv(x, *a, out=ro)
    with pytest.raises(ValueError, match="out_min"):
        _C.spmm_conv(x, *a, out_min=1.0, out_max=0.0)


def test_format_validation_errors():
    rng = np.random.default_rng(2)
    p = SparseConvWeight.from_dense(sparse_weight(rng, 8, 6, 0.5))
    from dataclasses import replace
    with pytest.raises(ValueError, match="indices"):
        d = p.idx_delta.copy(); d[-1] = 100
        replace(p, idx_delta=d).validate()
    with pytest.raises(ValueError, match="offsets"):
        replace(p, offsets=p.offsets[::-1].copy()).validate()
    with pytest.raises(ValueError, match="block"):
        SparseConvWeight.from_dense(np.ones((4, 4), np.float32), block=3)
    with pytest.raises(ValueError, match="1x1"):
        SparseConvWeight.from_dense(np.ones((4, 4, 3, 3), np.float32))


def test_plan_checks_once_and_owns_its_copy():
    rng = np.random.default_rng(3)
    w = sparse_weight(rng, 20, 12, 0.6, block=2)
    p = SparseConvWeight.from_dense(w, block=2)
    arrays = [a.copy() if isinstance(a, np.ndarray) else a for a in p.arrays()]
    plan = _C.SpmmConvPlan(*arrays)
    assert (plan.c_out, plan.c_in, plan.block) == (20, 12, 2)
    arrays[3][:] = 0  # the plan copied the values when it was made
    x = rng.standard_normal((2, 12, 29)).astype(np.float32)
    ref, mag = reference(w, x, None, 0.0, np.inf)
    check(plan.run(x, out_min=0.0), ref, mag, 12)
    bad = list(p.arrays()); bad[2] = bad[2].copy(); bad[2][-1] = 50
    with pytest.raises(ValueError, match="idx_delta"):
        _C.SpmmConvPlan(*bad)
    with pytest.raises(ValueError, match="argument 'x'"):
        plan.run(x[:, :5].copy())
