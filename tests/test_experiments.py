"""fitmm.experiments on hand-made inputs: groups, sparsification, significance, tables, claims, checks."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch

from fitmm.config import load_config
from fitmm.data.dataset import Interactions
from fitmm.errors import TrainingError
from fitmm.experiments import (claims, cost, datacheck, groups, notes, plan, report, runs, significance,
                               spectral_checks, tables)
from fitmm.io import utc_now
from fitmm.metrics import evaluate
from fitmm.models.base import Recommender
from fitmm.trainer import build_model


def tiny(n_users: int = 12, n_items: int = 8, seed: int = 0) -> Interactions:
    """Every user has 4 train items, 1 valid, 1 test (distinct), drawn at random."""
    rng = np.random.default_rng(seed)
    rows = {"train": [], "valid": [], "test": []}
    for u in range(n_users):
        items = rng.choice(n_items, 6, replace=False)
        rows["train"] += [(u, i) for i in items[:4]]
        rows["valid"].append((u, items[4]))
        rows["test"].append((u, items[5]))
    arrays = {k: np.array(v, dtype=np.int64) for k, v in rows.items()}
    return Interactions("tiny", n_users, n_items, **arrays)


# --- groups -------------------------------------------------------------------------------------


def test_user_degree_groups_boundaries():
    labels = groups.user_degree_groups(np.array([0, 5, 6, 20, 21, 300]))
    assert labels.tolist() == ["cold", "cold", "warm", "warm", "hot", "hot"]


def test_user_group_selections_skip_empty_groups():
    masks = groups.user_group_selections(np.array([0, 5, 30, 2]))
    assert list(masks) == ["all", "cold", "hot"]  # no warm user
    assert masks["all"].all() and masks["cold"].tolist() == [True, True, False, True]


def test_degree_quantile_groups_keep_ties_together():
    degree = np.array([3, 3, 3, 3, 3, 9, 1, 7, 7, 2])  # quantiles .2 .4 .6 .8 fall on 2, 3, 3, 7
    g = groups.degree_quantile_groups(degree)
    assert g.tolist() == [2, 2, 2, 2, 2, 4, 1, 3, 3, 1]
    assert groups.degree_ranges(degree, g) == {1: "1–2", 2: "3", 3: "7", 4: "9"}
    order = np.argsort(degree, kind="stable")
    assert (np.diff(g[order]) >= 0).all()  # higher degree never in a lower group
    for d in np.unique(degree):
        assert len(np.unique(g[degree == d])) == 1  # one degree, one group


def test_degree_quantile_groups_on_a_tiktok_like_distribution():
    # most users at 1-2 train interactions (TikTok: the equal-population cuts were [1, 2, 2, 3])
    degree = np.array([1] * 50 + [2] * 30 + [3] * 10 + [4, 5, 6, 7, 8, 9, 10, 20, 30, 40])
    g = groups.degree_quantile_groups(degree)
    assert np.bincount(g)[1:].tolist() == [50, 30, 20]
    assert groups.degree_ranges(degree, g) == {1: "1", 2: "2", 3: "3–40"}
    assert groups.degree_quantile_groups(np.arange(1, 101)).max() == 5  # no ties: five equal groups
    assert np.bincount(groups.degree_quantile_groups(np.arange(1, 101)))[1:].tolist() == [20] * 5
    assert set(groups.degree_quantile_groups(np.full(7, 4))) == {1}  # one degree: one group


def test_untestable_groups_name_the_dataset_and_group():
    lines = groups.untestable_groups({"toy": tiny()})  # 12 test users, each with 4 train items: all cold
    assert [line.split(": ")[1].split(" test")[0] for line in lines] == ["12 cold", "0 warm", "0 hot"]
    assert all(line.startswith("toy: ") for line in lines)


def test_group_test_items_by_hand():
    train = np.array([[0, 0]] + [[1, i] for i in range(21)])  # user 0: degree 1 (cold); user 1: 21 (hot)
    test = np.array([[0, 21], [0, 1], [1, 0]])  # item 21 never trained, item 1 trained once, item 0 twice
    data = Interactions("toy", 2, 25, train=train, valid=np.array([[0, 22], [1, 23]]), test=test)
    table = groups.group_test_items({"toy": data}).loc["toy"]
    assert table.loc["cold"].tolist() == [1, 2.0, 0.5, 0.5]  # users, items per user, median degree, never trained
    assert table.loc["hot"].tolist() == [1, 1.0, 2.0, 0.0]
    assert table.loc["warm", "test users"] == 0 and table.loc["warm"].iloc[1:].isna().all()


def test_item_popularity_groups_shares():
    popularity = np.array([50, 1, 2, 30, 3, 4, 40, 5, 6, 7])
    labels = groups.item_popularity_groups(popularity)
    assert (labels == "tail").sum() == 5 and (labels == "head").sum() == 2 and (labels == "mid").sum() == 3
    assert set(np.flatnonzero(labels == "head")) == {0, 6}  # the two most popular
    assert set(np.flatnonzero(labels == "tail")) == {1, 2, 4, 5, 7}


def test_group_means():
    per_user = {"users": np.array([0, 2, 3]), "recall@20": np.array([1.0, 0.0, 0.5], dtype=np.float32)}
    labels = np.array(["cold", "hot", "cold", "hot"], dtype=object)  # by user id
    out = groups.group_means(per_user, labels, ["recall@20"])
    assert out.loc["cold", "users"] == 2 and out.loc["cold", "recall@20"] == pytest.approx(0.5)
    assert out.loc["hot", "users"] == 1 and out.loc["hot", "recall@20"] == pytest.approx(0.5)


def test_item_group_metrics_counts_only_the_groups_items():
    data = Interactions("d", 2, 4, train=np.array([[0, 0], [1, 0]]), valid=np.array([[0, 1], [1, 1]]),
                        test=np.array([[0, 2], [0, 3], [1, 3]]))
    scores = torch.tensor([[0.0, 0.0, 3.0, 1.0], [0.0, 0.0, 3.0, 1.0]])  # item 2 first, then 3
    labels = np.array(["a", "a", "x", "y"], dtype=object)
    table = groups.item_group_metrics(lambda users: scores[users], data, labels, ["recall@3", "precision@3"],
                                      topk=(1, 3))
    assert table.loc["x", "users"] == 1 and table.loc["x", "recall@3"] == pytest.approx(1.0)
    assert table.loc["y", "users"] == 2 and table.loc["y", "pairs"] == 2
    full, _ = evaluate(lambda users: scores[users], data, "test", (1,))
    sub, _ = evaluate(lambda users: scores[users], groups.restrict_items(data, "test", labels == "y"), "test", (1,))
    assert full["recall@1"] == pytest.approx(0.25) and sub["recall@1"] == 0.0  # item 3 never ranks first
    assert "a" not in table.index  # no test pair in group a


class FixedScores(Recommender):
    """A model whose scores are a fixed (n_users, n_items) table, with no item content."""

    def __init__(self, data: Interactions, scores: torch.Tensor):
        super().__init__(data, load_config("bpr", {"device": "cpu"}))
        self.scores = scores

    def scorer(self):
        return lambda users: self.scores[users]


def test_cold_item_ranking_ranks_the_never_trained_items_among_themselves():
    # items 0-4 in train, 5-29 never: 25 candidates; user 0's test item 5 is scored first among them, user 1's
    # item 6 last (25th), user 2's test item is a trained one (not evaluated); the trained items score highest
    data = Interactions("d", 3, 30, train=np.array([[0, 0], [1, 1], [2, 2], [0, 3], [1, 4]]),
                        valid=np.array([[2, 3]]), test=np.array([[0, 5], [1, 6], [2, 0]]))
    scores = torch.zeros(3, 30)
    scores[:, :5] = 100.0
    scores[:, 5:] = torch.arange(25, 0, -1, dtype=torch.float32)  # item 5 first ... item 29 last
    scores[1, 6] = 3.5  # 22nd of the 25: 3 below it
    out = groups.cold_item_ranking(FixedScores(data, scores), data)
    assert out == {"items": 25, "users": 2, "pairs": 2, "scored_by": "no content", "recall@20": pytest.approx(0.5),
                   "ndcg@20": pytest.approx(0.5), "chance_recall@20": pytest.approx(0.8),
                   "auc": pytest.approx((24 / 24 + 3 / 24) / 2)}
    ties = groups.rank_auc(lambda users: torch.zeros(len(users), 30), data.test[:2], np.arange(5, 30))
    assert ties == pytest.approx(0.5)  # every other candidate tied: half below
    mixed = groups.item_group_metrics(FixedScores(data, scores).scorer(), data,
                                      np.where(data.item_degree == 0, "unseen", "seen"), ["recall@20"])
    assert mixed.loc["unseen", "recall@20"] == pytest.approx(0.5)  # among all 30 items, item 5 still ranks 4th
    warm_only = Interactions("d", 3, 30, train=data.train, valid=data.valid, test=np.array([[2, 0]]))
    assert groups.cold_item_ranking(FixedScores(warm_only, scores), warm_only) is None
    few = Interactions("d", 3, 25, train=data.train, valid=data.valid, test=data.test)  # 20 never-trained items
    assert groups.cold_item_ranking(FixedScores(few, scores[:, :25]), few) is None  # any order finds them all
    assert groups.strict_cold_start_refusal(data) is None
    assert groups.strict_cold_start_refusal(warm_only) == "d: no test row holds an item without train interactions"
    assert groups.strict_cold_start_refusal(few).startswith("d: 20 items without train interactions; with at most 20")


@pytest.mark.parametrize("model_name", ["vbpr", "freedom", "smore", "fitmm", "ssr"])
def test_content_only_scores_items_without_their_id_embeddings(synthetic, model_name):
    data = groups.sparsify(synthetic, 0.9, seed=0)
    items = np.flatnonzero(data.item_degree == 0)  # 44 never-trained items
    model = build_model(data, load_config(model_name, {"device": "cpu"}), torch.device("cpu")).eval()
    assert model.scores_content
    table = model.get_parameter(model.item_id_table)
    inside, outside = [], []
    for seed in (1, 2):  # two different id rows for those items
        table.data[items] = torch.randn(len(items), table.shape[1], generator=torch.Generator().manual_seed(seed))
        before = table.data.clone()
        outside.append(model.embeddings()[1][items])
        with torch.no_grad(), model.content_only(items):
            assert table[items].abs().max() == 0
            inside.append(model.embeddings()[1][items])
        assert torch.equal(table.data, before)  # restored
    torch.testing.assert_close(inside[0], inside[1])  # their content alone
    assert not torch.allclose(outside[0], outside[1])  # otherwise their id rows count
    analysed = groups.cold_item_ranking(model, data)
    assert analysed["scored_by"] == "content alone" and analysed["items"] == len(items)


def test_an_id_only_model_cannot_score_by_content(synthetic):
    model = build_model(synthetic, load_config("lightgcn", {"device": "cpu"}), torch.device("cpu"))
    assert not model.scores_content
    with pytest.raises(TrainingError, match="no item content"), model.content_only(np.array([0])):
        pass


def test_sparsify_drops_the_fraction_and_keeps_valid_test():
    data = tiny()
    for fraction in (0.2, 0.5, 0.8):
        sparse = groups.sparsify(data, fraction, seed=3)
        assert len(sparse.train) == len(data.train) - round(fraction * len(data.train))
        assert np.array_equal(sparse.valid, data.valid) and np.array_equal(sparse.test, data.test)
        keys = lambda a: set(map(tuple, a.tolist()))
        assert keys(sparse.train) <= keys(data.train)
        assert sparse.name != data.name
    kept40, kept80 = (set(map(tuple, groups.sparsify(data, f, 3).train.tolist())) for f in (0.4, 0.8))
    assert kept80 < kept40  # nested for one seed
    assert np.array_equal(groups.sparsify(data, 0.5, 3).train, groups.sparsify(data, 0.5, 3).train)
    assert not np.array_equal(groups.sparsify(data, 0.5, 3).train, groups.sparsify(data, 0.5, 4).train)
    assert groups.sparsify(data, 0.0) is data
    with pytest.raises(ValueError):
        groups.sparsify(data, 1.0)


# --- significance -------------------------------------------------------------------------------


def test_paired_test_aligns_by_user_id():
    rng = np.random.default_rng(0)
    x = rng.random(50)
    y = x - 0.05 + 0.02 * rng.standard_normal(50)
    a = {"users": np.arange(50), "m": x}
    perm = rng.permutation(60)  # b has extra users, listed in another order
    ys = np.concatenate([y, rng.random(10)])  # user u's value is ys[u]
    b = {"users": perm, "m": ys[perm]}
    out = significance.paired_test(a, b, "m")
    assert out["users"] == 50
    assert out["mean_diff"] == pytest.approx(np.mean(x - y))
    assert out["wilcoxon_p"] == pytest.approx(scipy.stats.wilcoxon(x, y).pvalue)
    assert out["ttest_p"] == pytest.approx(scipy.stats.ttest_rel(x, y).pvalue)
    assert out["wilcoxon_p"] < 1e-6


def test_paired_test_identical_and_disjoint():
    a = {"users": np.arange(5), "m": np.linspace(0, 1, 5)}
    assert significance.paired_test(a, a, "m")["wilcoxon_p"] == 1.0
    with pytest.raises(ValueError):
        significance.paired_test(a, {"users": np.arange(5, 10), "m": np.ones(5)}, "m")


def test_seed_test_over_the_runs_means():
    a, b = [0.30, 0.32, 0.31, 0.33], [0.20, 0.21, 0.19]
    assert significance.seed_test(a, b) == pytest.approx(scipy.stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert significance.seed_test(a, b) == significance.seed_test(b, a) < 1e-3
    # against one run (a closed form): the one-sample test, whichever side it is on
    assert significance.seed_test(a, [0.2]) == pytest.approx(scipy.stats.ttest_1samp(a, 0.2).pvalue)
    assert significance.seed_test([0.2], a) == significance.seed_test(a, [0.2])
    assert significance.seed_test([0.31, 0.30], [0.30, 0.31]) == pytest.approx(1.0)
    for undefined in (([0.3], [0.2]), ([0.3, 0.3], [0.3]), ([0.3, 0.3], [0.2, 0.2])):  # one run each; no spread
        assert np.isnan(significance.seed_test(*undefined)), undefined


def write_run(path, users, values):
    path.mkdir(parents=True)
    np.savez(path / "per_user.npz", users=np.asarray(users), **{"recall@20": np.asarray(values, dtype=np.float32)})
    return str(path)


def test_seed_mean_and_versus_best_baseline(tmp_path):
    users = np.arange(40)
    rng = np.random.default_rng(1)
    base = rng.random(40)
    rows = []
    for model, shift in (("weak", -0.3), ("strong", 0.0), ("fitmm", 0.2)):
        for seed in (0, 1):
            vals = np.clip(base + shift + 0.01 * seed, 0, None)
            rows.append({"dataset": "d", "model": model, "seed": seed, "recall@20": vals.mean(),
                         "path": write_run(tmp_path / f"{model}{seed}", users, vals)})
    frame = pd.DataFrame(rows)
    mean = significance.seed_mean(frame.loc[frame.model == "fitmm", "path"].tolist())
    assert mean["recall@20"] == pytest.approx(np.clip(base + 0.2, 0, None) + 0.005, abs=1e-6)
    out = significance.versus_best_baseline(frame, ["fitmm"])
    assert out.loc[0, "baseline"] == "strong" and out.loc[0, "mean_diff"] > 0 and out.loc[0, "seeds"] == 2
    run_means = {m: [np.clip(base + shift + 0.01 * seed, 0, None) for seed in (0, 1)]
                 for m, shift in (("strong", 0.0), ("fitmm", 0.2))}  # each seed's per-user values (stored as float32)
    assert out.loc[0, "seeds_welch_p"] == pytest.approx(scipy.stats.ttest_ind(
        *([v.mean() for v in run_means[m]] for m in ("fitmm", "strong")), equal_var=False).pvalue, rel=1e-5)
    # one seed of a trained model: its spread over seeds is unknown, so no seed test; a closed form's one run is fixed
    one_seed = significance.versus_best_baseline(frame[(frame.model != "fitmm") | (frame.seed == 0)], ["fitmm"])
    assert one_seed.loc[0, "seeds"] == 1 and np.isnan(one_seed.loc[0, "seeds_welch_p"])
    closed = significance.versus_best_baseline(frame[frame.model != "strong"].replace({"weak": "ease"}).query(
        "model != 'ease' or seed == 0"), ["fitmm"])
    assert closed.loc[0, "baseline"] == "ease" and closed.loc[0, "seeds_welch_p"] == pytest.approx(
        scipy.stats.ttest_1samp([v.mean() for v in run_means["fitmm"]], np.clip(base - 0.3, 0, None).mean()).pvalue,
        rel=1e-5)
    keep = {"d": users < 10}
    restricted = significance.versus_best_baseline(frame, ["fitmm"], keep_users=keep)
    assert restricted.loc[0, "users"] == 10
    assert restricted.loc[0, "seeds_welch_p"] == pytest.approx(scipy.stats.ttest_ind(
        *([v[:10].mean() for v in run_means[m]] for m in ("fitmm", "strong")), equal_var=False).pvalue, rel=1e-5)
    frame["variant"] = frame.model
    ref = significance.versus_reference(frame.assign(model="m"), "strong")
    assert set(ref.variant) == {"weak", "fitmm"}
    same = pd.concat([frame, frame[frame.variant == "strong"].assign(variant="switch off here")])
    assert set(significance.versus_reference(same.assign(model="m"), "strong").variant) == {"weak", "fitmm"}
    assert ref.set_index("variant").loc["weak", "mean_diff"] > 0  # reference better than weak
    # a one-seed variant meets the reference's run of its seed only: strong seed 1 vs fitmm seed 1 differ by 0.2
    one = significance.versus_reference(frame[(frame.model != "fitmm") | (frame.seed == 1)].assign(model="m"), "strong")
    row = one.set_index("variant").loc["fitmm"]
    assert row["paired seeds"] == "1" and row["mean_b"] - row["mean_a"] == pytest.approx(
        np.mean(np.clip(base + 0.21, 0, None) - np.clip(base + 0.01, 0, None)), abs=1e-6)


# --- tables -------------------------------------------------------------------------------------


def test_mean_std_and_published():
    frame = pd.DataFrame({"dataset": ["baby", "baby", "baby"], "model": ["bpr", "bpr", "fitmm"],
                          "seed": [0, 1, 0], "recall@20": [0.1, 0.3, 0.5], "recall@10": [0.1, 0.1, 0.2],
                          "ndcg@10": [0.0, 0.0, 0.0], "ndcg@20": [0.0, 0.0, 0.0]})
    table = tables.mean_std(frame)
    assert table.loc[("baby", "bpr"), "recall@20"] == "0.2000 ± 0.1414"
    assert table.loc[("baby", "fitmm"), "recall@20"] == "0.5000"  # one seed: no std
    assert table.loc[("baby", "bpr"), "seeds"] == 2
    wide = tables.with_published(frame, "baby")
    assert wide.loc["BPR", ("recall@20", "ours")] == "0.2000 ± 0.1414"
    assert wide.loc["BPR", ("recall@20", "SMORE T2")] == "0.0595"
    assert wide.loc["FITMM", ("recall@20", "SMORE T2")] == "–"
    assert "MGCN" in wide.index and wide.loc["MGCN", ("recall@20", "ours")] == "–"
    assert wide.loc["LightGCN", ("recall@20", "MMRec")] == "0.0754"


def test_comparison_rows_print_names_and_keep_the_numbers():
    tests = pd.DataFrame({"dataset": ["baby-drop80-s0"], "model": ["fitmm"], "baseline": ["lightgcn"],
                          "metric": ["recall@20"], "mean_a": [0.05], "mean_b": [0.02], "wilcoxon_p": [1e-9]})
    row = tables.comparison_rows(tests).iloc[0]
    assert (row.model, row.baseline, row.metric) == ("FITMM", "LightGCN", "Recall@20")
    assert (row["model mean"], row["baseline mean"], row.wilcoxon_p) == (0.05, 0.02, 1e-9)


def test_published_values_cover_spec():
    p = tables.PUBLISHED
    assert len(p[(p.source == "SMORE T2")]) == 6 * 3 * 4
    assert p[(p.dataset == "tiktok") & (p.model == "DiffMM") & (p.metric == "ndcg@20")].value.item() == .0456
    quoted = p[p.source == tables.THIRD_PARTY[0]].pivot_table(index="dataset", columns="metric", values="value")
    assert quoted.loc["baby", ["recall@10", "recall@20", "ndcg@10", "ndcg@20"]].tolist() == [.0716, .1089, .0387, .0484]
    assert set(quoted.index) == {"baby", "sports", "clothing"} and set(p[p.source.isin(tables.THIRD_PARTY)].model) == {"FITMM"}
    rerun = p[p.source == tables.THIRD_PARTY[1]]
    assert set(rerun.dataset) == {"baby"} and rerun.set_index("metric").value["recall@20"] == .1078


# --- claims -------------------------------------------------------------------------------------


def test_comparison_verdict():
    t = lambda diffs, ps: pd.DataFrame({"mean_diff": diffs, "wilcoxon_p": ps})
    assert claims.comparison_verdict(t([0.1, 0.2], [0.01, 0.001])) == "reproduced"
    assert claims.comparison_verdict(t([0.1, -0.2], [0.01, 0.001])) == "partly"
    assert claims.comparison_verdict(t([0.1], [0.5])) == "not reproduced"  # a lead that is not significant
    assert claims.comparison_verdict(t([0.1, 0.2], [0.5, 0.001])) == "partly"
    assert claims.comparison_verdict(t([-0.1], [0.01])) == "not reproduced"
    assert claims.comparison_verdict(pd.DataFrame()) == "pending"


def test_a_win_on_the_datasets_run_so_far_is_only_partly_while_planned_runs_are_missing():
    from fitmm.experiments.plan import DataSpec, RunSpec

    tested = pd.DataFrame({"dataset": ["tiktok"], "mean_diff": [0.1], "wilcoxon_p": [0.001]})
    missing = [RunSpec(DataSpec("baby"), "fitmm", 1), RunSpec(DataSpec("sports"), "ssr", 1)]
    unfinished = claims.unfinished_datasets(missing, "fitmm")
    assert unfinished == ["baby"]
    assert claims.comparison_verdict(tested, unfinished=unfinished) == "partly"
    assert claims.comparison_verdict(tested.assign(mean_diff=-0.1), unfinished=unfinished) == "not reproduced"
    assert claims.comparison_verdict(tested, unfinished=[]) == "reproduced"
    assert claims.unfinished_note(unfinished, tested.dataset) == (
        "; not tested yet on baby, runs missing there (the verdict rests on tiktok)")
    # a pending verdict rests on nothing
    assert claims.unfinished_note(unfinished, []) == "; not tested yet on baby, runs missing there"
    assert claims.unfinished_note([], tested.dataset) == ""
    # a seed still to run where the others ran: tested on those, but "everywhere" is not shown yet either
    unfinished = claims.unfinished_datasets(missing + [RunSpec(DataSpec("tiktok"), "fitmm", 4)], "fitmm")
    assert unfinished == ["baby", "tiktok"]
    assert claims.comparison_verdict(tested, unfinished=["tiktok"]) == "partly"
    assert claims.unfinished_note(unfinished, tested.dataset) == (
        "; not tested yet on baby, runs missing there (the verdict rests on tiktok); "
        "seeds still to run on tiktok (tested on those finished)")
    assert claims.unfinished_note(["tiktok"], tested.dataset) == "; seeds still to run on tiktok (tested on those finished)"


def test_unfinished_datasets_of_an_ablation_count_only_the_compared_variants():
    from fitmm.experiments.plan import DataSpec, RunSpec

    missing = [RunSpec(DataSpec("baby"), "fitmm", 1, {"n_bands": 2}, variant="2 bands"),
               RunSpec(DataSpec("tiktok"), "fitmm", 1, {"spectral": False}, variant="backbone only")]
    assert claims.unfinished_datasets(missing, "fitmm", {"backbone only", "full (code reading)"}) == ["tiktok"]
    assert claims.unfinished_datasets(missing, "fitmm") == ["baby", "tiktok"]
    assert claims.unfinished_datasets(missing, "ssr") == []


def run_rows(*runs) -> pd.DataFrame:
    """Runs as (dataset, model, variant, best_epoch, epochs, stopped_early)."""
    return pd.DataFrame(runs, columns=["dataset", "model", "variant", "best_epoch", "epochs", "stopped_early"])


def test_budget_limited_is_a_capped_run_still_improving():
    frame = run_rows(("a", "ssr", "", 299, 300, False),   # best in the last epochs, at the cap: cut by the budget
                     ("a", "ssr", "", 296, 300, False),   # best 4 epochs before the cap: converging
                     ("a", "ssr", "", 280, 301, True),    # stopped early
                     ("a", "ease", "", None, 0, None))    # closed form
    assert claims.budget_limited(frame).tolist() == [True, False, False, False]


def test_comparison_verdict_on_capped_runs_is_inconclusive():
    tests = pd.DataFrame({"dataset": ["a", "b"], "model": ["ssr", "ssr"], "baseline": ["smore", "lightgcn"],
                          "mean_diff": [-0.01, -0.02], "wilcoxon_p": [0.01, 0.01]})
    converged = run_rows(("a", "ssr", "", 40, 61, True), ("a", "smore", "", 50, 71, True),
                         ("b", "ssr", "", 30, 51, True), ("b", "lightgcn", "", 20, 41, True),
                         ("b", "smore", "", 299, 300, False))  # not behind these tests
    assert len(claims.runs_behind(tests, converged)) == 4
    assert claims.comparison_verdict(tests, claims.runs_behind(tests, converged)) == "not reproduced"
    capped = converged.copy()
    capped.loc[0, ["best_epoch", "epochs", "stopped_early"]] = [299, 300, False]
    assert claims.comparison_verdict(tests, claims.runs_behind(tests, capped)) == "inconclusive (budget)"
    won = tests.assign(mean_diff=[0.01, 0.02])
    assert claims.comparison_verdict(won, claims.runs_behind(won, converged)) == "reproduced"
    assert claims.comparison_verdict(won.assign(wilcoxon_p=[0.01, 0.5]), claims.runs_behind(won, converged)) == "partly"
    assert claims.comparison_verdict(won, converged) == "inconclusive (budget)"  # b's smore run is capped


def test_runs_behind_ablation_tests_keep_the_compared_variants():
    tests = pd.DataFrame({"dataset": ["a"], "model": ["ssr"], "variant": ["backbone only"], "mean_diff": [0.01],
                          "wilcoxon_p": [0.01]})
    frame = run_rows(("a", "ssr", "code", 10, 31, True), ("a", "ssr", "backbone only", 10, 31, True),
                     ("a", "ssr", "4 bands", 299, 300, False))
    assert claims.runs_behind(tests, frame, "code").variant.tolist() == ["code", "backbone only"]
    assert claims.comparison_verdict(tests, claims.runs_behind(tests, frame, "code")) == "reproduced"


def test_theory_verdicts():
    assert claims.decoupling_verdict(0.0, 2.02) == "reproduced"
    assert claims.decoupling_verdict(1e-6, 2.0) == "not reproduced"
    assert claims.decoupling_verdict(0.0, 1.5) == "not reproduced"
    betas, critical = np.array([1.0, 2.0, 3.0]), np.array([1.5, 2.5])
    assert claims.gains_shut_off(betas, critical, np.array([[0, 0], [0.3, 0], [0.5, 0.2]]))
    assert not claims.gains_shut_off(betas, critical, np.array([[0.1, 0], [0.3, 0], [0.5, 0.2]]))
    snr = np.array([0.1, 1.0, 10.0])
    wiener = snr / (1 + snr)
    row = claims.wiener_comparison(snr, 2.0, wiener, np.array([0.0, 0.5, 0.9]))
    assert row == {"max gap to Wiener": pytest.approx(1 / 11), "never above Wiener": True, "off below 1/(β−1)": True}
    assert not claims.wiener_comparison(snr, 2.0, wiener, np.array([0.01, 0.5, 0.9]))["off below 1/(β−1)"]
    good = pd.DataFrame([row, {**row, "max gap to Wiener": 0.001}], index=[2.0, 1000.0])
    assert claims.wiener_verdict(True, good) == "reproduced"
    assert claims.wiener_verdict(False, good) == "not reproduced"
    assert claims.wiener_verdict(True, good.assign(**{"max gap to Wiener": [0.0, 0.05]})) == "not reproduced"
    assert claims.orthogonality_verdict(1e-6) == "reproduced"
    assert claims.orthogonality_verdict(1e-2) == "not reproduced"


def test_equal_energy_verdict():
    dev = lambda exact, cheb: pd.Series({"exact": exact, "scalable": 0.0, "chebyshev": cheb})
    assert claims.equal_energy_verdict(dev(0.01, 0.02)) == "reproduced"
    assert claims.equal_energy_verdict(dev(0.01, 0.30)) == "partly"
    assert claims.equal_energy_verdict(dev(0.20, 0.30)) == "not reproduced"


def test_snr_tracking_verdict_and_unmoved_weights():
    moved = {"user": [0.9, 0.6, 0.4], "item": [0.8, 0.7, 0.3]}
    assert claims.snr_tracking_verdict(1.0, moved) == "reproduced"
    assert claims.snr_tracking_verdict(0.5, moved) == "partly"
    assert claims.snr_tracking_verdict(-0.5, moved) == "not reproduced"
    start = claims.initial_band_weight()
    assert start == pytest.approx(0.7311, abs=1e-4)
    still = {"user": [start] * 3, "item": [start + 1e-4] * 3}
    assert claims.snr_tracking_verdict(float("nan"), still) == "inconclusive (budget)"
    capped = run_rows(("syn", "fitmm", "", 9, 10, False))
    assert claims.snr_tracking_verdict(-0.5, moved, capped) == "inconclusive (budget)"


def test_band_count_verdict():
    """Three or four bands best on valid is a win only where the paired test on test users backs it."""
    converged = run_rows(("a", "ssr", "3 bands", 20, 41, True), ("a", "ssr", "5 bands", 20, 41, True))
    tests = lambda *rows: pd.DataFrame(rows, columns=["dataset", "mean_diff", "wilcoxon_p"])
    backed = tests(("a", 0.01, 1e-4), ("b", 0.02, 1e-3))
    assert claims.band_count_verdict(pd.Series({"a": 3, "b": 4}), backed, converged) == "reproduced"
    assert claims.band_count_verdict(pd.Series({"a": 3, "b": 4}), backed, converged, ["c"]) == "partly"  # c to run
    assert claims.band_count_verdict(pd.Series({"a": 3, "b": 5}), backed, converged) == "partly"
    assert claims.band_count_verdict(pd.Series({"a": 2, "b": 5}), backed, converged) == "not reproduced"
    noise = tests(("a", 0.001, 0.4), ("b", 0.02, 1e-3))  # best on valid at 3 on a, but the test cannot tell
    assert claims.band_count_verdict(pd.Series({"a": 3, "b": 4}), noise, converged) == "partly"
    assert claims.band_count_verdict(pd.Series({"a": 3}), tests(("a", 0.001, 0.4)), converged) == "not reproduced"
    assert claims.band_count_verdict(pd.Series({"a": 3}), tests(("a", -0.01, 1e-4)), converged) == "not reproduced"
    capped = run_rows(("a", "ssr", "3 bands", 20, 41, True), ("a", "ssr", "5 bands", 2, 3, False))
    assert claims.band_count_verdict(pd.Series({"a": 5}), tests(("a", -0.01, 1e-4)), capped) == "inconclusive (budget)"
    assert claims.band_count_verdict(pd.Series({"a": 3}), tests()) == "pending"  # only 3 and 4 run: uncontested
    assert claims.band_count_verdict(pd.Series(dtype=int), tests()) == "pending"


def test_band_count_rivals_and_their_paired_test(tmp_path):
    """The best count in 3-4 meets the best count outside, both chosen on valid, on the seeds every count ran."""
    users, rng = np.arange(50), np.random.default_rng(0)
    base = rng.random(50)
    rows = []
    for bands, shift, valid in ((2, -0.1, 0.20), (3, 0.1, 0.30), (4, 0.0, 0.25), (5, -0.2, 0.10)):
        for seed in (1, 2):
            rows.append({"dataset": "d", "bands": bands, "seed": seed, "valid_recall@20": valid,
                         "recall@20": base.mean() + shift,
                         "path": write_run(tmp_path / f"{bands}-{seed}", users, base + shift + 0.01 * seed)})
    rows.append({"dataset": "d", "bands": 3, "seed": 9, "valid_recall@20": 0.0, "recall@20": 0.0,
                 "path": write_run(tmp_path / "3-9", users, np.zeros(50))})  # seed 9: 3 bands only, left out
    rows.append({"dataset": "e", "bands": 3, "seed": 1, "valid_recall@20": 0.3, "recall@20": 0.3, "path": ""})
    runs = pd.DataFrame(rows)
    means = claims.band_count_means(runs)
    rivals = claims.band_count_rivals(means)
    assert rivals.values.tolist() == [["d", 3, 2]]  # e ran one side only: nothing contests the claim there
    out = significance.band_count_tests(runs, rivals)
    assert out.loc[0, "paired seeds"] == "1, 2" and out.loc[0, "mean_diff"] == pytest.approx(0.2, abs=1e-6)
    assert out.loc[0, "wilcoxon_p"] < 0.05
    best = claims.best_band_counts(means)
    assert claims.band_count_verdict(best, out) == "reproduced"  # won on d; e, uncontested, shows nothing
    evidence = claims.band_count_evidence(means, best, out)
    assert evidence.startswith("d: best on valid at 3 bands of [2, 3, 4, 5], seeds 1, 2; 3 vs 2 bands")
    assert "e: best on valid at 3 bands of [3], seeds 1; no count outside 3-4 run: nothing contests" in evidence
    only_inside = means.loc[["e"]]  # no dataset contested: no test rows, and the evidence says so
    assert significance.band_count_tests(runs, claims.band_count_rivals(only_inside)).empty
    assert claims.band_count_evidence(only_inside, claims.best_band_counts(only_inside), pd.DataFrame()).endswith(
        "nothing contests the claim")
    only_outside = claims.band_count_means(runs[runs.bands.isin([2, 5])])
    assert "; no count in 3-4 run: nothing contests" in claims.band_count_evidence(
        only_outside, claims.best_band_counts(only_outside), pd.DataFrame())


def test_module_effects_read_the_single_switch_variants():
    """A variant that switches one module off tells what that module does: helps / hurts when the paired test is
    significant, else no clear effect; the backbone-only variant and other variants are not modules."""
    ablations = {"full": {}, "backbone only": {"spectral": False}, "no gate": {"gate": False},
                 "no branch": {"graph_branch": False}, "no mask": {"masking": False},
                 "paper consistency": {"consistency": "paper"}, "no gate, no branch": {"gate": False,
                                                                                      "graph_branch": False}}
    tests = pd.DataFrame({"dataset": "d", "model": "fitmm",
                          "variant": ["backbone only", "no gate", "no branch", "no mask", "paper consistency",
                                      "no gate, no branch"],
                          "mean_diff": [0.01, -0.006, 0.002, 0.004, 0.001, 0.003],
                          "wilcoxon_p": [1e-6, 1e-5, 0.01, 0.2, 1e-4, 1e-4]})
    effects = claims.module_effects(tests, ablations)
    assert effects[["module", "effect"]].values.tolist() == [["gate", "hurts"], ["graph_branch", "helps"],
                                                             ["masking", "no clear effect"]]
    assert effects.mean_diff.tolist() == [-0.006, 0.002, 0.004]
    assert claims.module_effects(pd.DataFrame(), ablations).empty
    assert claims.module_effects(tests, {"full": {}, "backbone only": {"spectral": False}}).empty


def test_claims_table_roundtrip(tmp_path):
    claims.save(tmp_path, "smoke", "gib-decoupling", "reproduced", "slope 2.00")
    table = claims.claims_table(tmp_path, "smoke")
    assert table.loc["gib-decoupling", "verdict"] == "reproduced"
    assert table.loc["ssr-cold-start", "verdict"] == "pending"
    assert table.loc["published-numbers", "verdict"] == "not testable here"
    assert claims.claims_table(tmp_path, "cpu").loc["gib-decoupling", "verdict"] == "pending"  # per profile
    with pytest.raises(ValueError):
        claims.save(tmp_path, "smoke", "gib-decoupling", "maybe", "")
    with pytest.raises(KeyError):
        claims.save(tmp_path, "smoke", "no-such-claim", "reproduced", "")
    claims.save_finding(tmp_path, "smoke", "fitmm-consistency", "code better")
    found = claims.discrepancies_table(tmp_path, "smoke")
    assert found.loc["fitmm-consistency", "finding"] == "code better"
    assert found.loc["ssr-bands", "finding"] == found.loc["ssr-band-input", "finding"] == "pending"


def test_band_count_runs_keep_the_variants_that_change_only_the_count():
    variants = {"full": {}, "2 bands": {"n_bands": 2}, "scalable": {"bands": "scalable"},
                "scalable 4": {"bands": "scalable", "n_bands": 4}, "no gating": {"gating": False}}
    frame = pd.DataFrame({"model": ["ssr"] * 5 + ["fitmm"], "variant": [*variants, "2 bands"]})
    plain = claims.band_count_runs(frame, "ssr", variants)
    assert plain.variant.tolist() == ["full", "2 bands"] and plain.bands.tolist() == [3, 2]  # 3: ssr.yaml's n_bands
    scalable = claims.band_count_runs(frame, "ssr", variants, {"bands": "scalable"})
    assert dict(zip(scalable.variant, scalable.bands)) == {"scalable": 3, "scalable 4": 4}
    assert claims.band_count_runs(frame, "fitmm", variants).bands.tolist() == [2]
    assert claims.band_count_runs(pd.DataFrame(), "ssr", variants).empty


def test_band_counts_are_compared_on_the_seeds_every_count_ran():
    runs = pd.DataFrame({"dataset": ["a"] * 5 + ["b"] * 2, "bands": [3, 3, 4, 2, 3, 2, 4],
                         "seed": [1, 2, 1, 1, 9, 5, 6],  # on a: seed 1 is shared; on b: no seed is
                         "valid_recall@20": [0.10, 0.90, 0.20, 0.15, 0.99, 0.30, 0.10],
                         "recall@20": [0.1, 0.8, 0.2, 0.1, 0.9, 0.3, 0.1]})
    means = claims.band_count_means(runs)
    assert means.loc[("a", 3), "valid_recall@20"] == pytest.approx(0.10)  # seeds 2 and 9 (3 bands only) left out
    assert means.loc[("a", 3), "seeds"] == "1" and means.loc[("b", 2), "seeds"] == "5"
    assert claims.best_band_counts(means).to_dict() == {"a": 4, "b": 2}


def test_reading_findings_name_the_reading_valid_supports_and_the_seeds():
    runs = pd.DataFrame({"dataset": ["a"] * 5 + ["b"] * 2,
                         "variant": ["code", "code", "code", "paper", "paper", "code", "paper"],
                         "seed": [1, 2, 3, 1, 2, 999, 999],  # seed 3: the code's reading only, left out
                         "valid_recall@20": [0.10, 0.12, 0.50, 0.10, 0.10, 0.05, 0.05]})
    tests = pd.DataFrame({"dataset": ["a", "b"], "variant": "paper", "paired seeds": ["1, 2", "999"],
                          "mean_a": [0.2, 0.1], "mean_b": [0.19, 0.1], "wilcoxon_p": [0.01, 1.0]})
    first, second = claims.reading_findings(tests, runs, "code")
    assert first == ("a: valid Recall@20 code 0.1100 vs 'paper' 0.1000 (the code's reading better on valid); "
                     "test 0.2000 vs 0.1900, Wilcoxon p = 1.00e-02, seeds 1, 2")
    assert second.startswith("b:") and "(the code's reading better on valid)" in second  # a tie: the code's
    paper_seed_7 = runs.assign(seed=[1, 2, 3, 7, 7, 999, 999])  # no seed in common: every seed of each side
    tested_on_7 = tests.assign(**{"paired seeds": ["7", "999"]})
    assert "code 0.2400 vs 'paper' 0.1000" in claims.reading_findings(tested_on_7, paper_seed_7, "code")[0]
    runs.loc[3, "valid_recall@20"] = 0.2
    assert "('paper' reading better on valid)" in claims.reading_findings(tests, runs, "code")[0]


def test_deciding_tests_take_per_dataset_the_first_reading_that_ran_there():
    tests = pd.DataFrame({"dataset": ["tiktok", "tiktok", "baby", "baby", "tiktok"],
                          "model": ["ssr", "ssr", "ssr", "ssr", "fitmm"],
                          "variant": ["scalable", "exact", "scalable", "2 bands", "exact"],
                          "wilcoxon_p": [0.1, 0.2, 0.3, 0.4, 0.5]})
    found = claims.deciding_tests(tests, "ssr", ["exact", "scalable"])
    assert sorted(zip(found.dataset, found.variant)) == [("baby", "scalable"), ("tiktok", "exact")]
    assert claims.deciding_tests(tests, "ssr", ["paper"]).empty
    assert claims.deciding_tests(pd.DataFrame(), "ssr", ["exact"]).empty  # no paired tests at all (no columns)


# --- data and spectral checks -------------------------------------------------------------------


def test_split_checks_and_ccdf():
    data = tiny()
    checks = datacheck.split_checks(data)
    # 6 items per user < 10: MMRec's rule gives 4 / 1 / 1, as built
    assert checks == {"pairs in two splits": 0, "held-out users without train": 0, "users following MMRec's rule": 1.0,
                      "items never in train": 0, "valid rows on them": 0.0, "test rows on them": 0.0}
    x, share = datacheck.ccdf(np.array([1, 1, 2, 5]))
    assert x.tolist() == [1, 2, 5] and share.tolist() == [1.0, 0.5, 0.25]


def test_canonical_correlations():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((500, 6))
    shared = a[:, :2] @ rng.standard_normal((2, 4))
    b = np.concatenate([shared, rng.standard_normal((500, 3))], axis=1)
    cc = datacheck.canonical_correlations(a, b)
    assert cc[:2] == pytest.approx([1.0, 1.0]) and cc[2] < 0.3
    assert datacheck.explained_variance(a).sum() == pytest.approx(1.0)


def test_graph_band_energy_per_signal_and_path():
    data = tiny(40, 30)
    signals = {"a": torch.randn(70, 8, generator=torch.Generator().manual_seed(0)), "b": torch.ones(70, 2)}
    energy = spectral_checks.graph_band_energy(data, signals)
    assert list(energy.index) == [(s, p) for s in signals for p in ("chebyshev", "exact", "scalable")]
    np.testing.assert_allclose(energy.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(energy.loc[("a", "exact")], 1 / 3, atol=0.06)  # equal energy up to one eigenvector


def test_planted_band_gains_and_band_diagnostics():
    meta = {"modalities": {"image": {"snr": [8.0, 1.0, 0.0, 0.0]}, "text": {"snr": [1.0, 0.0, 0.0, 0.0]}}}
    gains = spectral_checks.planted_band_gains(meta, 2)
    assert gains == pytest.approx([((8 / 9 + 1 / 2) / 2 + 0.5 / 2) / 2, 0.0])
    records = [{"dataset": {"name": "d"}, "model": "m", "seed": 0,
                "diagnostics": {"band_weights": {"user": [0.5, 0.25]}, "scale": 2.0, "matrix": [[1, 2]]}}]
    diag = spectral_checks.band_diagnostics(records)
    assert diag.quantity.tolist() == ["band_weights/user"] * 2 and diag.band.tolist() == [1, 2]


def test_trained_band_borders_per_variant():
    """Each border's λ as mean ± sd over seeds (the mean alone for one seed), per dataset and variant, beside the
    share of L's eigenvalues a bipartite graph puts at λ = 1 (|N_u − N_i| / N); variants without borders are left out."""
    def record(run_id, seed, borders):
        return {"run_id": run_id, "seed": seed, "dataset": {"name": "d", "users": 70, "items": 30},
                "diagnostics": {"band_borders": borders} if borders else {"bands_path": "chebyshev"}}

    records = [record("a", 1, [0.3, 1.0]), record("b", 2, [0.5, 1.0]), record("c", 1, [0.4]), record("e", 1, None)]
    frame = pd.DataFrame({"dataset": "d", "variant": ["3 bands", "3 bands", "2 bands", "reference"],
                          "seed": [1, 2, 1, 1], "run_id": ["a", "b", "c", "e"]})
    table = spectral_checks.trained_band_borders(frame, records)
    assert list(table.index) == [("d", "3 bands"), ("d", "2 bands")]
    assert table.loc[("d", "3 bands")].tolist() == ["0.400 ± 0.141", "1.000 ± 0.000", "1, 2", "≥ 40.0%"]
    assert table.loc[("d", "2 bands"), "border 1"] == "0.400" and table.loc[("d", "2 bands"), "border 2"] == ""
    assert spectral_checks.trained_band_borders(frame.iloc[3:], records).empty


def test_growth_slopes():
    edges = np.array([100, 1000, 10000])
    frame = pd.DataFrame({"model": "m", "edges": edges, "seconds_per_epoch": 0.01 * edges ** 1.5,
                          "eval_seconds": 0.1 * edges})
    slopes = cost.growth_slopes(frame)
    assert slopes.loc["m", "seconds_per_epoch"] == pytest.approx(1.5)
    assert slopes.loc["m", "eval_seconds"] == pytest.approx(1.0)


def test_notes_formatting():
    frame = pd.DataFrame({"a": ["x|y"], "b": [1]}, index=pd.Index(["r"], name="id"))
    assert notes.markdown_table(frame).splitlines() == ["| id | a | b |", "|---|---|---|", "| r | x\\|y | 1 |"]
    assert notes.fmt(0.12345) == "0.1235" and notes.fmt(float("nan")) == "n/a" and notes.fmt("pending") == "pending"
    assert notes.caveats(["synthetic"]) == [notes.SYNTHETIC]
    assert len(notes.caveats(["baby", "tiktok"])) == 3


# --- runs ---------------------------------------------------------------------------------------


def test_a_closed_form_model_runs_once_whatever_the_seeds():
    specs = plan.grid([plan.DataSpec("tiny")], ["ease", "bpr"], [999, 1, 2], {"epochs": 1})
    assert [(s.model, s.seed) for s in specs] == [("ease", 999), ("bpr", 999), ("bpr", 1), ("bpr", 2)]


def test_run_specs_reuses_skips_and_rebuilds(tmp_path, monkeypatch):
    monkeypatch.setenv("FITMM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(runs.RECORDS_ONLY, raising=False)
    data = tiny(n_items=60)  # ≥ 50 items: the protocol's largest cut-off
    budget = {"epochs": 1, "batch_size": 16, "embedding_dim": 8, "device": "cpu"}
    specs = plan.grid([plan.DataSpec("tiny")], ["bpr", "no-such-model"], [0], budget,
                      variants={"": {}, "typo": {"no_such_key": 1}})
    out = runs.run_specs(specs, tmp_path, {"tiny": data})
    assert out.frame.model.tolist() == ["bpr"] and len(out.records) == 1
    assert out.specs == specs[:1] and out.data == {"tiny": data}
    assert any("no-such-model" in n and "not in fitmm.models.MODELS" in n for n in out.notes)
    assert any("typo" in n and "no_such_key" in n for n in out.notes)
    row = out.frame.iloc[0]
    again = runs.run_specs(specs[:1], tmp_path, {"tiny": data})
    assert again.frame.run_id.tolist() == [row.run_id]
    monkeypatch.setenv(runs.RECORDS_ONLY, "1")  # under `fitmm reproduce`: read, never train
    other_seed = plan.grid([plan.DataSpec("tiny")], ["bpr"], [0, 1], budget)
    read = runs.run_specs(other_seed, tmp_path, {"tiny": data})
    assert read.frame.run_id.tolist() == [row.run_id] and "bpr on tiny, seed 1: no record" in read.notes[0]
    assert json.loads((tmp_path / "runs" / "tiny" / "bpr" / row.run_id / "record.json").read_text())["run_id"] == row.run_id
    model = runs.trained_model(data, row.path)
    summary, _ = evaluate(model.scorer(), data, "test", (5, 10, 20, 50))
    assert summary["recall@20"] == pytest.approx(row["recall@20"])
    assert runs.per_user(row.path)["users"].tolist() == list(range(data.n_users))
    assert runs.history_frame(out.records).epoch.tolist() == [0]
    assert runs.collect_records(tmp_path).run_id.tolist() == [row.run_id]


def run_grid(data, models, seeds, results_dir, budget):
    """Every model and seed on an in-memory dataset, through the planner's grid."""
    return runs.run_specs(plan.grid([plan.DataSpec(data.name)], models, seeds, budget), results_dir, {data.name: data})


def test_item_groups_come_from_the_stored_analysis(tmp_path):
    data = tiny(n_items=60)
    budget = {"epochs": 1, "batch_size": 16, "embedding_dim": 8, "device": "cpu"}
    row = run_grid(data, ["bpr"], [0], tmp_path, budget).frame.iloc[0]
    stored = runs.analysis(row.path)
    model = runs.trained_model(data, row.path)
    labels = groups.item_popularity_groups(data.item_degree)
    direct = groups.item_group_metrics(model.scorer(), data, labels, ["recall@20", "ndcg@20"])
    table, missing = groups.item_group_frame(pd.DataFrame([row]))
    assert not missing and table.set_index("group")["recall@20"].to_dict() == pytest.approx(direct["recall@20"].to_dict())
    assert stored["item_groups"] == groups.json_rows(direct.reset_index())
    path = Path(row.path)
    (path / "analysis.json").unlink()
    run_grid(data, ["bpr"], [0], tmp_path, budget)  # made again from the local checkpoint
    assert runs.analysis(row.path) == stored
    (path / "analysis.json").unlink()
    shutil.rmtree(path / "checkpoints")  # a record from elsewhere: nothing to compute it from
    run_grid(data, ["bpr"], [0], tmp_path, budget)
    table, missing = groups.item_group_frame(pd.DataFrame([row]))
    assert table.empty and missing == [f"bpr on tiny (seed 0): {runs.NO_ANALYSIS}"]


def test_reanalyse_trains_a_run_again_only_to_replace_its_analysis(tmp_path, monkeypatch):
    data = tiny(n_items=60)
    monkeypatch.setattr(plan, "get_dataset", lambda name, data_dir: data)  # the record's dataset, from its "folder"
    plan._load.cache_clear()
    budget = {"epochs": 2, "batch_size": 16, "embedding_dim": 8, "device": "cpu"}
    path = Path(run_grid(data, ["bpr"], [0], tmp_path, budget).frame.iloc[0].path)
    stored, record = runs.analysis(path), (path / "record.json").read_text()
    (path / "analysis.json").write_text("{}")  # an analysis from before a part was added
    assert runs.reanalyse(path, "anywhere", progress=False) == stored  # from the local checkpoint
    shutil.rmtree(path / "checkpoints")  # a record from elsewhere
    (path / "analysis.json").write_text("{}")
    again = runs.reanalyse(path, "anywhere", progress=False)  # the analysis lacks every part: all are added
    mark = again.pop("trained_again")
    assert mark["reproduces_record"] and mark["parts"] == sorted(stored) and again == stored
    (path / "analysis.json").write_text(json.dumps({"item_groups": "as stored"}))
    kept = runs.reanalyse(path, "anywhere", progress=False)  # stored parts are kept, the missing ones added
    assert kept == {**stored, "item_groups": "as stored", "trained_again": {**mark, "parts": sorted(set(stored) - {"item_groups"})}}
    assert (path / "record.json").read_text() == record and not (path / "checkpoints").exists()
    changed = json.loads(record)
    changed["test"]["recall@20"] += 0.01  # a record made on another CPU: the run trained here differs a little
    (path / "record.json").write_text(json.dumps(changed))
    (path / "analysis.json").write_text("{}")
    mark = runs.reanalyse(path, "anywhere", progress=False)["trained_again"]
    assert not mark["reproduces_record"] and mark["record_test"]["recall@20"] == changed["test"]["recall@20"]
    assert mark["test"]["recall@20"] == pytest.approx(changed["test"]["recall@20"] - 0.01)
    (path / "record.json").write_text(record)
    monkeypatch.setattr(plan, "get_dataset", lambda name, data_dir: tiny(n_items=60, seed=1))
    plan._load.cache_clear()
    with pytest.raises(runs.DataError, match="not the data run bpr-s0-.* was trained on"):
        runs.reanalyse(path, "anywhere", progress=False)
    changed["version"] = "p0.m0"
    (path / "record.json").write_text(json.dumps(changed))
    with pytest.raises(runs.RecordError, match="behaviour version p0.m0"):
        runs.reanalyse(path, "anywhere", progress=False)


def test_cold_item_frame_reads_the_stored_ranking_and_notes_what_it_lacks(tmp_path):
    def run(name, seed, stored):
        path = tmp_path / name
        path.mkdir()
        if stored is not None:
            (path / "analysis.json").write_text(json.dumps(stored))
        return {"dataset": "d", "model": name.split("-")[0], "seed": seed, "path": str(path)}

    ranked = {"items": 40, "users": 9, "pairs": 10, "scored_by": "content alone", "recall@20": 0.6, "ndcg@20": 0.3,
              "chance_recall@20": 0.5, "auc": 0.7}
    again = {"reproduces_record": False, "test": {"recall@20": 0.101}, "record_test": {"recall@20": 0.1}}
    frame = pd.DataFrame([run("vbpr-a", 1, {"cold_items": ranked}),
                          run("vbpr-b", 2, {"cold_items": {**ranked, "recall@20": 0.4}, "trained_again": again}),
                          run("bpr-a", 1, {"item_groups": []}), run("bpr-b", 2, None)])
    rows, lines = groups.cold_item_frame(frame)
    assert rows[["model", "seed", "recall@20"]].values.tolist() == [["vbpr", 1, 0.6], ["vbpr", 2, 0.4]]
    assert [line.split(":")[0] for line in lines] == ["bpr on d (seeds 1, 2)", "vbpr on d"]
    assert "1 analysis from the run trained again" in lines[1] and "at most 0.0010" in lines[1]
    close = {**again, "test": {"recall@20": 0.1 + 1e-6}}  # equal to the record's at four decimals
    _, close_lines = groups.cold_item_frame(pd.DataFrame([run("ssr-a", 1, {"cold_items": ranked, "trained_again": close})]))
    assert close_lines[0].endswith("by less than 0.0001")
    table = groups.cold_item_table(rows)
    assert table.loc[("d", "vbpr")].to_dict() == {
        "scored by": "content alone", "items": 40, "test users": 9, "test Recall@20": pytest.approx(0.5),
        "sd": pytest.approx(0.1414, abs=1e-4), "test NDCG@20": pytest.approx(0.3), "chance Recall@20": 0.5,
        "AUC": pytest.approx(0.7), "AUC sd": 0.0, "seeds": 2}
    assert groups.cold_item_finding(table, "d") == ("ranked among the 40 items of d never seen in train, vbpr "
                                                    "reaches test Recall@20 0.5000 (a random order: 0.5000) and rank "
                                                    "AUC 0.700 (chance: 0.5)")
    assert groups.cold_item_finding(table, "e").startswith("not tested on e, which lacks test rows on more than 20")


def test_format_table_prints_like_a_paper():
    frame = pd.DataFrame({"users": [12.0], "seeds": [3], "recall@20": [0.123456], "mean_diff": [0.01],
                          "wilcoxon_p": [1.234e-5], "share": [0.5], "flag": [True]})
    html = report.format_table(frame, "A caption.", "fitmm reproduce --profile smoke --only 01", percent=["share"]).data
    cells = re.findall(r'class="data row0 col\d+" >([^<]*)<', html)
    assert cells == ["12", "3", "0.1235", "+0.0100", "1.23e-05", "50.0%", "yes"]
    headers = re.findall(r'class="col_heading level0 col\d+" >([^<]*)<', html)
    assert headers == ["users", "seeds", "Recall@20", "mean difference", "Wilcoxon p", "share", "flag"]
    assert "A caption." in html and "<code>fitmm reproduce --profile smoke --only 01</code>" in html
    assert html.startswith('<div class="fitmm-table"><p class="fitmm-caption">A caption.')
    assert '<div class="fitmm-scroll"><style' in html  # the table scrolls inside the column, its caption does not
    assert report.quantity_words("user/modality_agreement/image-audio") == "modality agreement (cosine), image–audio, users"


def test_format_table_leaves_text_in_a_numeric_column_as_text():
    # with_published: a model only a paper reports has no seeds ("–") and 'mean ± sd' strings beside numbers
    ours = pd.DataFrame({"dataset": "tiktok", "model": ["lightgcn"] * 2, "recall@20": [.07, .08]})
    table = tables.with_published(ours, "tiktok", metrics=["recall@20"])
    html = report.format_table(table, "T", "cmd").data
    assert "0.0750 ± 0.0071" in html and "0.0653" in html and ">–<" in html  # LightGCN ours, DiffMM's, BPR's seeds


def test_report_counts_only_this_builds_verdicts(tmp_path):
    states = {"01_main_results": {"status": "ok", "executed": "2025-01-02 10:00:00 UTC",
                                  "finished": "2025-01-02 10:05:00 UTC"},
              "03_sparsity_cold_start": {"status": "failed", "executed": "2025-01-02 10:06:00 UTC",
                                         "finished": "2025-01-02 10:07:00 UTC"}}
    assert report.freshness("2025-01-02 10:01:00 UTC", "01_main_results", states) == "this build"
    assert report.freshness("2025-01-01 09:00:00 UTC", "01_main_results", states) == (
        "stale (saved 2025-01-01; not from the chapter's last execution)")
    assert report.freshness("2025-01-02 10:06:30 UTC", "03_sparsity_cold_start", states) == (
        "stale (saved 2025-01-02; chapter failed)")
    assert report.freshness(None, "05_ablations", states) == "stale (date unknown; chapter not executed)"
    data = tiny(n_items=60)
    budget = {"epochs": 1, "batch_size": 16, "embedding_dim": 8, "device": "cpu"}
    frame = run_grid(data, ["bpr", "lightgcn"], [0], tmp_path, budget).frame
    chapter = report.Chapter("01_main_results", "smoke", tmp_path)
    chapter.used(frame[frame.model == "bpr"])
    states = {"01_main_results": {"status": "ok", "executed": "2000-01-01 00:00:00 UTC", "finished": utc_now()}}
    used = report.used_runs(tmp_path, "smoke", states)
    assert used.model.tolist() == ["bpr"] and used.chapters.tolist() == ["01"]
    assert used.commit.iloc[0] == "–" or len(used.commit.iloc[0].removesuffix("+dirty")) == 12
    assert report.used_runs(tmp_path, "smoke", {}).empty  # the chapter is not in this build


def test_compute_spent_counts_the_used_runs_and_the_other_search_trials_once(tmp_path, monkeypatch):
    from fitmm import tune

    monkeypatch.setenv("FITMM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(runs.RECORDS_ONLY, raising=False)
    budget = {"epochs": 1, "batch_size": 16, "embedding_dim": 8, "device": "cpu"}
    done = runs.run_specs(plan.grid([plan.DataSpec("tiny")], ["bpr"], [0, 1], budget), tmp_path,
                          {"tiny": tiny(n_items=60)}).frame
    used = done.iloc[:1].rename(columns={"run_id": "run"})  # seed 0 used by a chapter; seed 1 only a trial
    trials = pd.DataFrame({"dataset": "tiny", "model": "bpr", "run_id": done.run_id})
    monkeypatch.setattr(tune, "load_trials", lambda results_dir: trials)
    spent = report.compute_spent(used, tmp_path, ["tiny"], tuned=True)
    device = done.device.iloc[0]
    assert spent.runs.to_dict() == {("tiny", device, "search trial"): 1, ("tiny", device, "used by a chapter"): 1}
    assert spent.wall_hours.sum() == pytest.approx(done.wall_seconds.sum() / 3600)
    assert report.compute_spent(used, tmp_path, ["tiny"], tuned=False).runs.sum() == 1  # an untuned profile ran no search
    assert report.compute_spent(used, tmp_path, ["other"], tuned=True).runs.sum() == 1
