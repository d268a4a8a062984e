"""What a researcher types in a notebook cell: load a dataset, train a model, read finished runs.

    from fitmm import load, train, runs, main_table, paired_test
    data = load("tiktok")                          # <data dir>/tiktok; load() is the synthetic benchmark
    rec = train("fitmm", data, lambda_ib=0)        # any config key as an override; returns the run record
    frame = runs(dataset="tiktok")                 # every finished run there, one row each

Folders resolve through `fitmm.settings` (argument, then FITMM_RESULTS / FITMM_DATA, then the
project's `results/` and `data/`), so a cell gives the same answer from any current directory.
A finished run is read back, not retrained: calling `train` twice costs one training.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from fitmm import settings
from fitmm.config import load_config
from fitmm.data import get_dataset, load_dataset
from fitmm.data.dataset import Interactions
from fitmm.experiments.runs import record_row
from fitmm.trainer import train as train_config


def load(name: str | Path = "synthetic", data_dir: str | Path | None = None) -> Interactions:
    """A dataset in MMRec format: a folder name under the data dir, or a path to a dataset folder.

    `name` is taken as a path when it is a `Path` or holds a '/' (`load("~/data/mine")`); else it
    names `<data dir>/<name>/`, the data dir being `data_dir`, $FITMM_DATA or `<project>/data`.
    "synthetic" without such a folder is the embedded synthetic benchmark.

    >>> data = load()
    >>> data.name, data.modalities
    ('synthetic', ['image', 'text'])
    """
    if isinstance(name, Path) or "/" in name:
        return load_dataset(Path(name).expanduser())
    return get_dataset(name, data_dir)


def train(model: str, data: Interactions | str, results_dir: str | Path | None = None, seed: int | None = None,
          progress: bool = False, **overrides) -> dict:
    """Train `model` on `data` (an `Interactions` or a name for `load`) and return its run record.

    `overrides` are config keys of the model (`fitmm/configs/<model>.yaml`, `defaults.yaml`); an
    unknown key raises `ConfigError` before any compute. The record (config, per-epoch history,
    best valid and test metrics, cost, provenance) is written under `results_dir` ($FITMM_RESULTS,
    else `<project>/results`), and a finished run with the same data and config is read back.

    >>> rec = train("lightgcn", load(), epochs=1, batch_size=4096)
    >>> rec["model"], rec["epochs"], sorted(rec["test"])[:2]
    ('lightgcn', 1, ['map@10', 'map@20'])
    >>> train("lightgcn", load(), lr_rate=0.1)
    Traceback (most recent call last):
    ...
    fitmm.errors.ConfigError: unknown config key 'lr_rate' for model 'lightgcn'; known keys: ...
    """
    if seed is not None:
        overrides["seed"] = seed
    config = load_config(model, overrides)
    data = data if isinstance(data, Interactions) else load(data)
    return train_config(data, config, results_dir=settings.results_dir(results_dir), progress=progress)


def runs(results_dir: str | Path | None = None, dataset: str | None = None, model: str | None = None) -> pd.DataFrame:
    """Finished runs under `results_dir` ($FITMM_RESULTS, else `<project>/results`), one row each.

    Columns: dataset, model, seed, run_id, path (the run folder, with `per_user.npz`), device, the test
    metrics by bare name (`recall@20`), the best valid ones (`valid_recall@20`) and cost. Runs of one
    model under several configs (budgets, ablations) are separate rows with their own `run_id`.

    >>> rec = train("lightgcn", load(), epochs=1, batch_size=4096)
    >>> frame = runs(dataset="synthetic", model="lightgcn")
    >>> rec["run_id"] in set(frame.run_id), frame.loc[frame.run_id == rec["run_id"], "epochs"].item()
    (True, 1)
    """
    root = settings.results_dir(results_dir)
    rows = []
    for path in sorted(root.glob(f"runs/{dataset or '*'}/{model or '*'}/*/record.json")):
        rows.append(record_row(json.loads(path.read_text()), path.parent, ""))
    return pd.DataFrame(rows)

