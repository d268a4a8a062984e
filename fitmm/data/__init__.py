"""Data: MMRec-format loading and validation, the split rule, the synthetic benchmark, downloads."""

from __future__ import annotations

from pathlib import Path

from fitmm.data.dataset import SPLITS, Interactions, modality_order
from fitmm.data.loader import load_dataset
from fitmm.data.split import mmrec_split
from fitmm.data.synthetic import generate, synthetic_dataset
from fitmm.errors import DataError

__all__ = ["SPLITS", "Interactions", "modality_order", "load_dataset", "mmrec_split", "generate",
           "synthetic_dataset", "get_dataset"]


def get_dataset(name: str, data_dir: str | Path | None = None) -> Interactions:
    """`data_dir/name` in MMRec format; "synthetic" without such a folder is the embedded benchmark."""
    folder = Path(data_dir) / name if data_dir is not None else None
    if folder is not None and (folder.is_dir() or folder.is_symlink()):  # load_dataset explains a bad link
        return load_dataset(folder)
    if name == "synthetic":
        return synthetic_dataset()
    if data_dir is None:
        raise DataError(f"dataset {name!r}: no data directory given (--data-dir); "
                        "only 'synthetic' is available without one")
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"{root}: data directory not found (looking for dataset {name!r})")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    raise DataError(f"{root / name}: dataset folder not found; {root} holds: {', '.join(found) or 'no dataset folders'}")
