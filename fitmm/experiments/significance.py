"""Paired significance over users (book/methods.md, "Protocol": is a gap between two models significant?).

Two runs on the same dataset and split evaluate the same users, so their per-user
test metrics (`per_user.npz`) pair up by user id. The tests are two-sided:
Wilcoxon signed-rank (no normality assumption; zero differences dropped) and the
paired t-test. With several seeds, each model's per-user values are first averaged
over its seeds, so the unit of the test is the user, not the (user, seed) pair.
Beside them, `seed_test` asks whether the gap stands out from training noise: Welch's
t-test over the seeds' test means, each run one sample.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.stats

from fitmm.experiments.claims import on_shared_seeds
from fitmm.experiments.runs import per_user
from fitmm.models import MODELS


def align(a: dict[str, np.ndarray], b: dict[str, np.ndarray], metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users, a's values, b's values) over the users both evaluated, sorted by user id."""
    users, ia, ib = np.intersect1d(a["users"], b["users"], return_indices=True)
    return users, a[metric][ia].astype(np.float64), b[metric][ib].astype(np.float64)


def paired_test(a: dict[str, np.ndarray], b: dict[str, np.ndarray], metric: str) -> dict:
    """Mean of a and b, mean difference a − b, and the Wilcoxon and paired-t p-values over shared users.

    Identical vectors (every difference 0) have p = 1 by definition here (both tests are undefined).
    `a` and `b` are per-user metrics as `fitmm.experiments.runs.per_user(run_folder)` reads them.

    >>> import numpy as np
    >>> a = {"users": np.arange(6), "recall@20": np.array([.5, .4, .3, .6, .2, .5])}
    >>> b = {"users": np.arange(6), "recall@20": np.array([.1, .2, .3, .2, .1, .4])}
    >>> r = paired_test(a, b, "recall@20")
    >>> r["users"], round(float(r["mean_diff"]), 3), r["ttest_p"] < 0.05
    (6, 0.2, True)
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


def seed_test(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p of Welch's t-test between two models' test means per run (seed); against a single run (a
    closed form such as EASE, which gives the same result for every seed) the one-sample t-test of the other
    side's runs. NaN where it is undefined: no side with two runs, or no spread on either side.

    >>> round(seed_test([.30, .31, .32], [.20, .21, .22]), 4), round(seed_test([.30, .31, .32], [.31]), 4)
    (0.0003, 1.0)
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 and len(b) < 2:
        return float("nan")
    if len(a) < 2:
        a, b = b, a
    spread = a.var(ddof=1) / len(a) + (b.var(ddof=1) / len(b) if len(b) > 1 else 0.0)
    if spread <= (1e-9 * np.abs(np.r_[a, b]).max()) ** 2:  # equal runs up to rounding: no t statistic
        return float("nan")
    if len(b) < 2:
        return float(scipy.stats.ttest_1samp(a, b[0]).pvalue)
    return float(scipy.stats.ttest_ind(a, b, equal_var=False).pvalue)


def seed_mean(paths: Sequence[str | Path]) -> dict[str, np.ndarray]:
    """Per-user metrics averaged over runs (seeds), over the users every run evaluated."""
    return mean_over_runs([per_user(p) for p in paths])


def mean_over_runs(runs: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-user vectors of several runs averaged, over the users every run evaluated."""
    users = runs[0]["users"]
    for run in runs[1:]:
        users = np.intersect1d(users, run["users"])
    out = {"users": users}
    for metric in (k for k in runs[0] if k != "users"):
        out[metric] = np.mean([run[metric][np.searchsorted(run["users"], users)] for run in runs], axis=0)
    return out


def restrict(vectors: dict[str, np.ndarray], keep_users: np.ndarray | None) -> dict[str, np.ndarray]:
    """Per-user vectors limited to the users where keep_users (bool per user id) holds; None keeps all."""
    if keep_users is None:
        return vectors
    mask = np.asarray(keep_users)[vectors["users"]]
    return {k: v[mask] for k, v in vectors.items()}


def versus_best_baseline(frame: pd.DataFrame, targets: Sequence[str], metric: str = "recall@20",
                         keep_users: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """Each target model against the best other model, per dataset (models averaged over their seeds).

    `frame` is `Runs.frame` (one row per run, with `path`). `keep_users` (dataset -> bool per
    user) limits both the choice of the best baseline and the test to a user group. Rows:
    dataset, model, baseline, seeds, users, the means, the mean difference, both p-values over users
    and `seeds_welch_p` (`seed_test` over the runs' means on the same users; NaN while a trained model has
    one run only, whose spread over seeds is not known yet).
    """
    rows = []
    for dataset, runs in frame.groupby("dataset"):
        keep = None if keep_users is None else keep_users[dataset]
        per_run = {m: [restrict(per_user(p), keep) for p in g["path"]] for m, g in runs.groupby("model")}  # read once
        vectors = {m: mean_over_runs(v) for m, v in per_run.items()}
        baselines = {m: v[metric].mean() for m, v in vectors.items() if m not in targets and len(v["users"])}
        if not baselines:
            continue
        best = max(baselines, key=baselines.get)
        for target in (t for t in targets if t in vectors):
            pair = (target, best)
            # one run of a trained model (its other seeds still to run) shows no training noise: no seed test yet
            spread_known = all(len(per_run[m]) > 1 or not getattr(MODELS.get(m), "trainable", True) for m in pair)
            rows.append({"dataset": dataset, "model": target, "baseline": best, "metric": metric,
                         "seeds": len(per_run[target]), **paired_test(vectors[target], vectors[best], metric),
                         "seeds_welch_p": seed_test(*([float(v[metric].mean()) for v in per_run[m]] for m in pair))
                         if spread_known else float("nan")})
    return pd.DataFrame(rows)


def versus_reference(frame: pd.DataFrame, reference: str, metric: str = "recall@20") -> pd.DataFrame:
    """Per (dataset, model), the `reference` variant against every other variant (column `variant`), each side
    averaged over the seeds both have (a one-seed variant meets the reference's run of that seed: averaging more
    seeds on one side only would smooth its per-user values and bias the Wilcoxon test). A variant whose seeds
    the reference lacks is compared with all of the reference's seeds. Column `paired seeds`: the seeds compared.
    A variant that is the reference's own runs on a dataset (its switch changes nothing there, e.g. SSR's
    contrastive term on a set with one modality) is no comparison and gets no row.

    mean_diff = reference − variant: positive when the reference is better.
    """
    rows = []
    for (dataset, model), runs in frame.groupby(["dataset", "model"]):
        if reference not in set(runs.variant):
            continue
        ref_runs = runs[runs.variant == reference]
        for variant, g in runs[runs.variant != reference].groupby("variant", sort=False):
            pair = on_shared_seeds(pd.concat([ref_runs, g]), "variant")
            ref, var = pair[pair.variant == reference], pair[pair.variant == variant]
            if set(var.path) == set(ref.path):
                continue
            rows.append({"dataset": dataset, "model": model, "variant": variant, "metric": metric,
                         "paired seeds": ", ".join(map(str, sorted(set(var.seed)))),
                         **paired_test(seed_mean(ref["path"].tolist()), seed_mean(var["path"].tolist()), metric)})
    return pd.DataFrame(rows)


def band_count_tests(band_runs: pd.DataFrame, rivals: pd.DataFrame, metric: str = "recall@20") -> pd.DataFrame:
    """Per row of `claims.band_count_rivals` (dataset, inside, outside), the paired test of the inside count
    against the outside one, each averaged over the seeds every count of that dataset ran (as
    `claims.band_count_means` averages them). `band_runs`: `claims.band_count_runs` rows, with `path`.

    mean_diff = inside − outside: positive when the count the claim names is better.
    """
    rows = []
    for r in rivals.itertuples():
        runs = on_shared_seeds(band_runs[band_runs.dataset == r.dataset], "bands")
        inside, outside = (runs[runs.bands == count]["path"].tolist() for count in (r.inside, r.outside))
        rows.append({"dataset": r.dataset, "inside": r.inside, "outside": r.outside, "metric": metric,
                     "paired seeds": ", ".join(map(str, sorted(set(runs.seed)))),
                     **paired_test(seed_mean(inside), seed_mean(outside), metric)})
    return pd.DataFrame(rows)
