"""Result tables: mean ± std over seeds, and published numbers beside ours: SMORE
(arXiv 2412.14978, Table 2), DiffMM (arXiv 2406.11781, Table 1), MMRec's own runs, SSR (arXiv 2512.01372),
and FITMM's (arXiv 2601.22498) as a third party quotes them (`THIRD_PARTY`).

Published values were obtained on the official splits and feature files, which differ
from what is on hand here (see the data caveats); they are context, not targets.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from fitmm.experiments.report import words
from fitmm.experiments.runs import HEADLINE

# Registry name -> the name the papers print.
DISPLAY = {"bpr": "BPR", "lightgcn": "LightGCN", "ease": "EASE", "vbpr": "VBPR", "freedom": "FREEDOM",
           "smore": "SMORE", "fitmm": "FITMM", "ssr": "SSR"}

_R10_R20_N10_N20 = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")
_SMORE_T2 = {  # SMORE (WSDM 2025), Table 2: Baby, Sports, Clothing
    "BPR": ((.0382, .0595, .0207, .0263), (.0417, .0633, .0232, .0288), (.0200, .0295, .0111, .0135)),
    "LightGCN": ((.0453, .0728, .0246, .0317), (.0542, .0837, .0300, .0376), (.0338, .0517, .0185, .0230)),
    "VBPR": ((.0425, .0663, .0223, .0284), (.0561, .0857, .0307, .0384), (.0281, .0410, .0157, .0190)),
    "FREEDOM": ((.0626, .0986, .0327, .0420), (.0724, .1089, .0390, .0484), (.0635, .0938, .0340, .0417)),
    "MGCN": ((.0616, .0943, .0330, .0414), (.0736, .1105, .0403, .0498), (.0649, .0971, .0356, .0438)),
    "SMORE": ((.0680, .1035, .0365, .0457), (.0762, .1142, .0408, .0506), (.0659, .0987, .0360, .0443)),
}
_DIFFMM_TIKTOK = {  # DiffMM (ACM MM 2024), Table 1: R@20 / P@20 / N@20
    "BPR": (.0346, .0017, .0130), "LightGCN": (.0653, .0033, .0282), "VBPR": (.0380, .0018, .0134),
    "MMGCN": (.0730, .0036, .0307), "GRCN": (.0804, .0036, .0350), "LATTICE": (.0843, .0042, .0367),
    "SLMRec": (.0845, .0042, .0353), "BM3": (.0957, .0048, .0404), "DiffMM": (.1129, .0056, .0456),
}


# FITMM's paper numbers on Baby, Sports and Clothing (R@10, R@20, N@10, N@20) as quoted in the README of the
# third-party fork arkina3931/FITMM, and that fork's own rerun of the released FITMM code on Baby. The README
# changed these figures between commits, so they are labelled as quotes, not checked against the paper.
_FITMM_QUOTED = {"baby": (.0716, .1089, .0387, .0484), "sports": (.0809, .1187, .0441, .0538),
                 "clothing": (.0698, .1017, .0378, .0457)}
_FITMM_RERUN_BABY = (.0704, .1078, .0372, .0468)
THIRD_PARTY = ("FITMM paper, quoted by a third party", "FITMM code, rerun by a third party")


def _published_rows() -> list[dict]:
    rows = []
    for model, per_dataset in _SMORE_T2.items():
        for dataset, values in zip(("baby", "sports", "clothing"), per_dataset):
            rows += [{"source": "SMORE T2", "dataset": dataset, "model": model, "metric": m, "value": v}
                     for m, v in zip(_R10_R20_N10_N20, values)]
    for model, values in _DIFFMM_TIKTOK.items():
        rows += [{"source": "DiffMM T1", "dataset": "tiktok", "model": model, "metric": m, "value": v}
                 for m, v in zip(("recall@20", "precision@20", "ndcg@20"), values)]
    for dataset, model, value in (("baby", "LightGCN", .0698), ("baby", "VBPR", .0486), ("baby", "LATTICE", .0829),
                                  ("baby", "BM3", .0839), ("baby", "DiffMM", .0975), ("sports", "LightGCN", .0782),
                                  ("sports", "BM3", .0975), ("sports", "DiffMM", .1017)):
        rows.append({"source": "DiffMM T1", "dataset": dataset, "model": model, "metric": "recall@20", "value": value})
    for dataset, model, values in (("baby", "LightGCN", (.0479, .0754, .0257, .0328)),
                                   ("baby", "FREEDOM", (.0627, .0992, .0330, .0424)),
                                   ("sports", "FREEDOM", (.0717, .1089, .0385, .0481))):
        rows += [{"source": "MMRec", "dataset": dataset, "model": model, "metric": m, "value": v}
                 for m, v in zip(_R10_R20_N10_N20, values)]
    for dataset, value in (("baby", .0728), ("sports", .0825), ("clothing", .0708)):
        rows.append({"source": "SSR paper", "dataset": dataset, "model": "SSR", "metric": "recall@10", "value": value})
    for source, dataset, values in ([(THIRD_PARTY[0], d, v) for d, v in _FITMM_QUOTED.items()]
                                    + [(THIRD_PARTY[1], "baby", _FITMM_RERUN_BABY)]):
        rows += [{"source": source, "dataset": dataset, "model": "FITMM", "metric": m, "value": v}
                 for m, v in zip(_R10_R20_N10_N20, values)]
    return rows


PUBLISHED = pd.DataFrame(_published_rows())


def summarize(frame: pd.DataFrame, metrics: Sequence[str] = HEADLINE, by: Sequence[str] = ("dataset", "model")) -> pd.DataFrame:
    """Mean and sample std over seeds: columns (metric, 'mean'|'std') and ('seeds', '')."""
    grouped = frame.groupby(list(by), sort=False)
    out = grouped[list(metrics)].agg(["mean", "std"])
    out[("seeds", "")] = grouped.size()
    return out


def mean_std(frame: pd.DataFrame, metrics: Sequence[str] = HEADLINE, by: Sequence[str] = ("dataset", "model"),
             digits: int = 4) -> pd.DataFrame:
    """'mean ± std' strings per group and metric (the mean alone for a single seed), plus the seed count."""
    stats = summarize(frame, metrics, by)
    out = pd.DataFrame(index=stats.index)
    for m in metrics:
        mean, std = stats[(m, "mean")], stats[(m, "std")]
        out[m] = [f"{a:.{digits}f}" if np.isnan(s) else f"{a:.{digits}f} ± {s:.{digits}f}" for a, s in zip(mean, std)]
    out["seeds"] = stats[("seeds", "")]
    return out


def comparison_rows(tests: pd.DataFrame) -> pd.DataFrame:
    """Rows of `significance.versus_best_baseline` as the book prints them: model, baseline and metric by their
    printed names, the two means as 'model mean' and 'baseline mean'."""
    return (tests.assign(model=tests.model.map(DISPLAY), baseline=tests.baseline.map(DISPLAY),
                         metric=tests.metric.map(words))
            .rename(columns={"mean_a": "model mean", "mean_b": "baseline mean"}))


def training_summary(frame: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """One dataset's training per model (display names): the best epoch and the epochs run of each seed (seed
    order), whether any seed stopped at its epoch cap, and the mean seconds per training epoch over seeds.

    >>> runs = pd.DataFrame({"dataset": "baby", "model": "lightgcn", "seed": [2, 1], "best_epoch": [40, 51],
    ...                      "epochs": [62, 73], "stopped_early": [True, True], "seconds_per_epoch": [3.0, 4.0]})
    >>> training_summary(runs, "baby").loc["LightGCN"].tolist()
    ['1, 2', '51, 40', '73, 62', 'no', '3.50']
    >>> training_summary(runs.assign(stopped_early=[True, False]), "baby").loc["LightGCN", "cut at the epoch cap"]
    'yes'
    """
    rows = {}
    for model, group in frame[frame.dataset == dataset].sort_values("seed").groupby("model", sort=False):
        trained = group.dropna(subset=["best_epoch"])
        rows[DISPLAY.get(model, model)] = {
            "seeds": ", ".join(str(s) for s in group.seed),
            "best epoch": ", ".join(str(int(e)) for e in trained.best_epoch) or "–",
            "epochs run": ", ".join(str(int(e)) for e in trained.epochs) or "–",
            "cut at the epoch cap": "–" if trained.empty else "no" if trained.stopped_early.all() else "yes",
            "s / epoch": "–" if trained.empty else f"{trained.seconds_per_epoch.mean():.2f}"}
    return pd.DataFrame.from_dict(rows, orient="index")


def leaders_summary(frame: pd.DataFrame, tests: pd.DataFrame, datasets: Sequence[str],
                    unfinished: Mapping[str, Sequence[str]], metric: str = "recall@20") -> str:
    """One sentence per dataset of `datasets` with runs: the most accurate of its models by mean test `metric`, then
    each model under study's difference from the best other model with its Wilcoxon p (`tests`:
    `significance.versus_best_baseline` rows of `metric`), or why it has none: its planned runs there are still to
    come (`unfinished`: model under study -> datasets with planned runs missing, `claims.unfinished_datasets`),
    or none is planned (the model cannot run on that data).

    >>> runs = pd.DataFrame({"dataset": ["a", "a", "b", "c"], "model": ["fitmm", "bpr", "bpr", "bpr"],
    ...                      "recall@20": [.2, .1, .3, .4]})
    >>> tests = pd.DataFrame({"dataset": ["a"], "model": ["fitmm"], "baseline": ["bpr"], "metric": ["recall@20"],
    ...                       "mean_diff": [.1], "wilcoxon_p": [.002]})
    >>> print(leaders_summary(runs, tests, ["a", "b", "c", "d"], {"fitmm": ["b"]}).replace(". ", ".\\n"))
    On a, the most accurate of 2 models by mean test Recall@20 is FITMM (0.2000); FITMM differs from the best other model, BPR, by +0.1000 (Wilcoxon p = 2.00e-03).
    On b, the most accurate of 1 model by mean test Recall@20 is BPR (0.3000); FITMM has no runs there yet.
    On c, the most accurate of 1 model by mean test Recall@20 is BPR (0.4000); FITMM does not run there (see the runs left out).
    """
    def name(model: str) -> str:
        return DISPLAY.get(model, model)

    sentences = []
    for dataset in datasets:
        means = frame[frame.dataset == dataset].groupby("model")[metric].mean().sort_values(ascending=False)
        if means.empty:
            continue
        n = len(means)
        parts = [f"On {dataset}, the most accurate of {n} model{'s' * (n > 1)} by mean test "
                 f"{metric.replace('recall', 'Recall').replace('ndcg', 'NDCG')} is {name(means.index[0])} "
                 f"({means.iloc[0]:.4f})"]
        for target, missing in unfinished.items():
            row = tests[(tests.dataset == dataset) & (tests.model == target) & (tests.metric == metric)] \
                if not tests.empty else tests
            if len(row):
                r = row.iloc[0]
                parts.append(f"{name(target)} differs from the best other model, {name(r.baseline)}, by "
                             f"{r.mean_diff:+.4f} (Wilcoxon p = {r.wilcoxon_p:.2e})")
            elif dataset in missing:
                parts.append(f"{name(target)} has no runs there yet")
            else:
                parts.append(f"{name(target)} does not run there (see the runs left out)")
        sentences.append("; ".join(parts) + ".")
    return " ".join(sentences)


def with_published(frame: pd.DataFrame, dataset: str, metrics: Sequence[str] = HEADLINE, digits: int = 4) -> pd.DataFrame:
    """One dataset's table: ours (mean ± std) and each published source side by side, per metric.

    Rows are models by display name: ours first, then models that only a paper reports.
    Columns are (metric, 'ours') and (metric, source) for the sources with a value there.
    `frame` has one row per run (`fitmm.runs()`, `Runs.frame`): dataset, model and the metrics.

    >>> import pandas as pd
    >>> ours = pd.DataFrame({"dataset": "baby", "model": ["lightgcn", "lightgcn"], "recall@20": [.07, .08]})
    >>> table = with_published(ours, "baby", metrics=["recall@20"])
    >>> table.loc["LightGCN", [("recall@20", "ours"), ("recall@20", "SMORE T2")]].tolist()
    ['0.0750 ± 0.0071', '0.0728']
    """
    ours = mean_std(frame[frame.dataset == dataset], metrics, by=("model",), digits=digits)
    ours.index = [DISPLAY.get(m, m) for m in ours.index]
    published = PUBLISHED[(PUBLISHED.dataset == dataset) & PUBLISHED.metric.isin(metrics)]
    wide = published.pivot_table(index="model", columns=["metric", "source"], values="value")
    models = list(ours.index) + [m for m in wide.index if m not in ours.index]
    columns = {}
    for m in metrics:
        columns[(m, "ours")] = ours[m].reindex(models)
        for source in (s for (metric, s) in wide.columns if metric == m):
            columns[(m, source)] = wide[(m, source)].reindex(models).map(lambda v: f"{v:.{digits}f}", na_action="ignore")
    columns[("seeds", "")] = ours["seeds"].reindex(models).astype("Int64")
    return pd.DataFrame(columns, index=models).astype(object).fillna("–")
