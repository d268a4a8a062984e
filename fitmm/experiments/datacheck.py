"""Data chapter helpers: statistics against the published counts, split checks, degree
distributions, per-modality singular-value spectra and cross-modal alignment."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fitmm.data.dataset import SPLITS, Interactions
from fitmm.data.split import split_sizes

# (users, items, interactions): MMRec's published statistics; TikTok as released with DiffMM (arXiv 2406.11781).
PUBLISHED_COUNTS = {"baby": (19445, 7050, 160792), "sports": (35598, 18357, 296337),
                    "clothing": (39387, 23033, 278677), "tiktok": (9308, 6710, 68722)}


def stats_table(datasets: dict[str, Interactions]) -> pd.DataFrame:
    """One row per dataset: sizes, split sizes, density, modalities, and whether the counts match the published ones."""
    rows = {}
    for name, data in datasets.items():
        s = data.stats()
        row = {k: s[k] for k in ("users", "items", "interactions", "n_train", "n_valid", "n_test", "density")}
        row["modalities"] = ", ".join(f"{m} {d}" for m, d in s["modalities"].items()) or "none"
        published = PUBLISHED_COUNTS.get(name)
        row["published (u/i/x)"] = "/".join(map(str, published)) if published else "–"
        row["matches"] = ("yes" if published == (s["users"], s["items"], s["interactions"]) else "no") if published else "–"
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def split_checks(data: Interactions) -> dict:
    """Checks of the split: pairs in two splits, held-out users without train rows, the share of
    users whose per-split counts follow MMRec's rule exactly, and the valid/test items never in
    train with the share of valid and test rows they hold (`Interactions.cold_items`)."""
    counts = np.stack([np.bincount(data.pairs(s)[:, 0], minlength=data.n_users) for s in SPLITS], axis=1)
    keys = [np.unique(data.pairs(s)[:, 0].astype(np.int64) * data.n_items + data.pairs(s)[:, 1]) for s in SPLITS]
    overlap = sum(len(np.intersect1d(keys[a], keys[b])) for a, b in ((0, 1), (0, 2), (1, 2)))
    users = counts.sum(1) > 0
    n_valid, n_test = split_sizes(counts.sum(1))
    cold = data.cold_items()
    follows = (counts == np.stack([counts.sum(1) - n_valid - n_test, n_valid, n_test], axis=1)).all(1)
    return {"pairs in two splits": int(overlap),
            "held-out users without train": int(((counts[:, 1:].sum(1) > 0) & (counts[:, 0] == 0)).sum()),
            "users following MMRec's rule": float(follows[users].mean()),
            "items never in train": cold["cold_items"],
            "valid rows on them": cold["cold_valid_share"],
            "test rows on them": cold["cold_test_share"]}


def ccdf(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values x and the share of entries ≥ x (complementary CDF, for log-log degree plots)."""
    x, counts = np.unique(np.asarray(values), return_counts=True)
    return x, counts[::-1].cumsum()[::-1] / counts.sum()


def explained_variance(features: np.ndarray) -> np.ndarray:
    """Share of the total variance along each principal direction (squared singular values of the centred matrix)."""
    x = np.asarray(features, dtype=np.float64)
    s = np.linalg.svd(x - x.mean(0), compute_uv=False)
    return s**2 / (s**2).sum()


def canonical_correlations(a: np.ndarray, b: np.ndarray, tol: float = 1e-8) -> np.ndarray:
    """Canonical correlations between two feature matrices with the same rows (descending).

    They are the singular values of U_aᵀU_b, U the orthonormal bases of the centred column
    spaces (directions with relative singular value < tol dropped).
    """

    def basis(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        u, s, _ = np.linalg.svd(x - x.mean(0), full_matrices=False)
        return u[:, s > tol * s[0]]

    return np.linalg.svd(basis(a).T @ basis(b), compute_uv=False)
