"""`fitmm tune`: a model's published grid searched on valid Recall@20, one seed, the same budget for every model.

    grid (fitmm/experiments/grids.yaml) --seeded permutation--> plan; the first `budget` points are trained
    trial --fitmm.trainer.train--> results/runs/<dataset>/<model>/<run_id>/ (an ordinary, reusable run)
    study --Optuna JournalStorage(file)--> results/tuning/<dataset>/<model>/journal.log

Each trial is one training run. A grid larger than the budget (default 12 trials) is sampled uniformly
without replacement (the plan's first `budget` points), a smaller one is run in full. Points that differ only
in a key the model declares inert on the dataset (`Recommender.inert_keys`: SMORE's image slot where there is
no image, SSR's contrastive weight without its contrastive term) train the same model, so they count as one:
the plan skips a point equal to a held one but for such keys, and the grid's size is that of the other keys.
The best trial is the one with the highest valid Recall@20; test Recall@20 is stored beside it for the
selection-leak audit only (MMRec's grid search picks by test; this study does not).

Trials are claimed under a file lock, each taking the first plan point that no finished or running trial
holds, so a killed search resumes (the point of a trial whose worker died is trained again) and several
worker processes can share one search; whether or not it was interrupted, a search trains the same points
and none twice. A trial whose worker ran on another host (`host_id`: host name and boot id) is left alone (it may
be a live SLURM worker) unless `fitmm tune --reclaim` says no other machine works on the search.
"""

from __future__ import annotations

import argparse
import functools
import json
import itertools
import math
import os
import socket
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import yaml
from filelock import FileLock
from tqdm.auto import tqdm

from fitmm.config import load_config, parse_overrides
from fitmm.data.dataset import Interactions
from fitmm.errors import ConfigError, TrainingError
from fitmm.executor import add_arguments as add_executor_arguments, execute, slurm_options
from fitmm.models import MODELS
from fitmm.settings import results_dir as default_results_dir
from fitmm.store import NON_SEMANTIC_KEYS, checkpoint_state, read_record, run_dir
from fitmm.trainer import train

DEFAULT_TRIALS = 12
METRIC = "recall@20"
TUNING = "tuning"
# What a search may set with --set without it becoming part of the chosen configuration: its training budget
# (the main runs take their profile's). Every other --set key (e.g. SSR's `contrastive: false` on a dataset with
# one content modality) is part of the configuration the search chose.
BUDGET_KEYS = frozenset({"epochs", "patience"})


def grids() -> dict[str, dict]:
    """{model: {"grid": {key: [values]}, "fixed": {key: value}}} from fitmm/experiments/grids.yaml."""
    raw = yaml.safe_load(resources.files("fitmm.experiments").joinpath("grids.yaml").read_text())
    return {model: {"grid": spec["grid"], "fixed": spec.get("fixed", {})} for model, spec in raw.items()}


def plan(grid: dict[str, list], seed: int) -> list[dict[str, Any]]:
    """Every grid point, in an order drawn uniformly at random from `seed`."""
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    return [points[i] for i in np.random.default_rng(seed).permutation(len(points))]


def check(model: str, overrides: dict[str, Any], trials: int) -> dict:
    """The base config of a search; raises TrainingError, before any compute, on a model without a grid,
    a grid key the model's config lacks, a grid value it rejects, an override of a searched key, or
    trials < 1."""
    specs = grids()
    if model not in specs:
        raise TrainingError(f"no tuning grid for model {model!r} in fitmm/experiments/grids.yaml; "
                            f"models with a grid: {', '.join(sorted(specs))}")
    if trials < 1:
        raise TrainingError(f"--trials must be at least 1, got {trials}")
    grid, fixed = specs[model]["grid"], specs[model]["fixed"]
    searched = sorted(set(grid) & set(overrides))
    if searched:
        raise TrainingError(f"{', '.join(searched)}: searched by the {model} grid (fitmm/experiments/grids.yaml); "
                            "do not set it with --set")
    config = load_config(model, {**fixed, **overrides}).to_dict()
    for key, values in grid.items():
        where = f"fitmm/experiments/grids.yaml: {model}.grid.{key}"
        if key not in config:
            raise TrainingError(f"{where}: {key!r} is not a {model} config key; known keys: {', '.join(sorted(config))}")
        if not isinstance(values, list) or not values:
            raise TrainingError(f"{where}: expected a non-empty list of values, got {values!r}")
        for value in values:
            load_config(model, {**fixed, **overrides, key: value})
    return config


def journal_path(results_dir: str | Path, dataset: str, model: str) -> Path:
    return Path(results_dir) / TUNING / dataset / model / "journal.log"


def open_study(journal: Path, model: str, dataset: str, settings: dict | None = None) -> optuna.Study:
    """The study in `journal`. With `settings` (seed, grid, fixed overrides) it is created if new, and an
    existing one must have been made with the same settings; without, it is loaded for reading."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if settings is None and not journal.exists():
        raise TrainingError(f"{journal}: no tuning study; run `fitmm tune --model {model} --dataset {dataset}` first")
    journal.parent.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    name = f"{dataset}/{model}"
    if settings is None:
        return optuna.load_study(study_name=name, storage=storage)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    stored = study.user_attrs.get("settings")
    if stored is None:
        study.set_user_attr("settings", settings)
    elif stored != settings:
        raise TrainingError(f"{journal}: the study there was made with {json.dumps(stored, sort_keys=True)}, "
                            f"not {json.dumps(settings, sort_keys=True)}; use another --results-dir or remove it")
    return study


def claim_lock(journal: Path) -> FileLock:
    """An exclusive lock next to the journal (released by the kernel if the holder dies)."""
    return FileLock(journal.with_suffix(".lock"))


@functools.cache
def host_id() -> str:
    """This machine: its host name and, where Linux gives one, its boot id. Sandboxes and containers often share
    a host name, and a rebooted machine reuses pids, so a host name alone would take another machine's (or an
    earlier boot's) worker for one of this machine's processes."""
    boot = Path("/proc/sys/kernel/random/boot_id")
    return f"{socket.gethostname()}/{boot.read_text().strip()[:8]}" if boot.exists() else socket.gethostname()


def worker_id() -> str:
    return f"{host_id()}:{os.getpid()}"


def worker_of(trial: optuna.trial.FrozenTrial) -> tuple[str, str] | None:
    """(host, pid) of the worker that claimed `trial` (`worker_id`), or None before it got its mark."""
    worker = trial.user_attrs.get("worker")
    if worker is None:
        return None
    host, _, pid = worker.rpartition(":")
    return host, pid


def is_stale(trial: optuna.trial.FrozenTrial) -> bool:
    """A running trial whose worker (same host) is gone, or that never got its worker mark."""
    worker = worker_of(trial)
    if worker is None:
        return True
    host, pid = worker
    if host != host_id():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return False


def running_elsewhere(study: optuna.Study) -> dict[int, str]:
    """{trial number: worker} of the running trials claimed by workers on other hosts."""
    return {t.number: t.user_attrs["worker"]
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            if (worker := worker_of(t)) is not None and worker[0] != host_id()}


def running_trials(model: str, data: Interactions, results_dir: str | Path, fixed: dict | None = None) -> list[str]:
    """One line per trial of the search of `model` on `data` still running (`fixed`: the search's --set
    overrides): its grid point and the epoch its run's checkpoint reached, with the best valid score so far."""
    journal = journal_path(results_dir, data.name, model)
    if not journal.exists():
        return []
    lines = []
    study = open_study(journal, model, data.name)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        overrides = dict(sorted(trial.user_attrs.get("overrides", trial.params).items()))
        config = load_config(model, {**(fixed or {}), **overrides})
        state = checkpoint_state(run_dir(data, config, results_dir))
        point = ", ".join(f"{key} {value}" for key, value in overrides.items())
        lines.append(f"trial {trial.number} ({point}): " + (
            f"epoch {state['epoch']} of {config.epochs}, best valid {METRIC} {state['best_valid'][METRIC]:.4f} at "
            f"epoch {state['best_epoch']}" if state and state["epoch"] else "not started"))
    return lines


def reclaim(journal: Path, model: str, dataset: str) -> list[int]:
    """Fail every trial left running by a worker on another host, so that its point is trained again; return
    their numbers. Only for a search no other machine is working on: a journal copied or committed mid-trial and
    resumed elsewhere (a live worker on another host cannot be told from a dead one)."""
    study = open_study(journal, model, dataset)
    with claim_lock(journal):
        gone = list(running_elsewhere(study))
        for number in gone:
            study.tell(number, state=optuna.trial.TrialState.FAIL)
    return gone


def holds_point(trial: optuna.trial.FrozenTrial) -> bool:
    """Finished, running, or failed by its own configuration (a training error): its point is taken. A trial
    failed without an error of its own (killed, interrupted) releases its point."""
    state = optuna.trial.TrialState
    return trial.state in (state.COMPLETE, state.RUNNING) or (trial.state == state.FAIL and "error" in trial.user_attrs)


def effective(point: dict[str, Any], inert: frozenset[str]) -> dict[str, Any]:
    """The grid point less its inert keys: what the trained model depends on."""
    return {key: value for key, value in point.items() if key not in inert}


def held_points(trials: list[optuna.trial.FrozenTrial], inert: frozenset[str], finished: bool = False) -> list[dict]:
    """The distinct effective points the trials hold (`holds_point`; with `finished`, running ones left out)."""
    held: list[dict] = []
    for t in trials:
        if holds_point(t) and not (finished and t.state == optuna.trial.TrialState.RUNNING):
            if (point := effective(t.params, inert)) not in held:
                held.append(point)
    return held


def claim(study: optuna.Study, budget: int, points: list[dict], grid: dict[str, list],
          inert: frozenset[str] = frozenset()) -> optuna.Trial | None:
    """Start a trial on the first point of `points` whose effective point (`effective`) no trial holds, or return
    None when `budget` trials hold points or none is left. Call under the lock (a trial left waiting by a worker
    that died here is started instead)."""
    state = optuna.trial.TrialState
    for t in study.get_trials(deepcopy=False, states=(state.RUNNING,)):
        if is_stale(t):
            study.tell(t.number, state=state.FAIL)
    trials = study.get_trials(deepcopy=False)
    held = held_points(trials, inert)
    if len(held) >= budget:
        return None
    if not any(t.state == state.WAITING for t in trials):
        free = next((p for p in points if effective(p, inert) not in held), None)
        if free is None:
            return None
        study.enqueue_trial(free)
    trial = study.ask({name: optuna.distributions.CategoricalDistribution(values) for name, values in grid.items()})
    trial.set_user_attr("worker", worker_id())
    return trial


def run_trial(trial: optuna.Trial, study: optuna.Study, data: Interactions, base: dict, fixed: dict,
              results_dir: str | Path, progress: bool) -> optuna.trial.FrozenTrial:
    """Train the trial's grid point; store run id, overrides and valid/test Recall@20; tell the study."""
    overrides = dict(sorted(trial.params.items()))
    trial.set_user_attr("overrides", overrides)
    try:
        record = train(data, load_config(base["model"], {**fixed, **overrides}), results_dir=results_dir,
                       progress=progress)
    except TrainingError as err:  # the configuration itself fails (e.g. a diverging loss): counts, not retried
        trial.set_user_attr("error", str(err))
        return study.tell(trial, state=optuna.trial.TrialState.FAIL)
    except BaseException:  # interrupted: failed without an error, so the next claim trains its point again
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    valid, test = record["best_valid"][METRIC], record["test"][METRIC]
    trial.set_user_attr("run_id", record["run_id"])
    trial.set_user_attr(f"valid_{METRIC}", valid)
    trial.set_user_attr(f"test_{METRIC}", test)
    return study.tell(trial, valid)


def tune(data: Interactions, model: str, trials: int = DEFAULT_TRIALS, seed: int | None = None,
         overrides: dict | None = None, results_dir: str | Path = "results", progress: bool = True) -> optuna.Study:
    """Search `model`'s grid on `data` until min(trials, grid size) trials hold a point (finished or
    running, those of other workers on the same journal included); return the study."""
    overrides = {**(overrides or {}), **({"seed": seed} if seed is not None else {})}
    base = check(model, overrides, trials)
    spec = grids()[model]
    fixed = {**spec["fixed"], **overrides, "seed": base["seed"]}
    points = plan(spec["grid"], base["seed"])
    inert = frozenset(spec["grid"]) & MODELS[model].inert_keys(load_config(model, fixed), data)
    budget = search_size(model, trials, inert)
    journal = journal_path(results_dir, data.name, model)
    semantic = {k: v for k, v in fixed.items() if k not in NON_SEMANTIC_KEYS}  # e.g. a GPU may continue a CPU search
    study = open_study(journal, model, data.name, {"seed": base["seed"], "grid": spec["grid"], "fixed": semantic})
    if study.user_attrs.get("inert") != sorted(inert):  # for `search_progress`, which has no data to ask the model
        study.set_user_attr("inert", sorted(inert))
    done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
    bar = tqdm(total=budget, initial=min(done, budget), desc=f"tune {model} on {data.name}", unit="trial",
               disable=not progress)
    while True:
        with claim_lock(journal):
            trial = claim(study, budget, points, spec["grid"], inert)
        if trial is None:
            break
        frozen = run_trial(trial, study, data, base, fixed, results_dir, progress)
        if frozen.state == optuna.trial.TrialState.COMPLETE:
            bar.update()
            bar.set_postfix_str(f"best valid {METRIC} {study.best_value:.4f}")
    bar.close()
    return study


TRIAL_COLUMNS = ["dataset", "model", "trial", "params", "run_id", f"valid_{METRIC}", f"test_{METRIC}", "at_cap"]


def trials_frame(study: optuna.Study, results_dir: str | Path) -> pd.DataFrame:
    """One row per finished trial: dataset, model, trial, params (JSON), run_id, valid and test Recall@20, and
    `at_cap` from the trial's run record under results_dir: True when the run went to its epoch cap (patience never
    stopped it), False when patience stopped it or it is a closed-form fit, NA when the record is not there."""
    dataset, _, model = study.study_name.partition("/")
    rows = [(dataset, model, t.number, json.dumps(t.params, sort_keys=True), t.user_attrs["run_id"],
             t.user_attrs[f"valid_{METRIC}"], t.user_attrs[f"test_{METRIC}"],
             ran_to_cap(trial_record(results_dir, dataset, model, t.user_attrs["run_id"])))
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    frame = pd.DataFrame(rows, columns=TRIAL_COLUMNS)
    return frame.astype({"at_cap": "boolean"})


def trial_record(results_dir: str | Path, dataset: str, model: str, run_id: str) -> Path:
    """Where a trial's run record lies: the trial is an ordinary run under results_dir/runs/."""
    return Path(results_dir, "runs", dataset, model, run_id, "record.json")


def ran_to_cap(record: Path) -> bool | None:
    """Whether the run record says its run went to its epoch cap; None when there is no such record."""
    return read_record(record).get("stopped_early") is False if record.exists() else None  # closed forms: absent


def load_trials(results_dir: str | Path = "results") -> pd.DataFrame:
    """`trials_frame` of every study under results_dir/tuning/<dataset>/<model>/."""
    frames = [trials_frame(open_study(path, path.parent.name, path.parent.parent.name), results_dir)
              for path in sorted(Path(results_dir, TUNING).glob("*/*/journal.log"))]
    return (pd.concat(frames, ignore_index=True) if frames
            else pd.DataFrame(columns=TRIAL_COLUMNS).astype({"at_cap": "boolean"}))


AUDIT_COLUMNS = ["dataset", "model", "trials", "at_cap", "valid_params", f"valid_{METRIC}", f"test_{METRIC}",
                 "chosen_at_cap", "test_params", f"test_{METRIC}_by_test", "leak"]


def selection_audit(trials: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, model): the valid-selected configuration and its test Recall@20 beside the
    configuration MMRec's rule (pick by test) would choose; `leak` = test R@20 by test - by valid (>= 0).
    `at_cap` counts the trials whose run went to its epoch cap (a budget that may have cut them short) and
    `chosen_at_cap` says whether the valid choice is one of them (`load_trials`; NA without records).
    Ties go to the earlier trial."""
    rows = []
    for (dataset, model), group in trials.sort_values("trial").groupby(["dataset", "model"], sort=True):
        by_valid = group.loc[group[f"valid_{METRIC}"].idxmax()]
        by_test = group.loc[group[f"test_{METRIC}"].idxmax()]
        at_cap = group["at_cap"]
        rows.append({"dataset": dataset, "model": model, "trials": len(group),
                     "at_cap": pd.NA if at_cap.isna().any() else int(at_cap.sum()),
                     "valid_params": by_valid["params"], f"valid_{METRIC}": by_valid[f"valid_{METRIC}"],
                     f"test_{METRIC}": by_valid[f"test_{METRIC}"], "chosen_at_cap": at_cap[by_valid.name],
                     "test_params": by_test["params"],
                     f"test_{METRIC}_by_test": by_test[f"test_{METRIC}"],
                     "leak": by_test[f"test_{METRIC}"] - by_valid[f"test_{METRIC}"]})
    return pd.DataFrame(rows, columns=AUDIT_COLUMNS)


def best_overrides(model: str, dataset: str, results_dir: str | Path = "results") -> dict[str, Any]:
    """Config overrides of the valid-selected trial: its grid point on top of the search's fixed keys (the
    grid's and the search's own --set keys, less its budget, `BUDGET_KEYS`): what the main results run over
    the seeds."""
    study = open_study(journal_path(results_dir, dataset, model), model, dataset)
    best = max(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)),
               key=lambda t: (t.value, -t.number), default=None)
    if best is None:
        raise TrainingError(f"{journal_path(results_dir, dataset, model)}: no finished trial yet")
    fixed = {k: v for k, v in study.user_attrs["settings"]["fixed"].items() if k not in BUDGET_KEYS}
    return {**fixed, **best.user_attrs["overrides"]}


def search_size(model: str, trials: int, inert: frozenset[str] = frozenset()) -> int:
    """The trials a search of `model` with budget `trials` runs: min(trials, grid size), the size counted over
    the keys that are not `inert`."""
    return min(trials, math.prod(len(values) for key, values in grids()[model]["grid"].items() if key not in inert))


def search_progress(model: str, dataset: str, trials: int, results_dir: str | Path) -> tuple[int, int]:
    """(finished trials, trials it needs) of the search of `model` on `dataset` with budget `trials`."""
    journal = journal_path(results_dir, dataset, model)
    if not journal.exists():
        return 0, search_size(model, trials)
    study = open_study(journal, model, dataset)
    inert = frozenset(study.user_attrs.get("inert", ()))
    done = len(held_points(study.get_trials(deepcopy=False), inert, finished=True))
    return done, search_size(model, trials, inert)


def tune_command(model: str, dataset: str, trials: int, results_dir: str | Path, fixed: dict | None = None,
                 data_dir: str | Path | None = None) -> str:
    """The `fitmm tune` command line of a search (`fixed`: its --set overrides)."""
    sets = "".join(f" --set {key}={json.dumps(value)}" for key, value in (fixed or {}).items())
    where = f" --data-dir {data_dir}" if data_dir is not None else ""
    return f"fitmm tune --model {model} --dataset {dataset} --trials {trials}{sets}{where} --results-dir {results_dir}"


def chosen_overrides(model: str, dataset: str, trials: int, results_dir: str | Path) -> dict[str, Any]:
    """What a tuned profile's runs of `model` on `dataset` use: `best_overrides` of a finished search of
    budget `trials` under `results_dir`; {} for a model without a grid (EASE picks its own on valid). ConfigError,
    before any compute, naming the command to run, when the search is missing or has not finished."""
    if model not in grids():
        return {}
    journal = journal_path(results_dir, dataset, model)
    command = tune_command(model, dataset, trials, results_dir)
    if not journal.exists():
        raise ConfigError(f"{journal}: {model} is not tuned on {dataset} yet, and this profile runs every model in "
                          f"its tuned configuration; run `{command}` (with --data-dir) first")
    done, size = search_progress(model, dataset, trials, results_dir)
    if done < size:
        raise ConfigError(f"{journal}: {done} of the {size} trials of the {model} search on "
                          f"{dataset} have finished; run `{command}` (with --data-dir) to finish it")
    return best_overrides(model, dataset, results_dir)


@dataclass(frozen=True)
class Worker:
    """One search worker, picklable for `fitmm.executor`: it claims grid points from the shared journal
    and trains them until the budget is held, as `tune` does in this process; its bars go to the task's log."""

    model: str
    dataset: str
    data_dir: str | None
    trials: int
    seed: int | None
    overrides: dict
    results_dir: str
    index: int

    def __call__(self) -> None:
        from fitmm.data import get_dataset

        tune(get_dataset(self.dataset, self.data_dir), self.model, self.trials, self.seed, self.overrides,
             self.results_dir)

    def __str__(self) -> str:
        return f"tune {self.model} on {self.dataset}, worker {self.index}"


def _tune(args: argparse.Namespace) -> int:
    from fitmm.data import get_dataset

    overrides = parse_overrides(args.set or [])
    check(args.model, {**overrides, **({"seed": args.seed} if args.seed is not None else {})}, args.trials)
    slurm = slurm_options(args)
    data = get_dataset(args.dataset, args.data_dir)
    journal = journal_path(args.results_dir, data.name, args.model)
    if args.reclaim and journal.exists():
        gone = reclaim(journal, args.model, data.name)
        print(f"reclaimed {len(gone)} trial(s) left running on other hosts: {gone or 'none'}")
    if args.executor == "local" and args.jobs == 1:
        study = tune(data, args.model, args.trials, args.seed, overrides, args.results_dir, progress=not args.quiet)
    else:  # workers share the journal: processes here, or the tasks of a SLURM job array
        data_dir = None if args.data_dir is None else str(Path(args.data_dir).resolve())
        workers = [Worker(args.model, args.dataset, data_dir, args.trials, args.seed, overrides,
                          str(Path(args.results_dir).resolve()), i) for i in range(args.jobs)]
        summary = execute(workers, args.executor, args.jobs, slurm, journal.parent / "logs", retries=0)
        print(f"tune workers: {summary}")
        if summary.failed:
            return 1
        study = open_study(journal, args.model, data.name)
    frame = trials_frame(study, args.results_dir)
    print(f"{args.model} on {data.name}: {len(frame)} finished trial(s), journal {journal}")
    if elsewhere := running_elsewhere(study):
        print(f"{len(elsewhere)} trial(s) still running on other hosts ({', '.join(elsewhere.values())}): the search "
              "finishes when they do; if no machine works on them any more, rerun with --reclaim")
    with pd.option_context("display.width", 200, "display.max_colwidth", 80):
        print(frame.drop(columns=["dataset", "model"]).to_string(index=False))
        if len(frame):
            print(selection_audit(frame).drop(columns=["dataset", "model"]).T.to_string(header=False))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `tune` command."""
    cmd = subparsers.add_parser("tune", help="search a model's published grid on valid Recall@20 (Optuna, resumable)")
    cmd.add_argument("--model", required=True, choices=sorted(grids()))
    cmd.add_argument("--dataset", default="synthetic", help="dataset name (default: the embedded synthetic benchmark)")
    cmd.add_argument("--data-dir", default=None, help="folder holding DATASET/ in MMRec format (e.g. ../shared/data)")
    cmd.add_argument("--trials", type=int, default=DEFAULT_TRIALS,
                     help=f"trial budget, the same for every model (default {DEFAULT_TRIALS}; a smaller grid runs in full)")
    cmd.add_argument("--seed", type=int, default=None, help="the one training seed, also the grid order's (default: config's)")
    cmd.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a non-searched config key (repeatable)")
    cmd.add_argument("--results-dir", default=default_results_dir(),
                     help="runs and tuning/ go here (default: $FITMM_RESULTS, else the project's results/)")
    cmd.add_argument("--quiet", action="store_true", help="no progress bars")
    cmd.add_argument("--reclaim", action="store_true",
                     help="first fail the trials left running by workers on other hosts and train their points again "
                          "(a journal resumed on another machine; never while another machine works on the search)")
    add_executor_arguments(cmd, "search worker")  # --jobs N: N workers share one search
    cmd.set_defaults(func=_tune)
