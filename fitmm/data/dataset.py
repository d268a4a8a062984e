"""The in-memory dataset every other module works with."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import scipy.sparse as sp

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True, eq=False)
class Interactions:
    """An MMRec-format dataset after loading and validation.

    `train`, `valid`, `test` are (n, 2) int64 arrays of (user, item) pairs with
    0-based contiguous ids. `features` maps a modality name to an
    (n_items, d) float32 array, in canonical modality order (see `modality_order`).
    `feature_recipes` maps a modality built by `fitmm data encode-text` to the digest of
    its recipe (`fitmm.data.text.recipe_digest`), which identifies it in place of its bytes.
    """

    name: str
    n_users: int
    n_items: int
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    features: dict[str, np.ndarray] = field(default_factory=dict)
    feature_recipes: dict[str, str] = field(default_factory=dict)
    path: Path | None = None

    @property
    def modalities(self) -> list[str]:
        return list(self.features)

    def pairs(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise KeyError(f"unknown split {split!r}; expected one of {SPLITS}")
        return getattr(self, split)

    def matrix(self, split: str) -> sp.csr_matrix:
        """Binary user x item CSR matrix of one split."""
        pairs = self.pairs(split)
        values = np.ones(len(pairs), dtype=np.float32)
        return sp.csr_matrix((values, (pairs[:, 0], pairs[:, 1])), shape=(self.n_users, self.n_items))

    @cached_property
    def train_matrix(self) -> sp.csr_matrix:
        return self.matrix("train")

    @cached_property
    def user_degree(self) -> np.ndarray:
        """Number of train interactions per user."""
        return np.bincount(self.train[:, 0], minlength=self.n_users)

    @cached_property
    def item_degree(self) -> np.ndarray:
        """Number of train interactions per item (popularity)."""
        return np.bincount(self.train[:, 1], minlength=self.n_items)

    def stats(self) -> dict:
        """Summary statistics (what `fitmm data check` prints)."""
        n = {s: int(len(self.pairs(s))) for s in SPLITS}
        total = sum(n.values())
        return {
            "name": self.name,
            "users": self.n_users,
            "items": self.n_items,
            "interactions": total,
            **{f"n_{s}": n[s] for s in SPLITS},
            "density": total / (self.n_users * self.n_items),
            "modalities": {m: int(f.shape[1]) for m, f in self.features.items()},
            **self.cold_items(),
        }

    def cold_items(self) -> dict:
        """Valid/test items that never occur in train: their number, and the valid and test rows they hold.

        A model sees no interaction of such an item while training, so only its
        content features (if any) can rank it; these rows bound what a pure
        collaborative-filtering model can hit.
        """
        unseen = self.item_degree == 0
        cold = {s: unseen[self.pairs(s)[:, 1]] for s in ("valid", "test")}
        out = {"cold_items": int(len(np.union1d(self.valid[cold["valid"], 1], self.test[cold["test"], 1])))}
        for s, rows in cold.items():
            out[f"cold_{s}_rows"] = int(rows.sum())
            out[f"cold_{s}_share"] = float(rows.mean()) if len(rows) else 0.0
        return out


def modality_order(names: list[str]) -> list[str]:
    """Canonical modality order: image, text, then the rest alphabetically.

    The order matters: DRAGON-style item graphs weight the first modality 0.1
    and the second 0.9 by default (DRAGON, arXiv 2301.12097).
    """
    head = [m for m in ("image", "text") if m in names]
    return head + sorted(m for m in names if m not in head)
