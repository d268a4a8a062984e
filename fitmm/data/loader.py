"""Loading and validating an MMRec-format dataset folder (MMRec, arXiv 2302.03497; book/methods.md, "Data").

A dataset `NAME` is a folder `.../NAME` holding `NAME.inter` (tab-separated, header
row, columns userID, itemID, x_label; rating, timestamp and other columns are
ignored) and any number of `<modality>_feat.npy` files of shape (n_items, d).
Every check is vectorised; on failure the error names the file, the line
(1-based, the header is line 1) or field, and what was expected.
"""

from __future__ import annotations

import codecs
import csv
import errno
import io
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from fitmm.data.dataset import Interactions, modality_order
from fitmm.data.text import recipe_digest
from fitmm.errors import DataError

log = logging.getLogger(__name__)

INTER_COLUMNS = ("userID", "itemID", "x_label")
ID_COLUMNS = ("userID", "itemID")
FEATURE_SUFFIX = "_feat.npy"
NPY_MAGIC = b"\x93NUMPY"  # first bytes of every .npy file (numpy.lib.format)


def line_of(row: int) -> int:
    """File line of a data row (0-based row index; the header is line 1)."""
    return int(row) + 2


def why_missing(path: Path, kind: str = "file") -> str:
    """Why `path` is not an existing `kind` (a file, a dataset folder), in words for an error message."""
    if path.is_symlink():
        try:
            path.stat()
        except OSError as e:
            if e.errno == errno.ELOOP:
                return f"symlink loop ({path.name} -> {os.readlink(path)} leads back to itself)"
            return f"broken symlink to {os.readlink(path)}, which does not exist"
    if path.exists():
        return f"not a {kind}"
    return f"{kind} not found"


def read_frame(path: Path, columns: tuple[str, ...], dtype: type | None = None) -> pd.DataFrame:
    """All header columns of the tab-separated UTF-8 file `path`, indexed by 0-based data row.

    The header (line 1) names the columns; there is no implicit index column. A
    line may end in empty fields beyond the header's (a trailing tab); a value
    beyond them is an error naming its line. Quotes are plain characters, so a
    line is a row. Blank lines are dropped but keep their line numbers (`line_of`).
    """
    if not path.is_file():
        raise DataError(f"{path}: {why_missing(path)}")
    try:
        raw = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    if not raw.strip():
        raise DataError(f"{path}: empty file; expected a header line with columns {', '.join(columns)}")
    header = raw.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "replace").split("\t")
    _check_utf8(path, raw, header)
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataError(f"{path}: line 1 (header): missing column(s) {', '.join(missing)}; "
                        f"expected tab-separated columns {', '.join(columns)}, found {header}")
    twice = [c for c in columns if header.count(c) > 1]
    if twice:
        raise DataError(f"{path}: line 1 (header): column(s) {', '.join(twice)} named twice; expected each once")
    width = max(len(header), _max_fields(raw))
    extras = range(len(header), width)
    frame = pd.read_csv(io.BytesIO(raw), sep="\t", header=None, skiprows=1, names=range(width), index_col=False,
                        quoting=csv.QUOTE_NONE, skip_blank_lines=False,
                        dtype=dtype or {k: str for k in extras}).dropna(how="all")
    filled = frame[list(extras)].notna().to_numpy()
    if filled.any():
        i = int(np.argmax(filled.any(axis=1)))
        k = int(np.argmax(filled[i]))
        raise DataError(f"{path}: line {line_of(frame.index[i])}: field {len(header) + k + 1} holds "
                        f"{frame.iloc[i, len(header) + k]!r}, beyond the header's {len(header)} fields; "
                        f"expected at most {len(header)} fields per line (empty trailing fields are accepted)")
    frame = frame[list(range(len(header)))]
    frame.columns = header
    return frame


def _max_fields(raw: bytes) -> int:
    """The largest number of tab-separated fields on any line of `raw` (vectorised over bytes)."""
    buf = np.frombuffer(raw, dtype=np.uint8)
    separators = buf[(buf == ord("\t")) | (buf == ord("\n"))]
    line_ends = np.append(np.flatnonzero(separators == ord("\n")), len(separators))
    return int(np.diff(line_ends, prepend=-1).max())  # tabs on a line + 1


def _check_utf8(path: Path, raw: bytes, header: list[str]) -> None:
    """`raw` must be UTF-8; the error names the line, the column and the character of the first bad byte."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        start = raw.rfind(b"\n", 0, e.start) + 1
        line = raw.count(b"\n", 0, e.start) + 1
        before = raw[start:e.start].decode("utf-8")
        field = before.count("\t")
        column = f"column {header[field]}, " if line > 1 and field < len(header) else ""
        raise DataError(f"{path}: line {line}, {column}character {len(before) + 1}: byte 0x{raw[e.start]:02x} "
                        "is not valid UTF-8; expected UTF-8 text") from None


def read_table(path: Path, columns: tuple[str, ...]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Read the integer columns `columns` of a tab-separated file with a header (see `read_frame`).

    Returns the columns as int64 arrays and each row's 0-based data-row index.
    Ids (`ID_COLUMNS`) are range-checked here, before anything is allocated from
    them: 0-based contiguous ids are each below the number of data rows.
    """
    frame = read_frame(path, columns)
    out = {}
    for c in columns:
        if frame[c].dtype.kind == "i":
            out[c] = frame[c].to_numpy(np.int64)
        else:  # bad values, blank lines that made pandas read floats, or values beyond int64
            out[c] = _parse_integers(path, columns, c)
        if c in ID_COLUMNS:
            bad = np.flatnonzero((out[c] < 0) | (out[c] >= len(frame)))
            if len(bad):
                raise DataError(_id_range_error(path, frame.index[bad[0]], c, out[c][bad[0]], len(frame)))
    return out, frame.index.to_numpy()


def _id_range_error(path: Path, row: int, column: str, value: int | str, n_rows: int) -> str:
    what = "negative id" if str(value).startswith("-") else "id out of range:"
    return (f"{path}: line {line_of(row)}, column {column}: {what} {value}; expected 0..{n_rows - 1} "
            f"(ids are 0-based and contiguous, so each is below the number of data rows, {n_rows:,})")


def _parse_integers(path: Path, columns: tuple[str, ...], column: str) -> np.ndarray:
    """`column` read as text: its values as int64, or an error naming the first that is not one."""
    text = read_frame(path, columns, dtype=str)[column].fillna("")
    bad = ~text.str.fullmatch(r"-?\d+")
    if bad.any():
        row = bad.idxmax()
        value = text[row]
        raise DataError(f"{path}: line {line_of(row)}, column {column}: "
                        + (f"{value!r} is not an integer" if value else "missing value")
                        + "; expected a non-negative integer")
    long = text[text.str.len() > 18]  # only these can fall outside int64
    for row, value in long.items():
        if not -2**63 <= int(value) < 2**63:
            if column in ID_COLUMNS:
                raise DataError(_id_range_error(path, row, column, value, len(text)))
            raise DataError(f"{path}: line {line_of(row)}, column {column}: {value} does not fit a 64-bit integer; "
                            "expected a non-negative integer")
    return text.astype(np.int64).to_numpy()


def check_contiguous(path: Path, ids: np.ndarray, field: str) -> int:
    """Ids (range-checked by `read_table`) must be 0..n-1 with none missing; returns n."""
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
    if not path.is_file():
        raise DataError(f"{path}: {why_missing(path)}; expected a feature array saved with numpy.save")
    try:
        with path.open("rb") as f:
            magic = f.read(len(NPY_MAGIC))
            f.seek(0)
            feat = np.load(f, allow_pickle=False) if magic == NPY_MAGIC else None
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}: unreadable .npy file ({e}); expected a numeric array saved with numpy.save") from None
    if feat is None:
        raise DataError(f"{path}: not a NumPy .npy file (no .npy magic header; it starts with {magic!r}); "
                        "expected an array saved with numpy.save")
    if feat.ndim != 2:
        raise DataError(f"{path}: array of shape {feat.shape}; expected 2-D (n_items={n_items}, d)")
    if feat.shape[1] == 0:
        raise DataError(f"{path}: array of shape {feat.shape} has no feature columns; expected (n_items={n_items}, d) "
                        "with d >= 1")
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
        raise DataError(f"{folder}: {why_missing(folder, 'dataset folder')}; expected a folder NAME holding NAME.inter")
    name = folder.name
    inter = folder / f"{name}.inter"
    if not inter.is_file():
        found = sorted(p.name for p in folder.iterdir())
        raise DataError(f"{inter}: {why_missing(inter)}; a dataset folder {name}/ must hold {name}.inter "
                        f"(the folder holds: {', '.join(found) or 'nothing'})")
    cols, rows = read_table(inter, INTER_COLUMNS)
    users, items, labels = cols["userID"], cols["itemID"], cols["x_label"]
    if len(users) == 0:
        raise DataError(f"{inter}: no interactions after the header; expected at least one train row")
    bad = np.flatnonzero((labels < 0) | (labels > 2))
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
    recipes = {m: digest for m in features if (digest := recipe_digest(feature_files[m])) is not None}
    return Interactions(name=name, n_users=n_users, n_items=n_items, train=splits[0], valid=splits[1],
                        test=splits[2], features=features, feature_recipes=recipes, path=folder)
