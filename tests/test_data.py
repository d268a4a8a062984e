"""The data layer: MMRec loading rules and validation, split rule, synthetic generator, download, CLI."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from fitmm.cli import main
from fitmm.data import download as dl
from fitmm.data import get_dataset, load_dataset, mmrec_split
from fitmm.data.split import split_file
from fitmm.data.synthetic import GENERATOR_VERSION, generate, synthetic_dataset
from fitmm.errors import DataError

TIKTOK = Path(__file__).resolve().parents[2] / "shared" / "data" / "tiktok"

# 3 users x 3 items; user 0 has train, valid and test rows.
ROWS = [(0, 0, 0), (0, 1, 1), (0, 2, 2), (1, 1, 0), (1, 2, 0), (2, 0, 0), (2, 2, 1)]


def write_inter(folder: Path, rows=ROWS, header="userID\titemID\tx_label", lines: list[str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    body = lines if lines is not None else ["\t".join(map(str, r)) for r in rows]
    (folder / f"{folder.name}.inter").write_text("\n".join([header, *body]) + "\n")
    return folder


@pytest.fixture
def ds(tmp_path) -> Path:
    return write_inter(tmp_path / "toy")


def load_error(path: Path) -> str:
    with pytest.raises(DataError) as err:
        load_dataset(path)
    return str(err.value)


# ---------------------------------------------------------------- loading


def test_load_splits_features_and_modality_order(ds):
    rng = np.random.default_rng(0)
    for m, d in (("audio", 3), ("text", 5), ("image", 4)):
        np.save(ds / f"{m}_feat.npy", rng.standard_normal((3, d)))
    data = load_dataset(ds)
    assert (data.name, data.n_users, data.n_items) == ("toy", 3, 3)
    assert data.train.tolist() == [[0, 0], [1, 1], [1, 2], [2, 0]]
    assert data.valid.tolist() == [[0, 1], [2, 2]] and data.test.tolist() == [[0, 2]]
    assert data.modalities == ["image", "text", "audio"]
    assert all(f.dtype == np.float32 for f in data.features.values())


def test_optional_columns_and_blank_lines_keep_line_numbers(tmp_path):
    lines = ["0\t0\t0\t5\t100", "", "1\t0\t0\t4\t101", "1\t1\tx\t3\t102"]
    path = write_inter(tmp_path / "t", header="userID\titemID\tx_label\trating\ttimestamp", lines=lines)
    msg = load_error(path)
    assert "t.inter" in msg and "line 5" in msg and "x_label" in msg and "'x'" in msg
    write_inter(path, header="userID\titemID\tx_label\trating\ttimestamp", lines=lines[:3])
    assert load_dataset(path).n_users == 2


def test_valid_test_rows_of_trainless_users_are_dropped(tmp_path, caplog):
    rows = ROWS + [(3, 0, 1), (3, 1, 2)]
    with caplog.at_level(logging.WARNING, logger="fitmm.data.loader"):
        data = load_dataset(write_inter(tmp_path / "t", rows))
    assert data.n_users == 4 and len(data.valid) == 2 and len(data.test) == 1
    assert "dropped 2 valid/test rows of 1 users" in caplog.text


@pytest.mark.parametrize(
    "header, lines, expected",
    [
        ("userID\titemID", ["0\t0"], ["line 1", "x_label"]),
        (None, ["0\t0\t0", "a\t1\t0"], ["line 3", "userID", "'a'", "not an integer"]),
        (None, ["0\t0\t0", "1\t1.5\t0"], ["line 3", "itemID", "'1.5'"]),
        (None, ["0\t0\t0", "1\t\t0"], ["line 3", "itemID", "missing value"]),
        (None, ["0\t0\t0", "-1\t1\t0"], ["line 3", "userID", "negative"]),
        (None, ["0\t0\t0", "1\t1\t3"], ["line 3", "x_label", "unknown label 3"]),
        (None, ["0\t0\t0", "1\t1\t0\t9"], ["line 3", "at most 3 fields"]),
        (None, ["0\t0\t0", "3\t1\t0", "5\t1\t0", "5\t0\t0", "3\t0\t0", "0\t1\t0"],
         ["userID", "not contiguous", "3 of 0..5", "1, 2, 4"]),
        (None, ["0\t0\t0", "0\t1\t0", "1\t1\t0", "0\t1\t1"], ["line 5", "line 3", "duplicate", "(0, 1)"]),
        (None, ["0\t0\t1", "0\t1\t2"], ["train split is empty"]),
        (None, [], ["no interactions"]),
    ],
)
def test_inter_validation_names_file_and_line(tmp_path, header, lines, expected):
    path = write_inter(tmp_path / "bad", header=header or "userID\titemID\tx_label", lines=lines)
    msg = load_error(path)
    assert "bad.inter" in msg
    for part in expected:
        assert part in msg, (part, msg)


def test_missing_folder_and_inter_file(tmp_path):
    assert "not found" in load_error(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "other.inter").write_text("")
    msg = load_error(tmp_path / "empty")
    assert "empty.inter" in msg and "other.inter" in msg


@pytest.mark.parametrize(
    "array, expected",
    [
        (np.zeros((2, 4)), ["2 rows", "n_items = 3"]),
        (np.zeros(3), ["shape (3,)", "2-D"]),
        (np.array([[0.0, 1.0], [1.0, np.nan], [np.inf, 0.0]]), ["row 1", "NaN or Inf", "2 such rows"]),
        (np.array([["a"], ["b"], ["c"]]), ["dtype", "numeric"]),
    ],
)
def test_feature_validation(ds, array, expected):
    np.save(ds / "image_feat.npy", array)
    msg = load_error(ds)
    assert "image_feat.npy" in msg
    for part in expected:
        assert part in msg, (part, msg)


def test_unreadable_npy(ds):
    (ds / "text_feat.npy").write_bytes(b"not a numpy file")
    msg = load_error(ds)
    assert "text_feat.npy" in msg and "unreadable" in msg


def test_missing_content_filled_with_mean_only_when_asked(ds):
    feat = np.array([[1.0, 2.0], [0.0, 0.0], [3.0, 6.0]], dtype=np.float32)
    np.save(ds / "text_feat.npy", feat)
    assert load_dataset(ds).features["text"][1].tolist() == [0.0, 0.0]
    assert load_dataset(ds, fill_missing_content=True).features["text"][1].tolist() == [2.0, 4.0]


# ---------------------------------------------------------------- split rule


@pytest.mark.parametrize("n, sizes", [(1, (1, 0, 0)), (2, (2, 0, 0)), (3, (1, 1, 1)), (5, (3, 1, 1)),
                                      (9, (7, 1, 1)), (10, (8, 1, 1)), (15, (12, 1, 2)), (23, (19, 2, 2))])
def test_split_sizes_per_user(n, sizes):
    pairs = np.stack([np.full(n, 7), np.arange(n)], axis=1)
    assert tuple(np.bincount(mmrec_split(pairs, seed=1), minlength=3)) == sizes


def test_split_is_seeded_shuffle_per_user():
    counts = np.array([5, 10, 23, 1, 40])
    users = np.repeat(np.arange(len(counts)), counts)
    pairs = np.stack([users, np.arange(len(users))], axis=1)
    perm = np.random.default_rng(0).permutation(len(users))  # row order must not matter
    a = mmrec_split(pairs[perm], seed=3)
    assert np.array_equal(a, mmrec_split(pairs[perm], seed=3))
    assert not np.array_equal(a, mmrec_split(pairs[perm], seed=4))
    per_user = [tuple(np.bincount(a[users[perm] == u], minlength=3)) for u in range(len(counts))]
    assert per_user == [(3, 1, 1), (8, 1, 1), (19, 2, 2), (1, 0, 0), (32, 4, 4)]


def test_split_file_writes_loadable_inter(tmp_path):
    rng = np.random.default_rng(0)
    lines = [f"{u}\t{i}\t5" for u in range(20) for i in rng.choice(30, size=6 + u, replace=False)]
    src = tmp_path / "in.tsv"
    src.write_text("\n".join(["userID\titemID\trating", *lines]) + "\n")
    assert main(["data", "split", str(src), str(tmp_path / "out" / "mine"), "--seed", "5"]) == 0
    inter = tmp_path / "out" / "mine" / "mine.inter"
    assert inter.read_text().splitlines()[0] == "userID\titemID\trating\tx_label"
    data = load_dataset(inter.parent)
    assert len(data.train) + len(data.valid) + len(data.test) == len(lines)
    # n = 6..25: valid 1 each for n < 15, then ⌊0.2n⌋//2; test the rest of ⌊0.2n⌋ (2 below n = 10).
    assert (len(data.valid), len(data.test)) == (4 + 5 + 5 + 5 * 2 + 2, 4 + 5 + 5 * 2 + 5 * 2 + 3)
    assert [p.name for p in inter.parent.iterdir()] == ["mine.inter"]  # no temp file left
    src.write_text("userID\titemID\tx_label\n0\t0\t0\n")
    with pytest.raises(DataError, match="already has an x_label"):
        split_file(src, tmp_path / "x" / "x", seed=0)


# ---------------------------------------------------------------- synthetic benchmark


def test_generator_is_byte_identical_and_seeded(tmp_path):
    a = generate(tmp_path / "a", seed=5)
    b = generate(tmp_path / "b", seed=5)
    c = generate(tmp_path / "c", seed=6)
    names = sorted(p.name for p in a.iterdir())
    assert names == ["image_feat.npy", "synthetic.inter", "synthetic.meta.json", "text_feat.npy"]
    assert all((a / n).read_bytes() == (b / n).read_bytes() for n in names)
    assert (a / "synthetic.inter").read_bytes() != (c / "synthetic.inter").read_bytes()
    with pytest.raises(DataError, match="already exists"):
        generate(tmp_path / "a", seed=5)


def test_generator_5core_contiguous_and_planted_snr(tmp_path):
    path = generate(tmp_path, name="syn", seed=1)
    data = load_dataset(path)  # checks contiguity, duplicates, feature shapes
    meta = json.loads((path / "syn.meta.json").read_text())
    assert (meta["n_users"], meta["n_items"]) == (data.n_users, data.n_items)
    every = np.concatenate([data.train, data.valid, data.test])
    assert np.bincount(every[:, 0], minlength=data.n_users).min() >= 5
    assert np.bincount(every[:, 1], minlength=data.n_items).min() >= 5
    assert 10 <= len(every) / data.n_users <= 20
    assert data.modalities == ["image", "text"]
    for m, feat in data.features.items():
        info = meta["modalities"][m]
        assert feat.shape[1] == info["dim"] == len(info["snr"]) == len(info["signal_variance"])
        # Covariance spectrum: a direction with SNR ≥ 1 stands out with variance signal + noise (above
        # the noise bulk's edge at this size); the total variance is the sum over all directions.
        variance = np.add(info["signal_variance"], info["noise_variance"])
        eig = np.sort(np.linalg.eigvalsh(np.cov(feat.T)))[::-1]
        strong = np.sort(variance[np.array(info["snr"]) >= 1])[::-1]
        np.testing.assert_allclose(eig[: len(strong)], strong, rtol=0.25)
        assert eig.sum() == pytest.approx(variance.sum(), rel=0.05)


def test_synthetic_dataset_is_generated_once_into_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FITMM_CACHE", str(tmp_path))
    data = synthetic_dataset(n_users=300, n_items=200, seed=2)
    assert data.name == "synthetic" and data.modalities == ["image", "text"]
    monkeypatch.setattr("fitmm.data.synthetic.generate", lambda *a, **k: pytest.fail("regenerated"))
    again = synthetic_dataset(n_users=300, n_items=200, seed=2)
    assert np.array_equal(again.train, data.train)
    assert [p.name for p in (tmp_path / "data").iterdir()] == [f"synthetic-v{GENERATOR_VERSION}-u300-i200-s2"]


def test_get_dataset(tmp_path, ds, monkeypatch):
    assert get_dataset("toy", tmp_path).n_users == 3
    with pytest.raises(DataError, match="holds: toy"):
        get_dataset("baby", tmp_path)
    monkeypatch.setenv("FITMM_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="nowhere: data directory not found.*FITMM_DATA"):
        get_dataset("baby", None)
    monkeypatch.setenv("FITMM_DATA", str(tmp_path))
    assert get_dataset("toy").n_users == 3


# ---------------------------------------------------------------- download


def test_download_offline_fails_at_once_leaving_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(dl, "online", lambda: False)
    monkeypatch.setattr(dl, "fetch", lambda *a: pytest.fail("fetched while offline"))
    with pytest.raises(dl.DownloadError, match="no network"):
        dl.download("baby", tmp_path / "data")
    assert list(tmp_path.iterdir()) == []
    assert main(["data", "download", "baby", "--to", str(tmp_path / "data")]) == 2


def _fake_fetch(inter_rows, image=True):
    def fetch(name: str, dest: Path) -> None:
        folder = write_inter(dest / name, inter_rows)
        np.save(folder / "text_feat.npy", np.ones((3, 2)))
        if image:
            np.save(folder / "image_feat.npy", np.ones((3, 4)))
    return fetch


@pytest.mark.parametrize("fetch, expected", [
    (_fake_fetch(ROWS, image=False), "missing image_feat.npy"),
    (_fake_fetch(ROWS + [(0, 0, 1)]), "duplicate"),
])
def test_download_that_does_not_verify_leaves_nothing(tmp_path, monkeypatch, fetch, expected):
    monkeypatch.setattr(dl, "online", lambda: True)
    monkeypatch.setattr(dl, "fetch", fetch)
    with pytest.raises(dl.DownloadError, match=expected):
        dl.download("sports", tmp_path / "a" / "b")
    assert list(tmp_path.iterdir()) == []


def test_download_moves_verified_data_into_place(tmp_path, monkeypatch):
    monkeypatch.setattr(dl, "online", lambda: True)
    monkeypatch.setattr(dl, "fetch", _fake_fetch(ROWS))
    path = dl.download("elec", tmp_path)
    assert path == tmp_path / "elec" and [p.name for p in tmp_path.iterdir()] == ["elec"]
    assert load_dataset(path).modalities == ["image", "text"]


# ---------------------------------------------------------------- CLI and real data


def test_cli_check_and_synth(tmp_path, capsys, ds):
    assert main(["data", "check", str(ds)]) == 0
    assert "users         3" in capsys.readouterr().out
    assert main(["data", "synth", str(tmp_path / "s"), "--name", "mini", "--users", "200", "--items", "150"]) == 0
    assert "modality      text: 32-d" in capsys.readouterr().out
    assert main(["data", "check", str(tmp_path / "missing")]) == 2
    assert "missing: dataset folder not found" in capsys.readouterr().err


@pytest.mark.skipif(not TIKTOK.is_dir(), reason="../shared/data/tiktok not on hand")
def test_tiktok_matches_published_counts():
    data = load_dataset(TIKTOK)
    assert (data.n_users, data.n_items) == (9308, 6710)
    assert {m: f.shape for m, f in data.features.items()} == {"image": (6710, 128), "audio": (6710, 128)}
    assert len(data.train) == 59541  # 10 valid/test rows of train-less users dropped from 3,051 / 6,130
    assert (len(data.valid), len(data.test)) == (3046, 6125)
