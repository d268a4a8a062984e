"""The claims table: each claim of the papers (FITMM, arXiv 2601.22498; SSR,
arXiv 2512.01372), its evidence, and a verdict computed from runs.

The chapter that holds a claim's evidence computes its verdict and saves it with
`save` under `results_dir/claims/<profile>/`; the report chapter gathers them with
`claims_table`. A claim whose chapter has not saved a verdict is 'pending'.

Every verdict rule is a function here (`*_verdict`), its thresholds the named constants
below; the chapters compute the evidence and call the rule. A verdict that rests on a run
cut by its epoch budget while still improving (`budget_limited`), or on learned weights
that never left their initial values (`unmoved`), is 'inconclusive (budget)'.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from fitmm.config import defaults
from fitmm.io import utc_now, write_json
from fitmm.models.fitmm import INITIAL_BAND_LOGIT

INCONCLUSIVE = "inconclusive (budget)"
VERDICTS = ("reproduced", "partly", "not reproduced", INCONCLUSIVE, "not testable here", "pending")

# --- thresholds of the verdict rules -------------------------------------------------------------
SIGNIFICANCE_ALPHA = 0.05       # paired Wilcoxon test, per dataset
BUDGET_TAIL_EPOCHS = 3          # a run at its epoch cap whose best epoch is among its last 3 was still improving
UNMOVED_TOLERANCE = 1e-3        # learned weights within this of their initial values never moved
DECOUPLING_ERROR_AT_ZERO = 1e-9  # nats: the decomposition is exact without coupling
DECOUPLING_SLOPE = 2.0          # the error grows as ε² ...
DECOUPLING_SLOPE_TOLERANCE = 0.25  # ... within this on a log-log fit
SHUT_OFF_MARGIN = 1e-6          # β this far above a critical β_i must already give a positive gain
WIENER_NUMERICAL_SLACK = 1e-12  # "never above Wiener" up to float rounding
WIENER_GAP_AT_LARGE_BETA = 0.01  # at β = 1000 the GIB gain is within this of Wiener's
ORTHOGONALITY_TOLERANCE = 1e-4  # largest |cos| between two bands of a view
EQUAL_ENERGY_TOLERANCE = 0.05   # largest deviation of a band's energy share from 1/M
SNR_RHO_REPRODUCED = 0.99       # Spearman ρ of learned band weights vs planted optimal gains (worse side), as a
                                # share of the ρ weights without ties can reach (`theory.rank_correlation_ceiling`)
SNR_RHO_PARTLY = 0.0
BEST_BAND_COUNTS = (3, 4)       # SSR: three to four bands work best
EARLY_PEAK_MAX_EPOCH = 5        # fitmm-early-peak: the best valid epoch (0-based) is at most this ...
EARLY_PEAK_DECLINE = 0.05       # ... the last valid metric lies at least 5 % below the best ...
                                # ... and the training loss at the last epoch is below the one at the best epoch
NAMED_VARIANT_MIN_SEEDS = 3     # a FITMM variant is named (run beside the released one) only on 3 seeds or more ...
                                # ... when its mean test metric beats the backbone's and LightGCN's, none budget-cut


@dataclass(frozen=True)
class Claim:
    id: str
    paper: str
    text: str
    chapter: str
    not_testable: str | None = None  # why, for claims no run here can test


CLAIMS = (
    Claim("fitmm-beats-baselines", "FITMM", "FITMM outperforms strong multimodal baselines.", "01_main_results"),
    Claim("ssr-beats-baselines", "SSR", "SSR outperforms strong baselines, SMORE included "
          "(Recall@10: Baby .0728, Sports .0825, Clothing .0708).", "01_main_results"),
    Claim("published-numbers", "both", "The published numbers, on the official splits and feature files.",
          "01_main_results", "the official split labels and feature files are not obtainable here (data caveats)"),
    Claim("fitmm-tables", "FITMM", "FITMM's own result tables.", "01_main_results",
          "FITMM's tables could not be retrieved here; only the claims of its abstract are tested"),
    Claim("ssr-cold-start", "SSR", "SSR gains most for cold-start users (≤ 5 train interactions): "
          "Baby Recall@20 .1125 vs SMORE .1019.", "03_sparsity_cold_start"),
    Claim("gib-decoupling", "FITMM", "The Gaussian IB objective splits into per-band objectives under an orthogonal "
          "transform that block-diagonalises the band covariances.", "04_spectral_theory"),
    Claim("gib-wiener", "FITMM", "The per-band optimum is a Wiener-like shrinkage that switches a band off below a "
          "critical β.", "04_spectral_theory"),
    Claim("fitmm-orthogonal-bands", "FITMM", "FITMM's frequency bands are orthogonal.", "04_spectral_theory"),
    Claim("fitmm-snr-tracking", "FITMM", "Learned band weights follow the bands' informativeness (planted SNR).",
          "04_spectral_theory"),
    Claim("ssr-equal-energy", "SSR", "SSR's graph bands split the spectrum into bands of about equal energy.",
          "04_spectral_theory"),
    Claim("fitmm-spectral-helps", "FITMM", "The frequency-aware module improves on the backbone alone.", "05_ablations"),
    Claim("ssr-spectral-helps", "SSR", "The spectral modules improve on the backbone alone.", "05_ablations"),
    Claim("ssr-bands-3-4", "SSR", "Three to four bands work best.", "05_ablations"),
    Claim("fitmm-early-peak", "study", "FITMM as released peaks in its first epochs, then its valid metric declines "
          "while its training loss keeps falling (this study's finding, not a paper's claim).", "09_fitmm_diagnosis"),
)

# The ablation variant that tests '<model>-spectral-helps' (chapter 05): the whole spectral part switched off.
BACKBONE_ONLY = {"fitmm": {"spectral": False},
                 "ssr": {"operator": False, "gating": False, "masking": False, "contrastive": False}}


@dataclass(frozen=True)
class Discrepancy:
    id: str
    model: str
    paper: str
    code: str
    switch: str
    chapter: str
    finding: str | None = None  # fixed, for discrepancies no run decides
    readings: tuple[dict, ...] = ()  # overrides of the paper's reading (a variant of `model.lower()`), in order:
                                     # per dataset, the first with runs there decides


DISCREPANCIES = (
    Discrepancy("fitmm-consistency", "FITMM", "modality blocks aligned within each band",
                "the bands of a node pulled together", "consistency: paper | code", "05_ablations",
                readings=({"consistency": "paper"},)),
    Discrepancy("ssr-bands", "SSR", "equal-energy bands from the Laplacian's eigenvectors",
                "fixed Chebyshev filters (not band-pass) on every Amazon set; exact bands only when N ≤ 5000",
                "bands: exact | chebyshev (and this study's scalable)", "05_ablations",
                readings=({"bands": "exact"}, {"bands": "scalable"})),  # exact where it ran, else scalable
    Discrepancy("ssr-band-input", "SSR", "bands of [R | H]; how R and H meet is not said",
                "each band's R and H halves summed before the operator, so scores carry R-H cross terms",
                "band_input: sum | concat", "05_ablations", readings=({"band_input": "concat"},)),
    Discrepancy("ssr-initial-values", "SSR", "initial values and sizes not given; the regulariser counted once",
                "γ ~ N(0, 1), gate's last layer N(0, 1e-3), MLP width 48; the regulariser added again for the "
                "masked pass", "reading: code | paper", "05_ablations", readings=({"reading": "paper"},)),
    Discrepancy("fitmm-epochs", "FITMM", "MMRec's protocol: at most 1000 epochs", "at most 300 epochs",
                "epochs", "06_cost", "the study uses the code's 300 (fitmm.yaml); profiles may lower it"),
    Discrepancy("model-selection", "both", "hyper-parameters chosen by validation",
                "MMRec's grid search picks the configuration by its test score", "valid_metric", "01_main_results",
                "the study selects on valid only (early stopping and EASE's λ)"),
    Discrepancy("ssr-baby-size", "SSR", "Baby has 139,110 interactions", "the MMRec Baby set has 160,792",
                "none", "00_data", "139,110 is train + valid of the same data, not a different set"),
)


def deciding_readings(model: str, variants: Iterable[dict]) -> list[dict]:
    """Of the variants' overrides, those that decide a discrepancy of `model`: per discrepancy, its first reading
    among them (chapter 05 compares that one with the model's reference)."""
    variants = list(variants)
    firsts = (next((r for r in d.readings if r in variants), None) for d in DISCREPANCIES if d.model.lower() == model)
    return [reading for reading in firsts if reading is not None]


def on_shared_seeds(runs: pd.DataFrame, by: str) -> pd.DataFrame:
    """The runs (columns seed and `by`) of the seeds every value of `by` ran, as a paired test takes them; all of
    them where no seed is shared."""
    shared = set.intersection(*(set(seeds) for _, seeds in runs.groupby(by)["seed"]))
    return runs[runs.seed.isin(shared)] if shared else runs


def deciding_tests(tests: pd.DataFrame, model: str, labels: Sequence[str]) -> pd.DataFrame:
    """Per dataset, the paired tests (`significance.versus_reference` rows) of the first of a discrepancy's
    readings `labels` (in order) that has one there: on a dataset where the paper's own reading cannot run
    (SSR's exact bands above 20,000 nodes) or has not run yet, the next reading decides. No tests: none."""
    if tests.empty:
        return tests
    rows = tests[(tests.model == model) & tests.variant.isin(labels)]
    rank = rows.variant.map({label: i for i, label in enumerate(labels)})
    return rows[rank == rank.groupby(rows.dataset).transform("min")]


def reading_findings(tests: pd.DataFrame, runs: pd.DataFrame, reference: str) -> list[str]:
    """Per dataset, which reading of a discrepancy the numbers support: the one with the higher mean valid
    Recall@20 over the seeds both ran (the code's on a tie), as a practitioner would select; then the paired
    test on test users, over the same seeds.

    `tests`: `significance.versus_reference` rows of a paper reading (column `variant`, one row per dataset,
    e.g. `deciding_tests`) against the code's `reference`; `runs`: the model's runs (columns dataset, variant,
    seed, valid_recall@20)."""
    found = []
    for r in tests.rename(columns={"paired seeds": "seeds"}).itertuples():
        label = r.variant
        pair = runs[(runs.dataset == r.dataset) & runs.variant.isin([reference, label])]
        valid = on_shared_seeds(pair, "variant").groupby("variant")["valid_recall@20"].mean()
        better = "the code's" if valid[reference] >= valid[label] else f"'{label}'"
        found.append(f"{r.dataset}: valid Recall@20 code {valid[reference]:.4f} vs '{label}' {valid[label]:.4f} "
                     f"({better} reading better on valid); test {r.mean_a:.4f} vs {r.mean_b:.4f}, "
                     f"Wilcoxon p = {r.wilcoxon_p:.2e}, seeds {r.seeds}")
    return found


def claim(claim_id: str) -> Claim:
    for c in CLAIMS:
        if c.id == claim_id:
            return c
    raise KeyError(f"unknown claim {claim_id!r}; known: {', '.join(c.id for c in CLAIMS)}")


def save(results_dir: str | Path, profile: str, claim_id: str, verdict: str, evidence: str) -> None:
    """Record the verdict of one claim for `profile` (overwrites the previous one)."""
    claim(claim_id)
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
    write_json(Path(results_dir) / "claims" / profile / f"{claim_id}.json",
               {"claim": claim_id, "verdict": verdict, "evidence": evidence,
                "saved": utc_now()})


def save_finding(results_dir: str | Path, profile: str, discrepancy_id: str, finding: str) -> None:
    """Record what the runs say about one paper-vs-code discrepancy for `profile`."""
    if discrepancy_id not in {d.id for d in DISCREPANCIES}:
        raise KeyError(f"unknown discrepancy {discrepancy_id!r}")
    write_json(Path(results_dir) / "claims" / profile / f"discrepancy-{discrepancy_id}.json", {"finding": finding})


def budget_limited(runs: pd.DataFrame) -> pd.Series:
    """Per run (columns best_epoch, epochs, stopped_early): stopped at its epoch cap while still improving,
    i.e. not stopped early and its best epoch among its last `BUDGET_TAIL_EPOCHS`. Closed-form fits never are."""
    if runs.empty:
        return pd.Series(dtype=bool)
    best = pd.to_numeric(runs["best_epoch"], errors="coerce")  # NaN (never late) for closed-form fits
    return runs["stopped_early"].eq(False) & (best >= pd.to_numeric(runs["epochs"]) - BUDGET_TAIL_EPOCHS)


def unmoved(learned, initial) -> bool:
    """True when learned weights (any shape) all lie within `UNMOVED_TOLERANCE` of their initial values."""
    return bool(np.all(np.abs(np.asarray(learned, dtype=float) - np.asarray(initial, dtype=float)) <= UNMOVED_TOLERANCE))


def initial_band_weight() -> float:
    """FITMM's ω_k at initialisation, σ(w_k) with w_k = INITIAL_BAND_LOGIT."""
    return 1 / (1 + math.exp(-INITIAL_BAND_LOGIT))


def runs_behind(tests: pd.DataFrame, runs: pd.DataFrame, reference: str | None = None) -> pd.DataFrame:
    """The runs a comparison rests on: per dataset of `tests`, its models and baselines (column `baseline`, if
    any); with a `variant` column, only the compared variants and the `reference` one."""
    if tests.empty or runs.empty:
        return runs.iloc[:0]
    keys = set(zip(tests.dataset, tests.model))
    if "baseline" in tests:
        keys |= set(zip(tests.dataset, tests.baseline))
    keep = pd.Series([k in keys for k in zip(runs.dataset, runs.model)], index=runs.index)
    if "variant" in tests:
        keep &= runs.variant.isin(set(tests.variant) | {reference})
    return runs[keep]


def with_budget(verdict: str, runs: pd.DataFrame | None) -> str:
    """`verdict`, or inconclusive (budget) when a run it rests on was cut by its epoch budget while improving."""
    if verdict == "pending" or runs is None or not budget_limited(runs).any():
        return verdict
    return INCONCLUSIVE


def significant_wins(tests: pd.DataFrame) -> pd.Series:
    """Per paired-test row (mean_diff, wilcoxon_p): a positive mean difference at Wilcoxon p < SIGNIFICANCE_ALPHA."""
    return (tests.mean_diff > 0) & (tests.wilcoxon_p < SIGNIFICANCE_ALPHA)


def comparison_evidence(row, label: str) -> str:
    """One `significance.versus_best_baseline` row as a claim's evidence: `label`, the two means, the Wilcoxon p
    over users (the verdict's test) and Welch's p over the seeds' means (training noise), where it is defined.

    >>> row = pd.Series({"baseline": "smore", "mean_a": .0966, "mean_b": .0954, "wilcoxon_p": .153,
    ...                  "seeds_welch_p": .167})
    >>> comparison_evidence(row, "baby: Recall@20 ")
    'baby: Recall@20 0.0966 vs smore 0.0954, Wilcoxon p = 1.53e-01 over users, Welch p = 1.67e-01 over seeds'
    """
    seeds = "" if math.isnan(row.seeds_welch_p) else f", Welch p = {row.seeds_welch_p:.2e} over seeds"
    return (f"{label}{row.mean_a:.4f} vs {row.baseline} {row.mean_b:.4f}, Wilcoxon p = {row.wilcoxon_p:.2e} over users"
            + seeds)


def comparison_verdict(tests: pd.DataFrame, runs: pd.DataFrame | None = None, unfinished: Sequence[str] = ()) -> str:
    """From paired tests (rows with mean_diff, wilcoxon_p; one per dataset), where a win is a positive mean
    difference at Wilcoxon p < SIGNIFICANCE_ALPHA: a win everywhere -> reproduced; a win somewhere -> partly; no
    win anywhere -> not reproduced (a lead that is not significant is no evidence of one); none -> pending.
    `runs`: the runs behind the tests (`runs_behind`), for the budget rule (`with_budget`). `unfinished`: datasets
    the comparison is planned on whose planned runs are not all finished (`unfinished_datasets`): "everywhere" is
    not shown then, so a win on every tested dataset is only partly (the evidence names them: `unfinished_note`)."""
    if tests.empty:
        return "pending"
    wins = significant_wins(tests)
    verdict = "reproduced" if wins.all() and not unfinished else "partly" if wins.any() else "not reproduced"
    return with_budget(verdict, runs)


def module_effects(tests: pd.DataFrame, variants: dict[str, dict]) -> pd.DataFrame:
    """What each module does, from the variants that switch exactly one module off (one boolean key set to false;
    the model's backbone-only variant excepted): per dataset, "helps" where the reference beats the variant at
    SIGNIFICANCE_ALPHA (paired Wilcoxon), "hurts" where the variant is significantly better, else "no clear effect".

    `tests`: `significance.versus_reference` rows of one model (columns dataset, model, variant, mean_diff,
    wilcoxon_p); `variants`: that model's ablation table (label -> overrides)."""
    single = {label: next(iter(o)) for label, o in variants.items()
              if len(o) == 1 and next(iter(o.values())) is False and o not in BACKBONE_ONLY.values()}
    rows = tests[tests.variant.isin(single)] if not tests.empty else tests
    if rows.empty:
        return pd.DataFrame(columns=["dataset", "module", "variant", "mean_diff", "wilcoxon_p", "effect"])
    significant = rows.wilcoxon_p < SIGNIFICANCE_ALPHA
    effect = np.select([significant & (rows.mean_diff > 0), significant & (rows.mean_diff < 0)], ["helps", "hurts"],
                       "no clear effect")
    return pd.DataFrame({"dataset": rows.dataset, "module": rows.variant.map(single), "variant": rows.variant,
                         "mean_diff": rows.mean_diff, "wilcoxon_p": rows.wilcoxon_p, "effect": effect}
                        ).reset_index(drop=True)


def unfinished_datasets(missing: Sequence, model: str, variants: Iterable[str] | None = None) -> list[str]:
    """The datasets on which planned runs of `model` (of its `variants` only, when given) are missing
    (`Runs.missing`, specs): no run at all, or seeds still to run. What `comparison_verdict`'s `unfinished` takes."""
    variants = None if variants is None else set(variants)
    return sorted({spec.data.label for spec in missing
                   if spec.model == model and (variants is None or spec.variant in variants)})


def unfinished_note(unfinished: Sequence[str], tested: Iterable[str]) -> str:
    """The evidence's clause for the datasets whose planned runs are not all finished ('' when none): those
    with no test yet (no run, or too few to test), then those tested on the seeds finished so far; and what the
    verdict rests on."""
    tested = sorted(set(tested))
    untested = [d for d in unfinished if d not in tested]
    partial = [d for d in unfinished if d in tested]
    rests_on = f" (the verdict rests on {', '.join(tested)})" if tested else ""
    clauses = ([f"not tested yet on {', '.join(untested)}, runs missing there{rests_on}"] if untested else []) + (
        [f"seeds still to run on {', '.join(partial)} (tested on those finished)"] if partial else [])
    return "".join(f"; {clause}" for clause in clauses)


def decoupling_verdict(error_at_zero: float, slope: float) -> str:
    """GIB decoupling: exact without coupling and a quadratic error in the coupling ε."""
    exact = error_at_zero < DECOUPLING_ERROR_AT_ZERO
    quadratic = abs(slope - DECOUPLING_SLOPE) < DECOUPLING_SLOPE_TOLERANCE
    return "reproduced" if exact and quadratic else "not reproduced"


def gains_shut_off(betas: np.ndarray, critical: np.ndarray, gains: np.ndarray) -> bool:
    """Optimal gains (len(betas) x n) are 0 below each critical β_i and positive above it (by SHUT_OFF_MARGIN)."""
    below = betas[:, None] < critical[None, :]
    above = betas[:, None] > critical[None, :] + SHUT_OFF_MARGIN
    return bool((gains[below] == 0).all() and (gains[~below & above] > 0).all())


def wiener_comparison(snr: np.ndarray, beta: float, wiener: np.ndarray, gib: np.ndarray) -> dict:
    """One row of the Wiener check at `beta`: largest gap, never above Wiener, switched off below SNR = 1/(β−1)."""
    off = snr < 1 / (beta - 1)
    return {"max gap to Wiener": float(np.max(wiener - gib)),
            "never above Wiener": bool((gib <= wiener + WIENER_NUMERICAL_SLACK).all()),
            "off below 1/(β−1)": bool((gib[off] == 0).all())}


def wiener_verdict(shut_off: bool, gaps: pd.DataFrame) -> str:
    """Wiener-like shrinkage: gains shut off below β_i, the scalar gain never above Wiener's and off below
    SNR = 1/(β−1), and within WIENER_GAP_AT_LARGE_BETA of Wiener at the largest β (rows of `gaps`, by β)."""
    like = (shut_off and gaps["never above Wiener"].all() and gaps["off below 1/(β−1)"].all()
            and gaps.loc[gaps.index.max(), "max gap to Wiener"] < WIENER_GAP_AT_LARGE_BETA)
    return "reproduced" if like else "not reproduced"


def orthogonality_verdict(worst_cosine: float) -> str:
    return "reproduced" if worst_cosine < ORTHOGONALITY_TOLERANCE else "not reproduced"


def equal_energy_verdict(deviation: pd.Series) -> str:
    """SSR's equal-energy bands, from the largest deviation from 1/M per band path: both the paper's exact path and
    the released Chebyshev split equal -> reproduced; one of them -> partly; neither -> not reproduced."""
    exact_equal = deviation["exact"] < EQUAL_ENERGY_TOLERANCE
    code_equal = deviation["chebyshev"] < EQUAL_ENERGY_TOLERANCE
    return "reproduced" if exact_equal and code_equal else "partly" if exact_equal or code_equal else "not reproduced"


def snr_tracking_verdict(rho: float, band_weights: dict[str, list[float]], run: pd.DataFrame | None = None) -> str:
    """Learned FITMM band weights vs planted optimal gains (`rho`: Spearman ρ of the worse side over its ceiling,
    `theory.rank_correlation_ceiling`). Weights that never left their initial value, or a run cut by its budget
    while improving, make it inconclusive (budget)."""
    if unmoved(list(band_weights.values()), initial_band_weight()):
        return INCONCLUSIVE
    verdict = ("reproduced" if rho > SNR_RHO_REPRODUCED else "partly" if rho > SNR_RHO_PARTLY else "not reproduced")
    return with_budget(verdict, run)


def band_count_variants(model: str, variants: dict[str, dict], path: dict | None = None) -> dict[str, int]:
    """Of `variants` (label -> overrides), those that set `path` (e.g. SSR's `{"bands": "scalable"}`) and at most the
    band count besides: label -> band count (the model's YAML `n_bands` where a variant leaves it)."""
    default = defaults(model)["n_bands"]
    return {label: o.get("n_bands", default) for label, o in variants.items()
            if {k: v for k, v in o.items() if k != "n_bands"} == (path or {})}


def band_count_runs(frame: pd.DataFrame, model: str, variants: dict[str, dict],
                    path: dict | None = None) -> pd.DataFrame:
    """The runs of `model` (`runs.record_row` rows, with their variant) of its `band_count_variants`, with the
    band count in a column `bands`."""
    if frame.empty:
        return pd.DataFrame()
    counts = band_count_variants(model, variants, path)
    runs = frame[(frame.model == model) & frame.variant.isin(counts)]
    return runs.assign(bands=runs.variant.map(counts))


def band_count_means(band_runs: pd.DataFrame) -> pd.DataFrame:
    """Per dataset and band count (`band_count_runs` rows: dataset, bands, seed, valid_recall@20, recall@20): mean
    valid and test Recall@20 over the seeds every count of that dataset ran (`on_shared_seeds`), and those seeds, so
    that no count is favoured by a luckier seed."""
    summary = {"valid_recall@20": ("valid_recall@20", "mean"), "recall@20": ("recall@20", "mean"),
               "seeds": ("seed", lambda s: ", ".join(str(seed) for seed in sorted(s.unique())))}
    return pd.concat({dataset: on_shared_seeds(runs, "bands").groupby("bands").agg(**summary)
                      for dataset, runs in band_runs.groupby("dataset")}, names=["dataset"])


def best_band_counts(means: pd.DataFrame) -> pd.Series:
    """Per dataset, the band count with the highest mean valid Recall@20 in `band_count_means`."""
    return means["valid_recall@20"].groupby(level="dataset").idxmax().map(lambda i: i[1])


def band_count_rivals(means: pd.DataFrame) -> pd.DataFrame:
    """Per dataset of `band_count_means`, the count in BEST_BAND_COUNTS and the count outside them with the highest
    mean valid Recall@20 (columns dataset, inside, outside): the pair whose paired test on test users decides the
    claim there. A dataset whose counts all lie on one side gets no row (nothing there contests the claim)."""
    rows = []
    for dataset, by_count in means["valid_recall@20"].groupby(level="dataset"):
        by_count = by_count.droplevel("dataset")
        inside = by_count[by_count.index.isin(BEST_BAND_COUNTS)]
        outside = by_count[~by_count.index.isin(BEST_BAND_COUNTS)]
        if len(inside) and len(outside):
            rows.append({"dataset": dataset, "inside": int(inside.idxmax()), "outside": int(outside.idxmax())})
    return pd.DataFrame(rows, columns=["dataset", "inside", "outside"])


def band_count_verdict(best: pd.Series, tests: pd.DataFrame, runs: pd.DataFrame | None = None,
                       unfinished: Sequence[str] = ()) -> str:
    """SSR's 'three to four bands work best'. Per dataset, a win: the count best on valid (`best`) is three or
    four, and the best of those beats the best count outside them on test users (`tests`: the
    `significance.band_count_tests` rows, mean_diff = inside − outside) at Wilcoxon p < SIGNIFICANCE_ALPHA.
    A win on every contested dataset -> reproduced; on some -> partly; on none -> not reproduced (a count that
    is best on valid by a gap the test cannot tell from noise is no evidence); no contested dataset -> pending.
    `unfinished`: datasets with planned band-count runs missing (`unfinished_datasets`): reproduced is then only
    partly, as in `comparison_verdict`."""
    if best.empty or tests.empty:
        return "pending"
    wins = [best[d] in BEST_BAND_COUNTS and won for d, won in zip(tests.dataset, significant_wins(tests))]
    verdict = "reproduced" if all(wins) and not unfinished else "partly" if any(wins) else "not reproduced"
    return with_budget(verdict, runs)


def band_count_evidence(means: pd.DataFrame, best: pd.Series, tests: pd.DataFrame) -> str:
    """The evidence of `band_count_verdict`, per dataset: the counts run, the best on valid and its seeds, and the
    paired test of the best count in BEST_BAND_COUNTS against the best outside them."""
    found, span = [], "-".join(map(str, BEST_BAND_COUNTS))
    for dataset, count in best.items():
        counts = sorted(int(c) for c in means.loc[dataset].index)
        text = f"{dataset}: best on valid at {count} bands of {counts}, seeds {means.loc[(dataset, count), 'seeds']}"
        rows = tests[tests.dataset == dataset] if not tests.empty else tests
        for r in rows.itertuples():
            text += (f"; {r.inside} vs {r.outside} bands (the best on valid in and outside {span}): "
                     f"test Recall@20 {r.mean_a:.4f} vs {r.mean_b:.4f}, Wilcoxon p = {r.wilcoxon_p:.2e}")
        if rows.empty:
            side = "outside" if set(counts) <= set(BEST_BAND_COUNTS) else "in"
            text += f"; no count {side} {span} run: nothing contests the claim"
        found.append(text)
    return "; ".join(found)


def claims_table(results_dir: str | Path, profile: str) -> pd.DataFrame:
    """One row per claim: paper, claim, verdict, evidence, chapter, saved (when its chapter saved the verdict)."""
    folder = Path(results_dir) / "claims" / profile
    rows = []
    for c in CLAIMS:
        path = folder / f"{c.id}.json"
        saved = None
        if c.not_testable:
            verdict, evidence = "not testable here", c.not_testable
        elif path.exists():
            stored = json.loads(path.read_text())
            verdict, evidence, saved = stored["verdict"], stored["evidence"], stored.get("saved")
        else:
            verdict, evidence = "pending", "no verdict saved yet by its chapter"
        rows.append({"paper": c.paper, "claim": c.text, "verdict": verdict, "evidence": evidence, "chapter": c.chapter,
                     "saved": saved})
    return pd.DataFrame(rows, index=[c.id for c in CLAIMS])


def discrepancies_table(results_dir: str | Path, profile: str) -> pd.DataFrame:
    """One row per paper-vs-code discrepancy: model, paper, code, switch, finding (fixed, saved, or pending)."""
    folder = Path(results_dir) / "claims" / profile
    rows = []
    for d in DISCREPANCIES:
        path = folder / f"discrepancy-{d.id}.json"
        finding = d.finding or (json.loads(path.read_text())["finding"] if path.exists() else "pending")
        rows.append({"model": d.model, "paper": d.paper, "code": d.code, "switch": d.switch, "finding": finding,
                     "chapter": d.chapter})
    return pd.DataFrame(rows, index=[d.id for d in DISCREPANCIES])


def early_peak(record: dict, metric: str = "recall@20") -> dict:
    """One trained run's evidence for fitmm-early-peak: best epoch, relative decline of the valid `metric` from
    the best to the last epoch, training loss (sum of terms) at both, and whether all three criteria hold."""
    history = record["history"]
    best = next(h for h in history if h["epoch"] == record["best_epoch"])
    last = history[-1]
    decline = 1 - last["valid"][metric] / best["valid"][metric]
    loss_best, loss_last = sum(best["losses"].values()), sum(last["losses"].values())
    return {"dataset": record.get("dataset", {}).get("name", ""), "seed": record["seed"],
            "best_epoch": record["best_epoch"], "epochs": record["epochs"], "stopped_early": record.get("stopped_early"),
            "decline": decline, "loss_at_best": loss_best, "loss_at_last": loss_last,
            "early_peak": record["best_epoch"] <= EARLY_PEAK_MAX_EPOCH and decline >= EARLY_PEAK_DECLINE
            and loss_last < loss_best}


def early_peak_verdict(evidence: pd.DataFrame) -> str:
    """From `early_peak` rows of the released runs (on every dataset that ran them): every run peaks early and
    declines -> reproduced; some -> partly; none -> not reproduced; no run -> pending (runs cut by their budget:
    `with_budget`)."""
    if evidence.empty:
        return "pending"
    hits = evidence["early_peak"]
    verdict = "reproduced" if hits.all() else "partly" if hits.any() else "not reproduced"
    return with_budget(verdict, evidence)


def named_variant(table: pd.DataFrame, runs: pd.DataFrame, references: tuple[str, ...],
                  metric: str = "recall@20") -> tuple[str | None, str]:
    """(the FITMM variant to name as this study's modification, or None; why). `table`: `diagnosis.ablation_table`
    rows (variant, seeds, `test <metric> mean`); `runs`: the runs' rows (`runs.record_row`: variant, epochs,
    best_epoch, stopped_early). The best variant other than the released one and the `references` is named when
    it has at least `NAMED_VARIANT_MIN_SEEDS` seeds, none of its runs was cut by its budget while improving, and its
    mean test metric is above every reference's."""
    col = f"test {metric} mean"
    t = table.set_index("variant")
    candidates = t.drop(index=["released", *references], errors="ignore")
    if candidates.empty:
        return None, "no variant besides the released one"
    best = candidates[col].idxmax()
    missing = [r for r in references if r not in t.index]
    if missing:
        return None, f"'{best}' cannot be compared: no run of {', '.join(missing)}"
    behind = [f"{r} ({t.loc[r, col]:.4f})" for r in references if t.loc[best, col] <= t.loc[r, col]]
    if behind:
        return None, f"'{best}' ({t.loc[best, col]:.4f}) does not beat {' and '.join(behind)}"
    if t.loc[best, "seeds"] < NAMED_VARIANT_MIN_SEEDS:
        return None, f"'{best}' beats the references on {t.loc[best, 'seeds']} seed(s); {NAMED_VARIANT_MIN_SEEDS} needed"
    if budget_limited(runs[runs.variant == best]).any():
        return None, f"'{best}' beats the references, but a run of it was cut by its budget while improving"
    return best, (f"'{best}' ({t.loc[best, col]:.4f}) beats " +
                  " and ".join(f"{r} ({t.loc[r, col]:.4f})" for r in references))
