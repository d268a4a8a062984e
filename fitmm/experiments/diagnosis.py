"""Why FITMM stops learning (book chapter 09): the ablation variants, their learning curves, gradient norms,
band weights and gate scale per epoch, and the valid metric split by user and item group over the epochs.

Every variant is FITMM (arXiv 2601.22498) with the released settings and one change, all of them config
switches of `fitmm/configs/fitmm.yaml`; runs are traced (`fitmm.trace`) so the decline can be located.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fitmm.config import load_config
from fitmm.data.dataset import Interactions
from fitmm.experiments.groups import ITEM_GROUPS, USER_GROUPS, item_popularity_groups, user_degree_groups
from fitmm.store import run_dir
from fitmm.trainer import train

DRAGON_REG_WEIGHT = 1e-3  # DRAGON's reg_weight on Baby and Sports (hongyurain/DRAGON README)
BACKBONE_EPOCHS = 50      # the backbone keeps improving for tens of epochs: its run is capped here

# name -> overrides of the released configuration (in the order of the chapter's table)
VARIANTS: dict[str, dict] = {
    "released": {},
    "backbone": {"spectral": False, "epochs": BACKBONE_EPOCHS},
    "train_features false": {"train_features": False},
    "detach_bands": {"detach_bands": True},
    "lambda_emb DRAGON": {"lambda_emb": DRAGON_REG_WEIGHT},
    "lambda_ib 0": {"lambda_ib": 0.0},
    "gate false": {"gate": False},
    "lambda_c 0": {"lambda_c": 0.0},
    "three terms off": {"lambda_ib": 0.0, "gate": False, "lambda_c": 0.0},
    "lr 5e-4": {"lr": 5e-4},
    "lr 1e-3": {"lr": 1e-3},
    "weight_decay 1e-4": {"weight_decay": 1e-4},
    "weight_decay 1e-3": {"weight_decay": 1e-3},
}


def run_variant(name: str, data: Interactions, seed: int, results_dir: str | Path | None,
                overrides: dict | None = None, progress: bool = False) -> dict:
    """Train (or read back) variant `name` with `seed`, traced; `overrides` (a profile's epochs, ...) apply on top."""
    config = load_config("fitmm", {**VARIANTS[name], **(overrides or {}), "seed": seed})
    return train(data, config, results_dir, progress=progress, trace=True)


def run_variants(data: Interactions, seeds: dict[str, list[int]], results_dir: str | Path,
                 overrides: dict | None = None) -> dict[str, list[tuple[dict, Path]]]:
    """variant -> [(record, run folder)] over the variant's `seeds`, each trained only if its record is missing."""
    out = {}
    for name, variant_seeds in seeds.items():
        out[name] = []
        for seed in variant_seeds:
            record = run_variant(name, data, seed, results_dir, overrides)
            config = load_config("fitmm", {**VARIANTS[name], **(overrides or {}), "seed": seed})
            out[name].append((record, run_dir(data, config, results_dir)))
    return out


def curves(runs: dict[str, list[tuple[dict, Path]]], metric: str = "recall@20") -> pd.DataFrame:
    """Long frame, one row per (variant, seed, epoch): valid `metric`, each loss term and their sum,
    each parameter group's gradient norm (`grad <group>`), mean ω and gate scale per side."""
    rows = []
    for name, pairs in runs.items():
        for record, _ in pairs:
            for h in record["history"]:
                row = {"variant": name, "seed": record["seed"], "epoch": h["epoch"], f"valid {metric}": h["valid"][metric],
                       "loss": sum(h["losses"].values()), **{f"loss {k}": v for k, v in h["losses"].items()},
                       **{f"grad {k}": v for k, v in h.get("grad_norms", {}).items()}}
                d = h.get("diagnostics", {})
                for side, w in d.get("band_weights", {}).items():
                    row[f"omega {side}"] = float(np.mean(w))
                for side, s in d.get("gate_scale", {}).items():
                    row[f"gate scale {side}"] = s
                rows.append(row)
    return pd.DataFrame(rows)


def ablation_table(runs: dict[str, list[tuple[dict, Path]]], metric: str = "recall@20") -> pd.DataFrame:
    """variant | seeds | best epoch (per seed) | test metric mean ± sd | ω (mean over bands) and gate scale at the
    best epoch (user / item, seed means; '–' without them)."""
    rows = []
    for name, pairs in runs.items():
        records = [r for r, _ in pairs]
        test = np.array([r["test"][metric] for r in records])
        at_best = [r["history"][[h["epoch"] for h in r["history"]].index(r["best_epoch"])] for r in records]

        def side_means(key: str) -> str:
            values = [h.get("diagnostics", {}).get(key) for h in at_best]
            if not values or any(v is None for v in values):
                return "–"
            per_side = {s: np.mean([np.mean(v[s]) for v in values]) for s in values[0]}
            return " / ".join(f"{per_side[s]:.3f}" for s in ("user", "item"))

        rows.append({"variant": name, "seeds": len(records),
                     "best epoch": ", ".join(str(r["best_epoch"]) for r in records),
                     "epochs run": ", ".join(str(r["epochs"]) for r in records),
                     f"test {metric} mean": test.mean(), f"test {metric} sd": test.std(ddof=1) if len(test) > 1 else np.nan,
                     f"test {metric}": f"{test.mean():.4f} ± {test.std(ddof=1):.4f}" if len(test) > 1 else f"{test.mean():.4f}",
                     "ω at best (user / item)": side_means("band_weights"),
                     "gate scale at best (user / item)": side_means("gate_scale")})
    return pd.DataFrame(rows)


def item_groups(data: Interactions) -> np.ndarray:
    """Per item: 'untrained' (no train interaction: only the graph and features reach it), else its train
    popularity group among the trained items (tail / mid / head, `fitmm.experiments.groups`)."""
    popularity = np.bincount(data.train[:, 1], minlength=data.n_items)
    labels = np.full(data.n_items, "untrained", dtype=object)
    trained = popularity > 0
    labels[trained] = item_popularity_groups(popularity[trained])
    return labels


def group_curves(trace_path: str | Path, data: Interactions) -> pd.DataFrame:
    """From a run's trace.npz: per epoch, valid Recall@K of each user group (train degree: cold / warm / hot) and
    of each item group (`item_groups`: hits on the group's items over its valid pairs), and the mean relative
    drift of the group's item embeddings from the reference epoch (`fitmm.trace`). Long frame: epoch, kind,
    group, recall, drift (items only), n (users, or valid pairs)."""
    with np.load(trace_path) as t:
        epochs, users, recall, hits, drift = t["epochs"], t["users"], t["recall"].astype(float), t["item_hits"], t["drift"]
    degree = np.bincount(data.train[:, 0], minlength=data.n_users)[users]
    user_labels = user_degree_groups(degree)
    labels = item_groups(data)
    valid_items = np.bincount(data.pairs("valid")[:, 1], minlength=data.n_items)
    rows = []
    for e, epoch in enumerate(epochs):
        for g in USER_GROUPS:
            mask = user_labels == g
            if mask.any():
                rows.append({"epoch": int(epoch), "kind": "user", "group": g, "recall": recall[e, mask].mean(),
                             "drift": np.nan, "n": int(mask.sum())})
        for g in ("untrained", *ITEM_GROUPS):
            mask = labels == g
            if valid_items[mask].sum():
                d = drift[e, mask].astype(float)
                rows.append({"epoch": int(epoch), "kind": "item", "group": g,
                             "recall": hits[e, mask].sum() / valid_items[mask].sum(),
                             "drift": np.nanmean(d) if np.isfinite(d).any() else np.nan, "n": int(valid_items[mask].sum())})
    return pd.DataFrame(rows)


def decline(frame: pd.DataFrame, value: str = "recall") -> pd.DataFrame:
    """Per (kind, group) of `group_curves`: the value at the best epoch of the whole (`best_epoch` column absent:
    the group's own peak), at the last epoch, and the relative change."""
    rows = []
    for (kind, group), g in frame.groupby(["kind", "group"], sort=False):
        g = g.sort_values("epoch")
        peak = g.loc[g[value].idxmax()]
        last = g.iloc[-1]
        rows.append({"kind": kind, "group": group, "n": int(last["n"]), "peak epoch": int(peak["epoch"]),
                     f"peak {value}": peak[value], f"last {value}": last[value], "last epoch": int(last["epoch"]),
                     "change": (last[value] - peak[value]) / peak[value] if peak[value] else np.nan,
                     "drift at last epoch": last["drift"]})
    return pd.DataFrame(rows)


def best_variant(table: pd.DataFrame, metric: str = "recall@20") -> str:
    """The variant other than the released one with the highest mean test `metric` (the released one if alone)."""
    others = table[table.variant != "released"]
    return (others if len(others) else table).sort_values(f"test {metric} mean").variant.iloc[-1]


def long_gradients(frame: pd.DataFrame) -> pd.DataFrame:
    """`curves` rows -> one row per (variant, epoch, parameter group) with its gradient norm."""
    grads = [c for c in frame if c.startswith("grad ")]
    out = frame.melt(id_vars=["variant", "seed", "epoch"], value_vars=grads, var_name="group", value_name="gradient norm")
    return out.assign(group=out.group.str.removeprefix("grad ")).dropna()


def early_peak_evidence(evidence: pd.DataFrame) -> str:
    """One line per released run of `claims.early_peak` rows."""
    if evidence.empty:
        return "no released run"
    return "; ".join(f"seed {r.seed}: best epoch {r.best_epoch} of {r.epochs}, valid Recall@20 {r.decline:.1%} "
                     f"below the best at the last epoch, training loss {r.loss_at_best:.4f} -> {r.loss_at_last:.4f}"
                     for r in evidence.itertuples())


def _at(frame: pd.DataFrame, variant: str, epoch: int, column: str) -> float:
    rows = frame[(frame.variant == variant) & (frame.epoch == epoch)]
    return float(rows[column].mean()) if column in rows and len(rows) else float("nan")


def explanation(table: pd.DataFrame, frame: pd.DataFrame, groups: pd.DataFrame, metric: str = "recall@20") -> str:
    """The chapter's closing paragraph, in plain words, every statement computed from the runs."""
    t = table.set_index("variant")
    col = f"test {metric} mean"
    released = t.loc["released"]
    best_epoch = int(str(released["best epoch"]).split(",")[0])
    r = frame[(frame.variant == "released") & (frame.seed == frame[frame.variant == "released"].seed.iloc[0])]
    last = r.epoch.max()
    valid_best, valid_last = _at(r, "released", best_epoch, f"valid {metric}"), _at(r, "released", last, f"valid {metric}")
    loss_best, loss_last = _at(r, "released", best_epoch, "loss"), _at(r, "released", last, "loss")
    lines = [f"- **Released FITMM** peaks at epoch {best_epoch}; by epoch {last} its valid {metric} is "
             f"{valid_last / valid_best - 1:+.1%} from the peak while its training loss goes {loss_best:.4f} → {loss_last:.4f}."]
    terms = [c for c in r if c.startswith("loss ") and c != "loss"]
    if terms:
        shares = {c.removeprefix("loss "): _at(r, "released", best_epoch, c) / loss_best for c in terms}
        lines.append("- At the best epoch the loss is made of " + ", ".join(f"{k} {v:.0%}" for k, v in shares.items()) + ".")
    grads = {c.removeprefix("grad "): _at(r, "released", best_epoch, c) for c in r if c.startswith("grad ")}
    if grads:
        top = max(grads, key=grads.get)
        lines.append(f"- The largest gradient at the best epoch is the {top} group's ({grads[top]:.3g}); the band "
                     f"weights get {grads.get('band_weights', float('nan')):.3g}, the preferences "
                     f"{grads.get('preference', float('nan')):.3g}.")
    lines.append(f"- ω and s at the best epoch (user / item): {released['ω at best (user / item)']} and "
                 f"{released['gate scale at best (user / item)']} (initial 0.731 and 0.500).")
    ranked = t[col].sort_values(ascending=False)
    lines.append("- Test " + metric + " by variant: " + ", ".join(f"{v} {x:.4f} (best epoch {t.loc[v, 'best epoch']})"
                                                               for v, x in ranked.items()) + ".")
    if not groups.empty:
        d = decline(groups)
        worst = d.sort_values("change").iloc[0]
        lines.append(f"- The steepest decline from its own peak is in the {worst['kind']} group '{worst['group']}' "
                     f"({worst['change']:+.1%}, peak at epoch {worst['peak epoch']}).")
    return "\n".join(lines)
