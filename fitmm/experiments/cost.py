"""Cost (the cost chapter, notebooks/06_cost): time per epoch, evaluation time, memory and epochs to the best valid epoch,
from run records; and how time grows with the graph size on synthetic data.

Peak memory on CPU is the run's peak resident set size (the Linux high-water mark, reset when
the run starts, so runs trained one after another in one process each get their own).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from fitmm.experiments.plan import RunSpec
from fitmm.experiments.runs import Runs, run_specs
from fitmm.theory import loglog_slope

COST_COLUMNS = ("seconds_per_epoch", "eval_seconds", "wall_seconds", "peak_memory_mb", "best_epoch", "epochs")


def cost_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds of each cost column per (dataset, model), with the device that ran it."""
    grouped = frame.groupby(["dataset", "model"], sort=False)
    out = grouped[list(COST_COLUMNS)].mean()
    out["device"] = grouped["device"].first()
    return out


def growth_runs(specs: list[RunSpec], results_dir: str | Path) -> Runs:
    """Train-or-read the synthetic growth runs (`plan.growth_runs`); the frame gains each graph's size:
    users, items, train edges, nodes = users + items."""
    runs = run_specs(specs, results_dir)
    if not runs.frame.empty:
        size = pd.DataFrame.from_dict({name: {"users": d.n_users, "items": d.n_items, "edges": len(d.train),
                                              "nodes": d.n_users + d.n_items} for name, d in runs.data.items()},
                                      orient="index")
        runs.frame = runs.frame.join(size, on="dataset")
    return runs


def growth_slopes(frame: pd.DataFrame, x: str = "edges", ys: Sequence[str] = ("seconds_per_epoch", "eval_seconds")) -> pd.DataFrame:
    """Per model, the log-log slope of each cost column against `x` (1 = linear growth)."""
    return pd.DataFrame({y: frame.groupby("model").apply(lambda g, y=y: loglog_slope(g[x], g[y]), include_groups=False)
                         for y in ys})
