"""Cost (the cost chapter, notebooks/06_cost): time per epoch, evaluation time, memory and epochs to the best valid epoch,
from run records; and how time grows with the graph size on synthetic data.

Peak memory on CPU is the run's peak resident set size (the Linux high-water mark, reset when
the run starts, so runs trained one after another in one process each get their own).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import pandas as pd

from fitmm.data import synthetic_dataset
from fitmm.experiments.runs import Runs, run_all
from fitmm.theory import loglog_slope

COST_COLUMNS = ("seconds_per_epoch", "eval_seconds", "wall_seconds", "peak_memory_mb", "best_epoch", "epochs")


def cost_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds of each cost column per (dataset, model), with the device that ran it."""
    grouped = frame.groupby(["dataset", "model"], sort=False)
    out = grouped[list(COST_COLUMNS)].mean()
    out["device"] = grouped["device"].first()
    return out


def growth_runs(
    models: list[str], sizes: Sequence[tuple[int, int]], results_dir: str | Path, overrides: dict, seed: int = 0,
) -> Runs:
    """Train each model on synthetic data of each (users, items) size (before the 5-core filter).

    The frame gains the graph's size: users, items, train edges, nodes = users + items.
    """
    runs = Runs(pd.DataFrame())
    sizes_of = {}
    for n_users, n_items in sizes:
        data = synthetic_dataset(n_users, n_items, seed)
        data = dataclasses.replace(data, name=f"synthetic-u{n_users}-i{n_items}")
        sizes_of[data.name] = {"users": data.n_users, "items": data.n_items, "edges": len(data.train),
                               "nodes": data.n_users + data.n_items}
        runs = runs + run_all([data], models, [seed], results_dir, overrides)
    if not runs.frame.empty:
        size = pd.DataFrame.from_dict(sizes_of, orient="index")
        runs.frame = runs.frame.join(size, on="dataset")
    return runs


def growth_slopes(frame: pd.DataFrame, x: str = "edges", ys: Sequence[str] = ("seconds_per_epoch", "eval_seconds")) -> pd.DataFrame:
    """Per model, the log-log slope of each cost column against `x` (1 = linear growth)."""
    return pd.DataFrame({y: frame.groupby("model").apply(lambda g, y=y: loglog_slope(g[x], g[y]), include_groups=False)
                         for y in ys})
