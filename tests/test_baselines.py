"""Multimodal baselines VBPR, FREEDOM, SMORE: learning, modalities, FREEDOM's pruning, SMORE's filters."""

import numpy as np
import pytest
import torch

from fitmm.config import load_config
from fitmm.data.dataset import Interactions
from fitmm.errors import ConfigError
from fitmm.metrics import evaluate
from fitmm.models.base import Batch
from fitmm.models.freedom import FREEDOM
from fitmm.models.smore import SMORE, info_nce, max_pool
from fitmm.trainer import build_model, train

MODELS = ["vbpr", "freedom", "smore"]


def config(model: str, **overrides) -> dict:
    return load_config(model, {"batch_size": 512, "epochs": 6, "eval_batch_users": 512, "device": "cpu", **overrides})


def with_features(data: Interactions, features: dict) -> Interactions:
    return Interactions(data.name, data.n_users, data.n_items, data.train, data.valid, data.test, features)


@pytest.mark.parametrize("model", MODELS)
def test_training_beats_the_untrained_model(synthetic, model):
    # VBPR's default reg_weight (1.0, tuned on TikTok) holds it back over 6 epochs on 5k pairs
    cfg = config(model, **({"reg_weight": 1.0e-4} if model == "vbpr" else {}))
    untrained, _ = evaluate(build_model(synthetic, cfg, torch.device("cpu")).eval().scorer(), synthetic, "valid", [20])
    record = train(synthetic, cfg, progress=False)
    assert record["best_valid"]["recall@20"] > untrained["recall@20"] + 0.05


@pytest.mark.parametrize("model", MODELS)
def test_any_number_of_modalities(synthetic, model):
    rng = np.random.default_rng(0)
    for feats in ({"text": synthetic.features["text"]},
                  {**synthetic.features, "audio": rng.normal(size=(synthetic.n_items, 8)).astype(np.float32)}):
        one = build_model(with_features(synthetic, feats), config(model), torch.device("cpu"))
        terms = one.loss_terms(Batch.of(torch.arange(8), torch.arange(8), torch.arange(8, 16)))
        sum(terms.values()).backward()
        u, i = one.embeddings()
        assert u.shape[0] == synthetic.n_users and i.shape[0] == synthetic.n_items and torch.isfinite(u @ i.T).all()


@pytest.mark.parametrize("model", MODELS)
def test_no_modality_is_a_clear_error(synthetic, model):
    with pytest.raises(ConfigError, match=r"needs 1 item modality \(a <modality>_feat.npy file\); dataset 'synthetic' has 0"):
        build_model(with_features(synthetic, {}), config(model), torch.device("cpu"))


def test_freedom_pruning_is_symmetric_renormalised_and_drops_the_ratio(synthetic):
    model = FREEDOM(synthetic, config("freedom", prune_ratio=0.8))
    torch.manual_seed(3)
    model.on_epoch_start(0)
    adj = model.train_adj.to_dense()
    n_edges = len(synthetic.train)
    assert torch.equal(adj, adj.T)
    assert (adj > 0).sum().item() == 2 * int(n_edges * 0.2)
    block = adj[: synthetic.n_users, synthetic.n_users :]
    assert set(map(tuple, block.nonzero().tolist())) <= set(map(tuple, synthetic.train.tolist()))
    # D^{-1/2} A D^{-1/2} of the kept graph: each value is 1/sqrt(d_u d_i) with the kept degrees
    kept = (block > 0).float()
    expected = kept / torch.sqrt(kept.sum(1, keepdim=True).clamp(min=1) * kept.sum(0, keepdim=True).clamp(min=1))
    assert torch.allclose(block, expected)
    # the same torch seed gives the same graph; evaluation uses the full graph
    torch.manual_seed(3)
    model.on_epoch_start(0)
    assert torch.equal(model.train_adj.to_dense(), adj)
    torch.manual_seed(4)
    model.on_epoch_start(1)
    assert not torch.equal(model.train_adj.to_dense(), adj)
    u, i = model.embeddings()
    full = model.propagate(model.adj)
    assert torch.equal(u, full[0]) and torch.equal(i, full[1])


def test_freedom_pruning_prefers_low_degree_edges(synthetic):
    model = FREEDOM(synthetic, config("freedom", prune_ratio=0.5))
    torch.manual_seed(0)
    model.on_epoch_start(0)
    block = model.train_adj.to_dense()[: synthetic.n_users, synthetic.n_users :] > 0
    kept = block[synthetic.train[:, 0], synthetic.train[:, 1]].numpy()
    weight = model.edge_weight.numpy()
    assert weight[kept].mean() > weight[~kept].mean()


def test_smore_filters_set_to_one_are_identity(synthetic):
    model = SMORE(synthetic, config("smore"))
    with torch.no_grad():
        for w in [*model.filters.values(), model.fusion_filter]:
            w.copy_(torch.tensor([1.0, 0.0]).expand_as(w))
        conv, fused = model.spectrum()
        x = {m: model.proj[m](model.features[m]) for m in synthetic.modalities}
    for m in synthetic.modalities:
        torch.testing.assert_close(conv[m], x[m], atol=1e-5, rtol=1e-5)
    # with unit filters the fusion is the circular convolution of the modal features (ortho FFT: / sqrt(d))
    a, b = (x[m].double().numpy() for m in synthetic.modalities)
    d = a.shape[1]
    circular = np.stack([sum(a[:, j] * b[:, (k - j) % d] for j in range(d)) for k in range(d)], axis=1) / np.sqrt(d)
    np.testing.assert_allclose(fused.numpy(), circular, atol=1e-4)


def test_smore_fusion_graph_is_the_elementwise_max():
    a = torch.tensor([[0.0, 0.5, 0.0], [0.2, 0.0, 0.0], [0.0, 0.0, 0.3]]).to_sparse_csr()
    b = torch.tensor([[0.0, 0.1, 0.4], [0.6, 0.0, 0.0], [0.0, 0.0, 0.0]]).to_sparse_csr()
    expected = torch.tensor([[0.0, 0.5, 0.4], [0.6, 0.0, 0.0], [0.0, 0.0, 0.3]])
    assert torch.equal(max_pool([a, b]).to_dense(), expected)


def test_smore_knn_k_follows_the_modality_slot(synthetic):
    """TikTok's audio sits in SMORE's text slot: it takes text_knn_k, the modality called image image_knn_k."""
    rng = np.random.default_rng(0)
    tiktok_like = with_features(synthetic, {m: rng.normal(size=(synthetic.n_items, 8)).astype(np.float32)
                                            for m in ("audio", "image")})
    model = SMORE(tiktok_like, config("smore", image_knn_k=7, text_knn_k=3))
    for name, k in (("image", 7), ("audio", 3)):
        per_row = getattr(model, f"item_adj_{name}").crow_indices().diff()
        assert per_row.max() == k
    assert load_config("smore").lr_decay == 0.96 and load_config("smore").lr_decay_every == 50


def test_smore_info_nce_equals_cross_entropy_on_the_cosine_logits():
    """Value and gradients of the hand-written InfoNCE against autograd on F.cross_entropy(cos / τ), twice
    through a retained graph (the kept probabilities are never changed)."""
    torch.manual_seed(3)
    v1, v2 = torch.randn(9, 4, dtype=torch.float64, requires_grad=True), torch.randn(9, 4, dtype=torch.float64,
                                                                                        requires_grad=True)
    logits = torch.nn.functional.normalize(v1, dim=1) @ torch.nn.functional.normalize(v2, dim=1).T / 0.2
    direct = torch.nn.functional.cross_entropy(logits, torch.arange(9))
    fused = info_nce(v1, v2, 0.2)
    torch.testing.assert_close(fused, direct)
    want = torch.autograd.grad(3 * direct, [v1, v2])
    for _ in range(2):
        for g, w in zip(torch.autograd.grad(3 * fused, [v1, v2], retain_graph=True), want):
            torch.testing.assert_close(g, w)
