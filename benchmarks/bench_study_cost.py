"""Estimated CPU-hours of the full study, from two measured epochs of every model on every dataset on hand.

    python benchmarks/bench_study_cost.py --data-dir ../shared/data [--datasets tiktok baby] [--models fitmm ssr]

The full study is 8 models x 4 datasets x 5 seeds, plus tuning: min(12, grid size) trials per (model,
dataset), each trial a full training run (`fitmm.tune.search_size`). For each (model, dataset) pair:

    CPU-hours = n runs x E x (t_train + t_valid) / 3600        (n = 5 seeds + its trials)
    closed-form models (EASE): n runs x t_fit / 3600             (n = 1 run, as `plan.grid` plans it, + its trials)

t_train, t_valid: seconds per training epoch and per valid evaluation of epoch 1 (epoch 0 warms up), on one
thread, as CPU time: the wall seconds of the record scaled by the run's CPU/wall ratio, so that other
processes on a shared machine do not count. E: the epochs a run takes, by the first source that has it:
(1) the mean `epochs` of this pair's finished full-protocol records in --results-dir (patience 20 and the
model's own epoch cap), (2) the same model's mean over the other datasets' such records, (3) the cap.
The test evaluation at the end of a run (one per run) is left out.

Datasets: every folder of --data-dir holding `<name>.inter` (the full profile's is data/, where Baby and Sports
have their text modality). Each model runs as the study runs it there (SSR without its contrastive term on one
modality: `Recommender.fallback_overrides`); a model that cannot run on a dataset (one that needs item content,
on Clothing) is not run there by the study either, and is listed as such. Pairs in --skip are left out of the
table and the totals. Prints one row per pair and the total per dataset.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import pandas as pd
import torch

from fitmm.config import load_config
from fitmm.data import get_dataset
from fitmm.errors import ConfigError
from fitmm.models import MODELS
from fitmm.trainer import train
from fitmm.tune import DEFAULT_TRIALS, grids, search_size

SEEDS = 5
FULL_PATIENCE = 20


def runs_per_pair(model: str) -> int:
    """The full profile's runs of `model` on one dataset: its seeds (one for a closed-form model) and its trials."""
    seeds = SEEDS if MODELS[model].trainable else 1
    return seeds + (search_size(model, DEFAULT_TRIALS) if model in grids() else 0)


def needed_epochs(results_dir: Path, model: str, dataset: str) -> tuple[float, str]:
    """Epochs a full-protocol run of `model` takes on `dataset` and where the figure comes from."""
    cap = load_config(model).epochs
    found: dict[str, list[int]] = {}
    for path in results_dir.glob(f"runs/*/{model}/*/record.json"):
        record = json.loads(path.read_text())
        config = record.get("config", {})
        if config.get("patience") == FULL_PATIENCE and config.get("epochs") == cap and record.get("epochs"):
            found.setdefault(path.parts[-4], []).append(record["epochs"])
    if dataset in found:
        return sum(found[dataset]) / len(found[dataset]), "record"
    others = [e for d, es in found.items() for e in es]
    if others:
        return sum(others) / len(others), "other datasets"
    return float(cap), "cap"


def measure(data, model: str, overrides: dict) -> dict:
    """CPU seconds per training epoch and per valid evaluation (epoch 1), or per fit for closed-form models."""
    config = load_config(model, {**overrides, "epochs": 2, "patience": 100, "device": "cpu"})
    wall, cpu = time.perf_counter(), time.process_time()
    record = train(data, config, progress=False)
    scale = (time.process_time() - cpu) / (time.perf_counter() - wall)
    if not MODELS[model].trainable:
        fit = sum(h["fit_seconds"] + h["eval_seconds"] for h in record["history"])
        return {"fit_s": fit * scale, "cpu_per_wall": scale}
    last = record["history"][-1]
    return {"train_s": last["train_seconds"] * scale, "valid_s": last["eval_seconds"] * scale, "cpu_per_wall": scale}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--results-dir", default="results", type=Path)
    parser.add_argument("--datasets", nargs="*", help="default: every dataset in --data-dir")
    parser.add_argument("--models", nargs="*", default=sorted(MODELS))
    parser.add_argument("--skip", nargs="*", default=[], help="dataset:model pairs to leave out of the table")
    parser.add_argument("--out", type=Path, help="also write the table as CSV here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = args.datasets or sorted(p.name for p in args.data_dir.iterdir() if (p / f"{p.name}.inter").exists())
    rows = []
    for name in names:
        data = get_dataset(name, args.data_dir)
        print(f"{name}: {data.n_users} users, {data.n_items} items, modalities {data.modalities or 'none'}", flush=True)
        for model in args.models:
            if f"{name}:{model}" in args.skip:
                continue
            overrides = MODELS[model].fallback_overrides(data)  # as the study runs it (SSR on one modality)
            try:
                MODELS[model].check_data(load_config(model, overrides), data)
            except ConfigError as err:
                print(f"  {model}: not run on {name}, as in the study ({err})", flush=True)
                continue
            rows.append({"dataset": name, "model": model, **measure(data, model, overrides)})
            print(f"  {model}: {json.dumps({k: round(v, 2) for k, v in rows[-1].items() if isinstance(v, float)})}",
                  flush=True)
    table = pd.DataFrame(rows).set_index(["dataset", "model"])
    for column in ("train_s", "valid_s", "fit_s"):
        if column not in table:
            table[column] = float("nan")
    epochs = [needed_epochs(args.results_dir, model, name) for name, model in table.index]
    table["epochs"] = [e for e, _ in epochs]
    table["epochs_from"] = [s for _, s in epochs]
    per_run = (table["train_s"] + table["valid_s"]) * table["epochs"]
    table["runs"] = [runs_per_pair(model) for _, model in table.index]
    table["cpu_hours"] = table["runs"] * per_run.where(table["fit_s"].isna(), table["fit_s"]) / 3600
    pd.set_option("display.width", 160)
    print(f"\nload average {os.getloadavg()[0]:.1f}; seconds are CPU seconds on one thread; "
          f"runs per pair: {SEEDS} seeds (1 for a closed-form model) + min({DEFAULT_TRIALS}, grid size) tuning trials")
    print(table.drop(columns="cpu_per_wall", errors="ignore").round(2).to_string())
    print("\nCPU-hours per dataset:")
    print(table.groupby(level="dataset")["cpu_hours"].sum().round(1).to_string())
    print(f"total: {table['cpu_hours'].sum():.1f} CPU-hours")
    if args.out:
        table.to_csv(args.out)


if __name__ == "__main__":
    main()
