"""Where run records, datasets, the cache and checkpoints live: one answer for the CLI, the notebooks and the API.

Each folder is the first of:

1. a value passed explicitly: a CLI flag or a function argument, taken as given (a relative
   path is relative to the current directory, as for any path typed by hand);
2. the environment variable `FITMM_RESULTS`, `FITMM_DATA` or `FITMM_CACHE`;
3. a profile's value (`results_dir`, `data_dir` in `fitmm/experiments/profiles.yaml`, which a
   chapter's parameters cell receives), relative to the project root;
4. the default: `<project>/results`, `<project>/data`, `<project>/cache`.

A run's checkpoints go to its folder's `checkpoints/`, or under `FITMM_CHECKPOINTS` (`checkpoints_dir`).

The project root is the folder holding `pyproject.toml` above the `fitmm` package: a source
checkout, installed editable or put on PYTHONPATH. So a notebook opened from `notebooks/`, run by
papermill from any folder, or run by `fitmm reproduce` reads and writes the same `results/`.
Installed without a source tree (a wheel), there is no project root: relative profile values and
the results and data defaults are taken from the current directory (`./results`, `./data`) and the
cache defaults to `~/.cache/fitmm`.

>>> results_dir(default="results/smoke") == project_root() / "results" / "smoke"  # FITMM_RESULTS unset
True
>>> from unittest import mock
>>> with mock.patch.dict(os.environ, {"FITMM_RESULTS": "/tmp/fitmm-results"}):
...     results_dir(default="results/smoke"), results_dir("out")  # the variable beats a profile; a flag beats both
(PosixPath('/tmp/fitmm-results'), PosixPath('out'))
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

ENV = {"results": "FITMM_RESULTS", "data": "FITMM_DATA", "cache": "FITMM_CACHE", "checkpoints": "FITMM_CHECKPOINTS"}


@cache
def project_root() -> Path | None:
    """The source checkout this package was imported from (the folder with pyproject.toml), or None."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() else None


def as_typed(path: str | os.PathLike, root: Path | None = None) -> str:
    """`path` as a command in the book shows it: relative to `root` (default: the project root) when it lies under
    it (what a reader types in a clone), else as it is. A link under the root (data/clothing -> a shared folder)
    stays as named.

    >>> as_typed(project_root() / "data"), as_typed("/elsewhere/data"), as_typed("/a/b/c", Path("/a"))
    ('data', '/elsewhere/data', 'b/c')
    """
    root = project_root() if root is None else root
    if root is not None:
        for where in (Path(os.path.abspath(path)), Path(path).resolve()):  # as named first, then links followed
            if where.is_relative_to(root):
                return str(where.relative_to(root))
    return str(path)


def project_path(value: str | os.PathLike) -> Path:
    """A folder named by a profile: relative to the project root (the current directory without one)."""
    root = project_root()
    return (root if root is not None else Path.cwd()) / Path(value).expanduser()


def _resolve(kind: str, path: str | os.PathLike | None, default: str | os.PathLike | None) -> Path:
    if path is not None:
        return Path(path).expanduser()
    if os.environ.get(ENV[kind]):
        return Path(os.environ[ENV[kind]]).expanduser()
    if kind == "cache" and project_root() is None:
        return Path.home() / ".cache" / "fitmm"
    return project_path(default if default is not None else kind)


def results_dir(path: str | os.PathLike | None = None, default: str | os.PathLike | None = None) -> Path:
    """Where run records are read and written: `path`, else $FITMM_RESULTS, else `default` (a profile's
    `results_dir`) under the project root, else `<project>/results`."""
    return _resolve("results", path, default)


def data_dir(path: str | os.PathLike | None = None, default: str | os.PathLike | None = None) -> Path:
    """The folder holding datasets as `<name>/` in MMRec format: `path`, else $FITMM_DATA, else `default`
    (a profile's `data_dir`, e.g. `../shared/data`) under the project root, else `<project>/data`."""
    return _resolve("data", path, default)


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """Derived graphs, spectra and the generated synthetic benchmark: `path`, else $FITMM_CACHE, else
    `<project>/cache` (`~/.cache/fitmm` without a project root)."""
    return _resolve("cache", path, None)


def checkpoints_dir(run: str | os.PathLike) -> Path:
    """Where the run in folder `run` keeps its last and best state while it trains: `<run>/checkpoints`, or, with
    $FITMM_CHECKPOINTS set, that folder joined with the run folder as typed (relative to the project root when
    under it). Checkpoints (tens of MB a run, never committed) can so live on a scratch disk, or outside a
    checkout that is cloned anew while the machine is kept, and a run resumes from them wherever its results go.

    >>> checkpoints_dir("/elsewhere/runs/toy/bpr/bpr-s1-00000000")  # FITMM_CHECKPOINTS unset
    PosixPath('/elsewhere/runs/toy/bpr/bpr-s1-00000000/checkpoints')
    >>> from unittest import mock
    >>> with mock.patch.dict(os.environ, {"FITMM_CHECKPOINTS": "/scratch/ckpt"}):
    ...     checkpoints_dir(project_root() / "results/runs/toy/bpr/bpr-s1-00000000"), checkpoints_dir("/elsewhere/r")
    (PosixPath('/scratch/ckpt/results/runs/toy/bpr/bpr-s1-00000000'), PosixPath('/scratch/ckpt/elsewhere/r'))
    """
    if not os.environ.get(ENV["checkpoints"]):
        return Path(run) / "checkpoints"
    return Path(os.environ[ENV["checkpoints"]]).expanduser() / as_typed(run).lstrip("/")
