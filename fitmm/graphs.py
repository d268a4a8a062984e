"""Graphs built once per dataset: the normalised user-item adjacency and kNN item graphs.

All graphs are torch sparse CSR tensors, so propagation is one `torch.sparse.mm`
per layer. kNN graphs depend only on raw features, so they are cached on disk
(`fitmm.settings.cache_dir`).
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import scipy.sparse as sp
import torch

from fitmm.data.dataset import Interactions
from fitmm.io import torch_save
from fitmm.settings import cache_dir

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")


def fingerprint(data: Interactions) -> str:
    """A short hash of a dataset's train pairs and feature shapes (cache key)."""
    h = hashlib.sha1()
    h.update(np.ascontiguousarray(data.train).tobytes())
    for name, feat in data.features.items():
        h.update(f"{name}:{feat.shape}".encode())
        h.update(np.ascontiguousarray(feat[: min(64, len(feat))]).tobytes())
    return h.hexdigest()[:12]


def cached(key: str, build: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Load a tensor from the cache, or build and store it atomically."""
    path = cache_dir() / f"{key}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    tensor = build()
    torch_save(path, tensor)
    return tensor


class _SparseDenseMM(torch.autograd.Function):
    """adj @ x whose backward multiplies by a precomputed adjᵀ (torch transposes CSR on every backward)."""

    @staticmethod
    def forward(ctx, adj: torch.Tensor, adj_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.adj_t = adj_t
        return torch.sparse.mm(adj, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, None, torch.sparse.mm(ctx.adj_t, grad)


def spmm(adj: torch.Tensor, x: torch.Tensor, adj_t: torch.Tensor | None = None) -> torch.Tensor:
    """Sparse (CSR) times dense, differentiable in `x`; `adj_t` defaults to `adj` (symmetric graphs)."""
    return _SparseDenseMM.apply(adj, adj if adj_t is None else adj_t, x)


def transpose_csr(adj: torch.Tensor) -> torch.Tensor:
    """Aᵀ as CSR, for `spmm`'s backward on a non-symmetric graph (built once)."""
    return adj.to_sparse_coo().t().coalesce().to_sparse_csr()


def scipy_to_torch_csr(matrix: sp.spmatrix) -> torch.Tensor:
    m = sp.csr_matrix(matrix, dtype=np.float32)
    m.sort_indices()
    return torch.sparse_csr_tensor(
        torch.from_numpy(m.indptr.astype(np.int64)),
        torch.from_numpy(m.indices.astype(np.int64)),
        torch.from_numpy(m.data),
        size=m.shape,
    )


def sym_normalize(adj: sp.spmatrix) -> sp.csr_matrix:
    """D^{-1/2} A D^{-1/2} with row degrees; isolated nodes stay zero."""
    adj = sp.csr_matrix(adj, dtype=np.float64)
    degree = np.asarray(adj.sum(axis=1)).ravel()
    inv_sqrt = np.zeros_like(degree)
    nonzero = degree > 0
    inv_sqrt[nonzero] = degree[nonzero] ** -0.5
    d = sp.diags(inv_sqrt)
    return (d @ adj @ d).tocsr()


def user_item_adjacency(train: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    """Symmetric normalised adjacency Â of the bipartite train graph, (U+I) x (U+I), no self loops."""
    r = sp.csr_matrix((np.ones(len(train)), (train[:, 0], train[:, 1])), shape=(n_users, n_items))
    adj = sp.bmat([[None, r], [r.T, None]], format="csr")
    return sym_normalize(adj)


def random_user_item_adjacency(n_users: int, n_items: int, seed: int = 0) -> torch.Tensor:
    """Â (CSR) of a random user-item graph with 5-core-like users (degree 5 + a geometric tail) and
    long-tailed (Pareto) item popularity: a stand-in graph for band tests and benchmarks."""
    rng = np.random.default_rng(seed)
    popularity = rng.pareto(1.2, n_items) + 1
    popularity /= popularity.sum()
    degree = np.minimum(4 + rng.geometric(0.3, n_users), n_items // 2)
    pairs = np.array([(u, i) for u, d in enumerate(degree) for i in rng.choice(n_items, d, replace=False, p=popularity)])
    return scipy_to_torch_csr(user_item_adjacency(pairs, n_users, n_items))


def normalized_adjacency(data: Interactions) -> torch.Tensor:
    """Â of the train graph as a torch CSR tensor (cheap to build; not cached)."""
    return scipy_to_torch_csr(user_item_adjacency(data.train, data.n_users, data.n_items))


def knn_adjacency(features: np.ndarray, k: int, chunk: int = 2048) -> sp.csr_matrix:
    """Binary kNN graph by cosine similarity (each item's top-k, itself included, as in MMRec)."""
    feats = torch.from_numpy(np.asarray(features, dtype=np.float32))
    feats = torch.nn.functional.normalize(feats, dim=1)
    n = feats.shape[0]
    k = min(k, n)
    cols = torch.empty(n, k, dtype=torch.long)
    for start in range(0, n, chunk):
        sim = feats[start : start + chunk] @ feats.T
        cols[start : start + chunk] = sim.topk(k, dim=1).indices
    rows = np.repeat(np.arange(n), k)
    return sp.csr_matrix((np.ones(n * k), (rows, cols.numpy().ravel())), shape=(n, n))


def knn_graph(data: Interactions, modality: str, k: int = 10) -> torch.Tensor:
    """Normalised kNN item graph S_m of one modality (MMRec/DRAGON: D^{-1/2} A D^{-1/2}), cached."""
    key = f"knn-{data.name}-{fingerprint(data)}-{modality}-k{k}"
    return cached(key, lambda: scipy_to_torch_csr(sym_normalize(knn_adjacency(data.features[modality], k))))


def item_graph(data: Interactions, weights: dict[str, float] | list[float] | None, k: int = 10) -> torch.Tensor:
    """S = Σ_m α_m S_m over the item modalities. With `weights` None: first modality 0.1, the rest share 0.9."""
    mods = data.modalities
    if not mods:
        raise ValueError(f"dataset {data.name!r} has no item modality: an item-item graph needs one")
    if weights is None:
        alpha = [1.0] if len(mods) == 1 else [0.1] + [0.9 / (len(mods) - 1)] * (len(mods) - 1)
    elif isinstance(weights, dict):
        alpha = [float(weights[m]) for m in mods]
    else:
        alpha = [float(w) for w in weights]
    if len(alpha) != len(mods):
        raise ValueError(f"item graph weights {alpha} do not match modalities {mods}")
    total = None
    for a, m in zip(alpha, mods):
        s = knn_graph(data, m, k).to_sparse_coo() * a
        total = s if total is None else total + s
    return total.coalesce().to_sparse_csr()
