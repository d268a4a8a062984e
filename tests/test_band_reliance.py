"""Band reliance (theory check 6) and learned gates per user group, on trained-model stand-ins."""

import pytest
import torch

from fitmm.config import load_config
from fitmm.data import synthetic_dataset
from fitmm.experiments.spectral_checks import band_reliance, gates_by_user_group
from fitmm.trainer import build_model


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(n_users=300, n_items=200, seed=4)


@pytest.mark.parametrize("model_name", ["fitmm", "ssr"])
def test_band_mask_of_ones_changes_nothing_and_zeros_remove_the_bands(data, model_name):
    model = build_model(data, load_config(model_name, {"device": "cpu"}), torch.device("cpu")).eval()
    with torch.no_grad():
        users, items = model.embeddings()
        model.band_mask = torch.ones(model.n_bands)
        same_users, same_items = model.embeddings()
        model.band_mask = torch.zeros(model.n_bands)
        zero_users, _ = model.embeddings()
    torch.testing.assert_close(same_users, users)
    torch.testing.assert_close(same_items, items)
    if model_name == "fitmm":  # e = Σ_k ω_k g_k Ũ_k: no band, no embedding
        assert zero_users.abs().max() == 0


def test_band_reliance_table(data):
    model = build_model(data, load_config("fitmm", {"device": "cpu"}), torch.device("cpu"))
    table = band_reliance(model, data)
    assert model.band_mask is None
    assert sorted(table["band"].unique()) == [1, 2, 3]
    assert set(table["group"]) >= {"all"}
    all_users = table[table["group"] == "all"]
    assert (all_users["users"] == all_users["users"].iloc[0]).all()
    assert all_users["delta"].abs().sum() > 0  # dropping a band changes the ranking
    assert (table["recall@20"] + table["delta"]).between(0, 1).all()


@pytest.mark.parametrize("model_name, low, high, off", [("fitmm", 1.0, 1.5, {"gate": False}),
                                                         ("ssr", 0.9, 1.1, {"gating": False})])
def test_gates_by_user_group(data, model_name, low, high, off):
    model = build_model(data, load_config(model_name, {"device": "cpu"}), torch.device("cpu"))
    table = gates_by_user_group(model, data)
    gates = model.user_gates()
    assert gates.shape == (data.n_users, model.n_bands)
    everyone = table[table["group"] == "all"].sort_values("band")
    torch.testing.assert_close(torch.tensor(everyone["gate"].to_numpy()), gates.mean(0).double())
    groups = table[table["group"] != "all"]
    assert groups.groupby("band")["users"].sum().eq(data.n_users).all()  # the groups partition the users
    weighted = (groups["gate"] * groups["users"]).groupby(groups["band"]).sum() / data.n_users
    torch.testing.assert_close(torch.tensor(weighted.to_numpy()), gates.mean(0).double())
    assert table["gate"].between(low, high).all()  # FITMM: g = 1 + s·σ(·), s = 0.5; SSR: a = 1 + 0.1·tanh(·)
    ungated = build_model(data, load_config(model_name, {"device": "cpu", **off}), torch.device("cpu"))
    assert ungated.user_gates() is None and gates_by_user_group(ungated, data).empty
