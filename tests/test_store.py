"""Runs that cannot lie: run ids, versions, validated records and checkpoints, preflight, the per-run lock."""

import json
import os
import subprocess

import numpy as np
import pytest

from fitmm.cli import main
from fitmm.config import load_config
from fitmm.data import generate, load_dataset
from fitmm.errors import ConfigError
from fitmm.io import atomic_path, git_commit
from fitmm.models import MODELS
from fitmm.settings import checkpoints_dir
from fitmm.store import RecordError, RunLock, read_record, remove_stale_temporaries, run_dir, run_id
from fitmm.trainer import train


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    generate(folder, name="toy", n_users=200, n_items=120, seed=1)
    return folder


@pytest.fixture(scope="module")
def data(data_dir):
    return load_dataset(data_dir / "toy")


def config(model="bpr", **overrides):
    return load_config(model, {"epochs": 2, "batch_size": 512, "device": "cpu", **overrides})


def cli(data_dir, results, *args):
    return main(["train", "--dataset", "toy", "--data-dir", str(data_dir), "--results-dir", str(results), "--quiet",
                 *args])


def test_run_id_hashes_only_what_differs_from_the_defaults(data):
    assert run_id(data, config()) == run_id(data, config(lr=0.001, reg_weight=1e-4, eval_batch_users=7))
    assert run_id(data, config()) != run_id(data, config(lr=0.01))
    assert run_id(data, config()) != run_id(data, config(seed=1))
    assert run_id(data, config()).startswith("bpr-s999-")


def test_a_record_of_another_behaviour_version_is_reported_not_reused(data, tmp_path, monkeypatch):
    first = train(data, config(), results_dir=tmp_path, progress=False)
    assert first["version"] == "p2.m1"
    monkeypatch.setattr(MODELS["bpr"], "version", 2)
    with pytest.warns(UserWarning, match=f"{first['run_id']}/record.json: a record of this run made by behaviour "
                                         "version p2.m1 \\(now p2.m2\\); not reused"):
        second = train(data, config(), results_dir=tmp_path, progress=False)
    assert second["version"] == "p2.m2" and second["run_id"] != first["run_id"]


@pytest.mark.parametrize("content,message", [
    ('{"broken', "unreadable run record"),
    ("[1, 2]", "a run record is a JSON object"),
    ('{"run_id": "x"}', "not a complete run record \\(missing model, seed"),
])
def test_a_damaged_record_is_named_and_never_trusted(data, data_dir, tmp_path, capsys, content, message):
    train(data, config(), results_dir=tmp_path, progress=False)
    path = run_dir(data, config(), tmp_path) / "record.json"
    path.write_text(content)
    with pytest.raises(RecordError, match=message):
        read_record(path)
    assert cli(data_dir, tmp_path, "--model", "bpr", "--set", "epochs=2", "--set", "batch_size=512") == 2
    err = capsys.readouterr().err
    assert str(path) in err and "delete the folder" in err


def test_a_record_with_a_wrong_type_or_folder_is_refused(data, tmp_path):
    record = train(data, config(), results_dir=tmp_path, progress=False)
    path = run_dir(data, config(), tmp_path) / "record.json"
    path.write_text(json.dumps({**record, "test": [1]}))
    with pytest.raises(RecordError, match="fields of the wrong type: test"):
        read_record(path)
    path.write_text(json.dumps({**record, "run_id": "bpr-s1-00000000"}))
    with pytest.raises(RecordError, match="not of its folder"):
        read_record(path)


def test_a_damaged_checkpoint_is_named_and_stale_temporaries_are_removed(data, data_dir, tmp_path, capsys):
    out = run_dir(data, config(epochs=3), tmp_path)
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.pt").write_bytes(os.urandom(64))
    (out / "checkpoints" / "best.pt").write_bytes(os.urandom(64))
    stale = out / ".record.json.abc.tmp"
    stale.write_text("half")
    assert cli(data_dir, tmp_path, "--model", "bpr", "--set", "epochs=3", "--set", "batch_size=512") == 2
    err = capsys.readouterr().err
    assert f"{out / 'checkpoints' / 'last.pt'}: unreadable checkpoint" in err and "delete the folder" in err
    assert not stale.exists() and not (out / "record.json").exists()


@pytest.mark.parametrize("scratch", [False, True])
def test_stale_temporaries_are_removed_from_the_run_folder_and_its_checkpoints(tmp_path, monkeypatch, scratch):
    """In-folder checkpoints or $FITMM_CHECKPOINTS: a killed writer's `.*.tmp` goes in both places, nothing else."""
    run = tmp_path / "results" / "runs" / "toy" / "bpr" / "bpr-s1-00000000"
    if scratch:
        monkeypatch.setenv("FITMM_CHECKPOINTS", str(tmp_path / "scratch"))
    checkpoints = checkpoints_dir(run)
    checkpoints.mkdir(parents=True)
    (run / "vectors").mkdir(parents=True)
    stale = [run / ".record.json.abc.tmp", run / "vectors" / ".test.npz.def.tmp", checkpoints / ".last.pt.ghi.tmp"]
    kept = [run / "record.json", checkpoints / "last.pt", checkpoints / "best.pt"]
    for path in stale + kept:
        path.write_text("x")
    remove_stale_temporaries(run)
    assert not any(path.exists() for path in stale) and all(path.exists() for path in kept)


def test_a_second_identical_run_is_refused_naming_the_holder(data, data_dir, tmp_path, capsys):
    out = run_dir(data, config(), tmp_path)
    with RunLock(out):
        with pytest.raises(ConfigError, match=f"pid {os.getpid()} on .* since"):
            train(data, config(), results_dir=tmp_path, progress=False)
        assert cli(data_dir, tmp_path, "--model", "bpr", "--set", "epochs=2", "--set", "batch_size=512") == 2
        assert "this run is being trained by pid" in capsys.readouterr().err
    assert train(data, config(), results_dir=tmp_path, progress=False)["epochs"] == 2  # the lock is released


def test_unwritable_results_or_cache_are_found_before_any_compute(data_dir, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert cli(data_dir, blocker / "results", "--model", "ease") == 2
    assert f"results directory {blocker / 'results'} is not writable" in capsys.readouterr().err
    monkeypatch.setenv("FITMM_CACHE", str(blocker / "cache"))
    assert cli(data_dir, tmp_path / "results", "--model", "bpr") == 2
    assert "cache directory (FITMM_CACHE)" in capsys.readouterr().err
    assert not (tmp_path / "results" / "runs").exists()


def test_patience_zero_stops_at_the_first_epoch_without_improvement(data, tmp_path):
    record = train(data, config(epochs=50, patience=0, lr=0.05), results_dir=tmp_path, progress=False)
    assert record["epochs"] == record["best_epoch"] + 2 and record["best_valid"] is not None


@pytest.mark.parametrize("model,args,hint", [
    ("fitmm", [], "graph_branch=false"),
    ("ssr", [], "SSR (its backbone's item-item graph) needs 1 item modality"),
    ("ssr", ["--set", "contrastive=false"], "needs 1 item modality"),
    ("vbpr", [], "VBPR needs 1 item modality"),
])
def test_content_models_without_features_exit_2_with_a_hint(tmp_path, capsys, model, args, hint):
    generate(tmp_path / "data", name="toy", n_users=200, n_items=120, seed=1)
    for feature in (tmp_path / "data" / "toy").glob("*_feat.npy"):
        feature.unlink()
    assert cli(tmp_path / "data", tmp_path / "results", "--model", model, *args) == 2
    assert hint in capsys.readouterr().err
    assert not list((tmp_path / "results").rglob("record.json"))


def test_fitmm_without_features_runs_without_its_graph_branch(tmp_path):
    generate(tmp_path / "data", name="toy", n_users=200, n_items=120, seed=1)
    for feature in (tmp_path / "data" / "toy").glob("*_feat.npy"):
        feature.unlink()
    assert cli(tmp_path / "data", tmp_path / "results", "--model", "fitmm", "--set", "graph_branch=false",
               "--set", "epochs=1") == 0


def test_atomic_writes_fsync_before_the_rename(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real(fd))
    with atomic_path(tmp_path / "x.npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.arange(3))
    assert synced[0].endswith(".tmp") and synced[1] == str(tmp_path)
    assert np.load(tmp_path / "x.npy").tolist() == [0, 1, 2] and not list(tmp_path.glob("*.tmp"))


def test_the_commit_is_dirty_for_code_changes_not_for_results(tmp_path):
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)
    git("init", "-q")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "record.json").write_text("{}")
    (tmp_path / "model.py").write_text("x = 1")
    git("add", ".")
    git("commit", "-q", "-m", "start")
    head = git_commit(tmp_path)
    assert len(head) == 40
    (tmp_path / "results" / "record.json").write_text('{"epochs": 3}')  # a record written while runs train
    assert git_commit(tmp_path) == head
    (tmp_path / "model.py").write_text("x = 2")
    assert git_commit(tmp_path) == head + "+dirty"
