"""block_attention, gathered_decode_attention, double_sparsity_decode: every mode on every ISA against a
float64 reference (torch SDPA for dense, the pure-torch block reference for the skip modes)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _isa import kernel_isa
from sparseforge import _C
from sparseforge.ops import block_attention, double_sparsity_decode, gathered_decode_attention
from sparseforge.ops.block_attention_reference import (block_attention_reference, double_sparsity_decode_reference,
                                                       gathered_decode_attention_reference)

ISAS = _C.supported_isas()
MODE_ID = {"dense": 0, "threshold": 1, "block_mask": 2, "early_stop": 3}
# (B, Hq, Hkv, Lq, Lk, D, block): L not a multiple of the block, every tuned head dim, GQA, MQA, decode, B > 1,
# Lq < Lk (bottom-right causal), a general head dim and a block that is not a power of two.
CASES = [
    (1, 2, 2, 100, 100, 64, 32),
    (2, 4, 2, 70, 70, 80, 64),
    (1, 3, 1, 50, 130, 96, (16, 48)),
    (1, 2, 2, 33, 33, 128, 128),
    (2, 8, 2, 1, 150, 64, 64),  # decode, GQA: the tile is the group
    (1, 4, 1, 1, 77, 128, 32),  # decode, MQA
    (1, 2, 1, 45, 61, 37, 24),  # general D (masked loads, scalar columns)
]


def rand_qkv(B, Hq, Hkv, Lq, Lk, D, seed, sharp=1.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Lq, D, generator=g) * sharp
    k = torch.randn(B, Hkv, Lk, D, generator=g)
    v = torch.randn(B, Hkv, Lk, D, generator=g)
    return q, k, v


def blocks(bs):
    return (bs, bs) if isinstance(bs, int) else bs


def sdpa64(q, k, v, causal, scale=None):
    G = q.shape[1] // k.shape[1]
    Lq, Lk = q.shape[2], k.shape[2]
    mask = torch.ones(Lq, Lk, dtype=torch.bool).tril(Lk - Lq) if causal else None
    return F.scaled_dot_product_attention(q.double(), k.double().repeat_interleave(G, 1),
                                          v.double().repeat_interleave(G, 1), attn_mask=mask, scale=scale)


def tolerance(q, k, v, scale=None):
    """fp32 bound from the inputs: score error ~ eps·scale·|q|·|k| (the exp turns it into a relative error of
    the weights), plus the rounding of a length-Lk weighted sum of v."""
    D, Lk = q.shape[-1], k.shape[2]
    scale = 1 / math.sqrt(D) if scale is None else scale
    smax = scale * float(q.abs().amax(-2).max() * k.abs().amax(-2).max()) * D
    eps = torch.finfo(torch.float32).eps
    return eps * (4 * smax + 4 * math.sqrt(Lk) + 16) * float(v.abs().max())


def run_c(q, k, v, *, mode="dense", causal=False, scale=None, threshold=0.0, block=64, num=None, idx=None, order=None):
    """The binding directly, with a NaN-poisoned output: every element must be written."""
    bq, bk = blocks(block)
    out = np.full(tuple(q.shape), np.nan, np.float32)
    stats = np.full(4, -1, np.int64)
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    as_np = lambda t: None if t is None else t.to(torch.int32).contiguous().numpy()  # noqa: E731
    _C.block_attention(q.numpy(), k.numpy(), v.numpy(), out, stats, MODE_ID[mode], causal, scale, threshold, bq, bk,
                       as_np(num), as_np(idx), as_np(order))
    return torch.from_numpy(out), tuple(int(s) for s in stats)


def random_block_mask(B, H, nq, nkv, seed, density=0.5):
    g = torch.Generator().manual_seed(seed)
    num = torch.zeros(B, H, nq, dtype=torch.int32)
    idx = torch.zeros(B, H, nq, nkv, dtype=torch.int32)
    for b in range(B):
        for h in range(H):
            for i in range(nq):
                perm = torch.randperm(nkv, generator=g)
                n = max(1, int(round(density * nkv)))
                num[b, h, i] = n
                idx[b, h, i, :n] = perm[:n]  # listed in random order
                idx[b, h, i, n:] = perm[n:]  # FlexAttention leaves junk after the count: must be ignored
    return num, idx


def random_order(B, H, nq, nkv, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(nkv, generator=g) for _ in range(B * H * nq)]).reshape(B, H, nq, nkv).int()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:6])))
def test_dense_matches_sdpa(monkeypatch, isa, causal, case):
    monkeypatch.setenv("SPARSEFORGE_ISA", isa)
    B, Hq, Hkv, Lq, Lk, D, bs = case
    q, k, v = rand_qkv(B, Hq, Hkv, Lq, Lk, D, seed=Lq * 7 + D)
    out, st = run_c(q, k, v, causal=causal, block=bs)
    assert torch.isfinite(out).all()
    err = (out.double() - sdpa64(q, k, v, causal)).abs().max().item()
    assert err <= tolerance(q, k, v), err
    assert st[0] == st[1] > 0 and st[2] == st[3] == 0


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("mode", ["threshold", "early_stop", "block_mask"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:6])))
def test_skip_modes_match_reference(monkeypatch, isa, mode, causal, case):
    monkeypatch.setenv("SPARSEFORGE_ISA", isa)
    B, Hq, Hkv, Lq, Lk, D, bs = case
    bq, bk = blocks(bs)
    nq, nkv = -(-Lq // bq), -(-Lk // bk)
    # Peaked attention (scaled q), so the threshold votes do skip some blocks.
    q, k, v = rand_qkv(B, Hq, Hkv, Lq, Lk, D, seed=Lk * 3 + D, sharp=2.5)
    kw = {}
    if mode in ("threshold", "early_stop"):
        kw["threshold"] = 0.05
    if mode == "early_stop":
        kw["order"] = random_order(1, Hq, nq, nkv, seed=D)
    if mode == "block_mask":
        kw["block_mask"] = random_block_mask(B, Hkv, nq, nkv, seed=Lq)  # Hkv heads: shared by each GQA group
    ref, rst = block_attention_reference(q.double(), k.double(), v.double(), causal=causal, mode=mode, block_size=bs, **kw)
    bm = kw.get("block_mask", (None, None))
    out, st = run_c(q, k, v, mode=mode, causal=causal, block=bs, threshold=kw.get("threshold", 0.0), num=bm[0],
                    idx=bm[1], order=kw.get("order"))
    assert st == tuple(rst), (st, rst)
    assert torch.isfinite(out).all()
    assert (out.double() - ref).abs().max().item() <= tolerance(q, k, v)


def test_skip_modes_do_skip():
    """The parametrized cases above are not vacuous: the thresholds there skip blocks."""
    q, k, v = rand_qkv(1, 2, 2, 100, 100, 64, seed=100 * 3 + 64, sharp=2.5)
    _, st = block_attention(q, k, v, mode="threshold", threshold=0.05, block_size=32)
    assert 0 < st.skipped < st.total and st.scored_only == st.skipped
    _, st = block_attention(q, k, v, mode="early_stop", threshold=0.05, block_size=32,
                            order=random_order(1, 2, 4, 4, seed=64))
    assert 0 < st.skipped < st.total


@pytest.mark.parametrize("isa", ISAS)
def test_threshold_zero_and_tau_zero_equal_dense(monkeypatch, isa):
    monkeypatch.setenv("SPARSEFORGE_ISA", isa)
    q, k, v = rand_qkv(2, 4, 2, 90, 130, 64, seed=5, sharp=3.0)
    dense, sd = block_attention(q, k, v, causal=True, block_size=32)
    thr, st = block_attention(q, k, v, causal=True, block_size=32, mode="threshold", threshold=0.0)
    assert torch.equal(thr, dense) and st == sd  # same visiting order: bit-identical
    nq, nkv = 3, 5
    es, se = block_attention(q, k, v, causal=True, block_size=32, mode="early_stop", threshold=0.0,
                             order=random_order(2, 4, nq, nkv, seed=1))
    assert se == sd  # tau = 0 never stops
    # Another visiting order only changes the fp32 summation order (softmax is permutation invariant).
    assert (es.double() - sdpa64(q, k, v, True)).abs().max().item() <= tolerance(q, k, v)


@pytest.mark.parametrize("isa", ISAS)
def test_skipped_blocks_are_not_read(monkeypatch, isa):
    monkeypatch.setenv("SPARSEFORGE_ISA", isa)
    q, k, v = rand_qkv(1, 2, 1, 64, 256, 64, seed=9)
    num = torch.tensor([[[2, 1]]], dtype=torch.int32)  # query block 0 -> key blocks {3, 0}; 1 -> {2}
    idx = torch.tensor([[[[3, 0, 1, 2], [2, 0, 0, 0]]]], dtype=torch.int32)
    clean, _ = block_attention_reference(q.double(), k.double(), v.double(), mode="block_mask", block_mask=(num, idx),
                                         block_size=(32, 64))
    kn, vn = k.clone(), v.clone()
    kn[:, :, 64:128] = float("nan")  # key block 1 is listed by nobody
    vn[:, :, 64:128] = float("nan")
    out, st = block_attention(q, kn, vn, mode="block_mask", block_mask=(num, idx), block_size=(32, 64))
    assert torch.isfinite(out).all()
    assert (out.double() - clean).abs().max().item() <= tolerance(q, k, v)
    assert st == (16, 6, 10, 0)  # 2 heads x 2 query blocks x 4 visible; 2 + 1 listed per head
    # Threshold mode never reads the V of a block it skips: keys of block 1 point away from every query.
    q, k, v = rand_qkv(1, 1, 1, 16, 64, 32, seed=3)
    q = q.abs() + 1
    k[:, :, 32:] = -10.0
    v[:, :, 32:] = float("nan")
    out, st = block_attention(q, k, v, mode="threshold", threshold=1e-3, block_size=(16, 32))
    assert torch.isfinite(out).all() and st == (2, 1, 1, 1)


@pytest.mark.parametrize("isa", ISAS)
def test_stats_on_constructed_cases(monkeypatch, isa):
    monkeypatch.setenv("SPARSEFORGE_ISA", isa)
    # Causal, 4 x 4 blocks of 64: 1 + 2 + 3 + 4 visible pairs per head.
    q, k, v = rand_qkv(2, 3, 1, 256, 256, 64, seed=1)
    _, st = block_attention(q, k, v, causal=True)
    assert st == (2 * 3 * 10, 60, 0, 0)
    # Lq < Lk, bottom-right: queries 0..63 see keys <= i + 192, so the one query block sees all 4 key blocks.
    _, st = block_attention(q[:, :, :64], k, v, causal=True)
    assert st.total == 2 * 3 * 4
    # Key block 0 dominates every query by far: threshold skips the rest, early stop stops at the 2nd block.
    q = torch.ones(1, 1, 64, 16)
    k = -torch.ones(1, 1, 256, 16)
    k[:, :, :64] = 1.0
    v = torch.randn(1, 1, 256, 16)
    _, st = block_attention(q, k, v, mode="threshold", threshold=1e-4, scale=1.0)
    assert st == (4, 1, 3, 3)
    order = torch.tensor([0, 2, 1, 3], dtype=torch.int32).reshape(1, 1, 1, 4)
    _, st = block_attention(q, k, v, mode="early_stop", threshold=1e-4, scale=1.0, order=order)
    assert st == (4, 1, 3, 1)
    # Starting from a weak block, the dominant one is still visited, and the stop comes after it.
    order = torch.tensor([2, 0, 1, 3], dtype=torch.int32).reshape(1, 1, 1, 4)
    out, st = block_attention(q, k, v, mode="early_stop", threshold=1e-4, scale=1.0, order=order)
    assert st == (4, 2, 2, 1)
    # Decode with GQA: a tile is the group (2 KV heads x 3 key blocks per batch row).
    q, k, v = rand_qkv(2, 8, 2, 1, 150, 64, seed=2)
    _, st = block_attention(q, k, v)
    assert st == (2 * 2 * 3, 12, 0, 0)
    # ... unless the block mask differs per query head: then a tile is one query head.
    num = torch.full((1, 8, 1), 2, dtype=torch.int32)
    idx = torch.tensor([0, 2, 1], dtype=torch.int32).expand(1, 8, 1, 3).contiguous()
    _, st = block_attention(q, k, v, mode="block_mask", block_mask=(num, idx))
    assert st == (2 * 8 * 3, 32, 16, 0)


def test_decode_threshold_votes_over_the_group():
    """In decode the query heads of a GQA group vote together: one head that needs a block keeps it."""
    D = 16
    q = torch.zeros(1, 2, 1, D)
    q[0, 0, 0, 0] = q[0, 1, 0, 1] = 4.0
    k = torch.zeros(1, 1, 128, D)
    k[0, 0, :64, 0] = 4.0  # block 0 matters to head 0 only
    k[0, 0, 64:, 1] = 4.0  # block 1 matters to head 1 only
    v = torch.randn(1, 1, 128, D)
    out, st = block_attention(q, k, v, mode="threshold", threshold=1e-3, scale=1.0)
    assert st == (2, 2, 0, 0)
    ref = sdpa64(q, k, v, False, scale=1.0)
    assert (out.double() - ref).abs().max() < 1e-5
    # The same heads as separate tiles (a per-query-head order) would each have skipped their weak block.
    ref2, st2 = block_attention_reference(q, k, v, mode="early_stop", threshold=1e-3, scale=1.0,
                                          order=torch.tensor([0, 1], dtype=torch.int32).reshape(1, 1, 1, 2).expand(1, 2, 1, 2))
    assert st2.skipped == 1


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("per", ["kv", "q"])
@pytest.mark.parametrize("B,Hq,Hkv,Lk,D,r,k_sel", [(2, 4, 2, 300, 64, 16, 40), (1, 8, 1, 1000, 128, 13, 129),
                                                    (1, 3, 3, 50, 7, 3, 80)])
def test_gathered_and_double_sparsity_decode(monkeypatch, isa, per, B, Hq, Hkv, Lk, D, r, k_sel):
    monkeypatch.setenv("SPARSEFORGE_ISA", isa)
    q, k, v = rand_qkv(B, Hq, Hkv, 1, Lk, D, seed=Lk)
    H = Hkv if per == "kv" else Hq
    g = torch.Generator().manual_seed(1)
    idx = torch.stack([torch.randperm(Lk, generator=g)[:min(k_sel, Lk)] for _ in range(B * H)]).reshape(B, H, -1)
    out = np.full(tuple(q.shape), np.nan, np.float32)
    _C.gathered_decode_attention(q.numpy(), k.numpy(), v.numpy(), idx.int().numpy(), out, 1 / math.sqrt(D))
    ref = gathered_decode_attention_reference(q.double(), k.double(), v.double(), idx)
    assert (torch.from_numpy(out).double() - ref).abs().max().item() <= tolerance(q, k, v)
    assert torch.equal(gathered_decode_attention(q, k, v, idx.long()), torch.from_numpy(out))
    ch = torch.stack([torch.randperm(D, generator=g)[:r] for _ in range(H)])
    G = Hq // Hkv
    label = torch.stack([k[:, hk][..., ch[hk if per == "kv" else hk * G]] for hk in range(Hkv)], 1).contiguous()
    out2 = double_sparsity_decode(q, k, v, label, ch, k_sel)
    ref2 = double_sparsity_decode_reference(q.double(), k.double(), v.double(), label.double(), ch, k_sel)
    assert (out2.double() - ref2).abs().max().item() <= tolerance(q, k, v)
    if k_sel >= Lk:  # everything selected: plain dense decode
        assert (out2.double() - sdpa64(q, k, v, False)).abs().max().item() <= tolerance(q, k, v)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_threads_give_the_same_answer(threads):
    q, k, v = rand_qkv(1, 3, 1, 200, 200, 64, seed=4)
    try:
        _C.set_num_threads(1)
        ref = block_attention(q, k, v, causal=True, block_size=32)
        _C.set_num_threads(threads)
        out = block_attention(q, k, v, causal=True, block_size=32)
    finally:
        _C.set_num_threads(0)
    assert torch.equal(out[0], ref[0]) and out[1] == ref[1]


def test_kernel_names(monkeypatch):
    for isa in ISAS:
        monkeypatch.setenv("SPARSEFORGE_ISA", isa)
        assert _C.kernel_for("block_attention") == f"block_attention_f32__{kernel_isa('block_attention', isa)}"


def test_opcheck_and_compile():
    q, k, v = rand_qkv(1, 4, 2, 40, 70, 32, seed=6)
    num, idx = random_block_mask(1, 2, 2, 3, seed=1)
    order = random_order(1, 4, 2, 3, seed=2)
    cases = [(q, k, v, None, None, None, True, 0.2, "dense", 0.0, 32, 32),
             (q, k, v, None, None, None, False, 0.2, "threshold", 0.1, 32, 32),
             (q, k, v, num, idx, None, True, 0.2, "block_mask", 0.0, 32, 32),
             (q, k, v, None, None, order, False, 0.2, "early_stop", 0.1, 32, 32)]
    for args in cases:
        torch.library.opcheck(torch.ops.sparseforge.block_attention.default, args)
    qd = q[:, :, :1].contiguous()
    sel = torch.randperm(70)[:9].int().reshape(1, 1, 9).expand(1, 2, 9).contiguous()
    torch.library.opcheck(torch.ops.sparseforge.gathered_decode_attention.default, (qd, k, v, sel, 0.2))
    ch = torch.arange(8, dtype=torch.int32).expand(2, 8).contiguous()
    torch.library.opcheck(torch.ops.sparseforge.double_sparsity_decode.default,
                          (qd, k, v, k[..., :8].contiguous(), ch, 9, 0.2))
    f = torch.compile(lambda q, k, v: torch.ops.sparseforge.block_attention(q, k, v, None, None, None, True, 0.2,
                                                                           "dense", 0.0, 32, 32)[0],
                      backend="eager", fullgraph=True)
    assert torch.equal(f(q, k, v), block_attention(q, k, v, causal=True, scale=0.2, block_size=32)[0])


def test_flex_attention_style_block_mask():
    """An object with kv_num_blocks/kv_indices (+ full_kv_* and BLOCK_SIZE) is taken as FlexAttention's BlockMask."""
    q, k, v = rand_qkv(1, 2, 2, 64, 128, 32, seed=8)

    class Mask:
        kv_num_blocks = torch.tensor([[[1]]], dtype=torch.int32)
        kv_indices = torch.tensor([[[[1, 0]]]], dtype=torch.int32)
        full_kv_num_blocks = torch.tensor([[[1]]], dtype=torch.int32)
        full_kv_indices = torch.tensor([[[[0, 1]]]], dtype=torch.int32)
        BLOCK_SIZE = (64, 64)

    out, st = block_attention(q, k, v, mode="block_mask", block_mask=Mask())
    assert st.computed == st.total == 4
    assert (out.double() - sdpa64(q, k, v, False)).abs().max().item() <= tolerance(q, k, v)
    with pytest.raises(ValueError, match="BLOCK_SIZE"):
        block_attention(q, k, v, mode="block_mask", block_mask=Mask(), block_size=32)


def test_queries_that_see_no_key_get_zeros():
    q, k, v = rand_qkv(1, 1, 1, 10, 4, 8, seed=1)  # causal with Lq > Lk: the first 6 queries see nothing
    out, _ = block_attention(q, k, v, causal=True, block_size=4)
    ref, _ = block_attention_reference(q.double(), k.double(), v.double(), causal=True, block_size=4)
    assert torch.equal(out[:, :, :6], torch.zeros(1, 1, 6, 8))
    assert (out.double() - ref).abs().max() < 1e-5


def test_workspace_is_not_quadratic():
    """L = 8192 would need 256 MiB for an L x L score matrix; peak RSS must grow by far less."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM, the peak RSS
    except OSError:
        pytest.skip("needs Linux /proc/self/clear_refs")

    def hwm():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) * 1024

    q, k, v = rand_qkv(1, 1, 1, 8192, 8192, 8, seed=0)
    before = hwm()
    block_attention(q, k, v)
    assert hwm() - before < 16 << 20


@pytest.mark.parametrize("kw,exc,match", [
    (dict(q=torch.zeros(1, 2, 4, 8, dtype=torch.float64)), TypeError, "'q'"),
    (dict(k=torch.zeros(1, 2, 4, 8, dtype=torch.float16)), TypeError, "'k'"),
    (dict(q=torch.zeros(2, 4, 8)), ValueError, "'q' must be 4-D"),
    (dict(q=torch.zeros(1, 2, 4, 8, device="meta")), ValueError, "CPU"),
    (dict(v=torch.zeros(1, 2, 5, 8)), ValueError, "'v'"),
    (dict(k=torch.zeros(1, 2, 4, 9), v=torch.zeros(1, 2, 4, 9)), ValueError, "head_dim"),
    (dict(q=torch.zeros(1, 3, 4, 8)), ValueError, "multiple"),
    (dict(mode="sparse"), ValueError, "'mode'"),
    (dict(mode="threshold"), ValueError, "'threshold'"),
    (dict(mode="threshold", threshold=-1.0), ValueError, "'threshold'"),
    (dict(threshold=0.5), ValueError, "'threshold'"),
    (dict(mode="block_mask"), ValueError, "'block_mask'"),
    (dict(mode="block_mask", block_mask=torch.zeros(3)), TypeError, "'block_mask'"),
    (dict(mode="block_mask", block_mask=(torch.ones(1, 2, 2, dtype=torch.int32), torch.zeros(1, 2, 1, 1, dtype=torch.int32))),
     ValueError, "query blocks"),
    (dict(mode="block_mask", block_mask=(torch.ones(1, 2, 1, dtype=torch.int32), torch.full((1, 2, 1, 1), 5, dtype=torch.int32))),
     ValueError, "kv_indices"),
    (dict(mode="block_mask", block_mask=(torch.full((1, 2, 1), 2, dtype=torch.int32), torch.zeros(1, 2, 1, 1, dtype=torch.int32))),
     ValueError, "kv_num_blocks"),
    (dict(mode="block_mask", block_mask=(torch.ones(1, 2, 1, dtype=torch.float32), torch.zeros(1, 2, 1, 1, dtype=torch.int32))),
     TypeError, "kv_num_blocks"),
    (dict(mode="early_stop", threshold=0.1), ValueError, "'order'"),
    (dict(mode="early_stop", threshold=0.1, order=torch.zeros(1, 1, 1, 2, dtype=torch.int32)), ValueError, "'order'"),
    (dict(mode="early_stop", threshold=0.1, order=torch.zeros(1, 1, 1, 1, dtype=torch.int32), block_size=2), ValueError, "'order'"),
    (dict(block_size=0), ValueError, "'block_size'"),
    (dict(block_size=(8, 8, 8)), ValueError, "'block_size'"),
    (dict(scale=float("nan")), ValueError, "'scale'"),
    (dict(causal=1), TypeError, "'causal'"),
])
def test_bad_inputs_name_the_argument(kw, exc, match):
    args = dict(q=torch.zeros(1, 2, 4, 8), k=torch.zeros(1, 2, 4, 8), v=torch.zeros(1, 2, 4, 8))
    args.update(kw)
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    with pytest.raises(exc, match=match):
        block_attention(q, k, v, **args)


def test_decode_entries_reject_bad_inputs():
    q, k, v = rand_qkv(1, 4, 2, 1, 20, 8, seed=0)
    with pytest.raises(ValueError, match="'token_indices'"):
        gathered_decode_attention(q, k, v, torch.full((1, 2, 3), 20))
    with pytest.raises(ValueError, match="twice"):
        gathered_decode_attention(q, k, v, torch.zeros(1, 2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="'token_indices'"):
        gathered_decode_attention(q, k, v, torch.zeros(1, 3, 1, dtype=torch.int64))
    with pytest.raises(ValueError, match="decode query"):
        gathered_decode_attention(torch.zeros(1, 4, 2, 8), k, v, torch.zeros(1, 2, 1, dtype=torch.int64))
    ch = torch.zeros(2, 3, dtype=torch.int32)
    with pytest.raises(ValueError, match="'k_label'"):
        double_sparsity_decode(q, k, v, torch.zeros(1, 2, 20, 4), ch, 5)
    with pytest.raises(ValueError, match="'q_channels'"):
        double_sparsity_decode(q, k, v, torch.zeros(1, 2, 20, 3), ch + 8, 5)
    with pytest.raises(ValueError, match="'k_sel'"):
        double_sparsity_decode(q, k, v, torch.zeros(1, 2, 20, 3), ch, 0)


def test_binding_validates_arguments():
    q, k, v = rand_qkv(1, 2, 2, 8, 8, 8, seed=0)
    out, stats = np.zeros((1, 2, 8, 8), np.float32), np.zeros(4, np.int64)
    with pytest.raises(TypeError, match="'q'"):
        _C.block_attention(q.double().numpy(), k.numpy(), v.numpy(), out, stats, 0, False, 1.0, 0.0, 4, 4)
    with pytest.raises(ValueError, match="'out'"):
        _C.block_attention(q.numpy(), k.numpy(), v.numpy(), out[:, :1], stats, 0, False, 1.0, 0.0, 4, 4)
    with pytest.raises(ValueError, match="'kv_indices'"):
        _C.block_attention(q.numpy(), k.numpy(), v.numpy(), out, stats, 2, False, 1.0, 0.0, 4, 4,
                           np.ones((1, 1, 2), np.int32), np.full((1, 1, 2, 2), 7, np.int32))
    with pytest.raises(ValueError, match="'order'"):
        _C.block_attention(q.numpy(), k.numpy(), v.numpy(), out, stats, 3, False, 1.0, 0.0, 4, 4, None, None,
                           np.full((1, 1, 2, 2), -1, np.int32))
