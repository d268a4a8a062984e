"""Data: MMRec-format loading and validation, the split rule, the synthetic benchmark, downloads."""

from __future__ import annotations

from pathlib import Path

from fitmm.data.dataset import SPLITS, Interactions, modality_order
from fitmm.data.loader import load_dataset
from fitmm.data.split import mmrec_split
from fitmm.data.synthetic import generate, synthetic_dataset
from fitmm import settings
from fitmm.errors import DataError

__all__ = ["SPLITS", "Interactions", "modality_order", "load_dataset", "mmrec_split", "generate",
           "synthetic_dataset", "get_dataset", "dataset_folder"]


def get_dataset(name: str, data_dir: str | Path | None = None) -> Interactions:
    """`<data dir>/name` in MMRec format, the data dir as `fitmm.settings.data_dir` resolves `data_dir`
    (the argument, else $FITMM_DATA, else `<project>/data`); "synthetic" without such a folder is the
    embedded benchmark."""
    folder = dataset_folder(name, data_dir)
    return synthetic_dataset() if folder is None else load_dataset(folder)


def dataset_folder(name: str, data_dir: str | Path | None = None) -> Path | None:
    """The folder `get_dataset` reads (None: the embedded synthetic benchmark), or DataError naming what is
    missing; reads no data, so a batch can check all its datasets before any compute starts."""
    root = settings.data_dir(data_dir)
    if (root / name).is_dir() or (root / name).is_symlink():  # load_dataset explains a bad link
        return root / name
    if name == "synthetic":
        return None
    if not root.is_dir():
        raise DataError(f"{root}: data directory not found (looking for dataset {name!r}); "
                        "give one with --data-dir or FITMM_DATA (only 'synthetic' needs none)")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    raise DataError(f"{root / name}: dataset folder not found; {root} holds: {', '.join(found) or 'no dataset folders'}")
