"""SSR: band decomposition, masking, ablations, gradients, determinism, a short training run."""

import pytest
import torch
from torch.nn import functional as F

from fitmm.config import load_config
from fitmm.data.loader import load_dataset
from fitmm.data.synthetic import generate
from fitmm.errors import ConfigError
from fitmm.metrics import evaluate
from fitmm.models.base import Batch
from fitmm.models.ssr import SSR, SSRConfig, band_infonce
from fitmm.spectral.graph_bands import resolve_band_path
from fitmm.trainer import build_model, train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return load_dataset(generate(tmp_path_factory.mktemp("data"), "syn", 160, 100, seed=0, mean_degree=10.0))


def config(**overrides) -> SSRConfig:
    return load_config("ssr", {"device": "cpu", "batch_size": 256, "eval_batch_users": 64, **overrides})


def batch(data, n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    users, pos, neg = (torch.randint(0, size, (n,), generator=g) for size in (data.n_users, data.n_items, data.n_items))
    return Batch.of(users, pos, neg)


def model(data, **overrides) -> SSR:
    torch.manual_seed(0)
    return SSR(data, config(**overrides))


@pytest.mark.parametrize("band_input,width", [("concat", 2 * 3 * 64), ("sum", 3 * 64)])
@pytest.mark.parametrize("bands", ["chebyshev", "exact", "scalable"])
def test_bands_sum_to_the_node_signal(data, bands, band_input, width):
    m = model(data, bands=bands, band_input=band_input)
    v = m.backbone()
    r, h = torch.cat([v.r_u, v.r_i]), torch.cat([v.h_u, v.h_i])
    x = torch.cat([r, h], dim=1) if band_input == "concat" else r + h
    split, context = m.encode()
    assert split.shape == (3, data.n_users + data.n_items, width)
    torch.testing.assert_close(split.sum(0), x, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(context, r)


@pytest.mark.parametrize("bands", ["chebyshev", "exact"])
def test_sum_input_is_the_concat_bands_halves_added(data, bands):
    """The code's order: bands cut from [R | H] (borders from the whole signal), then R half + H half."""
    concat, summed = model(data, bands=bands, band_input="concat"), model(data, bands=bands, band_input="sum")
    torch.testing.assert_close(summed.backbone.preference, concat.backbone.preference)  # same seed, same backbone
    wide, _ = concat.encode()
    ours = summed.encode()[0]
    reference = wide[..., :192] + wide[..., 192:]
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-4)
    w = torch.randn(ours.shape)  # and the gradients (the linear chebyshev split filters R + H, not [R | H])
    for a, b in zip(torch.autograd.grad((ours * w).sum(), summed.backbone.preference),
                    torch.autograd.grad((reference * w).sum(), concat.backbone.preference)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_without_operator_and_gate_sum_scores_add_the_cross_terms(data):
    """e = R + H under sum, [R | H] under concat: ⟨e_u, e_i⟩ differs by ⟨R_u, H_i⟩ + ⟨H_u, R_i⟩."""
    off = {"operator": False, "gating": False}
    concat, summed = model(data, band_input="concat", **off), model(data, band_input="sum", **off)
    v = concat.backbone()
    (cu, ci), (su, si) = concat.embeddings(), summed.embeddings()
    torch.testing.assert_close(su, cu[:, :192] + cu[:, 192:], atol=1e-5, rtol=1e-4)
    cross = v.r_u @ v.h_i.T + v.h_u @ v.r_i.T
    torch.testing.assert_close(su @ si.T, cu @ ci.T + cross, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("n_users,n_items,path", [(3000, 2000, "exact"), (3000, 2001, "chebyshev")])
def test_auto_bands_choose_the_path_by_graph_size(n_users, n_items, path):
    assert resolve_band_path("auto", n_users + n_items) == path
    assert resolve_band_path("scalable", 100) == "scalable"


def test_default_path_is_auto_and_recorded(data):
    assert config().bands == "auto"
    assert model(data).diagnostics()["bands_path"] == "exact"  # 260 nodes


def test_code_reading_initial_values_and_sizes(data):
    m = model(data)  # reading: code
    op, gate = m.operators["user"], m.gates["user"]
    assert op.gamma.shape == (4, 192) and 0.8 < op.gamma.std() < 1.2  # log-gains ~ N(0, 1)
    assert op.context[0].out_features == 48 and gate.mlp[0].out_features == 48  # B·d / 4
    assert gate.mlp[-1].bias.abs().max() == 0 and gate.mlp[-1].weight.std() < 2e-3
    gates = m.user_gates()
    assert (gates - 1).abs().max() < 1e-3  # every gate starts at 1
    paper = model(data, reading="paper")
    assert paper.operators["user"].gamma.abs().max() == 0 and paper.operators["user"].context[0].out_features == 64
    # the operator's regulariser counts twice under the code's reading (the masked pass adds it again)
    torch.manual_seed(0)
    reg_code = m.loss_terms(batch(data))["reg"]
    expected = 0.1 * 2 * sum(o.regularizer() for o in m.operators.values())
    torch.testing.assert_close(reg_code, expected)
    reg_paper = paper.loss_terms(batch(data))["reg"]
    torch.testing.assert_close(reg_paper, 0.1 * sum(o.regularizer() for o in paper.operators.values()))


def test_masking_only_in_training(data):
    m = model(data)
    m.eval()
    first, second = m.loss_terms(batch(data)), m.loss_terms(batch(data))
    assert "mask" not in first and first == second
    torch.testing.assert_close(m.embeddings(), m.embeddings(), atol=0, rtol=0)
    m.train()
    torch.manual_seed(1)
    a = m.loss_terms(batch(data))["mask"]
    b = m.loss_terms(batch(data))["mask"]
    assert a > 0 and a != b


def test_mask_drops_bands_and_keeps_the_first_when_all_drop(data):
    m = model(data, mask_prob=0.9)
    bands = torch.ones(3, 2000, 4)
    masked = m.mask(bands)
    kept = masked[..., 0] > 0
    assert kept.any(0).all()  # every node keeps at least one band
    assert torch.allclose(masked[kept], torch.tensor(10.0))  # 1 / (1 − p)
    rate = kept.float().mean(1)  # band 1: kept w.p. 0.1, or forced when all three drop (0.9 · 0.9²)
    torch.testing.assert_close(rate, torch.tensor([0.1 + 0.9 * 0.81, 0.1, 0.1]), atol=0.04, rtol=0)


ABLATIONS = [
    {"bands": "chebyshev"}, {"bands": "exact", "n_bands": 2}, {"bands": "exact", "n_bands": 5},
    {"bands": "scalable", "n_bands": 4, "scalable_order": 20}, {"masking": False}, {"operator": False},
    {"contrastive": False}, {"gating": False}, {"operator": False, "gating": False}, {"mixing_softmax": "input"},
    {"band_input": "concat"}, {"reading": "paper"}, {"band_input": "concat", "reading": "paper"},
]


@pytest.mark.parametrize("overrides", ABLATIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_ablations_train_with_finite_losses_and_gradients(data, overrides):
    m = model(data, **overrides)
    terms = m.loss_terms(batch(data))
    expected = {"bce"} | {k for k, on in [("reg", overrides.get("operator", True)), ("mask", overrides.get("masking", True)),
                                          ("contrast", overrides.get("contrastive", True))] if on}
    assert set(terms) == expected
    assert all(torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if not name.endswith("rank_logits"):  # equal gains at init: softmax weights get exactly zero gradient
            assert p.grad.abs().sum() > 0, name
    assert hasattr(m, "operators") == overrides.get("operator", True)
    assert hasattr(m, "gates") == overrides.get("gating", True)
    u, i = m.embeddings()
    width = 384 if overrides.get("band_input") == "concat" else 192
    assert u.shape == (data.n_users, width) and i.shape == (data.n_items, width)


def test_without_operator_and_gate_the_embedding_is_the_backbone_signal(data):
    m = model(data, operator=False, gating=False, band_input="concat")
    v = m.backbone()
    u, i = m.embeddings()
    torch.testing.assert_close(u, torch.cat([v.r_u, v.h_u], 1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(i, torch.cat([v.r_i, v.h_i], 1), atol=1e-5, rtol=1e-4)


def test_output_softmax_preserves_the_band_sum(data):
    # A normalised over output bands: Σ_m Y_m = Σ_n X_n, so the split cancels out of Σ_m Z_m.
    m = model(data, gating=False)
    op = m.operators["user"]
    x = torch.randn(5, 3, 192)
    h = torch.randn(5, 192)
    z = op(x, h)
    moved = x.clone()
    moved[:, 0] += 1.0
    moved[:, 1] -= 1.0
    torch.testing.assert_close(z.sum(1), op(moved, h).sum(1))
    assert torch.allclose(op.mixing().sum(0), torch.ones(3))


def test_gate_preserves_the_norm_of_the_sum(data):
    m = model(data)
    z = torch.randn(7, 3, 192)
    gated, a = m.gates["item"](z, torch.randn(7, 192))
    torch.testing.assert_close(gated.sum(1).norm(dim=-1), z.sum(1).norm(dim=-1))
    assert a.shape == (7, 3) and (a - 1).abs().max() <= 0.1


@pytest.mark.parametrize("overrides", [{"contrast_anchors": 100}, {"bands": "chebyshev", "band_input": "concat"}],
                         ids=str)
def test_batch_terms_match_the_per_row_computation(data, overrides):
    """The loss computes each distinct node once: the same terms as every batch row computed on its own."""
    m, b = model(data, **overrides), batch(data, n=96)
    m.train()
    torch.manual_seed(5)
    terms = m.loss_terms(b)
    torch.manual_seed(5)  # the straightforward computation, one row per batch row, the same random draws
    n = len(b.users)
    bands, context = m.encode(torch.cat([b.users, m.n_users + b.pos_items, m.n_users + b.neg_items]))
    rows = {"user": slice(0, n), "item": slice(n, None)}
    out = {s: m.reason(s, bands[:, r], context[r])[0] for s, r in rows.items()}
    e_u, (e_pos, e_neg) = out["user"].sum(1), out["item"].sum(1).split(n)
    bce = F.binary_cross_entropy_with_logits(torch.cat([(e_u * e_pos).sum(-1), (e_u * e_neg).sum(-1)]),
                                             torch.cat([torch.ones(n), torch.zeros(n)]))
    masked = {s: m.reason(s, m.mask(bands[:, r]), context[r])[0].sum(1) for s, r in rows.items()}
    mask = sum(F.mse_loss(x, e.detach())
               for x, e in zip((masked["user"], *masked["item"].split(n)), (e_u, e_pos, e_neg)))
    first = {s: torch.tensor([ids.tolist().index(v) for v in sorted(set(ids.tolist()))])
             for s, ids in (("user", b.users), ("item", b.pos_items))}
    contrast = sum(band_infonce(out[s][first[s]], m.backbone.n_blocks, m.pairs, m.temperature, m.contrast_anchors,
                                m.halves) for s in ("user", "item"))
    torch.testing.assert_close(terms["bce"], bce)
    torch.testing.assert_close(terms["mask"], m.lambda_mask * mask / 3)
    torch.testing.assert_close(terms["contrast"], m.lambda_contrast * contrast / 2)


def test_fixed_seed_is_deterministic(data):
    first, second = model(data, bands="scalable", scalable_order=20), model(data, bands="scalable", scalable_order=20)
    for m in (first, second):
        torch.manual_seed(3)
        m.terms = m.loss_terms(batch(data))
    assert {k: v.item() for k, v in first.terms.items()} == {k: v.item() for k, v in second.terms.items()}


@pytest.mark.parametrize("overrides,match", [
    ({"bands": "chebyshev", "n_bands": 4}, "n_bands: 4 is not allowed with bands: chebyshev"),
    ({"n_bands": 6, "bands": "exact"}, "n_bands: 6 is not allowed; expected an integer >= 2 and <= 5"),
    ({"bands": "wavelet"}, "bands: 'wavelet' is not allowed; expected one of: auto, chebyshev, exact, scalable"),
    ({"mixing_softmax": "rows"}, "mixing_softmax: 'rows' is not allowed"),
    ({"mask_prob": 1.0}, "mask_prob: 1.0 is not allowed"), ({"scalable_order": 1}, "scalable_order: 1 is not allowed"),
    ({"band_input": "stack"}, "band_input: 'stack' is not allowed; expected one of: sum, concat"),
    ({"reading": "mine"}, "reading: 'mine' is not allowed; expected one of: code, paper"),
])
def test_bad_configs(overrides, match):
    with pytest.raises(ConfigError, match=match):
        config(**overrides)


def test_infonce_matches_a_direct_computation_and_anchor_sampling_is_unbiased():
    torch.manual_seed(0)
    n, m, n_blocks, d = 5, 3, 3, 4
    z = torch.randn(n, m, 2 * n_blocks * d)
    blocks = z.reshape(n * m, 2, n_blocks, d)
    direct = []
    for a, b in [(1, 2)]:
        cand = torch.nn.functional.normalize(torch.cat([blocks[:, :, a].flatten(1), blocks[:, :, b].flatten(1)]), dim=-1)
        for r in range(2 * n * m):  # anchor r: positive its other-modality twin, every other block a negative
            sims = cand @ cand[r] / 0.2
            positive = (r + n * m) % (2 * n * m)
            direct.append(torch.logsumexp(torch.cat([sims[:r], sims[r + 1 :]]), 0) - sims[positive])
    full = band_infonce(z, n_blocks, [(1, 2)], 0.2)
    torch.testing.assert_close(full, torch.stack(direct).mean())
    torch.testing.assert_close(band_infonce(z, n_blocks, [(1, 2)], 0.2, anchors=1000), full)
    sampled = torch.stack([band_infonce(z, n_blocks, [(1, 2)], 0.2, anchors=4) for _ in range(4000)])
    assert abs(sampled.mean() - full) < 4 * sampled.std() / 4000**0.5


def test_contrastive_needs_two_modalities(data):
    from dataclasses import replace

    single = replace(data, features={"image": data.features["image"]})
    with pytest.raises(ConfigError, match="contrastive=false"):
        SSR.check_data(config(), single)
    SSR.check_data(config(contrastive=False), single)


def test_exact_bands_on_a_graph_too_large_for_them_are_refused_before_compute(data, monkeypatch):
    """A plan leaves such a run out with its reason (`unrunnable`), as for a missing modality, instead of failing."""
    import functools

    from fitmm.experiments.runs import unrunnable
    from fitmm.models import ssr as ssr_module
    from fitmm.spectral import graph_bands

    exact = config(bands="exact", contrastive=False)
    assert unrunnable(exact, data) is None
    monkeypatch.setattr(ssr_module, "check_dense_eigh", functools.partial(graph_bands.check_dense_eigh, max_nodes=10))
    with pytest.raises(ConfigError, match=r"bands: exact needs a dense eigendecomposition.*Use bands: scalable"):
        SSR.check_data(exact, data)
    assert "Use bands: scalable" in unrunnable(exact, data)


def test_diagnostics(data):
    m = model(data, bands="exact")
    m.eval()
    d = m.diagnostics()
    assert len(d["band_borders"]) == 2
    for side in ("user", "item"):
        assert sum(d[side]["band_energy"]) == pytest.approx(1.0)
        assert len(d[side]["mean_gate"]) == 3 and len(d[side]["modality_agreement"]["image-text"]) == 3
        assert torch.tensor(d[side]["mixing"]).shape == (3, 3)


@pytest.mark.slow
def test_training_improves_valid_recall(data):
    cfg = config(epochs=4, lr=1.0e-2)  # a larger lr than the paper's 1e-4, to learn in 4 epochs
    untrained, _ = evaluate(build_model(data, cfg, torch.device("cpu")).eval().scorer(), data, "valid", cfg.topk, 64)
    record = train(data, cfg, progress=False)
    assert record["best_valid"]["recall@20"] > untrained["recall@20"] + 0.05  # measured: 0.39 -> 0.68
