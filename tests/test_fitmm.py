"""FITMM: feature bands (Gram-eigh), backbone, gate, IB, both consistency readings, ablations, training."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from fitmm.config import load_config
from fitmm.data.dataset import Interactions
from fitmm.errors import ConfigError
from fitmm.models.backbone import Backbone, BlockNormalize
from fitmm.models.base import Batch
from fitmm.models.fitmm import FITMM, FITMMConfig, BandFusion, consistency_code, consistency_paper, ib_penalty
from fitmm.spectral.feature_bands import (apply_bands, band_projectors, band_sum, equal_membership, feature_bands,
                                          group_sizes)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(n_users=60, n_items=40, modalities=("image", "text"), seed=0) -> Interactions:
    rng = np.random.default_rng(seed)
    pairs = np.array(sorted({(u, i) for u, i in zip(rng.integers(0, n_users, 700), rng.integers(0, n_items, 700))}))
    pairs = np.concatenate([pairs, np.stack([np.arange(n_users), np.arange(n_users) % n_items], 1)])  # every user in train
    pairs = np.unique(pairs, axis=0)
    rng.shuffle(pairs)
    head = pairs[:n_users]
    rest = pairs[n_users:]
    n = len(rest)
    train = np.concatenate([head, rest[: int(0.8 * n)]])
    features = {m: rng.normal(size=(n_items, 12 + 4 * j)).astype(np.float32) for j, m in enumerate(modalities)}
    return Interactions("tiny", n_users, n_items, train, rest[int(0.8 * n): int(0.9 * n)], rest[int(0.9 * n):], features)


def config(**overrides) -> FITMMConfig:
    return load_config("fitmm", {"device": "cpu", "batch_size": 64, "eval_batch_users": 64, **overrides})


def build(data, seed=0, **overrides) -> FITMM:
    torch.manual_seed(seed)
    return FITMM(data, config(**overrides))


def batch(data, n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, len(data.train), (n,), generator=g)
    train = torch.from_numpy(data.train)
    return Batch.of(train[rows, 0], train[rows, 1], torch.randint(0, data.n_items, (n,), generator=g))


def spread(n=90, dims=(16, 16), seed=0) -> torch.Tensor:
    """Random float64 blocks with distinct, spread singular values."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randn(n, d, generator=g, dtype=torch.float64) * torch.logspace(0, -1.5, d, dtype=torch.float64)
                      for d in dims], 1)


# ---- feature bands ------------------------------------------------------------------------------

def test_group_sizes_are_contiguous_and_larger_first():
    assert group_sizes(64, 3) == [22, 21, 21]
    assert group_sizes(64, 6) == [11, 11, 11, 11, 10, 10]
    assert group_sizes(64, 1) == [64]
    with pytest.raises(ValueError):
        group_sizes(64, 0)


@pytest.mark.parametrize("dim,n_bands", [(64, 3), (64, 6), (64, 1), (7, 7), (10, 4)])
def test_equal_membership_is_one_contiguous_group_per_direction(dim, n_bands):
    mask = equal_membership(dim, n_bands, batch=2)
    assert mask.shape == (2, n_bands, dim) and mask.dtype == torch.float64 and (mask.sum(1) == 1).all()
    assert mask[0].sum(1).long().tolist() == group_sizes(dim, n_bands)
    assert (mask[0].argmax(0).diff() >= 0).all()  # strongest directions in the first group


@pytest.mark.parametrize("borders", ["equal", "energy"])
@pytest.mark.parametrize("n_bands", [1, 2, 3, 4, 6])
def test_bands_sum_to_the_input_and_are_orthogonal_within_each_block(borders, n_bands):
    z = spread()
    bands = feature_bands(z, 16, n_bands, borders)
    assert bands.shape == (n_bands, *z.shape)
    torch.testing.assert_close(bands.sum(0), z)
    blocks = bands.view(n_bands, len(z), 2, 16)
    scale = z.square().sum()
    for j in range(n_bands):
        for k in range(j + 1, n_bands):
            cross = torch.einsum("nbi,nbj->bij", blocks[j], blocks[k])
            assert cross.abs().max() < 1e-10 * scale


def test_band_sum_is_the_sum_of_the_per_block_projections():
    g = torch.Generator().manual_seed(0)
    zs = [torch.randn(7, 3 * 8, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    ps = [torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    ours = band_sum(*zip(zs, ps))
    reference = sum(torch.einsum("nbi,bmij->mnbj", z.view(7, 3, 8), p).reshape(4, 7, 24) for z, p in zip(zs, ps))
    torch.testing.assert_close(ours, reference)
    w = torch.randn(4, 7, 24, generator=g, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad((ours * w).sum(), zs + ps), torch.autograd.grad((reference * w).sum(), zs + ps)):
        torch.testing.assert_close(a, b)


def test_equal_bands_are_the_thin_svd_projections():
    z = spread(dims=(16,))
    _, _, vh = torch.linalg.svd(z, full_matrices=False)
    projectors = band_projectors(z, 16, 3)[0]
    start = 0
    for k, size in enumerate(group_sizes(16, 3)):
        v = vh[start: start + size].T
        torch.testing.assert_close(projectors[k], v @ v.T)
        start += size


def test_energy_borders_split_the_eigenvalue_mass_evenly():
    z = spread(dims=(32,))
    lam = torch.linalg.svdvals(z).square()
    for n_bands in (2, 3, 4):
        projectors = band_projectors(z, 32, n_bands, "energy")[0]
        sizes = projectors.diagonal(dim1=-2, dim2=-1).sum(-1)
        assert (sizes >= 1 - 1e-9).all() and sizes.sum().round() == 32
        fractions = apply_bands(z, projectors[None]).square().sum((1, 2)) / lam.sum()
        assert (fractions - 1 / n_bands).abs().max() <= (lam.max() / lam.sum()).item()


def test_energy_borders_keep_every_band_nonempty_when_one_direction_dominates():
    z = spread(dims=(16,))
    z[:, 0] *= 100
    projectors = band_projectors(z, 16, 4, "energy")[0]
    sizes = projectors.diagonal(dim1=-2, dim2=-1).sum(-1)
    torch.testing.assert_close(sizes, torch.tensor([1.0, 1, 1, 13], dtype=torch.float64))


@pytest.mark.parametrize("borders", ["equal", "energy"])
def test_projector_gradients_are_exact_for_separated_spectra(borders):
    z = spread(n=12, dims=(8, 8)).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: band_projectors(x, 8, 3, borders, eps=1e-12), (z,), eps=1e-6, atol=1e-6)


def test_gradients_are_finite_for_a_repeated_spectrum():
    q, _ = torch.linalg.qr(torch.randn(50, 16, generator=torch.Generator().manual_seed(0)))
    z = torch.cat([3 * q, q @ torch.diag(torch.tensor([2.0] * 8 + [1.0] * 8))], 1).requires_grad_()  # all σ equal / paired
    bands = feature_bands(z, 16, 3)
    (bands[0].square().sum() + (bands[1] * torch.arange(32.0)).sum() + bands[2].sum()).backward()
    assert torch.isfinite(z.grad).all()


# ---- backbone -----------------------------------------------------------------------------------

def dense_propagation(backbone: Backbone) -> torch.Tensor:
    adj = backbone.adj.to_dense()
    x = torch.cat([backbone.preference, backbone.item_inputs()])
    x = torch.cat([F.normalize(b, dim=1) for b in x.split(backbone.dim, dim=1)], 1)
    return x + adj @ x + adj @ adj @ x


def test_backbone_views_follow_the_equations():
    data = tiny()
    torch.manual_seed(0)
    backbone = Backbone(data, dim=8, n_layers=2)
    views = backbone()
    assert backbone.blocks == ["id", "image", "text"]
    x_hat = dense_propagation(backbone)
    r_u = (x_hat[:60].view(60, 3, 8) * backbone.block_weights[..., None]).reshape(60, 24)
    torch.testing.assert_close(views.r_u, r_u)
    torch.testing.assert_close(views.r_i, x_hat[60:])
    torch.testing.assert_close(views.h_u, backbone.preference)
    torch.testing.assert_close(views.h_i, backbone.item_adj.to_dense() @ x_hat[60:])
    torch.testing.assert_close(backbone.block_weights.sum(1), torch.ones(60))  # DRAGON's softmax init


def test_backbone_without_item_modalities_needs_no_item_graph():
    data = tiny(modalities=())
    views = Backbone(data, dim=8, graph=False)()
    assert views.r_u.shape == (60, 8) and views.h_u is None and views.h_i is None
    with pytest.raises(ValueError, match="no item modality"):
        Backbone(data, dim=8)


# ---- gate, IB, consistency ------------------------------------------------------------------------

def test_gate_is_one_when_its_scale_is_zero():
    fusion = BandFusion(24, 3, gate=True)
    with torch.no_grad():
        fusion.gate_scale.zero_()
    torch.testing.assert_close(fusion.gates(torch.randn(10, 24)), torch.ones(10, 3))
    assert BandFusion(24, 3, gate=False).gates(torch.randn(10, 24)) is None


def test_ib_term():
    assert ib_penalty(torch.rand(20, 3), 1.0, 1.0, 0.0) == 0  # all gates <= 1
    gates = torch.tensor([[1.5, 1.0, 0.7], [1.0, 1.0, 1.0]])
    # δ = [[.5, 0, 0], 0]: α·mean‖δ‖² = .125, μ·mean(‖δ‖·Σ relu(δ − φ)) = .125
    torch.testing.assert_close(ib_penalty(gates, 1.0, 1.0, 0.0), torch.tensor(0.25))
    torch.testing.assert_close(ib_penalty(gates, 2.0, 0.0, 0.0), torch.tensor(0.25))
    torch.testing.assert_close(ib_penalty(gates, 0.0, 1.0, 0.4), torch.tensor(0.025))


def reference_code(user_bands, item_bands):
    """The released code's reading (book/methods.md, "FITMM") written out with loops over the full batch (duplicates included)."""
    m = len(user_bands)
    loss = 0.0
    for j in range(m):
        for k in range(m):
            if j != k:
                for b in (user_bands, item_bands):
                    cos = F.cosine_similarity(b[j], b[k], dim=-1)
                    loss = loss + F.mse_loss(cos, torch.ones_like(cos))
        if j >= m // 2:
            for b in (user_bands, item_bands):
                loss = loss - F.log_softmax(b[j] @ b[j].T, dim=-1).mean()
    return loss / max(m * (m - 1), 1)


def reference_paper(user_bands, item_bands, n_blocks):
    m = len(user_bands)
    loss = 0.0
    for k in range(m):
        for b in (user_bands, item_bands):
            blocks = b[k].chunk(n_blocks, dim=-1)
            for i in range(n_blocks):
                for j in range(i + 1, n_blocks):
                    cos = F.cosine_similarity(blocks[i], blocks[j], dim=-1)
                    loss = loss + F.mse_loss(cos, torch.ones_like(cos))
            if k >= m // 2:
                loss = loss - F.log_softmax(b[k] @ b[k].T, dim=-1).mean()
    return loss / (m * n_blocks * (n_blocks - 1))


@pytest.mark.parametrize("n_bands", [1, 2, 3, 4])
def test_consistency_on_distinct_rows_equals_the_batch_formula(n_bands):
    g = torch.Generator().manual_seed(n_bands)
    users, items = torch.randint(0, 9, (30,), generator=g), torch.randint(0, 12, (30,), generator=g)
    user_table = torch.randn(n_bands, 9, 24, generator=g, dtype=torch.float64)
    item_table = torch.randn(n_bands, 12, 24, generator=g, dtype=torch.float64)
    u, uc = users.unique(return_counts=True)
    i, ic = items.unique(return_counts=True)
    user_table.requires_grad_(), item_table.requires_grad_()
    def distinct():
        return user_table[:, u], uc.double(), item_table[:, i], ic.double()

    def full():
        return user_table[:, users], item_table[:, items]

    for ours, reference in ((consistency_code(*distinct()), reference_code(*full())),
                            (consistency_paper(*distinct(), 3), reference_paper(*full(), 3))):
        torch.testing.assert_close(ours, reference)  # values, and gradients (the contrast's is hand-written)
        for a, b in zip(torch.autograd.grad(ours, (user_table, item_table)),
                        torch.autograd.grad(reference, (user_table, item_table))):
            torch.testing.assert_close(a, b)


# ---- the model ----------------------------------------------------------------------------------

ABLATIONS = [
    {}, {"consistency": "paper"}, {"spectral": False}, {"spectral": False, "graph_branch": False},
    {"gate": False}, {"graph_branch": False}, {"band_borders": "energy"}, {"lambda_ib": 0.0}, {"lambda_c": 0.0},
    {"n_bands": 1}, {"n_bands": 2}, {"n_bands": 4}, {"n_bands": 6}, {"n_bands": 6, "consistency": "paper"},
    {"item_graph_k": 5}, {"item_graph_weights": {"image": 0.5, "text": 0.5}}, {"item_graph_weights": {"image": 0.9, "text": 0.1}},
]


@pytest.mark.parametrize("overrides", ABLATIONS, ids=str)
def test_each_variant_builds_trains_and_only_creates_what_it_uses(overrides):
    data = tiny()
    model = build(data, **overrides)
    terms = model.loss_terms(batch(data))
    c = config(**overrides)
    expected = {"bce"}
    expected |= {"ib"} if c.spectral and c.gate and c.lambda_ib > 0 else set()
    expected |= {"consistency"} if c.spectral and c.lambda_c > 0 else set()
    assert set(terms) == expected
    assert all(torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    names = {n for n, _ in model.named_parameters()}
    assert any("fusion" in n for n in names) == c.spectral
    assert any("gate" in n for n in names) == (c.spectral and c.gate)
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    with torch.no_grad():
        users, items = model.embeddings()
    assert users.shape == (60, 3 * 64) and items.shape == (40, 3 * 64)
    assert torch.isfinite(users).all() and torch.isfinite(items).all()


def test_id_only_data_trains_without_the_graph_branch():
    data = tiny(modalities=())
    model = build(data, graph_branch=False)
    terms = model.loss_terms(batch(data))
    assert set(terms) == {"bce", "ib", "consistency"} and all(torch.isfinite(v) for v in terms.values())
    assert model.embeddings()[0].shape == (60, 64)


def test_graph_branch_off_builds_no_item_graph():
    model = build(tiny(), graph_branch=False)
    assert model.backbone.item_adj is None


@pytest.mark.parametrize("overrides", [{}, {"consistency": "paper", "band_borders": "energy"}, {"spectral": False}], ids=str)
def test_batch_loss_matches_the_full_embeddings(overrides):
    data = tiny()
    model = build(data, **overrides)
    b = batch(data)
    e_u, e_i = model.embeddings()
    scores = torch.cat([(e_u[b.users] * e_i[b.pos_items]).sum(-1), (e_u[b.users] * e_i[b.neg_items]).sum(-1)])
    bce = F.binary_cross_entropy_with_logits(scores, torch.cat([torch.ones(48), torch.zeros(48)]))
    torch.testing.assert_close(model.loss_terms(b)["bce"], bce)


def test_with_unit_gates_and_weights_the_embedding_is_the_sum_of_the_views():
    model = build(tiny())
    with torch.no_grad():
        for fusion in (model.user_fusion, model.item_fusion):
            fusion.gate_scale.zero_()
            fusion.band_logits.fill_(40.0)  # σ = 1
        e_u, e_i = model.embeddings()
        v = model.backbone()
    torch.testing.assert_close(e_u, v.r_u + v.h_u, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(e_i, v.r_i + v.h_i, atol=1e-5, rtol=1e-4)


def test_without_the_spectral_part_the_embedding_is_the_backbone():
    model = build(tiny(), spectral=False)
    with torch.no_grad():
        e_u, _ = model.embeddings()
        v = model.backbone()
    torch.testing.assert_close(e_u, v.r_u + v.h_u)


def test_bad_switch_values_are_errors():
    for overrides, match in (({"band_borders": "quantile"}, "band_borders: 'quantile' is not allowed; expected one of: equal, energy"),
                             ({"consistency": "both"}, "consistency: 'both' is not allowed"),
                             ({"n_bands": 0}, "n_bands: 0 is not allowed; expected an integer >= 1"),
                             ({"n_bands": 65}, "n_bands: 65 is not allowed; expected at most embedding_dim = 64")):
        with pytest.raises(ConfigError, match=match):
            config(**overrides)
    for overrides, match in (({"graph_branch": True}, "graph_branch=false"),
                             ({"graph_branch": False, "consistency": "paper"}, "consistency=code")):
        with pytest.raises(ConfigError, match=match):
            FITMM.check_data(config(**overrides), tiny(modalities=()))
    FITMM.check_data(config(graph_branch=False), tiny(modalities=()))


def test_a_fixed_seed_gives_identical_losses():
    data = tiny()

    def run():
        model = build(data, seed=3)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        losses = []
        for step in range(3):
            loss = sum(model.loss_terms(batch(data, seed=step)).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    assert run() == run()


def test_diagnostics():
    d = build(tiny()).diagnostics()
    assert set(d) == {"block_weights_mean", "item_graph_weights", "band_weights", "gate_scale", "mean_gate", "band_energy"}
    assert d["gate_scale"] == {"user": 0.5, "item": 0.5}
    np.testing.assert_allclose(d["band_weights"]["user"], [torch.sigmoid(torch.tensor(1.0)).item()] * 3)
    assert set(d["band_energy"]) == {"r_u", "r_i", "h_u", "h_i"}
    for fractions in d["band_energy"].values():
        assert len(fractions) == 3 and abs(sum(fractions) - 1) < 1e-5
    assert all(1 <= g <= 1.5 for side in d["mean_gate"].values() for g in side)
    assert set(build(tiny(), spectral=False).diagnostics()) == {"block_weights_mean", "item_graph_weights"}


@pytest.mark.slow
@pytest.mark.parametrize("reading", ["code", "paper"])
def test_both_readings_learn_on_synthetic_data(tmp_path, reading):
    from fitmm.data.loader import load_dataset
    from fitmm.data.synthetic import generate
    from fitmm.metrics import evaluate
    from fitmm.trainer import build_model, train

    data = load_dataset(generate(tmp_path / "data", "syn", 300, 200, seed=1, mean_degree=12.0))
    cfg = config(consistency=reading, lr=3.0e-3, epochs=6, batch_size=512, patience=10)
    untrained = build_model(data, cfg, torch.device("cpu"))
    with torch.no_grad():
        before, _ = evaluate(untrained.scorer(), data, "valid", [20], 256)
    record = train(data, cfg, progress=False)
    assert record["best_valid"]["recall@20"] > before["recall@20"] + 0.1


def test_block_normalize_matches_autograd_through_the_formula():
    x = torch.randn(6, 3, 5, dtype=torch.float64)
    x[2, 1] = 0.0  # a zero row: the floor
    x.requires_grad_()
    w = torch.randn(6, 3, 5, dtype=torch.float64)
    ours = BlockNormalize.apply(x)
    reference = x * x.square().sum(-1, keepdim=True).clamp_min(1e-24).rsqrt()
    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(torch.autograd.grad((ours * w).sum(), x)[0], torch.autograd.grad((reference * w).sum(), x)[0])
