"""Per-kernel suites: shapes x sparsity x backend, each beside its dense torch anchor.

The cpu backend is ``sparseforge._C`` (native, best ISA), the wasm backend is the WebAssembly module run by
wasmtime with the same call signatures (``sparseforge.backends.wasm.kernels()``); a backend that is not
built here raises NotImplementedError in setup, which asv reports as skipped. ``track_speedup_vs_dense``
is measured in one process (median of interleaved repeats), so it is a ratio, not two timelines.
"""

import time

import numpy as np
import torch

from sparseforge import _C
from sparseforge.backends import list_backends

BACKENDS = ["cpu", "wasm"]


class KernelSuite:
    """One kernel on one backend, single-threaded on both sides (torch's anchor and ours), so a ratio
    compares kernels, not thread counts; teardown restores sparseforge's default."""
    timeout = 120

    def use(self, backend):
        self.k = kernels(backend)
        torch.set_num_threads(1)
        _C.set_num_threads(1)

    def teardown(self, *args):
        _C.set_num_threads(0)


def kernels(backend):
    info = list_backends()[backend]
    if not info.available:
        raise NotImplementedError(info.reason)
    if backend == "cpu":
        return _C
    from sparseforge.backends import wasm

    return wasm.kernels()


def ratio(dense_fn, sparse_fn, repeats=7):
    """Median over interleaved rounds of dense time / sparse time."""
    dense_fn(), sparse_fn()
    r = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dense_fn()
        t1 = time.perf_counter()
        sparse_fn()
        t2 = time.perf_counter()
        r.append((t1 - t0) / max(t2 - t1, 1e-9))
    return float(np.median(r))


class NmGemm(KernelSuite):
    """2:4 Y = X W^T against torch.nn.functional.linear on the dense masked weight."""
    params = (BACKENDS, [(4096, 4096)], [1, 16])
    param_names = ["backend", "shape", "batch"]

    def setup(self, backend, shape, batch):
        from sparseforge.formats import NMSparse

        self.use(backend)
        torch.manual_seed(0)
        w = NMSparse.from_dense(torch.randn(*shape), 2, 4, prune=True)
        self.values, self.meta, self.dense_w = w.values.numpy(), w.meta.numpy(), w.to_dense()
        self.x = torch.randn(batch, shape[1])
        self.xn = self.x.numpy()
        self.out = np.empty((batch, shape[0]), np.float32)
        self.kdim = shape[1]

    def _sparse(self):
        self.k.nm_gemm(self.xn, self.values, self.meta, 2, 4, self.kdim, None, self.out)

    def time_sparse(self, backend, shape, batch):
        self._sparse()

    def track_speedup_vs_dense(self, backend, shape, batch):
        return ratio(lambda: torch.nn.functional.linear(self.x, self.dense_w), self._sparse)

    track_speedup_vs_dense.unit = "x"


class SpmmConv(KernelSuite):
    """Sparse 1x1 convolution (CHW SpMM) against torch.nn.functional.conv2d, MobileNetV2 shapes."""
    params = (BACKENDS, [(256, 256, 28), (512, 512, 14)], [0.7, 0.9])
    param_names = ["backend", "cin_cout_hw", "sparsity"]

    def setup(self, backend, shape, sparsity):
        from sparseforge.formats import SparseConvWeight

        self.use(backend)
        c_in, c_out, hw = shape
        rng = np.random.default_rng(0)
        w = rng.standard_normal((c_out, c_in)).astype(np.float32)
        w[rng.random(w.shape) < sparsity] = 0
        self.p = SparseConvWeight.from_dense(w, block=1)
        self.x = torch.from_numpy(rng.standard_normal((1, c_in, hw, hw)).astype(np.float32))
        self.xn = self.x.numpy().reshape(1, c_in, hw * hw)
        self.w4 = torch.from_numpy(w)[:, :, None, None]
        self.out = np.empty((1, c_out, hw * hw), np.float32)

    def _sparse(self):
        p = self.p
        self.k.spmm_conv(self.xn, p.nnz, p.offsets, p.idx_delta, p.values, p.c_out, p.c_in, p.block, None,
                         -np.inf, np.inf, self.out)

    def time_sparse(self, backend, shape, sparsity):
        self._sparse()

    def track_speedup_vs_dense(self, backend, shape, sparsity):
        return ratio(lambda: torch.nn.functional.conv2d(self.x, self.w4), self._sparse)

    track_speedup_vs_dense.unit = "x"


class SpGEMM(KernelSuite):
    """C = A.A for CSR A against scipy.sparse (A @ A)."""
    params = (BACKENDS, ["poisson2d", "erdos_renyi"])
    param_names = ["backend", "matrix"]

    def setup(self, backend, matrix):
        from sparseforge.data import spgemm_matrices as mats

        self.use(backend)
        a, _ = mats.poisson2d(200) if matrix == "poisson2d" else mats.erdos_renyi(20000, 8)
        self.a = a  # canonical float64 CSR: sorted, unique int32 indices

    def _sparse(self):
        a = self.a
        self.k.spgemm(a.indptr, a.indices, a.data, a.shape, a.indptr, a.indices, a.data, a.shape)

    def time_sparse(self, backend, matrix):
        self._sparse()

    def track_speedup_vs_scipy(self, backend, matrix):
        return ratio(lambda: self.a @ self.a, self._sparse)

    track_speedup_vs_scipy.unit = "x"


class BlockAttention(KernelSuite):
    """Block-skip attention against torch SDPA (B=1, 8 heads, D=64, causal)."""
    params = (BACKENDS, [1024], ["dense", "block_mask_75"])
    param_names = ["backend", "length", "mode"]

    def setup(self, backend, length, mode):
        self.use(backend)
        torch.manual_seed(0)
        h, d, bs = 8, 64, 64
        self.q, self.kk, self.v = (torch.randn(1, h, length, d) for _ in range(3))
        self.out = np.empty((1, h, length, d), np.float32)
        self.stats = np.zeros(4, np.int64)
        nb = length // bs
        self.mask = None
        if mode != "dense":  # every query block keeps its diagonal block and a quarter of the rest
            keep = max(1, nb // 4)
            num = np.empty((1, h, nb), np.int32)
            idx = np.zeros((1, h, nb, nb), np.int32)
            for i in range(nb):
                cols = sorted(set([i] + list(range(0, i, max(1, i // keep or 1)))[:keep - 1]))
                num[0, :, i] = len(cols)
                idx[0, :, i, :len(cols)] = cols
            self.mask = (num, idx)
        self.mode_id = 0 if mode == "dense" else 2
        self.bs = bs

    def _sparse(self):
        num, idx = self.mask if self.mask else (None, None)
        self.k.block_attention(self.q.numpy(), self.kk.numpy(), self.v.numpy(), self.out, self.stats, self.mode_id,
                               True, 0.125, 0.0, self.bs, self.bs, num, idx, None)

    def time_sparse(self, backend, length, mode):
        self._sparse()

    def track_speedup_vs_sdpa(self, backend, length, mode):
        sdpa = torch.nn.functional.scaled_dot_product_attention
        return ratio(lambda: sdpa(self.q, self.kk, self.v, is_causal=True), self._sparse)

    track_speedup_vs_sdpa.unit = "x"
