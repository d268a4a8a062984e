"""The on-disk cache of derived data (kNN graphs, Laplacian spectra, the synthetic benchmark) and its keys.

Everything cached is a pure function of its key: a dataset's `fingerprint` or a graph's
`graph_key`, plus the parameters in the key's name. Writes are atomic, so a killed run
leaves no partial entry.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from fitmm.io import torch_save
from fitmm.settings import cache_dir

if TYPE_CHECKING:
    from fitmm.data.dataset import Interactions


def fingerprint(data: Interactions) -> str:
    """A short hash of a dataset's train pairs and features (cache key, and part of every run id).

    A modality is hashed by its shape and either the recipe that built it (`data.feature_recipes`:
    rebuilt features differ in their last bits between machines) or its first 64 rows."""
    h = hashlib.sha1()
    h.update(np.ascontiguousarray(data.train).tobytes())
    for name, feat in data.features.items():
        h.update(f"{name}:{feat.shape}".encode())
        if name in data.feature_recipes:
            h.update(f"recipe:{data.feature_recipes[name]}".encode())
        else:
            h.update(np.ascontiguousarray(feat[: min(64, len(feat))]).tobytes())
    return h.hexdigest()[:12]


def graph_key(adj: torch.Tensor) -> str:
    """A short hash of a CSR adjacency (cache key for per-graph spectra)."""
    h = hashlib.sha1()
    for part in (adj.crow_indices(), adj.col_indices(), adj.values()):
        h.update(part.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def cached(key: str, build: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Load a tensor from the cache, or build and store it atomically."""
    path = cache_dir() / f"{key}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    tensor = build()
    torch_save(path, tensor)
    return tensor
