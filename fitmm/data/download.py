"""Download the official MMRec datasets from their Google Drive folder (MMRec, arXiv 2302.03497).

The folder holds one sub-folder per dataset (NAME/NAME.inter, image_feat.npy,
text_feat.npy). Files arrive in a temporary folder next to the target and are
moved into place only after the dataset loads and the expected files are
there; on any failure nothing is left behind.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

from fitmm.data.loader import load_dataset
from fitmm.errors import DataError

MMREC_FOLDER_ID = "13cBy1EA_saTUuXxVllKgtfci2A09jyaG"
DATASETS = ("baby", "sports", "elec", "clothing")
EXPECTED_FILES = ("{name}.inter", "image_feat.npy", "text_feat.npy")


class DownloadError(DataError):
    """The official data could not be fetched or did not verify."""


def online() -> bool:
    """Whether a TCP connection to drive.google.com:443 opens within 3 seconds."""
    try:
        socket.create_connection(("drive.google.com", 443), timeout=3.0).close()
    except OSError:
        return False
    return True


def fetch(name: str, dest: Path) -> None:
    """Download the Drive folder's sub-folder `name` into `dest/name`."""
    import gdown

    try:
        listing = gdown.download_folder(id=MMREC_FOLDER_ID, skip_download=True, quiet=True, timeout=60)
    except Exception as e:  # gdown raises several unrelated types on network and parse failures
        raise DownloadError(f"cannot list the MMRec Google Drive folder {MMREC_FOLDER_ID}: {e}") from e
    files = [f for f in listing if Path(f.path).parts[0].lower() == name]
    if not files:
        tops = sorted({Path(f.path).parts[0] for f in listing})
        raise DownloadError(f"the MMRec Google Drive folder {MMREC_FOLDER_ID} has no folder {name!r}; "
                            f"it holds: {', '.join(tops)}")
    for f in files:
        local = dest / name / Path(*Path(f.path).parts[1:])
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            gdown.download(id=f.id, output=str(local), quiet=False, timeout=60)
        except Exception as e:
            raise DownloadError(f"download of {f.path} (Drive id {f.id}) failed: {e}") from e


def download(name: str, to_dir: str | Path) -> Path:
    """Fetch the official MMRec dataset `name` into `to_dir/name` and return that folder."""
    name = name.lower()
    if name not in DATASETS:
        raise DownloadError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    target = Path(to_dir) / name
    if target.exists():
        raise DownloadError(f"{target}: already exists; remove it first to download again")
    if not online():
        raise DownloadError(f"no network: cannot reach drive.google.com:443 within 3 s; "
                            f"nothing was written. Download {name} from "
                            f"https://drive.google.com/drive/folders/{MMREC_FOLDER_ID} by hand into {target}")
    created = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}.download."))
    try:
        fetch(name, tmp)
        missing = [f.format(name=name) for f in EXPECTED_FILES if not (tmp / name / f.format(name=name)).is_file()]
        if missing:
            raise DownloadError(f"download of {name} is incomplete: missing {', '.join(missing)}")
        try:
            load_dataset(tmp / name)
        except DataError as e:
            raise DownloadError(f"downloaded {name} does not verify: {e}") from e
        os.rename(tmp / name, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for p in created:  # innermost first: folders made here and left empty
            if p.is_dir() and not any(p.iterdir()):
                p.rmdir()
    return target
