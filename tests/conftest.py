"""Fixtures shared by the test modules: an isolated cache, the synthetic benchmark at test size, random graphs,
a snapshot of a folder's files, and a run killed after its first checkpoint."""

from pathlib import Path

import numpy as np
import pytest
import torch

from fitmm.data import Interactions, synthetic_dataset
from fitmm.graphs import scipy_to_torch_csr, user_item_adjacency


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """One fresh $FITMM_CACHE for the session (subprocesses inherit it): tests never touch ~/.cache/fitmm; and no
    $FITMM_CHECKPOINTS of the developer's: a run's checkpoints are in its folder unless a test says otherwise."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FITMM_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.delenv("FITMM_CHECKPOINTS", raising=False)
        yield


@pytest.fixture(scope="session")
def synthetic() -> Interactions:
    """The embedded synthetic benchmark (planted structure, image and text) with 300 users and 200 items."""
    return synthetic_dataset(n_users=300, n_items=200, seed=4)


def train_killed_after_first_checkpoint(data: Interactions, config, results_dir) -> None:
    """Train `config` on `data` under `results_dir` until its first `last.pt` is written, then die as a killed
    run does (KeyboardInterrupt): the checkpoint it leaves is a real one."""
    from fitmm import trainer

    saved = trainer.torch_save

    def save_then_die(path, obj):
        saved(path, obj)
        if path.name == "last.pt":
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer, "torch_save", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            trainer.train(data, config, results_dir=results_dir, progress=False)


def file_states(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under `root` with its size and mtime: what a command wrote, if anything. A path that
    vanishes while the folder is walked (a checkpoint's temporary file, say) is left out."""
    states = {}
    for path in root.rglob("*"):
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue
        states[str(path.relative_to(root))] = (info.st_size, info.st_mtime_ns)
    return states


def random_user_item_adjacency(n_users: int, n_items: int, seed: int = 0) -> torch.Tensor:
    """Â (CSR) of a random user-item graph with 5-core-like users (degree 5 + a geometric tail) and
    long-tailed (Pareto) item popularity."""
    rng = np.random.default_rng(seed)
    popularity = rng.pareto(1.2, n_items) + 1
    popularity /= popularity.sum()
    degree = np.minimum(4 + rng.geometric(0.3, n_users), n_items // 2)
    pairs = np.array([(u, i) for u, d in enumerate(degree) for i in rng.choice(n_items, d, replace=False, p=popularity)])
    return scipy_to_torch_csr(user_item_adjacency(pairs, n_users, n_items))


@pytest.fixture(scope="session")
def small_graph() -> torch.Tensor:
    """Â of a random 60-user, 40-item graph: small enough for dense references."""
    return random_user_item_adjacency(60, 40, seed=1)


@pytest.fixture(scope="session")
def medium_graph() -> torch.Tensor:
    """Â of a random 1,500-user, 800-item graph: large enough for spectral statistics."""
    return random_user_item_adjacency(1500, 800, seed=0)


@pytest.fixture
def one_thread():
    """One torch thread: on tiny tensors, OpenMP spin-waits on a busy 2-core box cost 10x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
