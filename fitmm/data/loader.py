"""Loading and validating an MMRec-format dataset folder (MMRec, arXiv 2302.03497; book/methods.md, "Data").

A dataset `NAME` is a folder `.../NAME` holding `NAME.inter` (tab-separated, header
row, columns userID, itemID, x_label; rating, timestamp and other columns are
ignored) and any number of `<modality>_feat.npy` files of shape (n_items, d).
Every check is vectorised; on failure the error names the file, the line
(1-based, the header is line 1) or field, and what was expected.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from fitmm.data.dataset import Interactions, modality_order
from fitmm.errors import DataError

log = logging.getLogger(__name__)

INTER_COLUMNS = ("userID", "itemID", "x_label")
FEATURE_SUFFIX = "_feat.npy"


def line_of(row: int) -> int:
    """File line of a data row (0-based row index; the header is line 1)."""
    return int(row) + 2


def read_table(path: Path, columns: tuple[str, ...]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Read the integer columns `columns` of a tab-separated file with a header.

    Returns the columns as int64 arrays and each row's 0-based data-row index
    (blank lines are skipped but keep their line numbers). Values must be
    non-negative integers.
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    frame = _read_frame(path, columns, dtype=None)
    out = {}
    for c in columns:
        if frame[c].dtype.kind in "iu":
            out[c] = frame[c].to_numpy(np.int64)
        else:  # bad values, or blank lines that made pandas read floats
            out[c] = _parse_integers(path, columns, c)
        negative = np.flatnonzero(out[c] < 0)
        if len(negative):
            r = negative[0]
            raise DataError(f"{path}: line {line_of(frame.index[r])}, column {c}: "
                            f"negative id {out[c][r]}; expected a non-negative integer")
    return out, frame.index.to_numpy()


def _read_frame(path: Path, columns: tuple[str, ...], dtype: type | None) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, sep="\t", skip_blank_lines=False, dtype=dtype)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty file; expected a header line with columns {', '.join(columns)}") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a tab-separated table: {str(e).strip()}") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        with path.open() as f:
            header = f.readline().rstrip("\n").split("\t")
        raise DataError(f"{path}: line 1 (header): missing column(s) {', '.join(missing)}; "
                        f"expected tab-separated columns {', '.join(columns)}, found {header}")
    return frame.dropna(how="all")[list(columns)]  # blank lines


def _parse_integers(path: Path, columns: tuple[str, ...], column: str) -> np.ndarray:
    """`column` read as text: its values as int64, or an error naming the first that is not an integer."""
    text = _read_frame(path, columns, dtype=str)[column].fillna("")
    bad = ~text.str.fullmatch(r"-?\d+")
    if not bad.any():
        return text.astype(np.int64).to_numpy()
    row = bad.idxmax()
    value = text[row]
    raise DataError(f"{path}: line {line_of(row)}, column {column}: "
                    + (f"{value!r} is not an integer" if value else "missing value")
                    + "; expected a non-negative integer")


def check_contiguous(path: Path, ids: np.ndarray, field: str) -> int:
    """Ids must be 0..n-1 with none missing; returns n."""
    n = int(ids.max()) + 1
    present = np.zeros(n, dtype=bool)
    present[ids] = True
    if not present.all():
        missing = np.flatnonzero(~present)
        shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
        raise DataError(f"{path}: column {field}: ids are not contiguous: {len(missing)} of 0..{n - 1} "
                        f"never occur ({shown}); expected 0-based contiguous ids")
    return n


def check_duplicates(path: Path, users: np.ndarray, items: np.ndarray, n_items: int, rows: np.ndarray) -> None:
    """No (user, item) pair may occur twice; the error names both lines."""
    key = users * n_items + items
    order = np.argsort(key, kind="stable")
    dup = np.flatnonzero(key[order][1:] == key[order][:-1])
    if len(dup):
        first, second = order[dup], order[dup + 1]
        j = np.argmin(second)  # the duplicate met first when reading the file
        a, b = first[j], second[j]
        raise DataError(f"{path}: line {line_of(rows[b])}: duplicate (userID, itemID) = ({users[b]}, {items[b]}), "
                        f"already on line {line_of(rows[a])} ({len(dup)} duplicate pair(s) in all); "
                        "expected each pair at most once")


def load_features(path: Path, n_items: int, fill_missing_content: bool) -> np.ndarray:
    """One modality's (n_items, d) float32 feature table, validated."""
    try:
        feat = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}: unreadable .npy file ({e}); expected a numeric array saved with numpy.save") from None
    if feat.ndim != 2:
        raise DataError(f"{path}: array of shape {feat.shape}; expected 2-D (n_items={n_items}, d)")
    if feat.dtype.kind not in "fiu":
        raise DataError(f"{path}: dtype {feat.dtype}; expected a numeric array")
    if feat.shape[0] != n_items:
        raise DataError(f"{path}: {feat.shape[0]} rows; expected one row per item, n_items = {n_items} "
                        f"(from the .inter file)")
    feat = np.ascontiguousarray(feat, dtype=np.float32)
    finite = np.isfinite(feat).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        raise DataError(f"{path}: row {row} (item {row}) has NaN or Inf values "
                        f"({int((~finite).sum())} such rows); expected finite features")
    empty = ~feat.any(axis=1)
    if fill_missing_content and empty.any():
        if empty.all():
            raise DataError(f"{path}: every row is all-zero; no content to fill missing items from")
        feat[empty] = feat[~empty].mean(axis=0)
        log.info("%s: %d items without content (all-zero rows) set to the mean feature", path, int(empty.sum()))
    return feat


def load_dataset(path: str | Path, *, fill_missing_content: bool = False) -> Interactions:
    """Load and validate the MMRec dataset folder `path` (= .../NAME).

    Valid/test rows of users with no train row are dropped (MMRec's rule), with a
    logged warning. Items missing content (all-zero feature rows) get the mean
    feature vector only with `fill_missing_content`.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"{folder}: dataset folder not found; expected a folder NAME holding NAME.inter")
    name = folder.name
    inter = folder / f"{name}.inter"
    if not inter.is_file():
        found = sorted(p.name for p in folder.iterdir())
        raise DataError(f"{inter}: file not found; a dataset folder {name}/ must hold {name}.inter "
                        f"(the folder holds: {', '.join(found) or 'nothing'})")
    cols, rows = read_table(inter, INTER_COLUMNS)
    users, items, labels = cols["userID"], cols["itemID"], cols["x_label"]
    if len(users) == 0:
        raise DataError(f"{inter}: no interactions after the header; expected at least one train row")
    bad = np.flatnonzero(labels > 2)
    if len(bad):
        raise DataError(f"{inter}: line {line_of(rows[bad[0]])}, column x_label: unknown label {labels[bad[0]]}; "
                        "expected 0 (train), 1 (valid) or 2 (test)")
    n_users = check_contiguous(inter, users, "userID")
    n_items = check_contiguous(inter, items, "itemID")
    check_duplicates(inter, users, items, n_items, rows)

    is_train = labels == 0
    if not is_train.any():
        raise DataError(f"{inter}: column x_label: the train split is empty; expected rows with x_label 0")
    has_train = np.zeros(n_users, dtype=bool)
    has_train[users[is_train]] = True
    keep = has_train[users]
    if not keep.all():
        log.warning("%s: dropped %d valid/test rows of %d users with no train row (MMRec's rule)",
                    inter, int((~keep).sum()), int(len(np.unique(users[~keep]))))
    pairs = np.stack([users, items], axis=1)
    splits = [pairs[keep & (labels == s)] for s in range(3)]

    feature_files = {p.name[: -len(FEATURE_SUFFIX)]: p for p in folder.glob(f"*{FEATURE_SUFFIX}")}
    features = {m: load_features(feature_files[m], n_items, fill_missing_content)
                for m in modality_order(list(feature_files))}
    return Interactions(name=name, n_users=n_users, n_items=n_items, train=splits[0], valid=splits[1],
                        test=splits[2], features=features, path=folder)
