"""MMRec's train/valid/test split rule (MMRec, arXiv 2302.03497).

Each user's items are shuffled; with n items, n < 10 gives n-2 train, 1 valid,
1 test; otherwise k = ⌊0.2n⌋ items go to valid + test (valid k//2, test the
rest) and n-k to train. Users with n < 3 keep all their items in train: the
rule would leave them at most 0 train items, and the loader drops the
valid/test rows of train-less users anyway, so their interactions are better
kept for training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fitmm.data.loader import check_contiguous, check_duplicates, read_frame, read_table
from fitmm.errors import DataError
from fitmm.io import atomic_path


def split_sizes(n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-user (n_valid, n_test) for users with n items each."""
    n = np.asarray(n, dtype=np.int64)
    k = np.where(n < 10, 2, n // 5)  # ⌊0.2n⌋ in integers
    k = np.where(n < 3, 0, k)
    n_valid = k // 2
    return n_valid, k - n_valid


def mmrec_split(pairs: np.ndarray, seed: int) -> np.ndarray:
    """x_label (0 train, 1 valid, 2 test) for each (user, item) row of `pairs`, by MMRec's rule.

    Vectorised: a random key per row, one lexsort by (user, key) gives every
    row's rank within its user's shuffled list; the last n_valid + n_test ranks
    become valid then test.
    """
    pairs = np.asarray(pairs)
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise ValueError(f"pairs must be (n, 2) (user, item) rows, got shape {pairs.shape}")
    users = pairs[:, 0].astype(np.int64)
    key = np.random.default_rng(seed).random(len(users))
    order = np.lexsort((key, users))
    sorted_users = users[order]
    counts = np.bincount(users)
    starts = np.cumsum(counts) - counts
    rank = np.empty(len(users), dtype=np.int64)
    rank[order] = np.arange(len(users)) - starts[sorted_users]
    n_valid, n_test = split_sizes(counts)
    n = counts[users]
    n_train = n - n_valid[users] - n_test[users]
    labels = np.zeros(len(users), dtype=np.int64)
    labels[rank >= n_train] = 1
    labels[rank >= n_train + n_valid[users]] = 2
    return labels


def split_file(src: str | Path, out: str | Path, seed: int) -> Path:
    """Split the user/item table `src` (tab-separated, header, userID and itemID) into `out/NAME.inter`.

    `out` is the dataset folder .../NAME. Ids must already be 0-based and
    contiguous; other columns (rating, timestamp) are kept; an existing x_label
    column is an error (the table is meant to be unsplit).
    """
    src, out = Path(src), Path(out)
    cols, rows = read_table(src, ("userID", "itemID"))
    table = read_frame(src, ("userID", "itemID"))
    if "x_label" in table.columns:
        raise DataError(f"{src}: line 1 (header): already has an x_label column; expected an unsplit userID/itemID table")
    if len(rows) == 0:
        raise DataError(f"{src}: no rows after the header; expected (userID, itemID) rows")
    users, items = cols["userID"], cols["itemID"]
    check_contiguous(src, users, "userID")
    n_items = check_contiguous(src, items, "itemID")
    check_duplicates(src, users, items, n_items, rows)
    table["x_label"] = mmrec_split(np.stack([users, items], axis=1), seed)
    target = out / f"{out.name}.inter"
    with atomic_path(target) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    return target
