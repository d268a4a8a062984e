"""Synthetic MMRec dataset with planted spectral structure (book/methods.md, "Data").

Generative model, deterministic in `seed`:

- latent item factors v_i ∈ R^r and user factors u_u ∈ R^r, r = n_shared + Σ_m n_specific,
  all N(0, I);
- user u draws d_u items without replacement (5 + a geometric tail, mean
  `mean_degree`) with probabilities ∝ exp(a·⟨u_u, v_i⟩/√r) · pop_i, pop_i ∝ ρ_i^-γ
  for a random popularity rank ρ_i (Gumbel top-k sampling);
- 5-core filter (users and items with < 5 interactions removed until stable;
  ids re-indexed contiguously in their old order) and MMRec's split rule;
- modality m (dimension d_m) in its own random orthonormal basis q_1..q_{d_m}:
  x_i^m = Σ_k √s_k z_ik q_k + ε_i, ε_i ~ N(0, σ² I), where z_ik is a latent factor
  standardised over the kept items. Directions 1..n_shared carry the factors
  every modality shares, the next n_specific the factors only modality m sees
  (a different block of v per modality); the remaining directions carry noise
  alone. Direction k's SNR is s_k/σ², written to `NAME.meta.json`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from fitmm.data.dataset import Interactions, modality_order
from fitmm.data.loader import load_dataset
from fitmm.data.split import mmrec_split
from fitmm.errors import DataError
from fitmm.io import write_json
from fitmm.settings import cache_dir

GENERATOR_VERSION = 2
DEFAULT_MODALITIES = {"image": 64, "text": 32}


def sample_interactions(
    rng: np.random.Generator, user_f: np.ndarray, item_f: np.ndarray, mean_degree: float,
    popularity: float, affinity: float, chunk: int = 2048,
) -> np.ndarray:
    """(user, item) pairs drawn by Gumbel top-k over the logits a·⟨u, v⟩/√r + log pop (users in chunks)."""
    n_users, n_items = len(user_f), len(item_f)
    log_pop = -popularity * np.log(rng.permutation(n_items) + 1)
    degree = 5 + rng.geometric(1.0 / max(mean_degree - 4.0, 1.0), size=n_users) - 1
    degree = np.minimum(degree, n_items // 2)
    out = []
    for start in range(0, n_users, chunk):
        d = degree[start : start + chunk]
        logits = affinity * (user_f[start : start + chunk] @ item_f.T) / np.sqrt(user_f.shape[1]) + log_pop
        logits += rng.gumbel(size=logits.shape)
        top = np.argpartition(-logits, d.max() - 1, axis=1)[:, : d.max()]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(logits, top, axis=1), axis=1), axis=1)
        keep = np.arange(d.max())[None, :] < d[:, None]
        users = np.broadcast_to(np.arange(start, start + len(d))[:, None], top.shape)[keep]
        out.append(np.stack([users, top[keep]], axis=1))
    return np.concatenate(out).astype(np.int64)


def k_core(pairs: np.ndarray, k: int = 5) -> np.ndarray:
    """Keep the rows whose user and item both have ≥ k rows, repeated until stable."""
    while True:
        u_deg = np.bincount(pairs[:, 0])
        i_deg = np.bincount(pairs[:, 1])
        ok = (u_deg[pairs[:, 0]] >= k) & (i_deg[pairs[:, 1]] >= k)
        if ok.all():
            return pairs
        pairs = pairs[ok]


def modality_features(
    rng: np.random.Generator, factors: np.ndarray, dim: int, snr: list[float], noise_variance: float,
) -> np.ndarray:
    """x = Z diag(√s) Qᵀ + noise for standardised factor columns Z (one per leading direction)."""
    z = (factors - factors.mean(axis=0)) / factors.std(axis=0)
    coords = np.zeros((len(factors), dim))
    coords[:, : len(snr)] = z * np.sqrt(np.asarray(snr) * noise_variance)
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    x = coords @ q.T + rng.normal(scale=np.sqrt(noise_variance), size=coords.shape)
    return x.astype(np.float32)


def generate(
    out_dir: str | Path,
    name: str = "synthetic",
    n_users: int = 1000,
    n_items: int = 600,
    seed: int = 0,
    *,
    modalities: dict[str, int] | None = None,
    shared_snr: tuple[float, ...] = (8.0, 4.0, 2.0, 1.0),
    specific_snr: tuple[float, ...] = (2.0, 0.5),
    noise_variance: float = 1.0,
    mean_degree: float = 15.0,
    popularity: float = 0.8,
    affinity: float = 3.0,
) -> Path:
    """Write the dataset `out_dir/name` (NAME.inter, <modality>_feat.npy, NAME.meta.json); return its folder.

    `n_users` and `n_items` are the sizes before the 5-core filter. The folder is
    built in a temporary folder and renamed into place; an existing one is an error.
    """
    modalities = dict(DEFAULT_MODALITIES if modalities is None else modalities)
    n_shared, n_specific = len(shared_snr), len(specific_snr)
    for m, dim in modalities.items():
        if dim < n_shared + n_specific:
            raise DataError(f"modality {m!r}: dim {dim} < {n_shared + n_specific} signal directions")
    target = Path(out_dir) / name
    if target.exists():
        raise DataError(f"{target}: already exists; remove it or choose another name")
    order = modality_order(list(modalities))
    rank = n_shared + n_specific * len(order)
    rng = np.random.default_rng(seed)
    user_f = rng.standard_normal((n_users, rank))
    item_f = rng.standard_normal((n_items, rank))

    pairs = k_core(sample_interactions(rng, user_f, item_f, mean_degree, popularity, affinity))
    if len(pairs) == 0:
        raise DataError(f"synthetic data with {n_users} users x {n_items} items is empty after the 5-core filter")
    kept_users, users = np.unique(pairs[:, 0], return_inverse=True)
    kept_items, items = np.unique(pairs[:, 1], return_inverse=True)
    pairs = np.stack([users, items], axis=1)
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]  # sampling order follows affinity: hide it
    labels = mmrec_split(pairs, int(rng.integers(2**31)))

    snr = list(shared_snr) + list(specific_snr)
    features, meta_modalities = {}, {}
    for j, m in enumerate(order):
        specific = n_shared + j * n_specific + np.arange(n_specific)
        columns = np.concatenate([np.arange(n_shared), specific])
        features[m] = modality_features(rng, item_f[kept_items][:, columns], modalities[m], snr, noise_variance)
        n_noise = modalities[m] - len(snr)
        meta_modalities[m] = {
            "dim": modalities[m],
            "direction_kind": ["shared"] * n_shared + ["specific"] * n_specific + ["noise"] * n_noise,
            "latent_factor": [int(c) for c in columns] + [None] * n_noise,
            "signal_variance": [s * noise_variance for s in snr] + [0.0] * n_noise,
            "noise_variance": [noise_variance] * modalities[m],
            "snr": snr + [0.0] * n_noise,
        }
    meta = {
        "generator": "fitmm.data.synthetic", "version": GENERATOR_VERSION, "seed": seed,
        "params": {"n_users": n_users, "n_items": n_items, "latent_rank": rank, "mean_degree": mean_degree,
                   "popularity_exponent": popularity, "affinity": affinity, "k_core": 5},
        "n_users": len(kept_users), "n_items": len(kept_items), "n_interactions": len(pairs),
        "split": {s: int((labels == i).sum()) for i, s in enumerate(("train", "valid", "test"))},
        "modalities": meta_modalities,
    }

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}."))
    try:
        table = pd.DataFrame({"userID": pairs[:, 0], "itemID": pairs[:, 1], "x_label": labels})
        table.to_csv(tmp / f"{name}.inter", sep="\t", index=False)
        for m, x in features.items():
            np.save(tmp / f"{m}_feat.npy", x)
        write_json(tmp / f"{name}.meta.json", meta)
        tmp.chmod(0o755)  # mkdtemp makes it private
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def synthetic_dataset(n_users: int = 1000, n_items: int = 600, seed: int = 0) -> Interactions:
    """The embedded synthetic default, generated once into the cache and loaded from there."""
    folder = cache_dir() / "data" / f"synthetic-v{GENERATOR_VERSION}-u{n_users}-i{n_items}-s{seed}" / "synthetic"
    if not folder.exists():
        try:
            generate(folder.parent, "synthetic", n_users, n_items, seed)
        except (OSError, DataError):
            if not folder.exists():  # else another process generated it first
                raise
    return load_dataset(folder)
