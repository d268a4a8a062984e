"""Cross-checks against PyTorch Geometric, the field's graph library: the normalised adjacency and
Laplacian (`torch_geometric.utils`, `gcn_norm`) and LightGCN's propagation (`torch_geometric.nn.models.LightGCN`)."""

import numpy as np
import pytest
import torch
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.nn.models import LightGCN as PyGLightGCN
from torch_geometric.utils import get_laplacian, to_dense_adj

from fitmm.config import load_config
from fitmm.data.dataset import Interactions
from fitmm.graphs import scipy_to_torch_csr, user_item_adjacency
from fitmm.models.lightgcn import LightGCN
from fitmm.spectral.graph_bands import laplacian_eigh

N_USERS, N_ITEMS = 30, 20


@pytest.fixture(scope="module")
def train() -> np.ndarray:
    """Random train pairs; the last user and the last item have none (isolated nodes)."""
    rng = np.random.default_rng(0)
    pairs = np.stack([rng.integers(0, N_USERS - 1, 150), rng.integers(0, N_ITEMS - 1, 150)], 1)
    return np.unique(pairs, axis=0)


def edge_index(train: np.ndarray) -> torch.Tensor:
    """Both directions of every user-item edge, items numbered after the users (PyG's layout)."""
    users, items = torch.from_numpy(train).T
    return torch.cat([torch.stack([users, items + N_USERS]), torch.stack([items + N_USERS, users])], 1)


def test_normalised_adjacency_equals_gcn_norm(train):
    n = N_USERS + N_ITEMS
    index, weight = gcn_norm(edge_index(train), None, n, add_self_loops=False, dtype=torch.float64)
    theirs = to_dense_adj(index, edge_attr=weight, max_num_nodes=n)[0]
    ours = torch.from_numpy(user_item_adjacency(train, N_USERS, N_ITEMS).toarray())
    torch.testing.assert_close(ours, theirs)


def test_laplacian_spectrum_equals_get_laplacian(train):
    n = N_USERS + N_ITEMS
    index, weight = get_laplacian(edge_index(train), normalization="sym", dtype=torch.float64, num_nodes=n)
    theirs = to_dense_adj(index, edge_attr=weight, max_num_nodes=n)[0]
    evals, evecs = laplacian_eigh(scipy_to_torch_csr(user_item_adjacency(train, N_USERS, N_ITEMS)))
    torch.testing.assert_close(evals, torch.linalg.eigvalsh(theirs))
    evecs = evecs.double()
    torch.testing.assert_close(evecs @ torch.diag(evals) @ evecs.T, theirs, atol=1e-5, rtol=0)


def test_lightgcn_propagation_and_gradient_equal_pygs(train):
    empty = train[:0]
    data = Interactions("pyg", N_USERS, N_ITEMS, train, empty, empty)
    model = LightGCN(data, load_config("lightgcn", {"device": "cpu", "n_layers": 3, "embedding_dim": 16}))
    reference = PyGLightGCN(N_USERS + N_ITEMS, 16, num_layers=3)  # α_l = 1/(L + 1): the mean over layers
    with torch.no_grad():
        reference.embedding.weight.copy_(torch.cat([model.user_emb, model.item_emb]))
    ours = torch.cat(model.embeddings())
    theirs = reference.get_embedding(edge_index(train))
    torch.testing.assert_close(ours, theirs)
    probe = torch.randn(ours.shape, generator=torch.Generator().manual_seed(1))
    (ours * probe).sum().backward()
    (theirs * probe).sum().backward()
    torch.testing.assert_close(torch.cat([model.user_emb.grad, model.item_emb.grad]), reference.embedding.weight.grad)
