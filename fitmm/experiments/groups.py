"""User and item groups, and controlled sparsification (the sparsity chapter, notebooks/03_sparsity_cold_start).

- Users by number of train interactions: cold ≤ 5, warm 6–20, hot ≥ 21 (SSR's
  cold-start definition), and degree quantile groups that keep ties together (on TikTok
  98.9 % of users have at most 5 train interactions, so equal-population quintiles would
  cut through users of the same degree).
- Items by train popularity: tail (bottom 50 % of items), mid, head (top 20 %);
  a group's metrics count only its items as relevant (the ranking is still over
  all items, train items masked).
- Sparsification: drop a fraction of the train edges uniformly at random, valid and
  test fixed; for one seed the kept sets are nested (80 % dropped ⊂ 60 % dropped ...).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from fitmm.data.dataset import Interactions
from fitmm.experiments.plan import seeds_phrase
from fitmm.experiments.runs import NO_ANALYSIS, analysis, per_user
from fitmm.metrics import evaluate

USER_GROUPS = ("cold", "warm", "hot")
ITEM_GROUPS = ("tail", "mid", "head")


def user_degree_groups(degree: np.ndarray, cold_max: int = 5, warm_max: int = 20) -> np.ndarray:
    """'cold' for degree ≤ cold_max, 'warm' up to warm_max, 'hot' above."""
    degree = np.asarray(degree)
    return np.asarray(USER_GROUPS, dtype=object)[np.digitize(degree, [cold_max + 0.5, warm_max + 0.5])]


def user_group_selections(degree: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean masks over the given users: 'all', then 'cold' / 'warm' / 'hot' (`user_degree_groups`) that are not empty."""
    groups = user_degree_groups(degree)
    masks = {"all": np.ones(len(groups), dtype=bool), **{g: groups == g for g in USER_GROUPS}}
    return {name: mask for name, mask in masks.items() if mask.any()}


def stable_rank(values: np.ndarray) -> np.ndarray:
    """0-based rank by value, ties broken by position, so groups cut by rank have exact sizes."""
    rank = np.empty(len(values), dtype=np.int64)
    rank[np.argsort(values, kind="stable")] = np.arange(len(values))
    return rank


def degree_quantile_groups(degree: np.ndarray, n_groups: int = 5) -> np.ndarray:
    """Group 1 (lowest degree) .. at most n_groups, cut at the degree quantiles k / n_groups, each cut taken
    between two distinct degrees so that users of one degree share a group: with many ties there are fewer,
    unequal groups, never one degree split across two. `degree_ranges` names them."""
    degree = np.asarray(degree)
    cuts = np.unique(np.quantile(degree, np.arange(1, n_groups) / n_groups, method="lower"))
    cuts = cuts[cuts < degree.max()]  # a cut at the top degree would leave its group empty
    return np.searchsorted(cuts, degree, side="left") + 1


def degree_ranges(degree: np.ndarray, group: np.ndarray) -> dict[int, str]:
    """{group: its train degrees as 'lo–hi' (or 'd' when single)} for the groups present."""
    degree, group = np.asarray(degree), np.asarray(group)
    ranges = {}
    for g in np.unique(group):
        lo, hi = int(degree[group == g].min()), int(degree[group == g].max())
        ranges[int(g)] = str(lo) if lo == hi else f"{lo}–{hi}"
    return ranges


def item_popularity_groups(popularity: np.ndarray, tail: float = 0.5, head: float = 0.2) -> np.ndarray:
    """'tail' for the least popular `tail` share of items, 'head' for the most popular `head` share, else 'mid'."""
    n = len(popularity)
    rank = stable_rank(np.asarray(popularity))
    labels = np.full(n, "mid", dtype=object)
    labels[rank < round(tail * n)] = "tail"
    labels[rank >= n - round(head * n)] = "head"
    return labels


def group_means(per_user: dict[str, np.ndarray], user_labels: np.ndarray, metrics: Sequence[str]) -> pd.DataFrame:
    """Mean of each per-user metric by the group of each evaluated user (user_labels is indexed by user id)."""
    frame = pd.DataFrame({m: per_user[m] for m in metrics})
    frame["group"] = np.asarray(user_labels)[per_user["users"]]
    grouped = frame.groupby("group")
    out = grouped[list(metrics)].mean()
    out.insert(0, "users", grouped.size())
    return out


def restrict_items(data: Interactions, split: str, keep_items: np.ndarray) -> Interactions:
    """`data` with the `split` pairs limited to items where keep_items (bool per item) holds."""
    pairs = data.pairs(split)
    return dataclasses.replace(data, **{split: pairs[np.asarray(keep_items)[pairs[:, 1]]]})


def item_group_metrics(
    scorer: Callable[[torch.Tensor], torch.Tensor],
    data: Interactions,
    item_labels: np.ndarray,
    metrics: Sequence[str],
    split: str = "test",
    topk: Sequence[int] = (10, 20),
) -> pd.DataFrame:
    """Metrics per item group: only the group's items are relevant; users without one are not evaluated."""
    rows = {}
    for group in pd.unique(np.asarray(item_labels)):
        sub = restrict_items(data, split, np.asarray(item_labels) == group)
        if len(sub.pairs(split)) == 0:
            continue
        summary, per_user = evaluate(scorer, sub, split, topk)
        rows[group] = {"users": len(per_user["users"]), "pairs": len(sub.pairs(split)),
                       **{m: summary[m] for m in metrics}}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("group")


def json_rows(frame: pd.DataFrame) -> list[dict]:
    """A frame as JSON-ready rows (numpy scalars become Python numbers)."""
    return json.loads(frame.to_json(orient="records"))


def rank_auc(scorer: Callable[[torch.Tensor], torch.Tensor], pairs: np.ndarray, candidates: np.ndarray,
             batch: int = 1024) -> float:
    """Mean over the (user, item) `pairs` of the share of the other `candidates` (sorted item ids, holding every
    pair's item) that the user's scores place below the item, ties counting half: 0.5 for a random order."""
    column = torch.from_numpy(np.searchsorted(candidates, pairs[:, 1]))
    shares = []
    for start in range(0, len(pairs), batch):
        scores = scorer(torch.from_numpy(pairs[start:start + batch, 0]))[:, torch.from_numpy(candidates)].cpu()
        own = scores.gather(1, column[start:start + batch, None])
        below = (scores < own).sum(1) + 0.5 * ((scores == own).sum(1) - 1)
        shares.append(below / (len(candidates) - 1))
    return float(torch.cat(shares).double().mean())


def strict_cold_start_refusal(data: Interactions) -> str | None:
    """Why `cold_item_ranking` cannot test `data`, or None: no test row holds an item without train interactions,
    or there are at most 20 such items (every order then puts all of them in a top 20)."""
    cold = data.item_degree == 0
    n_cold = int(cold.sum())
    if not cold[data.test[:, 1]].any():
        return f"{data.name}: no test row holds an item without train interactions"
    if n_cold <= 20:
        return (f"{data.name}: {n_cold} item{'s' if n_cold > 1 else ''} without train interactions; "
                f"with at most 20, every order ranks them all in a top 20, so there is no strict test")
    return None


def cold_item_ranking(model, data: Interactions, metrics: Sequence[str] = ("recall@20", "ndcg@20")) -> dict | None:
    """Strict item cold start: the test rows on items without train interactions, each user's such items ranked
    among those items only (every other item masked). A model with item content scores them through their content
    alone (their id embeddings zeroed, `Recommender.content_only`); any other model has only what it kept of them
    (its initial embeddings). `chance_recall@20` is a random order's expected Recall@20, 20 / (number of such
    items); `auc` (`rank_auc`, 0.5 by chance) uses every rank, not only the top 20, so it varies far less from run
    to run. None where `strict_cold_start_refusal` refuses `data`."""
    if strict_cold_start_refusal(data):
        return None
    cold = data.item_degree == 0
    items = np.flatnonzero(cold)
    sub = restrict_items(data, "test", cold)
    with model.content_only(items) if model.scores_content else contextlib.nullcontext():
        scorer = model.scorer()
    warm = torch.from_numpy(~cold)
    summary, per_user_values = evaluate(lambda users: (s := scorer(users)).masked_fill(warm.to(s.device), -np.inf),
                                        sub, "test", (10, 20))
    return {"items": len(items), "users": len(per_user_values["users"]), "pairs": len(sub.test),
            "scored_by": "content alone" if model.scores_content else "no content", **{m: summary[m] for m in metrics},
            "chance_recall@20": 20 / len(items), "auc": rank_auc(scorer, sub.test, items)}


def item_analysis(model, data: Interactions, metrics: Sequence[str] = ("recall@20", "ndcg@20")) -> dict:
    """Test metrics of a trained model per item popularity group (`item_popularity_groups`), on the items without
    train interactions ('unseen', e.g. after `sparsify`) ranked among all items, and, where test rows hold such
    items, on those items ranked among themselves (`cold_item_ranking`), as stored in its run's `analysis.json`."""
    scorer = model.scorer()
    unseen = np.where(data.item_degree == 0, "unseen", "seen")
    out = {"item_groups": json_rows(item_group_metrics(scorer, data, item_popularity_groups(data.item_degree),
                                                       metrics).reset_index()),
           "unseen_items": json_rows(item_group_metrics(scorer, data, unseen, metrics).reset_index())}
    cold = cold_item_ranking(model, data, metrics)
    return out if cold is None else {**out, "cold_items": cold}


def sparsify(data: Interactions, fraction: float, seed: int = 0) -> Interactions:
    """Drop round(fraction·|train|) train edges uniformly at random (valid and test kept); fraction 0 is `data`."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return data
    order = np.random.default_rng(seed).permutation(len(data.train))
    keep = np.sort(order[round(fraction * len(order)):])
    return dataclasses.replace(data, name=f"{data.name}-drop{round(100 * fraction)}-s{seed}", train=data.train[keep])


def user_group_frame(frame: pd.DataFrame, datasets: dict[str, Interactions], grouping: str = "degree",
                     metrics: Sequence[str] = ("recall@20", "ndcg@20")) -> pd.DataFrame:
    """Per run (rows of `Runs.frame`) and user group: users and mean metrics.

    grouping 'degree' is cold / warm / hot; 'quantile' the tie-aware degree quantile groups 1..5
    (`degree_quantile_groups`), with their train degrees in the column 'degrees'.
    """
    out = []
    for row in frame.itertuples():
        degree = datasets[row.dataset].user_degree
        labels = user_degree_groups(degree) if grouping == "degree" else degree_quantile_groups(degree)
        means = group_means(per_user(row.path), labels, metrics).reset_index()
        if grouping == "quantile":
            means.insert(1, "degrees", means.group.map(degree_ranges(degree, labels)))
        out.append(means.assign(dataset=row.dataset, model=row.model, seed=row.seed))
    return pd.concat(out, ignore_index=True)


MIN_GROUP_USERS = 50  # fewer test users than this in a group: no statement about the group is tested


def untestable_groups(datasets: dict[str, Interactions]) -> list[str]:
    """One line per dataset and degree group (cold / warm / hot) with fewer than `MIN_GROUP_USERS` test users:
    the claims about that group that cannot be tested on that dataset."""
    users = group_test_items(datasets)["test users"]
    return [f"{name}: {n} {group} test users (fewer than {MIN_GROUP_USERS}), so no claim about {group} users is "
            f"tested on {name}." for (name, group), n in users.items() if n < MIN_GROUP_USERS]


def group_test_items(datasets: dict[str, Interactions]) -> pd.DataFrame:
    """Per dataset and degree group (cold / warm / hot): what its test users are asked to find, i.e. their
    test users, test items per user, the median train degree of those test items and the share of them with
    no train interaction. A group whose test items are few and rare scores near zero for every model (TikTok's
    hot users: at most one test item each, of median train degree 2)."""
    rows = []
    for name, data in datasets.items():
        labels = user_degree_groups(data.user_degree)[data.test[:, 0]]
        for group in USER_GROUPS:
            test = data.test[labels == group]
            users = len(np.unique(test[:, 0]))
            row = {"dataset": name, "group": group, "test users": users}
            if users:  # an empty group leaves NaN in the other columns
                degree = data.item_degree[test[:, 1]]
                row.update({"test items per user": len(test) / users, "median train degree": float(np.median(degree)),
                            "never trained": (degree == 0).mean()})
            rows.append(row)
    return pd.DataFrame(rows).set_index(["dataset", "group"])


def item_group_frame(frame: pd.DataFrame, key: str = "item_groups") -> tuple[pd.DataFrame, list[str]]:
    """Per run (rows of `Runs.frame`) and item group: metrics with only the group's items relevant, read from the
    run's stored analysis (`key`: 'item_groups' by popularity, or 'unseen_items'); runs without one are noted."""
    out, notes = [], []
    for row in frame.itertuples():
        stored = analysis(row.path)
        if stored is None:
            notes.append(f"{row.model} on {row.dataset} (seed {row.seed}): {NO_ANALYSIS}")
            continue
        out.append(pd.DataFrame(stored[key]).assign(dataset=row.dataset, model=row.model, seed=row.seed))
    return (pd.concat(out, ignore_index=True) if out else pd.DataFrame()), notes


def cold_item_frame(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Per run (rows of `Runs.frame`): its strict item cold-start metrics (`cold_item_ranking`) as its run stored
    them, and notes: the runs without them (made before runs stored them; `fitmm reanalyse` adds them), and per
    model the analyses that come from the run trained again (`trained_again`) without reproducing its record."""
    rows, missing, again = [], {}, {}
    for row in frame.itertuples():
        stored = analysis(row.path) or {}
        if "cold_items" not in stored:
            missing.setdefault((row.model, row.dataset), []).append(row.seed)
            continue
        rows.append({"dataset": row.dataset, "model": row.model, "seed": row.seed, **stored["cold_items"]})
        trained = stored.get("trained_again")
        if trained and not trained["reproduces_record"]:
            gap = abs(trained["test"]["recall@20"] - trained["record_test"]["recall@20"])
            again.setdefault((row.model, row.dataset), []).append(gap)
    def by(gap: float) -> str:
        return f"at most {gap:.4f}" if gap >= 5e-5 else "less than 0.0001"  # what rounds to 0.0000 is said so

    retrained = [f"{model} on {dataset}: {len(gaps)} analys{'i' if len(gaps) == 1 else 'e'}s from the run trained "
                 f"again (`fitmm reanalyse`) without reproducing its record bit for bit (another machine's kernels), "
                 f"whose test Recall@20 differs from its record's by {by(max(gaps))}"
                 for (model, dataset), gaps in again.items()]
    lacking = [f"{model} on {dataset} ({seeds_phrase(seeds)}): no strict item "
               f"cold-start analysis stored; `fitmm reanalyse` on the run folders adds it"
               for (model, dataset), seeds in missing.items()]
    return pd.DataFrame(rows), lacking + retrained


def cold_item_table(cold: pd.DataFrame) -> pd.DataFrame:
    """`cold_item_frame` rows as a table per dataset and model: how the items are scored, their number, the test
    users, Recall@20 (mean, sd over seeds), NDCG@20, a random order's Recall@20, and the rank AUC (mean, sd; 0.5 by
    chance)."""
    return cold.groupby(["dataset", "model"]).agg(
        **{"scored by": ("scored_by", "first"), "items": ("items", "first"), "test users": ("users", "first"),
           "test Recall@20": ("recall@20", "mean"), "sd": ("recall@20", "std"), "test NDCG@20": ("ndcg@20", "mean"),
           "chance Recall@20": ("chance_recall@20", "first"), "AUC": ("auc", "mean"), "AUC sd": ("auc", "std"),
           "seeds": ("seed", "nunique")})


def cold_item_finding(table: pd.DataFrame, dataset: str) -> str:
    """A clause for a chapter's answer: on `dataset`, the model with the highest strict item cold-start Recall@20
    (`cold_item_table`) against a random order's; or that `dataset` has no such result."""
    if table.empty or dataset not in table.index.get_level_values("dataset"):
        return (f"not tested on {dataset}, which lacks test rows on more than 20 items never seen in train (or its "
                f"runs lack the analysis)")
    rows = table.loc[dataset]
    best = rows["test Recall@20"].idxmax()
    return (f"ranked among the {rows['items'].iloc[0]:,} items of {dataset} never seen in train, {best} reaches test "
            f"Recall@20 {rows.loc[best, 'test Recall@20']:.4f} (a random order: {rows['chance Recall@20'].iloc[0]:.4f}) "
            f"and rank AUC {rows.loc[best, 'AUC']:.3f} (chance: 0.5)")
