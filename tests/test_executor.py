"""The executor: local processes (threads, logs, reuse, one retry, summary) and a real SLURM job array.

The SLURM test needs a running cluster (`.ci/slurm` starts a one-node one); it skips where none
answers, and fails instead under FITMM_REQUIRE_SLURM=1 (set in CI).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fitmm import executor
from fitmm.cli import main
from fitmm.errors import TrainingError
from fitmm.experiments import plan
from fitmm.experiments.runs import Training
from fitmm.tune import load_trials


class Threads:
    """Writes the thread settings it runs under."""

    def __init__(self, out: Path):
        self.out = out

    def __call__(self):
        import torch

        self.out.write_text(json.dumps([os.environ["OMP_NUM_THREADS"], torch.get_num_threads()]))

    def __str__(self) -> str:
        return f"threads {self.out.name}"


class Flaky:
    """Fails on its first attempt, succeeds on the second."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __call__(self):
        if not self.marker.exists():
            self.marker.touch()
            raise RuntimeError("first attempt")

    def __str__(self) -> str:
        return "flaky"


class Broken:
    def __call__(self):
        print("about to fail")
        raise ValueError("always")

    def __str__(self) -> str:
        return "broken"


class Finished:
    def finished(self) -> bool:
        return True

    def __call__(self):
        raise AssertionError("a finished task is not run")

    def __str__(self) -> str:
        return "finished"


def test_threads_per_job(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert executor.threads_per_job(1) == executor.cores() and executor.threads_per_job(10**6) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the caller's cap
    assert executor.threads_per_job(1) == 1


def test_local_runs_in_parallel_with_threads_logs_and_one_retry(tmp_path):
    tasks = [Threads(tmp_path / "a.json"), Threads(tmp_path / "b.json"), Flaky(tmp_path / "marker"), Broken(), Finished()]
    summary = executor.execute(tasks, "local", jobs=2, log_dir=tmp_path / "logs")
    assert sorted(summary.done) == ["flaky", "threads a.json", "threads b.json"]
    assert summary.reused == ["finished"]
    [failed] = summary.failed
    assert failed.name == "broken" and failed.error == "ValueError: always"
    log = Path(failed.log).read_text()
    assert failed.log.endswith("0003-broken.1.log") and "about to fail" in log and "Traceback" in log  # the retry's log
    threads = executor.threads_per_job(2)
    assert json.loads((tmp_path / "a.json").read_text()) == [str(threads), threads]
    assert str(summary).startswith("3 done, 1 reused, 1 failed")
    with pytest.raises(ValueError, match="jobs"):
        executor.execute([], jobs=0)


def test_a_local_run_leaves_its_epoch_bar_in_its_log(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FITMM_CACHE", str(tmp_path / "cache"))
    spec = plan.RunSpec(plan.DataSpec("synthetic"), "bpr", 0, {"epochs": 2, "batch_size": 4096})
    summary = executor.execute([Training(spec, str(tmp_path / "results"))], "local", log_dir=tmp_path / "logs")
    assert summary.done == [str(spec)], str(summary)
    assert f"goes to its log in {tmp_path / 'logs'}" in capsys.readouterr().out
    [log] = (tmp_path / "logs").glob("*.log")
    assert "bpr on synthetic" in log.read_text() and "2/2" in log.read_text()


SLEEPER = """
import os, sys, time
from pathlib import Path
from fitmm import executor

class Sleeper:
    def __init__(self, out):
        self.out = out
    def __call__(self):
        Path(self.out).write_text(str(os.getpid()))
        time.sleep(120)
    def __str__(self):
        return "sleeper"

if __name__ == "__main__":
    executor.execute([Sleeper(sys.argv[1])], "local", jobs=1, log_dir=sys.argv[2])
"""


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (Linux)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_local_workers_end_when_the_batch_process_is_killed(tmp_path):
    (tmp_path / "sleeper.py").write_text(SLEEPER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    argv = [sys.executable, str(tmp_path / "sleeper.py"), str(tmp_path / "pid"), str(tmp_path / "logs")]
    parent = subprocess.Popen(argv, env=env)
    deadline = time.monotonic() + 60
    while not (tmp_path / "pid").exists() or not (tmp_path / "pid").read_text():
        assert time.monotonic() < deadline and parent.poll() is None, "the worker never started"
        time.sleep(0.1)
    worker = int((tmp_path / "pid").read_text())
    assert alive(worker)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 20
    while alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(worker), "the worker outlived the batch process that started it"


UP = {"idle", "mix", "alloc", "comp"}  # node states that take (or will take, once free) a job


def slurm_up() -> str | None:
    """None when a SLURM cluster answers with a node that is up, else why not."""
    if shutil.which("sbatch") is None:
        return "no `sbatch` on PATH (run .ci/slurm as root to start a one-node cluster)"
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"`sinfo` failed: {err}"
    if states.returncode != 0 or not UP & {state.rstrip("*~#") for state in states.stdout.split()}:
        return f"`sinfo` shows no node up: {(states.stdout + states.stderr).strip() or 'no output'}"
    return None


@pytest.fixture
def slurm():
    """Skip where no SLURM cluster answers; fail instead under FITMM_REQUIRE_SLURM=1 (CI)."""
    reason = slurm_up()
    if reason is not None:
        if os.environ.get("FITMM_REQUIRE_SLURM") == "1":
            pytest.fail(f"FITMM_REQUIRE_SLURM=1 but SLURM is not up: {reason}")
        pytest.skip(reason)


def test_slurm_job_array_trains_a_tiny_grid(slurm, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FITMM_CACHE", str(tmp_path / "cache"))  # the jobs inherit the environment
    specs = plan.grid([plan.DataSpec("synthetic")], ["bpr", "lightgcn"], [0, 1], {"epochs": 1, "batch_size": 4096})
    tasks = [Training(s, str(tmp_path / "results")) for s in specs]
    options = executor.SlurmOptions(time=10, cpus_per_task=1, mem="1G")
    summary = executor.execute(tasks, "slurm", slurm=options, log_dir=tmp_path / "results" / "logs")
    out = capsys.readouterr().out
    assert "slurm: submitted job array" in out and "(4 tasks)" in out
    assert sorted(summary.done) == sorted(map(str, tasks)) and not summary.failed, str(summary)
    records = sorted((tmp_path / "results" / "runs").glob("synthetic/*/*/record.json"))
    assert len(records) == 4
    written = {(r["model"], r["seed"], r["epochs"]) for r in map(json.loads, (p.read_text() for p in records))}
    assert written == {(m, s, 1) for m in ("bpr", "lightgcn") for s in (0, 1)}
    assert len(list((tmp_path / "results" / "logs" / "slurm").glob("*_log.out"))) == 4
    again = executor.execute(tasks, "slurm", slurm=options, log_dir=tmp_path / "results" / "logs")
    assert sorted(again.reused) == sorted(map(str, tasks)) and not again.done
    refused = Training(plan.RunSpec(plan.DataSpec("synthetic"), "bpr", 2, {"epochs": 1}), str(tmp_path / "results"))
    with pytest.raises(TrainingError, match="sbatch refused"):
        executor.execute([refused], "slurm", slurm=executor.SlurmOptions(partition="no-such-partition"),
                         log_dir=tmp_path / "refused")
    with capsys.disabled():  # the CI log shows what ran
        print(f"\n{out.strip()}\nslurm: {summary}; records written:")
        print("\n".join(f"  {p.relative_to(tmp_path)}" for p in records))


def test_slurm_tuning_workers_share_one_search(slurm, tmp_path, monkeypatch, capsys):
    """`fitmm tune --executor slurm --jobs 2`: an array of two search workers on one journal."""
    monkeypatch.setenv("FITMM_CACHE", str(tmp_path / "cache"))
    argv = ["tune", "--model", "bpr", "--trials", "3", "--set", "epochs=1", "--set", "batch_size=4096", "--quiet",
            "--results-dir", str(tmp_path / "results"), "--executor", "slurm", "--jobs", "2", "--time", "10",
            "--mem", "1G"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "(2 tasks)" in out and "tune workers: 2 done, 0 reused, 0 failed" in out
    trials = load_trials(tmp_path / "results")
    assert len(trials) == 3 and trials.params.is_unique
