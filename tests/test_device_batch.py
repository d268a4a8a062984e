"""benchmarks/device_batch.sh's steps on this side: `lean` keeps the run records and executed chapters from
travelling to the device without touching a file or a commit, `restore` gives back the index HEAD has, and
`unpack` adds what came back without replacing a record here."""

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "device_batch.sh"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout


def batch(repo: Path, *step: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "benchmarks/device_batch.sh", *step], cwd=repo, capture_output=True, text=True)


def committed_repo(root: Path, files: dict[str, str]) -> Path:
    """A git repository at `root` with the batch script and `files` (path -> text), all committed."""
    (root / "benchmarks").mkdir()
    shutil.copy(SCRIPT, root / "benchmarks")
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "start")
    return root


def travelling(repo: Path) -> set[str]:
    """What a device call sends: tracked files and untracked files git does not ignore."""
    return set(git(repo, "ls-files").split()) | set(git(repo, "ls-files", "--others", "--exclude-standard").split())


def test_lean_keeps_the_runs_home_and_restore_gives_the_index_back(tmp_path):
    committed_repo(tmp_path, {"results/runs/baby/bpr/bpr-s1-x/record.json": "{}",
                              "results/notebooks/full/01_main_results.ipynb": "{}",
                              "results/tuning/baby/bpr/journal.log": "{}"})
    record = tmp_path / "results" / "runs" / "baby" / "bpr" / "bpr-s1-x" / "record.json"
    head = git(tmp_path, "rev-parse", "HEAD")
    before = travelling(tmp_path)

    lean = batch(tmp_path, "lean")
    assert lean.returncode == 0, lean.stderr
    sent = travelling(tmp_path)
    home = {"results/runs/baby/bpr/bpr-s1-x/record.json", "results/notebooks/full/01_main_results.ipynb"}
    assert sent == before - home  # the journal and the code still go
    assert record.read_text() == "{}" and git(tmp_path, "rev-parse", "HEAD") == head
    again = batch(tmp_path, "lean")
    assert again.returncode == 2 and "already lean" in again.stderr

    restored = batch(tmp_path, "restore")
    assert restored.returncode == 0, restored.stderr
    assert travelling(tmp_path) == before
    assert git(tmp_path, "status", "--porcelain") == ""
    assert "/results/" not in (tmp_path / ".git" / "info" / "exclude").read_text()
    assert batch(tmp_path, "restore").returncode == 2


def test_lean_refuses_an_index_with_staged_changes(tmp_path):
    committed_repo(tmp_path, {"results/runs/r.json": "{}"})
    (tmp_path / "model.py").write_text("x = 1")
    git(tmp_path, "add", "model.py")
    result = batch(tmp_path, "lean")
    assert result.returncode == 2 and "staged changes" in result.stderr
    assert git(tmp_path, "ls-files", "results/runs").strip() == "results/runs/r.json"


def test_unpack_adds_new_records_and_journals_but_never_replaces_a_record_here(tmp_path):
    committed_repo(tmp_path, {"results/runs/baby/bpr/bpr-s1-x/record.json": "home",
                              "results/tuning/baby/bpr/journal.log": "old"})
    came_back = tmp_path / "files"
    (came_back / "results/runs/baby/bpr/bpr-s1-x").mkdir(parents=True)
    (came_back / "results/runs/baby/bpr/bpr-s2-x").mkdir(parents=True)
    (came_back / "results/tuning/baby/bpr").mkdir(parents=True)
    (came_back / "results/runs/baby/bpr/bpr-s1-x/record.json").write_text("device")  # a rerun of a finished run
    (came_back / "results/runs/baby/bpr/bpr-s2-x/record.json").write_text("new")
    (came_back / "results/tuning/baby/bpr/journal.log").write_text("old+more")
    with tarfile.open(came_back / "records.tar.gz", "w:gz") as tar:
        tar.add(came_back / "results", arcname="results")

    result = batch(tmp_path, "unpack", str(came_back))
    assert result.returncode == 0, result.stderr
    runs = tmp_path / "results/runs/baby/bpr"
    assert (runs / "bpr-s1-x/record.json").read_text() == "home"
    assert (runs / "bpr-s2-x/record.json").read_text() == "new"
    assert (tmp_path / "results/tuning/baby/bpr/journal.log").read_text() == "old+more"
    assert batch(tmp_path, "unpack", str(tmp_path / "nowhere")).returncode == 2


def test_the_device_work_names_the_runs_left_and_finishes_each_search_before_its_seeds(tmp_path, monkeypatch):
    """benchmarks/device_work.py: no record travels, so the work names by label each run not finished here, and
    an unfinished search is finished there before the runs that need it (all but its own seed's) are trained."""
    import importlib.util

    from fitmm import reproduce, tune as tune_mod
    from fitmm.data import synthetic_dataset

    spec = importlib.util.spec_from_file_location("device_work", SCRIPT.parent / "device_work.py")
    device_work = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(device_work)
    monkeypatch.setenv("FITMM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tune_mod, "train", lambda data, config, results_dir=None, progress=True: {
        "run_id": f"bpr-{config.reg_weight}", "best_valid": {"recall@20": -config.reg_weight},
        "test": {"recall@20": 0.0}})
    tune_mod.tune(synthetic_dataset(), "bpr", trials=5, results_dir=tmp_path / "out", progress=False)  # finished
    smoke = reproduce.profiles()["smoke"]
    monkeypatch.setattr(reproduce, "profiles", lambda: {"smoke": {
        **smoke, "models": ["bpr", "lightgcn"], "seeds": [999, 1], "tuning_trials": 5}})
    monkeypatch.setattr(device_work, "profiles", reproduce.profiles)

    runs, *searches = device_work.work_lines("smoke", None, str(tmp_path / "out"), max_jobs=4)
    assert runs.startswith("reproduce --profile smoke --runs-only --jobs 4 --runs-matching ")
    assert '"bpr on synthetic, seed 999" "bpr on synthetic, seed 1"' in runs and '"lightgcn on synthetic, seed' not in runs
    search = next(line for line in searches if line.startswith("tune --model lightgcn "))
    assert search == ("tune --model lightgcn --dataset synthetic --trials 5 --results-dir results --jobs 4 --reclaim "
                      '--quiet && reproduce --profile smoke --runs-only --jobs 1 --runs-matching "lightgcn on synthetic, '
                      'seed 1"')


def test_run_times_each_timed_line_with_its_overrides_and_does_no_work_when_told_none(tmp_path):
    """`run` on this side (no GPU): each TIMED line trains with its overrides, SSR without its contrastive term on a
    one-modality set, a missing dataset is skipped; WORK= (empty) runs nothing after the timings."""
    from fitmm.data import generate

    (tmp_path / "repo").mkdir()
    repo = committed_repo(tmp_path / "repo", {"results/tuning/.keep": ""})
    generate(repo / ".device/data", name="toy", n_users=200, n_items=120, seed=1)
    (repo / ".device/data/toy/image_feat.npy").unlink()  # text only, as Baby and Sports here
    out = tmp_path / "out"
    out.mkdir()
    timed = "toy ssr n_bands=2 bands=scalable\nnowhere bpr\ntoy lightgcn"
    result = subprocess.run(["bash", "benchmarks/device_batch.sh", "run"], cwd=repo, capture_output=True, text=True,
                            env={**os.environ, "OUT": str(out), "DEADLINE": "300", "TIMED": timed,
                                 "TIMED_EPOCHS": "1", "WORK": "", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert "timing: toy ssr --set n_bands=2 --set bands=scalable --set contrastive=false" in result.stdout
    assert "timing: no .device/data/nowhere, skipped" in result.stdout
    assert "work: 0 line(s) ended" in result.stdout and (out / "run-logs.tar.gz").exists()
    rows = [line.split("\t") for line in (out / "gpu_timings.tsv").read_text().splitlines()]
    assert rows[0][:3] == ["device", "dataset", "model"]
    assert sorted((r[0], r[1], r[2], r[3]) for r in rows[1:]) == [("cpu", "toy", "lightgcn", "1"), ("cpu", "toy", "ssr", "1")]
