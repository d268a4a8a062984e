"""Train-or-read planned runs and their records as DataFrames: what every notebook calls first.

`run_specs(plan.main_runs(...), results_dir)` trains (or, when its record exists, reads back)
each run a planner function lists (`fitmm.experiments.plan`), so running a notebook twice
trains only what is missing. Under `fitmm reproduce` every planned run has already been
executed (`fitmm.executor`) and `FITMM_RECORDS_ONLY=1` is set: a run without a record then
failed there and is noted, not trained a third time in the notebook, and a run whose configuration
waits for an unfinished search is noted with the command that finishes it. Models not (yet) in
`fitmm.models.MODELS`, config variants a model does not know, and runs that fail are reported
as notes, never raised: one missing model must not lose a chapter.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fitmm.cache import fingerprint
from fitmm.config import Config, load_config
from fitmm.data.dataset import Interactions
from fitmm.errors import ConfigError, DataError
from fitmm.experiments.plan import RECORDS_ONLY, DataSpec, RunSpec, seeds_phrase
from fitmm.io import write_json
from fitmm.models import MODELS
from fitmm.models.base import Recommender
from fitmm.settings import checkpoints_dir
from fitmm.store import RecordError, behaviour_version, finished, read_record, run_dir
from fitmm.trainer import build_model, train

NO_ANALYSIS = ("its run has no stored analysis (analysis.json: made before runs stored one, and no local checkpoint "
               "to compute it from); rerun it to make one")
NO_RECORD_YET = ("no record yet: the run failed in the batch before the notebooks (see its log) or was not run "
                 "(`fitmm reproduce --records-only` trains nothing; `fitmm reproduce --dry-run` lists what is left)")
HEADLINE = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")
COST_FIELDS = ("best_epoch", "epochs", "seconds_per_epoch", "eval_seconds", "wall_seconds", "peak_memory_mb")


@dataclass
class Runs:
    """Finished runs (one row each, `frame`), their full records, their specs, the datasets they
    ran on (by name), notes on what was skipped, and the planned runs a records-only chapter found
    no record of yet (`missing`: not run, or waiting for their search), which a verdict must not
    treat as tested."""

    frame: pd.DataFrame
    records: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    specs: list[RunSpec] = field(default_factory=list)
    data: dict[str, Interactions] = field(default_factory=dict)
    missing: list[RunSpec] = field(default_factory=list)


@dataclass(frozen=True)
class Training:
    """One planned run as an executor task (`fitmm.executor`): picklable, rebuilds its data where it runs; its epoch
    bar goes to the task's log."""

    spec: RunSpec
    results_dir: str

    def path(self) -> Path:
        return run_dir(self.spec.data.load(), self.spec.config(), self.results_dir)

    def finished(self) -> bool:
        return finished(self.path(), self.spec.trace)

    def __call__(self) -> str:
        train(self.spec.data.load(), self.spec.config(), results_dir=self.results_dir, trace=self.spec.trace)
        return str(self.path())

    def __str__(self) -> str:
        return str(self.spec)


def split_models(models: list[str]) -> tuple[list[str], list[str]]:
    """Requested names -> (registered in MODELS, not registered yet), order kept."""
    return [m for m in models if m in MODELS], [m for m in models if m not in MODELS]


def load_datasets(names: list[str], data_dir: str | Path | None) -> dict[str, Interactions]:
    return {name: DataSpec(name, None if data_dir is None else str(data_dir)).load() for name in names}


def record_row(record: dict, path: Path, variant: str) -> dict:
    """One flat row: identity, test metrics (bare names), valid metrics (valid_ prefix), cost, stopped_early."""
    row = {"dataset": record["dataset"]["name"], "model": record["model"], "variant": variant,
           "seed": record["seed"], "run_id": record["run_id"], "path": str(path),
           "device": record["provenance"]["device"]}
    row.update(record["test"])
    row.update({f"valid_{k}": v for k, v in (record["best_valid"] or {}).items()})
    row.update({k: record.get(k) for k in COST_FIELDS})
    row["stopped_early"] = record.get("stopped_early")  # None for closed-form fits (claims.budget_limited)
    return row


def unrunnable(config: Config, data: Interactions) -> str | None:
    """Why `config.model` cannot run on `data` (its `check_data` refusal, e.g. no item content), or None."""
    try:
        MODELS[config.model].check_data(config, data)
    except ConfigError as err:
        return str(err)
    return None


def run_specs(specs: list[RunSpec], results_dir: str | Path, data: dict[str, Interactions] | None = None) -> Runs:
    """Each planned run, trained only if its record is missing (read only under `FITMM_RECORDS_ONLY=1`).

    `data` supplies datasets already in memory by name (`DataSpec.label`); the others are built
    from their spec. A run whose config does not load (a variant key the model does not know),
    whose model is not registered or cannot run on its data, or that fails, is skipped with a note;
    the runs of one model on one dataset share a note, with their seeds.
    """
    _, unregistered = split_models(list(dict.fromkeys(s.model for s in specs)))
    notes = [f"{m}: not in fitmm.models.MODELS yet, skipped" for m in unregistered]
    records_only = os.environ.get(RECORDS_ONLY) == "1"
    built = dict(data or {})
    rows, records, kept, used, missing = [], [], [], {}, []
    for spec in specs:
        if spec.model not in MODELS:
            continue
        if spec.waiting_for:
            notes.append(f"{spec.group}: not run yet: {spec.waiting_for}")
            missing.append(spec)
            continue
        try:
            if spec.data.label not in built:
                built[spec.data.label] = spec.data.load()
            d, config = built[spec.data.label], spec.config()
            why = unrunnable(config, d)
            if why:
                notes.append(f"{spec.group}: cannot run here: {why}")
                continue
            path = run_dir(d, config, results_dir)
            if records_only and not (path / "record.json").exists():
                missing.append(spec)
                continue
            record = train(d, config, results_dir=results_dir, progress=False, trace=spec.trace and not records_only)
            ensure_analysis(d, path)
        except Exception as err:  # noqa: BLE001 — reported in the notebook, the others go on
            notes.append(f"{spec}: {type(err).__name__}: {err}")
            continue
        records.append(record)
        rows.append(record_row(record, path, spec.variant))
        kept.append(spec)
        used[d.name] = d
    unrecorded: dict[str, list[int]] = {}  # the seeds of each group planned without a record
    for spec in missing:
        if not spec.waiting_for:
            unrecorded.setdefault(spec.group, []).append(spec.seed)
    notes += [f"{group}, {seeds_phrase(seeds)}: no record yet"
              for group, seeds in unrecorded.items()]
    if unrecorded:
        notes.append(NO_RECORD_YET)
    return Runs(pd.DataFrame(rows), records, list(dict.fromkeys(notes)), kept, used, missing)


def per_user(path: str | Path) -> dict[str, np.ndarray]:
    """The per-user test metrics of a run folder (`users` plus one array per metric)."""
    with np.load(Path(path) / "per_user.npz") as npz:
        return {k: npz[k] for k in npz.files}


def analysis(path: str | Path) -> dict | None:
    """The stored analysis of a run folder (`Recommender.analysis`, written when the run finished), or None."""
    path = Path(path) / "analysis.json"
    return json.loads(path.read_text()) if path.exists() else None


def ensure_analysis(data: Interactions, path: Path) -> None:
    """Compute and store the analysis of a finished run made before runs stored one, when its best checkpoint
    (or, for a closed-form model, a refit) is at hand here; otherwise leave it missing (`NO_ANALYSIS`)."""
    if (path / "analysis.json").exists():
        return
    record = read_record(path / "record.json")
    if MODELS[record["model"]].trainable and not (checkpoints_dir(path) / "best.pt").exists():
        return
    write_json(path / "analysis.json", trained_model(data, path).analysis(data))


def record_dataset(record: dict, data_dir: str | Path | None) -> Interactions:
    """The dataset a record was trained on, rebuilt from `data_dir` (a sparsified copy, `<name>-drop<P>-s<seed>`, from
    its base set); DataError unless its fingerprint is the record's."""
    name, folder = record["dataset"]["name"], None if data_dir is None else str(data_dir)
    dropped = re.fullmatch(r"(.+)-drop(\d+)-s(\d+)", name)
    spec = DataSpec(dropped[1], folder, int(dropped[2]) / 100, seed=int(dropped[3])) if dropped else DataSpec(name, folder)
    data = spec.load()
    if fingerprint(data) != record["dataset"].get("fingerprint"):
        raise DataError(f"{name} in {data_dir}: not the data run {record['run_id']} was trained on (fingerprint "
                        f"{fingerprint(data)}, the record's {record['dataset'].get('fingerprint')})")
    return data


def reanalyse(path: str | Path, data_dir: str | Path | None = None, progress: bool = True) -> dict:
    """Recompute and store the analysis of a finished run (`Recommender.analysis`, e.g. after the analysis gained a
    part). From its local checkpoint or a refit (closed form) the whole analysis is made again. Otherwise the run is
    trained again from its record (same config and seed) in a scratch folder, and only the parts the stored analysis
    lacks are added: training is deterministic on one machine, not across CPUs (their kernels sum in other orders),
    so the parts already stored, of the recorded model, are kept, and `trained_again` names the added parts with the
    rerun's best epoch and test metrics beside the record's, and whether they equal them (to 1e-6). Returns the
    analysis."""
    path = Path(path)
    record = read_record(path / "record.json")
    if record["version"] != behaviour_version(record["model"]):
        raise RecordError(f"{path / 'record.json'}: made by behaviour version {record['version']}, the code is now "
                          f"{behaviour_version(record['model'])}; train the run again instead")
    data = record_dataset(record, data_dir)
    if not MODELS[record["model"]].trainable or (checkpoints_dir(path) / "best.pt").exists():
        out = trained_model(data, path).analysis(data)
    else:
        stored = {k: v for k, v in (analysis(path) or {}).items() if k != "trained_again"}
        config = load_config(record["model"], record["config"])
        with tempfile.TemporaryDirectory(prefix="fitmm-reanalyse-") as scratch:
            again = train(data, config, results_dir=scratch, progress=progress)
            fresh = analysis(run_dir(data, config, scratch))
        same = again["best_epoch"] == record["best_epoch"] and all(
            abs(v - record[split][k]) <= 1e-6 for split in ("best_valid", "test") for k, v in again[split].items())
        out = {**fresh, **stored, "trained_again": {
            "parts": sorted(set(fresh) - set(stored)), "reproduces_record": same, "best_epoch": again["best_epoch"],
            "record_best_epoch": record["best_epoch"], "test": {k: again["test"][k] for k in HEADLINE},
            "record_test": {k: record["test"][k] for k in HEADLINE}, "provenance": again["provenance"]}}
    write_json(path / "analysis.json", out)
    return out


def trained_model(data: Interactions, path: str | Path, device: str = "cpu") -> Recommender:
    """Rebuild a finished run's model in eval mode: its best checkpoint, or a refit (closed-form models)."""
    path = Path(path)
    record = read_record(path / "record.json")
    config = load_config(record["model"], {**record["config"], "device": device})
    if MODELS[config.model].trainable:
        model = build_model(data, config, torch.device(device))
        model.load_state_dict(torch.load(checkpoints_dir(path) / "best.pt", map_location=device, weights_only=False))
    else:  # refit with the grid value chosen on valid
        model = build_model(data, config.replace(**record["chosen"]), torch.device(device))
        model.fit()
    return model.eval()


def history_frame(records: list[dict], metric: str = "recall@20") -> pd.DataFrame:
    """Valid `metric` and total loss per epoch of each trained run (long format, for convergence plots)."""
    rows = []
    for r in records:
        for h in r["history"]:
            if "epoch" in h:  # closed-form models record a grid search instead
                rows.append({"dataset": r["dataset"]["name"], "model": r["model"], "seed": r["seed"],
                             "epoch": h["epoch"], f"valid {metric}": h["valid"][metric], "loss": sum(h["losses"].values())})
    return pd.DataFrame(rows)


def collect_records(results_dir: str | Path) -> pd.DataFrame:
    """Every finished run under `results_dir/runs`: identity, provenance and cost (one row each)."""
    rows = []
    for path in sorted(Path(results_dir).glob("runs/*/*/*/record.json")):
        r = read_record(path)
        p = r["provenance"]
        rows.append({"dataset": r["dataset"]["name"], "model": r["model"], "seed": r["seed"], "run_id": r["run_id"],
                     "git_commit": p["git_commit"], "device": p["device"], "python": p["python"],
                     "torch": p["packages"].get("torch"), "epochs": r["epochs"], "wall_seconds": r["wall_seconds"]})
    return pd.DataFrame(rows)
