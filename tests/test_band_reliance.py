"""The band interface of FITMM and SSR (bands, gates, dropping one band); band reliance and gates per user group."""

import json

import pandas as pd
import pytest
import torch

from fitmm.config import load_config
from fitmm.errors import TrainingError
from fitmm.experiments.spectral_checks import band_reliance, gates_by_user_group
from fitmm.trainer import build_model


def build(data, model_name: str, **overrides):
    return build_model(data, load_config(model_name, {"device": "cpu", **overrides}), torch.device("cpu")).eval()


@pytest.mark.parametrize("model_name", ["fitmm", "ssr"])
def test_without_band_zeroes_that_band_only_and_restores_the_model(synthetic, model_name):
    model = build(synthetic, model_name)
    users, items = model.embeddings()
    bands = model.band_embeddings()
    assert bands["user"].shape[:2] == (model.n_bands, synthetic.n_users)
    assert bands["item"].shape[:2] == (model.n_bands, synthetic.n_items)
    with pytest.raises(RuntimeError, match="inside"), model.without_band(1):
        dropped = model.band_embeddings()
        for side, full in bands.items():
            assert dropped[side][1].abs().max() == 0
            torch.testing.assert_close(dropped[side][[0, 2]], full[[0, 2]])
        assert not torch.allclose(model.embeddings()[0], users)
        raise RuntimeError("inside")
    torch.testing.assert_close(model.embeddings(), (users, items), atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"\[0, 3\)"), model.without_band(3):
        pass


def test_fitmm_embeddings_are_linear_in_the_bands(synthetic):
    """e = Σ_k ω_k g_k Ũ_k: the parts removed by dropping each band in turn add up to e."""
    model = build(synthetic, "fitmm")
    full = model.embeddings()
    removed = [torch.zeros_like(e) for e in full]
    for band in range(model.n_bands):
        with model.without_band(band):
            for total, e, e_without in zip(removed, full, model.embeddings()):
                total += e - e_without
    for total, e in zip(removed, full):
        torch.testing.assert_close(total, e, atol=1e-5, rtol=1e-4)


def test_ssr_without_operator_and_gate_drops_exactly_the_band(synthetic):
    """With operator and gating off SSR's e is Σ_m X_m, so dropping band m subtracts X_m."""
    model = build(synthetic, "ssr", operator=False, gating=False, bands="exact")
    users, items = model.embeddings()
    bands = model.band_embeddings()
    with model.without_band(2):
        without_users, without_items = model.embeddings()
    torch.testing.assert_close(without_users, users - bands["user"][2], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(without_items, items - bands["item"][2], atol=1e-5, rtol=1e-4)


def test_fitmm_without_its_band_module_has_no_bands(synthetic):
    model = build(synthetic, "fitmm", spectral=False)
    assert model.band_embeddings() is None and model.user_gates() is None
    with pytest.raises(TrainingError, match="spectral: false"), model.without_band(0):
        pass


def test_band_reliance_table(synthetic):
    model = build(synthetic, "fitmm")
    before = model.embeddings()
    table = band_reliance(model, synthetic)
    torch.testing.assert_close(model.embeddings(), before, atol=0, rtol=0)  # every band is back
    assert sorted(table["band"].unique()) == [1, 2, 3]
    assert set(table["group"]) >= {"all"}
    all_users = table[table["group"] == "all"]
    assert (all_users["users"] == all_users["users"].iloc[0]).all()
    assert all_users["delta"].abs().sum() > 0  # dropping a band changes the ranking
    assert (table["recall@20"] + table["delta"]).between(0, 1).all()


@pytest.mark.parametrize("model_name, low, high, off", [("fitmm", 1.0, 1.5, {"gate": False}),
                                                         ("ssr", 0.9, 1.1, {"gating": False})])
def test_gates_by_user_group(synthetic, model_name, low, high, off):
    model = build(synthetic, model_name)
    table = gates_by_user_group(model, synthetic)
    gates = model.user_gates()
    assert gates.shape == (synthetic.n_users, model.n_bands)
    everyone = table[table["group"] == "all"].sort_values("band")
    torch.testing.assert_close(torch.tensor(everyone["gate"].to_numpy()), gates.mean(0).double())
    groups = table[table["group"] != "all"]
    assert groups.groupby("band")["users"].sum().eq(synthetic.n_users).all()  # the groups partition the users
    weighted = (groups["gate"] * groups["users"]).groupby(groups["band"]).sum() / synthetic.n_users
    torch.testing.assert_close(torch.tensor(weighted.to_numpy()), gates.mean(0).double())
    assert table["gate"].between(low, high).all()  # FITMM: g = 1 + s·σ(·), s = 0.5; SSR: a = 1 + 0.1·tanh(·)
    ungated = build(synthetic, model_name, **off)
    assert ungated.user_gates() is None and gates_by_user_group(ungated, synthetic).empty


@pytest.mark.parametrize("model_name", ["fitmm", "ssr"])
def test_analysis_holds_what_the_chapters_use(synthetic, model_name):
    model = build(synthetic, model_name)
    stored = json.loads(json.dumps(model.analysis(synthetic)))  # JSON as the run stores it
    expected = {"item_groups", "unseen_items", "gates_by_user_group", "band_reliance", "graph_band_energy"}
    assert set(stored) == expected | ({"feature_bands"} if model_name == "fitmm" else set())
    direct = band_reliance(model, synthetic)
    pd.testing.assert_frame_equal(pd.DataFrame(stored["band_reliance"])[direct.columns], direct, check_exact=False,
                                  atol=1e-8)
    assert set(stored["graph_band_energy"]) == {"chebyshev", "scalable", "exact"}  # a small graph: the exact path too
    for shares in stored["graph_band_energy"].values():
        assert sum(shares) == pytest.approx(1, abs=0.05)
    assert {r["group"] for r in stored["item_groups"]} == {"tail", "mid", "head"}
    assert set(build(synthetic, "fitmm", spectral=False).analysis(synthetic)) == {"item_groups", "unseen_items"}
