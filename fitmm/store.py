"""Where runs live: run ids, run folders, record validation, the per-run lock.

A run is identified by (dataset, model, seed, what it computes):

    results_dir/runs/<dataset>/<model>/<model>-s<seed>-<digest>/
        record.json     the run record (validated whenever it is read)
        per_user.npz    per-user test metrics
        checkpoints/    last and best state while the run trains (git-ignored; or under
                        $FITMM_CHECKPOINTS, `fitmm.settings.checkpoints_dir`)
        .lock           held by the process that trains the run

The digest hashes the dataset's fingerprint, the behaviour version (the trainer's
`PROTOCOL_VERSION` and the model's `version`) and the config values that differ from
the defaults. A key added with a default that keeps the old behaviour therefore leaves
every id as it was; a change of behaviour bumps a version, and a record of another
version is reported, never reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import warnings
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from fitmm.config import Config, load_config
from fitmm.data.dataset import Interactions
from fitmm.errors import ConfigError, DataError
from fitmm.io import utc_now
from fitmm.settings import checkpoints_dir
from fitmm.cache import fingerprint

# Bump when the trainer changes what any run computes (sampling, stopping, evaluation).
# 2: MMRec's early stopping (stop once the epochs since the best exceed the patience) and negatives drawn
#    from the train split's items (negative_items: train).
PROTOCOL_VERSION = 2
# Keys that do not change what is computed, left out of the run id.
NON_SEMANTIC_KEYS = frozenset({"model", "seed", "device", "eval_batch_users"})
# What a record must hold, with the type of each value.
RECORD_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "run_id": str, "model": str, "seed": int, "version": str, "config": dict, "config_changes": dict,
    "dataset": dict, "history": list, "best_valid": dict, "test": dict, "epochs": int,
    "wall_seconds": (int, float), "peak_memory_mb": (int, float), "provenance": dict,
}


class RecordError(DataError):
    """A run record or checkpoint that cannot be trusted: the message names the file and what to do."""


def behaviour_version(model: str) -> str:
    from fitmm.models import MODELS

    return f"p{PROTOCOL_VERSION}.m{MODELS[model].version}"


def config_changes(config: Config) -> dict[str, Any]:
    """The semantic config values that differ from the model's defaults."""
    base = load_config(config.model).to_dict()
    return {k: v for k, v in sorted(config.to_dict().items()) if k not in NON_SEMANTIC_KEYS and v != base[k]}


def run_id(data: Interactions, config: Config) -> str:
    key = [fingerprint(data), behaviour_version(config.model), config_changes(config)]
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    return f"{config.model}-s{config.seed}-{digest}"


def run_dir(data: Interactions, config: Config, results_dir: str | Path) -> Path:
    return Path(results_dir) / "runs" / data.name / config.model / run_id(data, config)


def finished(folder: str | Path, trace: bool = False) -> bool:
    """Whether the run in `folder` has finished (its record is written), and has its trace when `trace`."""
    folder = Path(folder)
    return (folder / "record.json").exists() and (not trace or (folder / "trace.npz").exists())


def checkpoint_state(folder: str | Path) -> dict | None:
    """The trainer's state in an unfinished run's last checkpoint (`epoch` reached, `best_epoch`, `wall_seconds`,
    `history`, ...), read without loading its tensors; None when the run has no readable checkpoint."""
    import torch

    path = checkpoints_dir(folder) / "last.pt"
    try:
        return torch.load(path, mmap=True, weights_only=False, map_location="cpu")["state"]
    except Exception:  # noqa: BLE001 — absent or unreadable: the run starts (or says why it cannot) when trained
        return None


def read_record(path: str | Path) -> dict:
    """A record.json, checked against RECORD_SCHEMA; RecordError names the file and what to do."""
    path = Path(path)
    advice = f"delete the folder {path.parent} to train this run again"
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RecordError(f"{path}: unreadable run record ({err}); {advice}") from None
    if not isinstance(record, dict):
        raise RecordError(f"{path}: a run record is a JSON object, found {type(record).__name__}; {advice}")
    missing = [k for k in RECORD_SCHEMA if k not in record]
    if missing:
        raise RecordError(f"{path}: not a complete run record (missing {', '.join(missing)}); {advice}")
    wrong = [k for k, t in RECORD_SCHEMA.items() if not isinstance(record[k], t) or isinstance(record[k], bool)]
    if wrong:
        raise RecordError(f"{path}: run record fields of the wrong type: {', '.join(wrong)}; {advice}")
    if path.parent.name != record["run_id"]:
        raise RecordError(f"{path}: the record is of run {record['run_id']}, not of its folder; {advice}")
    return record


def warn_stale(data: Interactions, config: Config, results_dir: str | Path) -> None:
    """Warn of each record of the same run (dataset, model, seed, config changes) made by another behaviour
    version: it is not reused, the run is trained again."""
    folder = Path(results_dir) / "runs" / data.name / config.model
    changes, version = json.loads(json.dumps(config_changes(config))), behaviour_version(config.model)
    dataset = fingerprint(data)
    for path in sorted(folder.glob(f"{config.model}-s{config.seed}-*/record.json")):
        try:
            record = read_record(path)
        except RecordError:
            continue  # named when that run itself is asked for
        if (record["version"] != version and record["config_changes"] == changes
                and record["dataset"].get("fingerprint") == dataset):
            warnings.warn(f"{path}: a record of this run made by behaviour version {record['version']} (now "
                          f"{version}); not reused, the run is trained again", stacklevel=3)


def check_writable(folder: str | Path, what: str) -> None:
    """ConfigError unless a file can be created in `folder` (made if missing)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"{what} {folder} is not writable ({err.strerror}); choose another folder") from None


def remove_stale_temporaries(folder: Path) -> None:
    """Delete `.*.tmp` files a killed writer left behind in a run folder and its checkpoints (call only while
    holding the run's lock)."""
    checkpoints = checkpoints_dir(folder)
    for where in [folder] if checkpoints.is_relative_to(folder) else [folder, checkpoints]:
        for tmp in where.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)


class RunLock:
    """An exclusive lock on one run folder; a second process gets ConfigError naming the holder."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.lock = FileLock(folder / ".lock", timeout=0)
        self.owner = folder / ".lock-owner"

    def __enter__(self) -> RunLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self.lock.acquire()
        except Timeout:
            holder = self.owner.read_text().strip() if self.owner.exists() else "another process"
            raise ConfigError(f"{self.folder}: this run is being trained by {holder} (lock {self.lock.lock_file}); "
                              "wait for it to finish, then rerun to reuse its record") from None
        self.owner.write_text(f"pid {os.getpid()} on {socket.gethostname()} since "
                              f"{utc_now()}\n")
        return self

    def __exit__(self, *exc) -> None:
        self.owner.unlink(missing_ok=True)
        self.lock.release()
