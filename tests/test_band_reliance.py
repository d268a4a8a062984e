"""Band reliance (theory check 6): zeroing one band at test time, per user group."""

import pytest
import torch

from fitmm.config import load_config
from fitmm.data import synthetic_dataset
from fitmm.experiments.spectral_checks import band_reliance
from fitmm.train import build_model


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
