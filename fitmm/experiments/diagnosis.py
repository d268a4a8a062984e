"""Why FITMM stops learning (book chapter 09): the ablation variants, their learning curves, gradient norms,
band weights and gate scale per epoch, and the valid metric split by user and item group over the epochs.

Every variant is FITMM (arXiv 2601.22498) with the released settings and one change, all of them config
switches of `fitmm/configs/fitmm.yaml`; `plan.diagnosis_variant_runs` plans them traced (`fitmm.trace`) so the
decline can be located.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fitmm.config import load_config
from fitmm.data.dataset import Interactions
from fitmm.experiments.groups import ITEM_GROUPS, USER_GROUPS, item_popularity_groups, user_degree_groups
from fitmm.experiments.runs import Runs
from fitmm.io import write_json
from fitmm.settings import checkpoints_dir
from fitmm.store import read_record
from fitmm.trainer import NegativeSampler, build_model

DRAGON_REG_WEIGHT = 1e-3  # DRAGON's reg_weight on Baby and Sports (hongyurain/DRAGON README)
BACKBONE_EPOCHS = 50      # the backbone keeps improving for tens of epochs: its run is capped here

# name -> overrides of the released configuration (in the order of the chapter's table)
VARIANTS: dict[str, dict] = {
    "released": {},
    "backbone": {"spectral": False, "epochs": BACKBONE_EPOCHS},
    "backbone uncapped": {"spectral": False},  # FITMM's own 300 epochs: Baby's backbone still improves at 50
    "train_features false": {"train_features": False},
    "detach_bands": {"detach_bands": True},
    "detach gate input": {"detach_gate_input": True},
    "lambda_emb DRAGON": {"lambda_emb": DRAGON_REG_WEIGHT},
    "lambda_ib 0": {"lambda_ib": 0.0},
    "gate false": {"gate": False},
    "band_borders energy": {"band_borders": "energy"},  # bands of equal eigenvalue mass (the book's methods page)
    "lambda_c 0": {"lambda_c": 0.0},
    "three terms off": {"lambda_ib": 0.0, "gate": False, "lambda_c": 0.0},
    "lr 5e-4": {"lr": 5e-4},
    "lr 1e-3": {"lr": 1e-3},
    "weight_decay 1e-4": {"weight_decay": 1e-4},
    "weight_decay 1e-3": {"weight_decay": 1e-3},
}


# The references a variant must beat to be named (`claims.named_variant`): FITMM's own backbone (a variant above)
# and LightGCN, trained on the released variant's seeds with the same budget.
REFERENCE_MODEL, REFERENCE_LABEL = "lightgcn", "LightGCN"
REFERENCES = ("backbone", REFERENCE_LABEL)
BACKBONES = ("backbone uncapped", "backbone")  # a second dataset's backbone reference: the uncapped one where it ran
TERM_GRADIENTS = "term_gradients.json"  # `term_gradients_by_stage` of a run, beside its record


def by_variant(ran: Runs) -> dict[str, list[tuple[dict, Path]]]:
    """The planned diagnosis runs (`plan.diagnosis_variant_runs`, read or trained by `runs.run_specs`) as
    variant -> [(record, run folder)], in the planned order."""
    out: dict[str, list[tuple[dict, Path]]] = {}
    for record, row in zip(ran.records, ran.frame.itertuples()):
        out.setdefault(row.variant, []).append((record, Path(row.path)))
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
    """The FITMM variant other than the released one and the `REFERENCES` with the highest mean test `metric` (the
    released one if alone)."""
    others = table[~table.variant.isin(["released", *REFERENCES])]
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
    return "; ".join(f"{f'{r.dataset} ' if r.dataset else ''}seed {r.seed}: best epoch {r.best_epoch} of {r.epochs}, "
                     f"valid Recall@20 {r.decline:.1%} "
                     f"below the best at the last epoch, training loss {r.loss_at_best:.4f} -> {r.loss_at_last:.4f}"
                     for r in evidence.itertuples())


def repeat_summary(runs: dict[str, list[tuple[dict, Path]]], dataset: str, metric: str = "recall@20") -> str:
    """The decisive comparison on a second dataset in one sentence: each variant's test `metric` and best epoch
    (and whether its epoch cap cut it while improving, `claims.budget_limited`), whether the released setting
    peaks early there (`claims.early_peak`) and the IB term's share of its loss at its best epoch (first seed),
    and where each other FITMM variant stands against the backbone (the uncapped one where it ran, `BACKBONES`)."""
    from fitmm.experiments import claims  # claims reads diagnosis records; imported here to keep the modules apart

    t = ablation_table(runs, metric).set_index("variant")
    col = f"test {metric} mean"
    cut = {v: claims.budget_limited(pd.DataFrame([{k: r.get(k) for k in ("best_epoch", "epochs", "stopped_early")}
                                                  for r, _ in pairs])).any() for v, pairs in runs.items()}
    parts = [f"{v}: test Recall@20 {t.loc[v, f'test {metric}']} (best epoch {t.loc[v, 'best epoch']} of "
             f"{t.loc[v, 'epochs run']}{', cut at its epoch cap while improving' if cut[v] else ''})" for v in t.index]
    if "released" in runs:
        evidence = [claims.early_peak(r, metric) for r, _ in runs["released"]]
        peaks = all(e["early_peak"] for e in evidence)
        shape = "peaks early and declines" if peaks else "does not peak early and decline"
        parts.append(f"on {dataset} the released setting {shape} ({early_peak_evidence(pd.DataFrame(evidence))})")
        record = runs["released"][0][0]
        losses = next(h["losses"] for h in record["history"] if h["epoch"] == record["best_epoch"])
        if "ib" in losses:
            parts.append(f"at its best epoch the IB term is {losses['ib'] / sum(losses.values()):.0%} of its loss")
    backbone = next((b for b in BACKBONES if b in t.index), None)
    if backbone is not None:
        for v in (v for v in t.index if v not in (*REFERENCES, *BACKBONES)):
            gap = t.loc[v, col] - t.loc[backbone, col]
            parts.append(f"{v} is {abs(gap):.4f} {'above' if gap > 0 else 'below'} the {backbone}")
    return "; ".join(parts)


def _at(frame: pd.DataFrame, variant: str, epoch: int, column: str) -> float:
    rows = frame[(frame.variant == variant) & (frame.epoch == epoch)]
    return float(rows[column].mean()) if column in rows and len(rows) else float("nan")


def explanation(table: pd.DataFrame, frame: pd.DataFrame, groups: pd.DataFrame | None, terms: pd.DataFrame | None = None,
                metric: str = "recall@20") -> str:
    """The chapter's closing paragraph, in plain words, every statement computed from the runs (`terms`:
    `term_gradients_by_stage` of the released run, or None)."""
    t = table.set_index("variant")
    col = f"test {metric} mean"
    r = frame[(frame.variant == "released")]
    r = r[r.seed == r.seed.iloc[0]]
    best_epoch = int(str(t.loc["released", "best epoch"]).split(",")[0])
    last = int(r.epoch.max())
    at = lambda column, epoch: _at(r, "released", epoch, column)  # noqa: E731
    valid_best, valid_last = at(f"valid {metric}", best_epoch), at(f"valid {metric}", last)
    lines = [f"- **When.** Released FITMM peaks at epoch {best_epoch}; by epoch {last} its valid {metric} is "
             f"{valid_last / valid_best - 1:+.1%} from the peak while its training loss falls "
             f"{at('loss', best_epoch):.4f} → {at('loss', last):.4f}."]
    if "loss ib" in r:
        lines.append(f"- **What the loss is made of.** At the best epoch the IB term is "
                     f"{at('loss ib', best_epoch) / at('loss', best_epoch):.0%} of the loss; it falls "
                     f"{at('loss ib', best_epoch):.3f} → {at('loss ib', last):.3f} while the ranking loss (BCE) falls only "
                     f"{at('loss bce', best_epoch):.3f} → {at('loss bce', last):.3f}.")
    if terms is not None and "ib" in terms.index.get_level_values("term"):
        for stage in terms.index.get_level_values("stage").unique():
            s = terms.loc[stage]
            a, b, c = s.loc["bce", "encoders"], s.loc["ib", "encoders"], s.loc["all terms", "encoders"]
            cos = (c * c - a * a - b * b) / (2 * a * b) if a * b else float("nan")
            lines.append(f"- **Tug of war ({stage}).** On the modality MLPs the BCE gradient has norm {a:.3g}, the "
                         f"IB gradient {b:.3g}, their sum {c:.3g} (cosine ≈ {cos:+.2f}).")
    if "omega user" in r:
        lines.append(f"- **The spectral module barely moves.** ω goes {at('omega user', 0):.3f} → "
                     f"{at('omega user', last):.3f} and the gate scale s {at('gate scale user', 0):.3f} → "
                     f"{at('gate scale user', last):.3f} (user side) over {last + 1} epochs: at lr 1e-4 Adam moves a "
                     "parameter by about 1e-4 per step.")
    if groups is not None and not groups.empty:
        d = decline(groups).dropna(subset=["change"])
        big = d.sort_values("n", ascending=False).groupby("kind").head(1)
        lines.append("- **Where.** " + "; ".join(
            f"the largest {k} group ('{g}', n = {n}) goes {c:+.1%} from its peak at epoch {e}"
            for k, g, n, c, e in zip(big.kind, big.group, big.n, big.change, big["peak epoch"]))
                     + (f"; the item embeddings drift by {d['drift at last epoch'].mean():.0%} of their norm from epoch 3."
                        if d["drift at last epoch"].notna().any() else "."))
    for variant, what in (("detach gate input", "Keeping L_IB but cutting its path into the encoders (the gate reads "
                                                "sg(h))"),
                          ("lambda_ib 0", "Dropping L_IB and keeping the gate")):
        if variant in t.index:
            lines.append(f"- **{variant}.** {what} moves the best epoch from {t.loc['released', 'best epoch']} to "
                         f"{t.loc[variant, 'best epoch']} and test {metric} from {t.loc['released', col]:.4f} to "
                         f"{t.loc[variant, col]:.4f} ({t.loc[variant, col] / t.loc['released', col] - 1:+.0%}).")
    best = best_variant(table, metric)
    if best != "released":
        versus = f" and {t.loc['backbone', col]:.4f} for the backbone alone" if "backbone" in t.index else ""
        lead = ("The best variant" if t.loc[best, col] > t.loc["released", col]
                else "No variant beats the released setting; the closest")
        lines.append(f"- **{lead}** is '{best}': best epoch {t.loc[best, 'best epoch']}, test {metric} "
                     f"{t.loc[best, col]:.4f} against {t.loc['released', col]:.4f} released "
                     f"({t.loc[best, col] / t.loc['released', col] - 1:+.0%}){versus}.")
    ranked = t[col].sort_values(ascending=False)
    lines.append(f"- **Variants (test {metric}).** " + ", ".join(
        f"{v} {x:.4f} (best epoch {t.loc[v, 'best epoch']})" for v, x in ranked.items()) + ".")
    return "\n".join(lines)


def drift_table(runs: dict[str, list[tuple[dict, Path]]]) -> pd.DataFrame:
    """Per variant (first seed with a trace): mean relative item drift from the reference epoch
    (`fitmm.trace.DRIFT_REFERENCE_EPOCH`) at the last epoch that every traced variant reached, and the valid
    metric there beside the variant's best."""
    traces = {}
    for name, pairs in runs.items():
        for record, path in pairs:
            if path is not None and (Path(path) / "trace.npz").exists():
                with np.load(Path(path) / "trace.npz") as t:
                    traces[name] = (record, t["epochs"], t["drift"].astype(float))
                break
    if not traces:
        return pd.DataFrame()
    common = min(int(epochs[-1]) for _, epochs, _ in traces.values())
    rows = []
    for name, (record, epochs, drift) in traces.items():
        at = int(np.flatnonzero(epochs == common)[0])
        valid = next(h["valid"]["recall@20"] for h in record["history"] if h["epoch"] == common)
        rows.append({"variant": name, "epoch": common, "mean item drift": float(np.nanmean(drift[at])),
                     "valid recall@20": valid, "best valid recall@20": record["best_valid"]["recall@20"]})
    return pd.DataFrame(rows)


def term_gradients(model, data: Interactions, n_batches: int = 4, seed: int = 0) -> pd.DataFrame:
    """Which loss term drives which parameters: on the first `n_batches` training batches of epoch 0 of `seed`'s
    sampling, the gradient norm of each loss term alone and of their sum ('all terms') with respect to each
    parameter group (RMS over batches; rows: term, columns: group). A sum far below its parts: the terms cancel."""
    config = model.config
    sampler = NegativeSampler(data, config.batch_size, config.negative_items)
    groups = {g: [p for p in params if p.requires_grad] for g, params in model.parameter_groups().items()}
    params = [p for ps in groups.values() for p in ps]
    owner = [g for g, ps in groups.items() for _ in ps]
    model.train()
    sq: dict[str, dict[str, float]] = {}
    for batch, _ in zip(sampler.epoch(np.random.default_rng([seed, 0])), range(n_batches)):
        terms = model.loss_terms(batch)
        terms["all terms"] = sum(terms.values())
        for name, value in terms.items():
            row = sq.setdefault(name, dict.fromkeys(groups, 0.0))
            for group, g in zip(owner, torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)):
                if g is not None:
                    row[group] += float(g.square().sum()) / n_batches
    return pd.DataFrame(sq).T.pow(0.5)


def term_gradients_by_stage(data: Interactions, path: str | Path, n_batches: int = 2) -> pd.DataFrame | None:
    """`term_gradients` of a finished run at initialisation, at its best epoch and at its last epoch (its
    checkpoints), stacked with a `stage` column. Computed once, then read from the run folder (`TERM_GRADIENTS`,
    committed with the record: checkpoints are not); None when neither is on this machine."""
    path = Path(path)
    if (path / TERM_GRADIENTS).exists():
        return pd.DataFrame(json.loads((path / TERM_GRADIENTS).read_text())).set_index(["stage", "term"])
    ckpt = checkpoints_dir(path)
    if not (ckpt / "last.pt").exists():
        return None
    record = read_record(path / "record.json")
    config = load_config("fitmm", {**record["config"], "device": "cpu"})
    model = build_model(data, config, torch.device("cpu"))
    frames = {"init (epoch 0 start)": term_gradients(model, data, n_batches)}
    model.load_state_dict(torch.load(ckpt / "best.pt", map_location="cpu", weights_only=False))
    frames[f"best (epoch {record['best_epoch']})"] = term_gradients(model, data, n_batches)
    last = torch.load(ckpt / "last.pt", map_location="cpu", weights_only=False)["model"]
    model.load_state_dict(last)
    frames[f"last (epoch {record['epochs'] - 1})"] = term_gradients(model, data, n_batches)
    table = pd.concat(frames, names=["stage", "term"])
    write_json(path / TERM_GRADIENTS, table.reset_index().to_dict("records"))
    return table
