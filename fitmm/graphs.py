"""Graphs built once per dataset: the normalised user-item adjacency and kNN item graphs.

All graphs are torch sparse CSR tensors, so propagation is one `torch.sparse.mm`
per layer (`spmm`). kNN graphs depend only on raw features, so they are cached on
disk (`fitmm.cache`).
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch

from fitmm.cache import cached, fingerprint
from fitmm.data.dataset import Interactions
from fitmm.errors import ConfigError

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")


def csr_mm(adj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """adj @ x for a CSR `adj`, written straight into a fresh output: `torch.sparse.mm` zero-fills a buffer and
    copies the product out of another (on CPU, 20-35 % of the product's time at 16k nodes); same values."""
    out = x.new_empty(adj.shape[0], x.shape[1])
    return torch.addmm(out, adj, x, beta=0, out=out)


class _SparseDenseMM(torch.autograd.Function):
    """adj @ x whose backward multiplies by a precomputed adjᵀ (torch transposes CSR on every backward)."""

    @staticmethod
    def forward(ctx, adj: torch.Tensor, adj_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.adj_t = adj_t
        return csr_mm(adj, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, None, csr_mm(ctx.adj_t, grad.contiguous())


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


IMAGE_WEIGHT = 0.1  # MMRec's mm_image_weight (FREEDOM, DRAGON, FITMM's and SSR's released configs)


def resolve_item_graph_weights(modalities: list[str], weights: dict[str, float] | None) -> dict[str, float]:
    """α_m by modality name. None: image 0.1 (MMRec's `mm_image_weight`) and the others share 0.9; one modality
    alone gets 1; with several and none called image, equal shares, with a warning (the run records them)."""
    if not modalities:
        raise ValueError("no item modality: an item-item graph needs one")
    if weights is not None:
        if set(weights) != set(modalities):
            raise ConfigError(f"item_graph_weights: {weights!r} is not allowed; expected a weight for every item modality ({', '.join(modalities)}) "
                              f"of the dataset, e.g. {{{', '.join(f'{m}: 0.5' for m in modalities)}}}")
        return {m: float(weights[m]) for m in modalities}
    if len(modalities) == 1:
        return {modalities[0]: 1.0}
    if "image" in modalities:
        rest = (1.0 - IMAGE_WEIGHT) / (len(modalities) - 1)
        return {m: IMAGE_WEIGHT if m == "image" else rest for m in modalities}
    alpha = {m: 1.0 / len(modalities) for m in modalities}
    warnings.warn(f"no item modality is called 'image' (modalities: {', '.join(modalities)}): the item graph weights "
                  f"image 0.1 / others 0.9 do not apply; using equal weights {alpha} (set item_graph_weights to choose)")
    return alpha


def item_graph(data: Interactions, alpha: dict[str, float], k: int = 10) -> torch.Tensor:
    """S = Σ_m α_m S_m over the item modalities, α by name (see `resolve_item_graph_weights`)."""
    if not data.modalities:
        raise ValueError(f"dataset {data.name!r} has no item modality: an item-item graph needs one")
    total = None
    for m in data.modalities:
        s = knn_graph(data, m, k).to_sparse_coo() * alpha[m]
        total = s if total is None else total + s
    return total.coalesce().to_sparse_csr()
