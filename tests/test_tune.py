"""`fitmm tune`: trial budget, resume after an interruption, shared workers, the audit table, exit codes."""

import json
import multiprocessing
import os
import re
import subprocess
from pathlib import Path

import optuna
import pandas as pd
import pytest

from fitmm import tune as tune_mod
from fitmm.cli import main
from fitmm.config import load_config
from fitmm.data import synthetic_dataset
from fitmm.data.dataset import Interactions
from fitmm.errors import ConfigError, TrainingError
from fitmm.models import MODELS
from fitmm.models.vbpr import VBPR
from fitmm.tune import (AUDIT_COLUMNS, best_overrides, check, chosen_overrides, claim, claim_lock, grids, is_stale,
                        journal_path, load_trials, open_study, plan, search_progress, search_size, selection_audit,
                        trials_frame, tune)
from fitmm.trainer import train

from conftest import train_killed_after_first_checkpoint

COMPLETE, FAIL = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL


def fake_train(data, config, results_dir=None, progress=True):
    """A run record whose valid and test Recall@20 depend on the config only (valid peaks at reg 0.1, test at 1e-3)."""
    config = config.to_dict()
    key = json.dumps({k: config[k] for k in ("reg_weight", "l2") if k in config}, sort_keys=True)
    reg = config.get("reg_weight", 0.0)
    return {"run_id": f"{config['model']}-{key}", "best_valid": {"recall@20": 1 - abs(reg - 0.1)},
            "test": {"recall@20": 1 - abs(reg - 1e-3)}}


def interrupt_on(call: int):
    calls = []

    def train(data, config, results_dir=None, progress=True):
        calls.append(config)
        if len(calls) == call:
            raise KeyboardInterrupt
        return fake_train(data, config)
    return train


def finished(study):
    return study.get_trials(states=(COMPLETE,))


def distinct_points(study) -> bool:
    points = [json.dumps(t.params, sort_keys=True) for t in finished(study)]
    return len(points) == len(set(points))


def test_grids_are_the_published_ones_and_valid():
    sizes = {model: len(plan(spec["grid"], seed=0)) for model, spec in grids().items()}
    assert sizes == {"bpr": 7, "lightgcn": 20, "vbpr": 7, "freedom": 8, "smore": 128, "fitmm": 12, "ssr": 324,
                     "ease": 7}
    for model in sizes:
        check(model, {}, 1)  # every grid key and value is accepted by the model's config


def test_plan_is_a_seeded_permutation_of_the_grid():
    grid = grids()["lightgcn"]["grid"]
    points = plan(grid, seed=999)
    assert points == plan(grid, seed=999) != plan(grid, seed=1)
    assert sorted(map(str, points)) == sorted(str({"n_layers": n, "reg_weight": r})
                                              for n in grid["n_layers"] for r in grid["reg_weight"])


def test_real_trials_reach_the_budget_once_and_are_ordinary_runs(tmp_path):
    data = synthetic_dataset()
    study = tune(data, "lightgcn", trials=3, overrides={"epochs": 1}, results_dir=tmp_path, progress=False)
    assert len(finished(study)) == 3 and distinct_points(study)
    for t in finished(study):
        assert set(t.user_attrs) >= {"run_id", "overrides", "valid_recall@20", "test_recall@20"}
        assert t.value == t.user_attrs["valid_recall@20"]
        record = tmp_path / "runs" / "synthetic" / "lightgcn" / t.user_attrs["run_id"] / "record.json"
        assert json.loads(record.read_text())["config"]["n_layers"] == t.params["n_layers"]
    again = tune(data, "lightgcn", trials=3, overrides={"epochs": 1}, results_dir=tmp_path, progress=False)
    assert len(again.get_trials()) == 3
    tune(data, "ease", trials=1, results_dir=tmp_path, progress=False)  # a closed form has no epoch cap
    trials = load_trials(tmp_path).set_index("model")
    assert trials.loc["lightgcn", "at_cap"].tolist() == [True] * 3  # one epoch each: every run went to its cap
    assert not trials.loc["ease", "at_cap"]
    audit = selection_audit(load_trials(tmp_path)).set_index("model")
    assert audit.loc["lightgcn", ["at_cap", "chosen_at_cap"]].tolist() == [3, True]
    assert audit.loc["ease", ["at_cap", "chosen_at_cap"]].tolist() == [0, False]
    assert best_overrides("lightgcn", "synthetic", tmp_path) == max(finished(study), key=lambda t: t.value).params


def test_small_grid_runs_each_point_once(tmp_path, monkeypatch):
    monkeypatch.setattr(tune_mod, "train", fake_train)
    study = tune(synthetic_dataset(), "bpr", trials=12, results_dir=tmp_path, progress=False)
    assert sorted(t.params["reg_weight"] for t in finished(study)) == sorted(grids()["bpr"]["grid"]["reg_weight"])


def test_interrupted_study_resumes_and_retries_the_point(tmp_path, monkeypatch):
    data = synthetic_dataset()
    monkeypatch.setattr(tune_mod, "train", interrupt_on(2))
    with pytest.raises(KeyboardInterrupt):
        tune(data, "bpr", trials=4, results_dir=tmp_path, progress=False)
    study = open_study(journal_path(tmp_path, "synthetic", "bpr"), "bpr", "synthetic")
    assert [t.state for t in study.get_trials()] == [COMPLETE, FAIL]
    lost = study.get_trials()[1].params
    monkeypatch.setattr(tune_mod, "train", fake_train)
    study = tune(data, "bpr", trials=4, results_dir=tmp_path, progress=False)
    assert len(finished(study)) == 4 and distinct_points(study)
    assert lost in [t.params for t in finished(study)]
    points = plan(grids()["bpr"]["grid"], seed=999)[:4]  # the points an uninterrupted search trains
    assert sorted(map(str, points)) == sorted(str(t.params) for t in finished(study))


def started_search(tmp_path, monkeypatch) -> tuple[Interactions, Path, optuna.Study]:
    """A BPR search on the synthetic set under `tmp_path` with one trial finished (fake training): data, journal,
    study."""
    data = synthetic_dataset()
    journal = journal_path(tmp_path, "synthetic", "bpr")
    monkeypatch.setattr(tune_mod, "train", fake_train)
    tune(data, "bpr", trials=1, results_dir=tmp_path, progress=False)
    return data, journal, open_study(journal, "bpr", "synthetic")


def hold_point(study: optuna.Study, journal, trials: int) -> optuna.Trial:
    """Claim the next grid point of a BPR search of budget `trials`, as a worker does, and leave it running."""
    grid = grids()["bpr"]["grid"]
    with claim_lock(journal):
        return claim(study, trials, plan(grid, seed=999), grid)


def test_trial_of_a_dead_worker_is_failed_and_retried(tmp_path, monkeypatch):
    data, journal, study = started_search(tmp_path, monkeypatch)
    dead = subprocess.Popen(["true"])
    dead.wait()
    trial = hold_point(study, journal, 2)
    trial.set_user_attr("worker", f"{tune_mod.host_id()}:{dead.pid}")  # a worker killed mid-trial
    study = tune(data, "bpr", trials=3, results_dir=tmp_path, progress=False)
    states = [t.state for t in study.get_trials()]
    assert states.count(COMPLETE) == 3 and states.count(FAIL) == 1 and distinct_points(study)
    assert study.get_trials()[1].params in [t.params for t in finished(study)]


def test_a_worker_of_another_boot_or_machine_of_the_same_name_is_another_host():
    study = optuna.create_study()
    here = tune_mod.host_id()
    assert here.startswith(tune_mod.socket.gethostname())
    for worker, stale in [(f"{here}:{os.getpid()}", False),  # this process: alive
                          (f"{tune_mod.socket.gethostname()}/00000000:999999999", False),  # another boot: left alone
                          (f"{tune_mod.socket.gethostname()}:{os.getpid()}", False),  # an unmarked boot: left alone
                          (f"{here}:999999999", True)]:  # this machine, process gone
        trial = study.ask()
        trial.set_user_attr("worker", worker)
        assert is_stale(study.trials[-1]) is stale, worker


def test_reclaim_frees_only_the_trials_of_other_hosts(tmp_path, monkeypatch, capsys):
    data, journal, study = started_search(tmp_path, monkeypatch)
    elsewhere = hold_point(study, journal, 3)
    elsewhere.set_user_attr("worker", "another-machine:123")  # a journal committed mid-trial on another host
    live_here = hold_point(study, journal, 3)  # this process: alive, so never reclaimed
    study = tune(data, "bpr", trials=3, results_dir=tmp_path, progress=False)
    assert len(finished(study)) == 1  # without --reclaim both points stay held
    assert main(["tune", "--model", "bpr", "--trials", "3", "--results-dir", str(tmp_path), "--quiet"]) == 0
    assert ("1 trial(s) still running on other hosts (another-machine:123): the search finishes when they do; "
            "if no machine works on them any more, rerun with --reclaim") in capsys.readouterr().out
    assert main(["tune", "--model", "bpr", "--trials", "3", "--reclaim", "--results-dir", str(tmp_path), "--quiet"]) == 0
    assert f"reclaimed 1 trial(s) left running on other hosts: [{elsewhere.number}]" in capsys.readouterr().out
    study = open_study(journal, "bpr", "synthetic")
    assert study.get_trials()[elsewhere.number].state == FAIL
    assert study.get_trials()[live_here.number].state == optuna.trial.TrialState.RUNNING
    assert elsewhere.params in [t.params for t in finished(study)] and len(finished(study)) == 2


def test_running_trials_show_the_epoch_their_checkpoint_reached(tmp_path, monkeypatch):
    """What `fitmm reproduce --dry-run` lists under a search not finished: each trial still running, its grid
    point, and the epoch its run's checkpoint reached (here a real BPR run killed after its first epoch)."""
    data, journal, study = started_search(tmp_path, monkeypatch)
    trial = hold_point(study, journal, 2)
    trial.set_user_attr("overrides", trial.params)  # as run_trial does before it trains
    point = ", ".join(f"{key} {value}" for key, value in sorted(trial.params.items()))
    assert tune_mod.running_trials("bpr", data, tmp_path) == [f"trial {trial.number} ({point}): not started"]
    train_killed_after_first_checkpoint(data, load_config("bpr", trial.params), tmp_path)
    epochs = load_config("bpr").epochs
    [line] = tune_mod.running_trials("bpr", data, tmp_path)
    assert re.fullmatch(rf"trial {trial.number} \({point}\): epoch 1 of {epochs}, best valid recall@20 0\.\d{{4}} at "
                        r"epoch 0", line), line
    assert tune_mod.running_trials("bpr", data, tmp_path / "elsewhere") == []  # no search there


def _worker(results_dir):
    tune(synthetic_dataset(), "bpr", trials=6, results_dir=results_dir, progress=False)


def slow_fake_train(data, config, results_dir=None, progress=True):
    import time
    time.sleep(0.1)
    return fake_train(data, config)


def test_two_workers_share_one_search(tmp_path, monkeypatch):
    synthetic_dataset()  # generated once, before the workers start
    monkeypatch.setattr(tune_mod, "train", slow_fake_train)
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_worker, args=(tmp_path,)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert [w.exitcode for w in workers] == [0, 0]
    study = open_study(journal_path(tmp_path, "synthetic", "bpr"), "bpr", "synthetic")
    assert len(study.get_trials()) == 6 and len(finished(study)) == 6 and distinct_points(study)
    assert len({t.user_attrs["worker"] for t in study.get_trials()}) == 2  # both took trials


def test_audit_puts_the_valid_choice_beside_the_test_choice(tmp_path, monkeypatch):
    monkeypatch.setattr(tune_mod, "train", fake_train)
    tune(synthetic_dataset(), "bpr", trials=12, results_dir=tmp_path, progress=False)
    tune(synthetic_dataset(), "ease", trials=12, results_dir=tmp_path, progress=False)
    trials = load_trials(tmp_path)
    assert list(trials["model"].value_counts().sort_index()) == [7, 7]  # bpr, ease
    assert trials["at_cap"].isna().all()  # fake_train writes no record: whether a trial ran to its cap is unknown
    audit = selection_audit(trials)
    assert list(audit.columns) == AUDIT_COLUMNS
    assert audit["at_cap"].isna().all() and audit["chosen_at_cap"].isna().all()
    bpr = audit.set_index("model").loc["bpr"]
    assert json.loads(bpr["valid_params"]) == {"reg_weight": 0.1}
    assert json.loads(bpr["test_params"]) == {"reg_weight": 1e-3}
    assert bpr["test_recall@20"] == pytest.approx(1 - abs(0.1 - 1e-3))
    assert bpr["leak"] == pytest.approx(abs(0.1 - 1e-3))
    assert best_overrides("bpr", "synthetic", tmp_path) == {"reg_weight": 0.1}
    assert best_overrides("ease", "synthetic", tmp_path)["l2_grid"] == []  # EASE: one lambda per trial


def test_the_chosen_configuration_keeps_the_searchs_own_settings_but_not_its_budget(tmp_path, monkeypatch):
    # e.g. SSR searched with --set contrastive=false on a one-modality dataset: its main runs need that key too
    monkeypatch.setattr(tune_mod, "train", fake_train)
    tune(synthetic_dataset(), "bpr", trials=2, overrides={"lr": 5e-4, "epochs": 2, "patience": 1},
         results_dir=tmp_path, progress=False)
    chosen = best_overrides("bpr", "synthetic", tmp_path)
    assert chosen["lr"] == 5e-4 and "reg_weight" in chosen
    assert not {"epochs", "patience", "seed"} & set(chosen)


def test_audit_of_constructed_trials():
    trials = pd.DataFrame({"dataset": "d", "model": "m", "trial": [0, 1, 2], "params": ["a", "b", "c"],
                           "run_id": ["r0", "r1", "r2"], "valid_recall@20": [0.2, 0.3, 0.3],
                           "test_recall@20": [0.25, 0.2, 0.22],
                           "at_cap": pd.array([True, False, True], dtype="boolean")})
    row = selection_audit(trials).iloc[0]
    assert (row["valid_params"], row["test_params"], row["trials"]) == ("b", "a", 3)  # tie on valid -> trial 1
    assert (row["at_cap"], row["chosen_at_cap"]) == (2, False)
    assert row["leak"] == pytest.approx(0.05)
    assert list(selection_audit(trials.iloc[:0]).columns) == AUDIT_COLUMNS


@pytest.mark.parametrize("args, message", [
    (["--model", "lightgcn", "--trials", "0"], "--trials"),
    (["--model", "lightgcn", "--set", "n_layers=3"], "n_layers"),
    (["--model", "lightgcn", "--set", "not_a_key=3"], "not_a_key"),
])
def test_bad_input_exits_2_before_compute(args, message, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(tune_mod, "train", lambda *a, **k: pytest.fail("trained despite bad input"))
    assert main(["tune", *args, "--results-dir", str(tmp_path), "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "tuning").exists()


def test_unknown_model_and_bad_grid_key_exit_2(capsys, monkeypatch, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["tune", "--model", "nope"])
    assert exit_.value.code == 2
    monkeypatch.setattr(tune_mod, "grids", lambda: {"bpr": {"grid": {"n_layers": [1, 2]}, "fixed": {}}})
    assert main(["tune", "--model", "bpr", "--results-dir", str(tmp_path), "--quiet"]) == 2
    assert "bpr.grid.n_layers" in capsys.readouterr().err
    with pytest.raises(TrainingError, match="not a bpr config key"):
        check("bpr", {}, 1)


def test_a_different_setting_on_the_same_journal_exits_2(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(tune_mod, "train", fake_train)
    assert main(["tune", "--model", "bpr", "--trials", "1", "--results-dir", str(tmp_path), "--quiet"]) == 0
    assert main(["tune", "--model", "bpr", "--trials", "1", "--set", "epochs=3",
                 "--results-dir", str(tmp_path), "--quiet"]) == 2
    assert "made with" in capsys.readouterr().err
    assert len(trials_frame(open_study(journal_path(tmp_path, "synthetic", "bpr"), "bpr", "synthetic"), tmp_path)) == 1


def test_cli_workers_share_one_search_through_the_executor(tmp_path, capsys, monkeypatch):
    """`fitmm tune --jobs 2`: two worker processes on one journal train the 3-point budget once."""
    monkeypatch.setenv("FITMM_CACHE", str(tmp_path / "cache"))
    argv = ["tune", "--model", "bpr", "--trials", "3", "--set", "epochs=1", "--set", "batch_size=4096",
            "--results-dir", str(tmp_path / "results"), "--quiet", "--jobs", "2"]
    assert main(argv) == 0
    assert "tune workers: 2 done, 0 reused, 0 failed" in capsys.readouterr().out
    trials = load_trials(tmp_path / "results")
    assert len(trials) == 3 and trials.params.is_unique
    assert len(list((tmp_path / "results" / "runs" / "synthetic" / "bpr").glob("*/record.json"))) == 3


def test_a_tuned_profile_plans_the_valid_choice_only_once_the_search_has_finished(tmp_path, monkeypatch):
    """`tuning_trials: N` runs each model in the configuration its finished N-trial search chose; a missing or
    unfinished search is refused (exit 2) before any compute, naming the command that makes it."""
    from fitmm.experiments import plan as planner

    monkeypatch.setattr(tune_mod, "train", fake_train)
    data = synthetic_dataset()
    with pytest.raises(ConfigError, match=r"tuning/synthetic/bpr/journal.log: bpr is not tuned on synthetic yet.*"
                                          r"fitmm tune --model bpr --dataset synthetic --trials 5"):
        planner.main_runs(["synthetic"], None, ["bpr"], [1], {}, 5, str(tmp_path))
    tune(data, "bpr", trials=3, results_dir=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="3 of the 5 trials of the bpr search on synthetic have finished"):
        chosen_overrides("bpr", "synthetic", 5, tmp_path)
    tune(data, "bpr", trials=5, results_dir=tmp_path, progress=False)
    chosen = chosen_overrides("bpr", "synthetic", 5, tmp_path)
    assert chosen == best_overrides("bpr", "synthetic", tmp_path)
    (spec,) = planner.main_runs(["synthetic"], None, ["bpr"], [1], {"epochs": 3}, 5, str(tmp_path))
    assert spec.overrides == {**chosen, "epochs": 3} and spec.config().reg_weight == chosen["reg_weight"]
    (untuned,) = planner.main_runs(["synthetic"], None, ["bpr"], [1], {"epochs": 3}, None, str(tmp_path))
    assert untuned.overrides == {"epochs": 3}
    # a model that cannot run on the dataset (no item content) has no search: planned untuned, skipped at run time
    def no_content(cls, config, data):
        raise ConfigError("VBPR needs 1 item modality")

    monkeypatch.setattr(VBPR, "check_data", classmethod(no_content))
    (skipped,) = planner.grid([planner.DataSpec("synthetic", size=(300, 200))], ["vbpr"], [1], {"epochs": 3},
                              tuned=planner.tuning(5, str(tmp_path)))
    assert skipped.overrides == {"epochs": 3}


def test_pending_searches_leave_their_runs_out_and_name_each_search(tmp_path, monkeypatch):
    """Planning inside `pending_searches()` notes each unfinished search (with the --set a model needs on the
    dataset: SSR without its contrastive term where there is one modality) instead of refusing the plan."""
    from fitmm.data.synthetic import generate
    from fitmm.experiments import plan as planner

    monkeypatch.setattr(tune_mod, "train", fake_train)
    tune(synthetic_dataset(), "bpr", trials=5, results_dir=tmp_path, progress=False)
    generate(tmp_path / "data", "onetext", 120, 80, seed=0, modalities={"text": 16})
    with planner.pending_searches() as pending:
        specs = planner.main_runs(["synthetic"], None, ["bpr", "lightgcn"], [1, 2], {}, 5, str(tmp_path))
        specs += planner.main_runs(["onetext"], str(tmp_path / "data"), ["ssr"], [1], {}, 5, str(tmp_path))
    assert [(s.model, s.seed) for s in specs] == [("bpr", 1), ("bpr", 2)]
    assert pending == {("synthetic", "lightgcn"): (0, 5, {}), ("onetext", "ssr"): (0, 5, {"contrastive": False})}
    with pytest.raises(ConfigError, match=r"ssr is not tuned on onetext yet.*its search runs as `fitmm tune "
                                          r"--model ssr --dataset onetext --trials 5 --set contrastive=false"):
        planner.main_runs(["onetext"], str(tmp_path / "data"), ["ssr"], [1], {}, 5, str(tmp_path))
    # a missing dataset folder is named first: the search the message would otherwise suggest cannot run either
    with planner.pending_searches(), pytest.raises(ConfigError, match=r"absent: dataset folder not found.*needs "
                                                                       r"it for ssr, whose search has not finished"):
        planner.main_runs(["absent"], str(tmp_path / "data"), ["ssr"], [1], {}, 5, str(tmp_path))


def test_records_only_chapters_note_the_runs_whose_search_has_not_finished(tmp_path, monkeypatch):
    """When a chapter only reads records (`fitmm reproduce --records-only`), a tuned plan with unfinished searches
    does not fail the chapter: their runs are noted with the command that finishes each search, nothing trains."""
    from fitmm.data.synthetic import generate
    from fitmm.experiments import plan as planner, runs

    monkeypatch.setattr(tune_mod, "train", fake_train)
    tune(synthetic_dataset(), "bpr", trials=5, results_dir=tmp_path, progress=False)
    generate(tmp_path / "data", "onetext", 120, 80, seed=0, modalities={"text": 16})
    monkeypatch.setenv(planner.RECORDS_ONLY, "1")
    specs = planner.main_runs(["synthetic"], None, ["bpr", "lightgcn"], [1], {}, 5, str(tmp_path))
    specs += planner.main_runs(["onetext"], str(tmp_path / "data"), ["ssr"], [1], {}, 5, str(tmp_path))
    assert [(s.model, bool(s.waiting_for)) for s in specs] == [("bpr", False), ("lightgcn", True), ("ssr", True)]
    assert specs[2].overrides == {"contrastive": False}
    monkeypatch.setattr(runs, "train", lambda *a, **k: pytest.fail("a records-only chapter trained"))
    notes = runs.run_specs(specs, tmp_path).notes
    assert notes[:2] == [
        f"lightgcn on synthetic: not run yet: its 5-trial search has 0 finished; run "
        f"`fitmm tune --model lightgcn --dataset synthetic --trials 5 --results-dir {tmp_path}`",
        f"ssr on onetext: not run yet: its 5-trial search has 0 finished; run `fitmm tune --model ssr --dataset "
        f"onetext --trials 5 --set contrastive=false --data-dir {tmp_path / 'data'} --results-dir {tmp_path}`"]
    assert notes[2:] == ["bpr on synthetic, seed 1: no record yet", runs.NO_RECORD_YET]
    with planner.pending_searches() as pending:  # the dry run still leaves them out, whatever the environment
        assert planner.main_runs(["synthetic"], None, ["lightgcn"], [1], {}, 5, str(tmp_path)) == []
    assert list(pending) == [("synthetic", "lightgcn")]


def with_modalities(data: Interactions, names: list[str]) -> Interactions:
    return Interactions(data.name, data.n_users, data.n_items, data.train, data.valid, data.test,
                        {m: data.features[m] for m in names})


@pytest.mark.parametrize("model, fixed, key, values", [
    ("smore", {}, "image_knn_k", (5, 40)),
    ("ssr", {"contrastive": False}, "lambda_contrast", (1e-4, 1e-1)),
])
@pytest.mark.usefixtures("one_thread")  # bit-equal runs: multithreaded sparse sums are not reproducible run to run
def test_an_inert_key_changes_no_run_and_is_live_where_the_model_uses_it(model, fixed, key, values):
    full = synthetic_dataset()
    assert sorted(full.modalities) == ["image", "text"]

    def trajectory(data, **overrides):
        config = load_config(model, {"epochs": 2, "batch_size": 512, "device": "cpu", **overrides})
        history = train(data, config, progress=False)["history"]
        return [(h["losses"], h["valid"]) for h in history], MODELS[model].inert_keys(config, data)

    text_only = with_modalities(full, ["text"])
    runs = [trajectory(text_only, **fixed, **{key: v}) for v in values]
    assert all(key in inert for _, inert in runs) and runs[0][0] == runs[1][0]
    runs = [trajectory(full, **{key: v}) for v in values]  # image and text; SSR with its contrastive term
    assert all(key not in inert for _, inert in runs) and runs[0][0] != runs[1][0]


def test_a_search_trains_each_effective_point_once(tmp_path, monkeypatch):
    text_only = with_modalities(synthetic_dataset(), ["text"])
    monkeypatch.setattr(tune_mod, "train", fake_train)
    assert search_size("smore", 1000) == 128 and search_size("smore", 1000, frozenset({"image_knn_k"})) == 32

    def effective(point):
        return {k: v for k, v in point.items() if k != "image_knn_k"}  # SMORE's image slot: no image here

    study = tune(text_only, "smore", trials=40, results_dir=tmp_path, progress=False)  # 32 effective points
    trained = [t.params for t in finished(study)]
    assert len(trained) == 32 and len({json.dumps(effective(p), sort_keys=True) for p in trained}) == 32
    # each one at its first appearance in the plan
    plan_order = plan(grids()["smore"]["grid"], seed=999)
    assert all(p == next(q for q in plan_order if effective(q) == effective(p)) for p in trained)
    assert search_progress("smore", "synthetic", 40, tmp_path) == (32, 32)
    assert len(finished(tune(text_only, "smore", trials=40, results_dir=tmp_path, progress=False))) == 32
