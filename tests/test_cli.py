"""End-to-end through the command line: exit codes, and an interrupted run that resumes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from fitmm.cli import main
from fitmm.data import generate, load_dataset
from fitmm.config import load_config
from fitmm.trainer import train


def fitmm_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "fitmm", *args]


def test_data_check_prints_stats(tmp_path, capsys):
    generate(tmp_path, name="toy", n_users=200, n_items=120, seed=1)
    assert main(["data", "check", str(tmp_path / "toy")]) == 0
    out = capsys.readouterr().out
    assert "users" in out and "image" in out


def test_bad_data_exits_2_with_message(tmp_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "bad.inter").write_text("userID\titemID\tx_label\n0\t0\t0\n0\tx\t0\n")
    assert main(["train", "--model", "bpr", "--dataset", "bad", "--data-dir", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "bad.inter" in err and "line 3" in err


def test_unknown_config_key_exits_2(capsys):
    assert main(["train", "--model", "bpr", "--set", "learning_rate=0.1", "--quiet"]) == 2
    assert "learning_rate" in capsys.readouterr().err


def test_reanalyse_trains_a_run_from_elsewhere_again_and_replaces_only_its_analysis(tmp_path, capsys):
    generate(tmp_path, name="toy", n_users=200, n_items=120, seed=1)
    config = load_config("bpr", {"epochs": 3, "batch_size": 256, "device": "cpu"})
    record = train(load_dataset(tmp_path / "toy"), config, results_dir=tmp_path / "results", progress=False)
    run = tmp_path / "results" / "runs" / "toy" / "bpr" / record["run_id"]
    stored = json.loads((run / "analysis.json").read_text())
    for name in ("checkpoints/best.pt", "checkpoints/last.pt", "analysis.json"):
        (run / name).unlink()  # as a committed record arrives on another machine
    assert main(["reanalyse", str(run), "--data-dir", str(tmp_path), "--quiet"]) == 0
    assert f"{run}: analysis.json written" in capsys.readouterr().out
    again = json.loads((run / "analysis.json").read_text())
    assert again.pop("trained_again")["reproduces_record"] and again == stored
    assert main(["reanalyse", str(tmp_path / "nowhere")]) == 2
    assert "nowhere/record.json" in capsys.readouterr().err


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tmp_path):
    generate(tmp_path / "data", name="toy", n_users=1500, n_items=800, seed=2)
    args = ["train", "--model", "lightgcn", "--dataset", "toy", "--data-dir", str(tmp_path / "data"),
            "--set", "epochs=8", "--set", "patience=100", "--set", "batch_size=512", "--quiet"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(fitmm_cmd(*args, "--results-dir", str(killed)), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    last = None
    while time.time() < deadline:  # wait for the checkpoint of epoch 3, then kill -9
        last = next(killed.glob("runs/toy/lightgcn/*/checkpoints/last.pt"), None)
        if last is not None and torch.load(last, weights_only=False)["state"]["epoch"] >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert last is not None and not list(killed.glob("runs/**/record.json")), "the run was not interrupted"
    subprocess.run(fitmm_cmd(*args, "--results-dir", str(killed)), env=env, check=True, capture_output=True)
    resumed = json.loads(next(killed.glob("runs/toy/lightgcn/*/record.json")).read_text())
    assert resumed["resumed_at_epoch"] >= 3
    config = load_config("lightgcn", {"epochs": 8, "patience": 100, "batch_size": 512})
    straight = train(load_dataset(tmp_path / "data" / "toy"), config, progress=False)
    assert resumed["test"] == pytest.approx(straight["test"], abs=1e-7)
    losses = lambda record: [v for h in record["history"] for v in h["losses"].values()]  # noqa: E731
    assert losses(resumed) == pytest.approx(losses(straight), rel=1e-6)


@pytest.mark.parametrize("name", ["fitmm", "ssr"])
def test_training_and_its_analysis_run_without_the_notebook_stack(tmp_path, name):
    """`fitmm train`, the analysis written when a run ends included, imports no IPython: a bare GPU node has none."""
    generate(tmp_path, name="toy", n_users=200, n_items=120, seed=1)
    argv = ["train", "--model", name, "--dataset", "toy", "--data-dir", str(tmp_path), "--quiet",
            "--results-dir", str(tmp_path / "results"), "--set", "epochs=1", "--set", "device=cpu"]
    code = f"import sys; sys.modules['IPython'] = None; from fitmm.cli import main; sys.exit(main({argv!r}))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list((tmp_path / "results" / "runs" / "toy" / name).glob("*/analysis.json"))) == 1
