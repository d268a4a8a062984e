"""Graphs: normalised adjacency, kNN graphs, sparse products with a precomputed transpose."""

import numpy as np
import pytest
import torch

from fitmm.config import load_config
from fitmm.errors import ConfigError
from fitmm.graphs import csr_mm, knn_adjacency, resolve_item_graph_weights, spmm, transpose_csr, user_item_adjacency
from fitmm.models import MODELS
from fitmm.models.base import propagate_mean
from tests.test_fitmm import tiny


def test_spmm_gradient_uses_the_transpose():
    a = torch.rand(7, 5).where(torch.rand(7, 5) < 0.4, torch.tensor(0.0))
    x = torch.randn(5, 3, requires_grad=True)
    csr = a.to_sparse_csr()
    spmm(csr, x, transpose_csr(csr)).square().sum().backward()
    expected = torch.autograd.grad((a @ x).square().sum(), x)[0]
    torch.testing.assert_close(x.grad, expected)


def test_csr_mm_equals_torch_sparse_mm_on_strided_inputs():
    a = torch.rand(9, 6).where(torch.rand(9, 6) < 0.4, torch.tensor(0.0)).to_sparse_csr()
    x = torch.randn(4, 6).T  # non-contiguous
    assert torch.equal(csr_mm(a, x), torch.sparse.mm(a, x))
    assert torch.equal(csr_mm(a, x[:, :1]), torch.sparse.mm(a, x[:, :1]))


def test_user_item_adjacency_is_symmetric_normalised():
    train = np.array([[0, 0], [0, 1], [1, 1], [2, 2]])
    adj = user_item_adjacency(train, 3, 3).toarray()
    np.testing.assert_allclose(adj, adj.T)
    # edge (user 0, item 1): degrees 2 and 2 -> 1/2; (user 2, item 2): degrees 1 and 1 -> 1.
    np.testing.assert_allclose([adj[0, 3 + 1], adj[2, 3 + 2]], [0.5, 1.0])
    assert np.all(np.diag(adj) == 0)
    eig = np.linalg.eigvalsh(adj)
    assert eig.max() <= 1 + 1e-9 and eig.min() >= -1 - 1e-9


def test_knn_adjacency_keeps_k_most_similar():
    feats = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]], dtype=np.float32)
    knn = knn_adjacency(feats, k=2).toarray()
    assert knn.sum(1).tolist() == [2, 2, 2, 2]
    assert knn[0, 1] == 1 and knn[2, 3] == 1 and knn[0, 2] == 0


def test_item_graph_weights_go_by_modality_name_not_order():
    assert resolve_item_graph_weights(["audio", "image"], None) == {"audio": 0.9, "image": 0.1}
    assert resolve_item_graph_weights(["image", "text"], None) == {"image": 0.1, "text": 0.9}
    assert resolve_item_graph_weights(["audio", "image", "text"], None) == pytest.approx({"audio": 0.45, "image": 0.1, "text": 0.45})
    assert resolve_item_graph_weights(["text"], None) == {"text": 1.0}
    assert resolve_item_graph_weights(["genre", "text"], {"text": 0.7, "genre": 0.3}) == {"genre": 0.3, "text": 0.7}
    with pytest.raises(ConfigError, match="item_graph_weights: .* expected a weight for every item modality \\(genre, text\\)"):
        resolve_item_graph_weights(["genre", "text"], {"image": 0.1, "text": 0.9})
    with pytest.raises(ConfigError, match="item_graph_weights: \\{'genre': -1, 'text': 0.9\\} is not allowed"):
        load_config("fitmm", {"item_graph_weights": {"genre": -1, "text": 0.9}})


@pytest.mark.parametrize("model", ["fitmm", "ssr", "freedom"])
def test_text_and_genre_without_image_warn_and_record_the_weights(model):
    data = tiny(modalities=("genre", "text"))
    cfg = load_config(model, {"device": "cpu"})
    with pytest.warns(UserWarning, match="no item modality is called 'image'.*genre.*text"):
        built = MODELS[model](data, cfg)
    assert built.diagnostics()["item_graph_weights"] == {"genre": 0.5, "text": 0.5}


@pytest.mark.parametrize("n_layers", [0, 1, 2, 3])
def test_propagate_mean_equals_the_mean_of_the_stacked_layers(n_layers):
    """Values and gradients (through both parts, or one part unused) against autograd on the stacked layers."""
    a = torch.rand(8, 8).where(torch.rand(8, 8) < 0.4, torch.tensor(0.0))
    a = (a + a.T).to_sparse_csr()  # symmetric, as Â
    users, items = torch.randn(3, 5, requires_grad=True), torch.randn(5, 5, requires_grad=True)
    w_u, w_i = torch.randn(3, 5), torch.randn(5, 5)
    out_u, out_i = propagate_mean(a, n_layers, users, items)
    layers = [torch.cat([users, items])]
    for _ in range(n_layers):
        layers.append(torch.sparse.mm(a, layers[-1]))
    expected = torch.stack(layers).mean(0)
    torch.testing.assert_close(torch.cat([out_u, out_i]), expected)
    for loss, reference in [((out_u * w_u).sum() + (out_i * w_i).sum(), (expected * torch.cat([w_u, w_i])).sum()),
                            ((out_i * w_i).sum(), (expected[3:] * w_i).sum())]:
        got = torch.autograd.grad(loss, [users, items], retain_graph=True)
        want = torch.autograd.grad(reference, [users, items], retain_graph=True)
        for g, e in zip(got, want):
            torch.testing.assert_close(g, e)
    (single,) = propagate_mean(a, n_layers, torch.cat([users, items]))
    torch.testing.assert_close(single, expected)
