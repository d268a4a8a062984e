"""The planner and the notebooks agree: each chapter trains exactly what `plan.plan` executes first."""

from __future__ import annotations

import argparse
import ast
import inspect
import os
import pickle
import re
import shutil
from pathlib import Path

import nbformat
import pytest

from fitmm import reproduce
from fitmm.cli import main
from fitmm.errors import ConfigError, DataError
from fitmm.executor import slurm_options
from fitmm.experiments import claims, plan, runs
from fitmm.store import checkpoint_state

from conftest import train_killed_after_first_checkpoint

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = {p.stem: p for p in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))}
PROFILES = reproduce.profiles()


def planner_calls(path: Path) -> tuple[list[ast.Call], set[str]]:
    """The notebook's `plan.<fn>(...)` calls and its parameters cell's names."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    declared = {t.id for node in ast.parse(code[0].source).body for t in node.targets}
    calls = [node for c in code for node in ast.walk(ast.parse(c.source.replace("%matplotlib inline", "")))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
             and isinstance(node.func.value, ast.Name) and node.func.value.id == "plan"]
    return calls, declared


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_notebook_plans_its_runs_with_its_own_parameters(stem):
    """Each chapter calls its planner functions (`plan.CHAPTERS`) with its parameters of the same names,
    and trains nothing another way."""
    calls, declared = planner_calls(NOTEBOOKS[stem])
    assert sorted(c.func.attr for c in calls) == sorted(fn.__name__ for fn in plan.CHAPTERS.get(stem, []))
    for call in calls:
        fn = getattr(plan, call.func.attr)
        required = [p.name for p in inspect.signature(fn).parameters.values() if p.default is inspect.Parameter.empty]
        assert [a.id for a in call.args] == required and not call.keywords, f"{stem}: {ast.unparse(call)}"
        assert set(required) <= declared, f"{stem}: {set(required) - declared} not in the parameters cell"
    source = NOTEBOOKS[stem].read_text()
    assert "run_all(" not in source
    # The Explore chapter shows `fitmm.train` on a scratch dataset of the reader's own, outside the results folder.
    assert "train(" not in source or stem == "08_explore"


def test_planned_datasets_build_under_their_label(tmp_path, monkeypatch):
    monkeypatch.setenv("FITMM_CACHE", str(tmp_path))
    base = plan.DataSpec("synthetic", size=(300, 200), seed=1)
    dropped = plan.DataSpec("synthetic", drop=0.4, seed=3)
    for spec in (base, dropped):
        assert spec.load().name == spec.label
    assert base.label == "synthetic-u300-i200" and dropped.label == "synthetic-drop40-s3"
    full = plan.DataSpec("synthetic").load()
    assert len(dropped.load().train) == len(full.train) - round(0.4 * len(full.train))
    spec = plan.RunSpec(dropped, "bpr", 5, {"epochs": 1})
    assert pickle.loads(pickle.dumps(spec)) == spec and spec.config().seed == 5 and spec.config().epochs == 1


def test_smoke_plan_covers_every_chapter_once():
    specs = plan.plan(PROFILES["smoke"])
    keys = [s.key() for s in specs]
    assert len(keys) == len(set(keys))
    labels = {s.data.label for s in specs}
    assert {"synthetic", "synthetic-drop40-s0", "synthetic-drop80-s0", "synthetic-u1200-i800"} <= labels
    main = plan.call(plan.main_runs, PROFILES["smoke"])
    assert [s.key() for s in specs[: len(main)]] == [s.key() for s in main]  # the main grid, then the others
    # the ablation's reference variant (no overrides) is the main run itself, planned once; then the theory
    # chapter's band-weight run, the ablations' two variants, the Explore chapter's (lambda_ib=0.0), and the
    # diagnosis chapter's three, traced (their own budget)
    fitmm_runs = [(s.variant, s.trace) for s in specs if s.model == "fitmm" and s.data.label == "synthetic"]
    assert len(fitmm_runs) == 8 and {("fitmm (lambda_ib=0.0)", False), (plan.SNR_CHECK, False)} <= set(fitmm_runs)
    assert fitmm_runs[-3:] == [(label, True) for label in PROFILES["smoke"]["diagnosis_runs"]]
    only = plan.plan(PROFILES["smoke"], ["05_ablations"])
    assert {s.variant for s in only} == {label for table in PROFILES["smoke"]["ablations"].values() for label in table}


def test_paper_readings_and_references_run_on_the_main_seeds_on_the_first_dataset():
    """A discrepancy's paper reading is a finding of its own: it and its reference get the main seeds on the first
    secondary dataset; the other variants, and every variant elsewhere, the ablations' seeds."""
    ablations = {"fitmm": {"reference": {}, "backbone only": {"spectral": False},
                           "paper consistency": {"consistency": "paper"}},
                 "ssr": {"reference": {}, "band input concat": {"band_input": "concat"}, "2 bands": {"n_bands": 2}}}
    specs = plan.ablation_runs(["synthetic", "tiktok"], None, ablations, [999], [999, 1, 2], {}, None, "results")
    seeds = {}
    for s in specs:
        seeds.setdefault((s.model, s.variant, s.data.name), []).append(s.seed)
    assert seeds == {
        ("fitmm", "reference", "synthetic"): [999, 1, 2], ("fitmm", "paper consistency", "synthetic"): [999, 1, 2],
        ("fitmm", "backbone only", "synthetic"): [999],
        ("ssr", "reference", "synthetic"): [999, 1, 2], ("ssr", "band input concat", "synthetic"): [999, 1, 2],
        ("ssr", "2 bands", "synthetic"): [999],
        **{(m, label, "tiktok"): [999] for m, table in ablations.items() for label in table}}
    assert len({s.key() for s in specs}) == len(specs)
    # per discrepancy only the first reading run decides it: SSR's exact bands where they run, else the scalable
    scalable, exact = {"bands": "scalable"}, {"bands": "exact"}
    assert claims.deciding_readings("ssr", [{}, scalable, {"n_bands": 2}]) == [scalable]
    assert claims.deciding_readings("ssr", [{}, scalable, exact, {"band_input": "concat"}]) == [exact, {"band_input": "concat"}]
    assert claims.deciding_readings("bpr", [{}, {"consistency": "paper"}]) == []


@pytest.mark.parametrize("name", PROFILES)
def test_every_profile_plans(name, monkeypatch, tmp_path):
    profile = {**PROFILES[name], "results_dir": str(tmp_path)}
    if profile["tuning_trials"] is not None:  # refused until its searches have run, then planned from them
        with pytest.raises(ConfigError, match=f"{tmp_path}/tuning/.*journal.log: .* is not tuned on .* yet"):
            plan.plan(profile)
        monkeypatch.setattr("fitmm.tune.chosen_overrides", lambda model, dataset, trials, results_dir: {})
    specs = plan.plan(profile)
    per_chapter = sum(len(plan.call(fn, profile)) for fns in plan.CHAPTERS.values() for fn in fns)
    assert 0 < len(specs) <= per_chapter
    assert slurm_options(flags(), profile.get("slurm")).time > 0
    with pytest.raises(KeyError, match=f"profile '{name}' does not set seeds"):
        plan.call(plan.main_runs, {k: v for k, v in profile.items() if k != "seeds"})


def flags(**given) -> argparse.Namespace:
    return argparse.Namespace(**{"partition": None, "time": None, "cpus_per_task": None, "gpus": None, "mem": None,
                                 **given})


def test_slurm_options_from_profile_and_flags():
    section = {"time": 30, "cpus_per_task": 2, "mem": "8G"}
    options = slurm_options(flags(time=5, partition="debug"), section)
    assert (options.time, options.cpus_per_task, options.mem, options.partition, options.gpus) == (5, 2, "8G", "debug", 0)
    with pytest.raises(DataError, match="profiles.yaml: profile 'p', slurm: unknown key.*cpus"):
        slurm_options(flags(), {"cpus": 2}, "fitmm/experiments/profiles.yaml: profile 'p', ")


@pytest.mark.slow
def test_reproduce_runs_only_executes_the_plan_then_reuses_it(tmp_path, monkeypatch, capsys):
    """`fitmm reproduce --runs-only` trains a chapter's planned runs in 2 processes; a rerun reuses them."""
    monkeypatch.setenv("FITMM_CACHE", str(tmp_path / "cache"))
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    tiny = {**PROFILES["smoke"], "models": ["bpr"], "cost_models": ["bpr"], "cost_sizes": [[300, 200]],
            "budget": {"epochs": 1, "batch_size": 4096}, "cost_budget": {"epochs": 1, "batch_size": 4096}}
    monkeypatch.setattr(reproduce, "profiles", lambda: {"smoke": tiny})
    argv = ["reproduce", "--profile", "smoke", "--only", "06", "--runs-only", "--jobs", "2", "--root", str(tmp_path),
            "--results-dir", str(tmp_path / "out")]
    assert main(argv) == 0
    assert "runs (smoke): 2 done, 0 reused, 0 failed" in capsys.readouterr().out
    assert len(list((tmp_path / "out" / "runs").glob("*/bpr/*/record.json"))) == 2
    assert len(list((tmp_path / "out" / "logs").glob("*.0.log"))) == 2
    assert main(argv) == 0
    assert "runs (smoke): 0 done, 2 reused, 0 failed" in capsys.readouterr().out


def test_dry_run_counts_the_runs_planned_finished_and_to_train(tmp_path, monkeypatch, capsys):
    """`--dry-run` trains and executes nothing; per chapter it counts the planned runs and those finished."""
    monkeypatch.setenv("FITMM_CACHE", str(tmp_path / "cache"))
    tiny = {**PROFILES["smoke"], "models": ["bpr"], "cost_models": ["bpr"], "cost_sizes": [[300, 200]],
            "budget": {"epochs": 1, "batch_size": 4096}, "cost_budget": {"epochs": 1, "batch_size": 4096}}
    monkeypatch.setattr(reproduce, "profiles", lambda: {"smoke": tiny})
    argv = ["reproduce", "--profile", "smoke", "--only", "01", "06", "--dry-run", "--root", str(ROOT),
            "--results-dir", str(tmp_path / "out")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert re.search(r"01_main_results +1 +0 +1\n +06_cost +2 +0 +2\n +all \(each run once\) +2 +0 +2", out), out
    # then each run still to train, once, under the first chapter that plans it, with its seeds
    assert re.search(r"still to train[^:\n]*:\n +01_main_results +bpr on synthetic: seed \d+\n +06_cost +bpr on synthetic-u300-i200: "
                     r"seed \d+$", out), out
    assert "searches not finished" not in out and not (tmp_path / "out").exists()
    _, _, by_chapter, _ = reproduce.planned_runs("smoke", ROOT, ["01"], tmp_path / "out", None)
    (task,) = by_chapter["01_main_results"]
    task()  # train the main run: the dry run counts it finished, for both chapters
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert re.search(r"01_main_results +1 +1 +0\n +06_cost +2 +1 +1\n +all \(each run once\) +2 +1 +1", out)
    assert re.search(r"still to train[^:\n]*:\n +06_cost +bpr on synthetic-u300-i200: seed \d+$", out), out
    # a run interrupted after its first epoch is listed with the epoch its checkpoint reached
    _, _, by_chapter, _ = reproduce.planned_runs("smoke", ROOT, ["06"], tmp_path / "out", None)
    (growth,) = [t for t in by_chapter["06_cost"] if not t.finished()]
    train_killed_after_first_checkpoint(growth.spec.data.load(), growth.spec.config(), tmp_path / "out")
    assert checkpoint_state(growth.path())["epoch"] == 1
    assert main(argv) == 0
    assert re.search(r"06_cost +bpr on synthetic-u300-i200: seed \d+ \(seed \d+ at epoch 1 of 1, best 0, \d+ s/epoch\)$",
                     capsys.readouterr().out)
    # a tuned profile: the search not run yet is listed with the command that runs it, and its runs are not planned
    monkeypatch.setattr(reproduce, "profiles", lambda: {"smoke": {**tiny, "tuning_trials": 5}})
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert re.search(r"searches not finished \(1;.*\n +synthetic +bpr +0/5 +fitmm tune --model bpr --dataset synthetic "
                     r"--trials 5 --data-dir \S+ --results-dir \S+out\n", out), out
    assert re.search(r"all \(each run once\) +1 +0 +1", out)  # the cost chapter's growth run, which is not tuned


def test_runs_matching_keeps_the_runs_whose_label_contains_a_text(tmp_path, monkeypatch, capsys):
    """`--runs-matching` narrows the batch and the dry run to some planned runs; a text no run has is an error
    (exit 2) naming the planned groups, before anything is trained."""
    monkeypatch.setenv("FITMM_CACHE", str(tmp_path / "cache"))
    tiny = {**PROFILES["smoke"], "models": ["bpr", "lightgcn"], "seeds": [1, 2],
            "budget": {"epochs": 1, "batch_size": 4096}}
    monkeypatch.setattr(reproduce, "profiles", lambda: {"smoke": tiny})
    _, _, by_chapter, _ = reproduce.planned_runs("smoke", ROOT, ["01"], tmp_path / "out", None,
                                                 ["lightgcn on synthetic", "bpr on synthetic, seed 2"])
    assert sorted(str(t.spec) for t in by_chapter["01_main_results"]) == [
        "bpr on synthetic, seed 2", "lightgcn on synthetic, seed 1", "lightgcn on synthetic, seed 2"]
    argv = ["reproduce", "--profile", "smoke", "--only", "01", "--root", str(ROOT), "--results-dir", str(tmp_path / "out")]
    assert main([*argv, "--dry-run", "--runs-matching", "bpr"]) == 0
    assert re.search(r"still to train[^:\n]*:\n +01_main_results +bpr on synthetic: seeds 1, 2$", capsys.readouterr().out)
    assert main([*argv, "--runs-only", "--runs-matching", "vbpr"]) == 2
    assert "no planned run matches; the planned groups: bpr on synthetic, lightgcn on synthetic" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_runs_matching_plans_around_a_search_that_has_not_finished(tmp_path, monkeypatch, capsys):
    """A batch needs every search its chapters use to have finished (exit 2 naming the command, before any
    compute); with `--runs-matching`, a search not finished holds back only its own runs, and the batch names it."""
    from fitmm import tune as tune_mod
    from fitmm.data import synthetic_dataset
    from fitmm.executor import Summary

    def fake_train(data, config, results_dir=None, progress=True):
        reg = config.reg_weight
        return {"run_id": f"bpr-{reg}", "best_valid": {"recall@20": -abs(reg - 0.1)}, "test": {"recall@20": 0.0}}

    monkeypatch.setenv("FITMM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tune_mod, "train", fake_train)
    tune_mod.tune(synthetic_dataset(), "bpr", trials=5, results_dir=tmp_path / "out", progress=False)
    tiny = {**PROFILES["smoke"], "models": ["bpr", "lightgcn"], "seeds": [1], "tuning_trials": 5,
            "budget": {"epochs": 1, "batch_size": 4096}}
    monkeypatch.setattr(reproduce, "profiles", lambda: {"smoke": tiny})
    trained = []
    monkeypatch.setattr(reproduce, "execute_tasks",
                        lambda tasks, *args: trained.extend(str(t.spec) for t in tasks) or Summary())
    argv = ["reproduce", "--profile", "smoke", "--only", "01", "--runs-only", "--root", str(ROOT),
            "--results-dir", str(tmp_path / "out")]
    assert main(argv) == 2 and trained == []
    assert "lightgcn is not tuned on synthetic yet" in capsys.readouterr().err
    assert main([*argv, "--runs-matching", "on synthetic"]) == 0
    assert trained == ["bpr on synthetic, seed 1"]
    assert "not planned until their search finishes: lightgcn on synthetic (0/5 trials)" in capsys.readouterr().out
    assert main([*argv, "--runs-matching", "lightgcn"]) == 2 and trained == ["bpr on synthetic, seed 1"]
    assert re.search(r"no planned run matches; the planned groups: bpr on synthetic .*; not planned until their "
                     r"search finishes: lightgcn on synthetic \(0/5 trials\)", capsys.readouterr().err)


def test_runs_whose_model_cannot_run_on_their_data_are_left_out_of_the_batch(tmp_path, monkeypatch, capsys):
    """A content model on a set without item content (VBPR on Clothing) is not executed (it would only fail, twice):
    the batch and the dry run say how many were left out, and the chapter notes why."""
    from fitmm.data.synthetic import generate

    monkeypatch.setenv("FITMM_CACHE", str(tmp_path / "cache"))
    generate(tmp_path / "data", "bare", 120, 80, seed=0, modalities={})
    tiny = {**PROFILES["smoke"], "datasets": ["bare"], "models": ["bpr", "vbpr"], "seeds": [1],
            "budget": {"epochs": 1, "batch_size": 4096}}
    monkeypatch.setattr(reproduce, "profiles", lambda: {"smoke": tiny})
    _, _, by_chapter, left_out = reproduce.planned_runs("smoke", ROOT, ["01"], tmp_path / "out", tmp_path / "data")
    assert [t.spec.model for t in by_chapter["01_main_results"]] == ["bpr"]
    (why,) = left_out.values()
    assert why.startswith("vbpr on bare, seed 1: ") and "bare" in why
    assert main(["reproduce", "--profile", "smoke", "--only", "01", "--dry-run", "--root", str(ROOT),
                 "--data-dir", str(tmp_path / "data"), "--results-dir", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "1 left out, their model cannot run on their data" in out
    assert re.search(r"01_main_results +1 +0 +1\n", out), out


def test_a_missing_dataset_folder_exits_2_before_any_run(tmp_path, monkeypatch, capsys):
    """Every planned dataset folder is checked before the batch starts: a missing one names itself, trains nothing."""
    (tmp_path / "data" / "tiktok").mkdir(parents=True)
    argv = ["reproduce", "--profile", "cpu", "--only", "09", "--runs-only", "--data-dir", str(tmp_path / "data"),
            "--results-dir", str(tmp_path / "out")]
    monkeypatch.setattr(plan.settings, "project_path", lambda relative: tmp_path / "project" / relative)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'project' / 'data'}: data directory not found (looking for dataset 'baby')" in err
    assert not (tmp_path / "out" / "runs").exists()


def test_records_only_trains_nothing_and_excludes_runs_only(tmp_path, monkeypatch, capsys):
    """`--records-only` skips the batch: the chapters show the records there are (none here) and note the rest."""
    monkeypatch.setenv("FITMM_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SystemExit) as exit_:
        main(["reproduce", "--profile", "smoke", "--runs-only", "--records-only"])
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    monkeypatch.delenv(runs.RECORDS_ONLY, raising=False)
    seen = []
    monkeypatch.setattr(reproduce, "reproduce", lambda *a, **k: seen.append(os.environ.get(runs.RECORDS_ONLY))
                        or {"06_cost": "ok (1 s)"})
    argv = ["reproduce", "--profile", "smoke", "--only", "06", "--records-only", "--no-book", "--root", str(ROOT),
            "--results-dir", str(tmp_path / "out")]
    assert main(argv) == 0
    assert "runs (smoke): none trained (--records-only)" in capsys.readouterr().out
    assert not (tmp_path / "out" / "runs").exists()
    assert seen == ["1"] and runs.RECORDS_ONLY not in os.environ  # the kernels read only; this process trains again


def test_a_batch_plan_refuses_an_unfinished_search_whatever_the_environment(tmp_path, monkeypatch):
    """FITMM_RECORDS_ONLY=1 left in a shell must not let `fitmm reproduce` train untuned runs in place of a search."""
    tiny = {**PROFILES["smoke"], "models": ["bpr"], "tuning_trials": 5, "budget": {"epochs": 1, "batch_size": 4096}}
    monkeypatch.setattr(reproduce, "profiles", lambda: {"smoke": tiny})
    monkeypatch.setenv(plan.RECORDS_ONLY, "1")
    with pytest.raises(ConfigError, match="bpr is not tuned on synthetic yet"):
        reproduce.planned_runs("smoke", ROOT, ["01"], tmp_path / "out", None)
    assert os.environ[plan.RECORDS_ONLY] == "1"
