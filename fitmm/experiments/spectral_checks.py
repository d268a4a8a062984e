"""Checks of trained and graph bands for the spectral-theory chapter (FITMM's Gaussian-IB claim,
arXiv 2601.22498; SSR's equal-energy bands, arXiv 2512.01372; book/methods.md, "FITMM" and "SSR").

- FITMM: orthogonality, energy per band and cross-modal (off-block) covariance share of
  the bands of each backbone view; learned band weights against the gains the planted
  SNR of the synthetic benchmark calls for.
- SSR: how each band path (released Chebyshev, exact and scalable equal-energy) splits
  the energy of a signal on the user-item graph, and where in the spectrum.
- Both: band reliance, the change of a test metric per user group when one band is
  zeroed at test time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from fitmm.cache import fingerprint
from fitmm.data.dataset import Interactions
from fitmm.errors import TrainingError
from fitmm.experiments.groups import json_rows, user_group_selections
from fitmm.experiments.tables import mean_std
from fitmm.graphs import normalized_adjacency
from fitmm.io import write_json
from fitmm.metrics import evaluate
from fitmm.models.backbone import Backbone
from fitmm.models.base import BandedRecommender
from fitmm.spectral.feature_bands import feature_bands, group_sizes
from fitmm.spectral.graph_bands import (AUTO_EXACT_MAX_NODES, check_dense_eigh, chebyshev_responses, laplacian_eigh,
                                        make_graph_bands)
from fitmm.theory import (band_energy_fractions, band_orthogonality, chebyshev_band_energy_by_third,
                          off_block_energy_share, wiener_gain)


def synthetic_meta(data: Interactions) -> dict | None:
    """The generator's metadata (planted SNR per direction) of a synthetic dataset, else None."""
    if data.path is None:
        return None
    path = data.path / f"{data.path.name}.meta.json"
    return json.loads(path.read_text()) if path.exists() else None


def planted_band_gains(meta: dict, n_bands: int) -> np.ndarray:
    """(M,) optimal gain profile of the planted structure, strongest band first.

    Per modality, the Wiener gains SNR/(1 + SNR) of its directions, sorted descending, are
    averaged within M contiguous groups (FITMM's grouping of directions into bands), then
    averaged over modalities. The model's bands live in learned 64-d blocks, not the raw
    feature coordinates, so only the ordering of this profile is comparable.
    """
    profiles = []
    for modality in meta["modalities"].values():
        gains = np.sort(wiener_gain(np.asarray(modality["snr"])))[::-1]
        bounds = np.cumsum([0, *group_sizes(len(gains), n_bands)])
        profiles.append([gains[a:b].mean() for a, b in zip(bounds[:-1], bounds[1:])])
    return np.mean(profiles, axis=0)


@torch.no_grad()
def backbone_views(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trained backbone's views (r_u, r_i, h_u, h_i where present) of a FITMM or SSR model, on the CPU, where
    the checks built on them run (numpy, and the graph bands of the CPU-built adjacency) whatever the model's device."""
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, Backbone):
        raise TypeError(f"{type(model).__name__} has no DRAGON-style backbone")
    return {k: v.cpu() for k, v in backbone()._asdict().items() if v is not None}


@torch.no_grad()
def feature_band_checks(views: dict[str, torch.Tensor], n_bands: int, borders: str = "equal",
                        block_dim: int = 64) -> pd.DataFrame:
    """Per view: max |cos| between bands, energy share of each band, cross-modal covariance share of each band."""
    rows = {}
    for name, z in views.items():
        bands = feature_bands(z, block_dim, n_bands, borders).double().numpy()
        row = {"orthogonality": band_orthogonality(bands)}
        energy = band_energy_fractions(bands)
        off = off_block_energy_share(bands, [block_dim] * (z.shape[1] // block_dim))
        row.update({f"energy {k + 1}": e for k, e in enumerate(energy)})
        row.update({f"cross-modal {k + 1}": o for k, o in enumerate(off)})
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def graph_signal(views: dict[str, torch.Tensor]) -> torch.Tensor:
    """SSR's node signal X = [[R_u; R_i] | [H_u; H_i]] (arXiv 2512.01372; book/methods.md, "SSR") from backbone views."""
    x = torch.cat([views["r_u"], views["r_i"]])
    if "h_u" in views:
        x = torch.cat([x, torch.cat([views["h_u"], views["h_i"]])], dim=1)
    return x


def dense_spectrum_refusal(data: Interactions) -> str | None:
    """Why the user-item graph of `data` is too large for a dense eigendecomposition here, or None."""
    try:
        check_dense_eigh(data.n_users + data.n_items)
    except TrainingError as err:
        return str(err)
    return None


def spectral_energy_by_third(data: Interactions, signal: torch.Tensor | None = None) -> pd.DataFrame:
    """Share of each fixed Chebyshev band's energy in the thirds of the Laplacian spectrum [0, 2].

    `signal` None means a white signal (every eigen-coefficient 1): the responses weighted by
    the graph's eigenvalue density alone. Needs a dense eigendecomposition (`dense_spectrum_refusal`), cached.
    """
    evals, evecs = laplacian_eigh(normalized_adjacency(data))
    coeffs = np.ones(len(evals)) if signal is None else (evecs.double().T @ signal.double()).numpy()
    shares = chebyshev_band_energy_by_third(lambda lam: chebyshev_responses(torch.from_numpy(lam)).numpy(),
                                            evals.numpy(), coeffs)
    return pd.DataFrame(shares, index=["low", "mid", "high"], columns=["[0, 2/3)", "[2/3, 4/3)", "[4/3, 2]"])


@torch.no_grad()
def graph_band_energy(data: Interactions, signals: dict[str, torch.Tensor], n_bands: int = 3,
                      paths: Sequence[str] = ("chebyshev", "exact", "scalable")) -> pd.DataFrame:
    """Energy share of each band of each named signal under each SSR band path (rows: (signal, path),
    columns: band). Each path's bands (the exact path's eigenvectors) are built once for all signals."""
    adj = normalized_adjacency(data)
    rows = {}
    for path in paths:
        split = make_graph_bands(path, adj, n_bands)
        for name, signal in signals.items():
            rows[(name, path)] = band_energy_fractions(split(signal.float()).double().numpy())
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=[f"band {k + 1}" for k in range(n_bands)])
    frame.index = pd.MultiIndex.from_tuples(frame.index, names=["signal", "path"])
    return frame.loc[list(signals)]  # signals in the given order, paths within each


def band_diagnostics(records: list[dict]) -> pd.DataFrame:
    """Per-band values a model records in `diagnostics` (lists of numbers, possibly nested by side or view),
    in long format: dataset, model, seed, quantity (e.g. 'band_weights/user'), band (1-based), value."""
    rows = []

    def walk(prefix: str, value, base: dict) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}" if prefix else str(k), v, base)
        elif isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
            rows.extend({**base, "quantity": prefix, "band": k + 1, "value": float(v)} for k, v in enumerate(value))

    for r in records:
        walk("", r.get("diagnostics") or {}, {"dataset": r["dataset"]["name"], "model": r["model"], "seed": r["seed"]})
    return pd.DataFrame(rows)


def trained_band_borders(frame: pd.DataFrame, records: list[dict]) -> pd.DataFrame:
    """Where trained equal-energy bands put their borders: per dataset and variant (`runs.record_row` rows, their
    `records`), border m's λ of the tested weights (the record's diagnostics) as 'mean ± sd' over seeds, for the
    variants whose records carry borders (the exact and scalable paths), and the share of L's eigenvalues the graph's
    shape alone puts at λ = 1: |N_u − N_i| of N. A border there cuts that eigenspace, the exact path along the
    eigensolver's basis; the scalable path resolves λ to about ±6.5/K there and splits it about evenly."""
    by_id = {r["run_id"]: r for r in records}
    rows = []
    for run in frame.itertuples():
        record = by_id[run.run_id]
        borders = (record.get("diagnostics") or {}).get("band_borders")
        if borders:
            users, items = record["dataset"]["users"], record["dataset"]["items"]
            rows.append({"dataset": run.dataset, "variant": run.variant, "seed": run.seed,
                         "at λ = 1": abs(users - items) / (users + items),
                         **{f"border {m}": b for m, b in enumerate(borders, 1)}})
    if not rows:
        return pd.DataFrame()
    found = pd.DataFrame(rows)
    by = ["dataset", "variant"]
    borders = mean_std(found, [c for c in found if c.startswith("border")], by, digits=3)
    table = borders.replace("nan", "")  # a variant with fewer bands has no such border
    groups = found.groupby(by, sort=False)
    table["seeds"] = groups["seed"].agg(lambda v: ", ".join(map(str, sorted(v))))
    table["eigenvalues at λ = 1"] = groups["at λ = 1"].first().map("≥ {:.1%}".format)
    return table


@torch.no_grad()
def gates_by_user_group(model: BandedRecommender, data: Interactions) -> pd.DataFrame:
    """Mean learned band gate per (user group, band) of a trained FITMM or SSR (its `user_gates`); groups as in
    `band_reliance` (all, cold, warm, hot). Empty when the model has no gates."""
    gates = model.eval().user_gates()
    if gates is None:
        return pd.DataFrame(columns=["group", "band", "users", "gate"])
    gates = gates.cpu().numpy()
    return pd.DataFrame([{"group": group, "band": band + 1, "users": int(sel.sum()), "gate": float(gates[sel, band].mean())}
                         for group, sel in user_group_selections(data.user_degree).items() for band in range(gates.shape[1])])


@torch.no_grad()
def band_analysis(model: BandedRecommender, data: Interactions) -> dict:
    """What the chapters use from a trained FITMM or SSR (`BandedRecommender.analysis`): mean gate per user group
    and band, band reliance per user group, and the energy share of each graph band of the trained backbone signal
    under the released Chebyshev split, the scalable path and, on graphs the released code splits exactly
    (N ≤ 5000 nodes), the exact path."""
    paths = ["chebyshev", "scalable"]
    if data.n_users + data.n_items <= AUTO_EXACT_MAX_NODES:
        paths.append("exact")
    signal = graph_signal(backbone_views(model))
    energy = graph_band_energy(data, {"trained backbone": signal}, paths=paths).droplevel("signal")
    return {"gates_by_user_group": json_rows(gates_by_user_group(model, data)),
            "band_reliance": json_rows(band_reliance(model, data)),
            "graph_band_energy": {path: row.tolist() for path, row in energy.iterrows()}}


def graph_statistics(data: Interactions, results_dir: str | Path, n_bands: int = 3) -> dict:
    """The equal-energy band statistics of a dataset's user-item graph, stored as a result under
    `results_dir/spectral/<dataset>-<fingerprint>.json` and read back from there: the share of each band's energy
    for a random Gaussian signal (64 columns, seed 0) under each band path, and the white-signal energy of the
    Chebyshev bands by third of the spectrum. Both need a dense eigendecomposition (`dense_spectrum_refusal`);
    on a graph too large for it, the stored result holds the refusal instead."""
    path = Path(results_dir) / "spectral" / f"{data.name}-{fingerprint(data)}.json"
    if path.exists():
        return json.loads(path.read_text())
    refusal = dense_spectrum_refusal(data)
    if refusal is not None:
        stats = {"refusal": refusal}
    else:
        random = torch.randn(data.n_users + data.n_items, 64, generator=torch.Generator().manual_seed(0))
        energy = graph_band_energy(data, {"random": random}, n_bands).droplevel("signal")
        stats = {"random_signal_energy": {p: row.tolist() for p, row in energy.iterrows()},
                 "white_signal_by_third": spectral_energy_by_third(data).to_dict(orient="index")}
    write_json(path, stats)
    return stats


@torch.no_grad()
def band_reliance(model: BandedRecommender, data: Interactions, split: str = "test",
                  metric: str = "recall@20") -> pd.DataFrame:
    """Zero one band at a time (`model.without_band`) and measure Δ`metric` per user group.

    Rows (band, group) with the group's size, its metric with all bands, and the mean
    per-user change when the band is dropped (groups: all, then cold / warm / hot by
    train degree, SSR's cold-start definition). The model is evaluated as it is; nothing is retrained.
    """
    model.eval()
    k = int(metric.split("@")[1])
    _, base = evaluate(model.scorer(), data, split, (k,))
    selections = user_group_selections(data.user_degree[base["users"]])
    rows = []
    for band in range(model.n_bands):
        with model.without_band(band):
            _, dropped = evaluate(model.scorer(), data, split, (k,))
        delta = dropped[metric] - base[metric]
        rows.extend({"band": band + 1, "group": group, "users": int(sel.sum()),
                     metric: float(base[metric][sel].mean()), "delta": float(delta[sel].mean())}
                    for group, sel in selections.items())
    return pd.DataFrame(rows)
