"""Train-or-reuse runs and their records as DataFrames: what every notebook calls first.

`train(..., results_dir=...)` already reads a finished run back instead of retraining,
so running a notebook twice trains only what is missing. Models not (yet) in
`fitmm.models.MODELS`, config variants a model does not know, and runs that fail are
reported as notes, never raised: one missing model must not lose a chapter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fitmm.config import load_config
from fitmm.data import get_dataset
from fitmm.data.dataset import Interactions
from fitmm.io import write_json
from fitmm.models import MODELS
from fitmm.models.base import Recommender
from fitmm.store import read_record, run_dir
from fitmm.trainer import build_model, train

NO_ANALYSIS = ("its run has no stored analysis (analysis.json: made before runs stored one, and no local checkpoint "
               "to compute it from); rerun it to make one")
HEADLINE = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")
COST_FIELDS = ("best_epoch", "epochs", "seconds_per_epoch", "eval_seconds", "wall_seconds", "peak_memory_mb")


@dataclass
class Runs:
    """Finished runs (one row each, `frame`), their full records, and notes on what was skipped."""

    frame: pd.DataFrame
    records: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __add__(self, other: Runs) -> Runs:
        return Runs(pd.concat([self.frame, other.frame], ignore_index=True),
                    self.records + other.records, list(dict.fromkeys(self.notes + other.notes)))


def split_models(models: list[str]) -> tuple[list[str], list[str]]:
    """Requested names -> (registered in MODELS, not registered yet), order kept."""
    return [m for m in models if m in MODELS], [m for m in models if m not in MODELS]


def load_datasets(names: list[str], data_dir: str | Path | None) -> dict[str, Interactions]:
    return {name: get_dataset(name, data_dir) for name in names}


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


def run_all(
    datasets: dict[str, Interactions] | list[Interactions],
    models: list[str],
    seeds: list[int],
    results_dir: str | Path,
    overrides: dict | None = None,
    variants: dict[str, dict] | None = None,
) -> Runs:
    """Every (dataset, model, variant, seed) run, trained only if its record is missing.

    `overrides` apply to every run (profile budgets); `variants` maps a label to extra
    config overrides (ablations; default: one unlabelled variant). A variant with a key
    the model's config does not know is skipped with a note.
    """
    data_list = list(datasets.values()) if isinstance(datasets, dict) else list(datasets)
    present, missing = split_models(models)
    notes = [f"{m}: not in fitmm.models.MODELS yet, skipped" for m in missing]
    rows, records = [], []
    for data in data_list:
        for model in present:
            for label, extra in (variants or {"": {}}).items():
                for seed in seeds:
                    what = f"{model}{f' [{label}]' if label else ''} on {data.name}, seed {seed}"
                    try:
                        config = load_config(model, {**(overrides or {}), **extra, "seed": seed})
                        record = train(data, config, results_dir=results_dir, progress=False)
                    except Exception as err:  # noqa: BLE001 — reported in the notebook, the others go on
                        notes.append(f"{what}: {type(err).__name__}: {err}")
                        continue
                    path = run_dir(data, config, results_dir)
                    ensure_analysis(data, path)
                    records.append(record)
                    rows.append(record_row(record, path, label))
    return Runs(pd.DataFrame(rows), records, list(dict.fromkeys(notes)))


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
    if MODELS[record["model"]].trainable and not (path / "checkpoints" / "best.pt").exists():
        return
    write_json(path / "analysis.json", trained_model(data, path).analysis(data))


def trained_model(data: Interactions, path: str | Path, device: str = "cpu") -> Recommender:
    """Rebuild a finished run's model in eval mode: its best checkpoint, or a refit (closed-form models)."""
    path = Path(path)
    record = read_record(path / "record.json")
    config = load_config(record["model"], {**record["config"], "device": device})
    if MODELS[config.model].trainable:
        model = build_model(data, config, torch.device(device))
        model.load_state_dict(torch.load(path / "checkpoints" / "best.pt", map_location=device, weights_only=False))
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
