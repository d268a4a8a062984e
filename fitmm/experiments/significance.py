"""Paired significance over users (SPEC §1 Q1: "is the gap significant?").

Two runs on the same dataset and split evaluate the same users, so their per-user
test metrics (`per_user.npz`) pair up by user id. The tests are two-sided:
Wilcoxon signed-rank (no normality assumption; zero differences dropped) and the
paired t-test. With several seeds, each model's per-user values are first averaged
over its seeds, so the unit of the test is the user, not the (user, seed) pair.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.stats

from fitmm.experiments.runs import per_user


def align(a: dict[str, np.ndarray], b: dict[str, np.ndarray], metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users, a's values, b's values) over the users both evaluated, sorted by user id."""
    users, ia, ib = np.intersect1d(a["users"], b["users"], return_indices=True)
    return users, a[metric][ia].astype(np.float64), b[metric][ib].astype(np.float64)


def paired_test(a: dict[str, np.ndarray], b: dict[str, np.ndarray], metric: str) -> dict:
    """Mean of a and b, mean difference a − b, and the Wilcoxon and paired-t p-values over shared users.

    Identical vectors (every difference 0) have p = 1 by definition here (both tests are undefined).
    """
    users, x, y = align(a, b, metric)
    d = x - y
    if len(users) == 0:
        raise ValueError(f"no shared users to compare on {metric}")
    if not d.any():
        p_wilcoxon = p_t = 1.0
    else:
        p_wilcoxon = float(scipy.stats.wilcoxon(x, y).pvalue)
        p_t = float(scipy.stats.ttest_rel(x, y).pvalue)
    return {"users": len(users), "mean_a": x.mean(), "mean_b": y.mean(), "mean_diff": d.mean(),
            "wilcoxon_p": p_wilcoxon, "ttest_p": p_t}


def seed_mean(paths: Sequence[str | Path]) -> dict[str, np.ndarray]:
    """Per-user metrics averaged over runs (seeds), over the users every run evaluated."""
    runs = [per_user(p) for p in paths]
    users = runs[0]["users"]
    for run in runs[1:]:
        users = np.intersect1d(users, run["users"])
    out = {"users": users}
    for metric in (k for k in runs[0] if k != "users"):
        out[metric] = np.mean([run[metric][np.searchsorted(run["users"], users)] for run in runs], axis=0)
    return out


def versus_best_baseline(frame: pd.DataFrame, targets: Sequence[str], metric: str = "recall@20") -> pd.DataFrame:
    """Each target model against the best other model (highest mean `metric` over seeds), per dataset.

    `frame` is `Runs.frame` (one row per run, with `path`). Rows: dataset, model,
    baseline, the means, the mean difference and both p-values.
    """
    rows = []
    for dataset, runs in frame.groupby("dataset"):
        means = runs.groupby("model")[metric].mean()
        baselines = means.drop([t for t in targets if t in means.index])
        if baselines.empty:
            continue
        best = baselines.idxmax()
        best_vec = seed_mean(runs.loc[runs.model == best, "path"].tolist())
        for target in (t for t in targets if t in means.index):
            target_vec = seed_mean(runs.loc[runs.model == target, "path"].tolist())
            test = paired_test(target_vec, best_vec, metric)
            rows.append({"dataset": dataset, "model": target, "baseline": best, "metric": metric,
                         "seeds": int((runs.model == target).sum()), **test})
    return pd.DataFrame(rows)
