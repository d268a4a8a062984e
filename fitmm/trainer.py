"""One trainer for every model: MMRec's sampling, early stopping, checkpoints and run records.

A run's folder (`fitmm.store`: `results_dir/runs/<dataset>/<model>/<run_id>/`) holds
`record.json`, `per_user.npz` and `analysis.json` (what the book's chapters use from the trained
model, `Recommender.analysis`) once it has finished (and `trace.npz` when traced, `fitmm.trace`), and
`checkpoints/` (last and best state; elsewhere with $FITMM_CHECKPOINTS, `fitmm.settings.checkpoints_dir`)
while it runs, so an interrupted run resumes where it stopped. Randomness is
drawn per epoch from (seed, epoch), which makes a resumed run identical to an
uninterrupted one. One process at a time trains a run (a lock on its folder).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import re
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.nn.utils import get_total_norm
from tqdm.auto import tqdm

from fitmm.allocator import release_freed_memory, reuse_freed_memory
from fitmm.cache import fingerprint
from fitmm.config import Config, resolve_device
from fitmm.data.dataset import Interactions
from fitmm.errors import TrainingError
from fitmm.io import atomic_path, provenance, torch_save, write_json
from fitmm.metrics import evaluate
from fitmm.models import MODELS
from fitmm.models.base import Batch, Recommender
from fitmm.settings import cache_dir, checkpoints_dir
from fitmm.trace import add_epoch, new_trace, save_trace
from fitmm.store import (RecordError, RunLock, behaviour_version, check_writable, config_changes, finished,
                         read_record, remove_stale_temporaries, run_dir, run_id, warn_stale)


class NegativeSampler:
    """MMRec's sampler: shuffled train pairs, one uniform negative per positive, redrawn while it is a train item.

    `negative_items`: "train" draws negatives only among the items that occur in the train split (MMRec's
    data loader: its item set is the train split's), "all" among every item.
    """

    def __init__(self, data: Interactions, batch_size: int, negative_items: str = "train", distinct: bool = True):
        self.pairs = data.train
        self.n_items = data.n_items
        self.batch_size = batch_size
        self.distinct = distinct  # batches carry their distinct ids (Batch)
        self.known = np.sort(self.pairs[:, 0].astype(np.int64) * self.n_items + self.pairs[:, 1])
        self.candidates = (np.unique(self.pairs[:, 1]).astype(np.int64) if negative_items == "train"
                           else np.arange(self.n_items, dtype=np.int64))

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.candidates[rng.integers(0, len(self.candidates), size=n)]

    def is_known(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        keys = users.astype(np.int64) * self.n_items + items
        pos = np.searchsorted(self.known, keys).clip(max=len(self.known) - 1)
        return self.known[pos] == keys

    def sample_negatives(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        negatives = self.draw(len(users), rng)
        bad = np.flatnonzero(self.is_known(users, negatives))
        while len(bad):
            negatives[bad] = self.draw(len(bad), rng)
            bad = bad[self.is_known(users[bad], negatives[bad])]
        return negatives

    def epoch(self, rng: np.random.Generator) -> Iterator[Batch]:
        """Yield the epoch's batches, on the host."""
        order = rng.permutation(len(self.pairs))
        users, positives = self.pairs[order, 0], self.pairs[order, 1]
        negatives = self.sample_negatives(users, rng)
        for start in range(0, len(order), self.batch_size):
            s = slice(start, start + self.batch_size)
            yield Batch.of(users[s], positives[s], negatives[s], self.distinct)

    def __len__(self) -> int:
        return math.ceil(len(self.pairs) / self.batch_size)


def learning_rate(config: Config, epoch: int) -> float:
    """MMRec's per-epoch schedule (its trainer's LambdaLR, stepped once per epoch):
    lr · lr_decay^(epoch / lr_decay_every); MMRec's default lr_decay 1.0 keeps lr constant."""
    return config.lr * config.lr_decay ** (epoch / config.lr_decay_every)


def build_model(data: Interactions, config: Config, device: torch.device) -> Recommender:
    model_class = MODELS[config.model]
    model_class.check_data(config, data)
    torch.manual_seed(config.seed)
    return model_class(data, config).to(device)


def reset_peak_memory(device: torch.device) -> None:
    """Open a run's peak-memory window: CUDA's peak counter, or on Linux the process's resident-set high-water
    mark (a notebook trains many models in one process; without the reset each would inherit the largest)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # not Linux: the peak stays the process's since it started (ru_maxrss)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory since `reset_peak_memory`: CUDA allocations, or the resident set (VmHWM; else ru_maxrss)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        return int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _evaluate(model: Recommender, data: Interactions, split: str, config: Config, device: torch.device,
              item_hits: bool = False):
    model.eval()
    with torch.no_grad():
        scorer = model.scorer()
        k = int(config.valid_metric.partition("@")[2]) if item_hits else None
        return evaluate(scorer, data, split, config.topk, config.eval_batch_users, device, item_hits_at=k)


def _squared_norms(groups: list[list[torch.Tensor]], device: torch.device) -> torch.Tensor:
    """(groups,) squared gradient norm of each parameter group, on the device (no sync; one fused norm per group)."""
    zero = torch.zeros((), device=device)
    grads = [[p.grad for p in params if p.grad is not None] for params in groups]
    return torch.stack([get_total_norm(g) if g else zero for g in grads]).square()


def preflight(results_dir: str | Path | None) -> None:
    """Check, before any data is read or compute starts, that results and cache can be written."""
    if results_dir is not None:
        check_writable(results_dir, "results directory")
    check_writable(cache_dir(), "cache directory (FITMM_CACHE)")


def train(data: Interactions, config: Config, results_dir: str | Path | None = None, progress: bool = True,
          trace: bool = False) -> dict:
    """Train (or fit) `config.model` on `data`; return the run record.

    With `results_dir`, a finished run is read back instead of retrained, an
    unfinished one resumes from its last checkpoint, and the record is written there.
    With `trace` (trainable models), the run folder also gets `trace.npz` (`fitmm.trace`); a run that
    finished untraced is trained again (tracing changes nothing else it computes, so the id is the same).
    """
    MODELS[config.model].check_data(config, data)
    trace = trace and MODELS[config.model].trainable
    if results_dir is None:
        return _run(data, config, None, progress, trace)
    preflight(results_dir)
    out = run_dir(data, config, results_dir)
    if finished(out, trace):
        return read_record(out / "record.json")
    warn_stale(data, config, results_dir)
    with RunLock(out):
        if finished(out, trace):  # finished by the process that held the lock before us
            return read_record(out / "record.json")
        remove_stale_temporaries(out)
        if (out / "record.json").exists():  # finished untraced: the same run again from its first epoch, traced
            print(f"{out}: finished without a trace; training it again, traced", file=sys.stderr)
            shutil.rmtree(checkpoints_dir(out), ignore_errors=True)
        return _run(data, config, out, progress, trace)


def _run(data: Interactions, config: Config, out: Path | None, progress: bool, trace: bool = False) -> dict:
    device = resolve_device(config.device)
    started_with = provenance(device)  # the code this run starts with, whatever is committed while it trains
    release_freed_memory()  # what an earlier run in this process kept is not this run's
    reuse_freed_memory()
    reset_peak_memory(device)
    if MODELS[config.model].trainable:
        model, record = _train_sgd(data, config, device, out, progress, trace)
    else:
        model, record = _fit_closed_form(data, config, device, progress)
    t0 = time.perf_counter()
    test, per_user = _evaluate(model, data, "test", config, device)
    record["wall_seconds"] += time.perf_counter() - t0
    record.update(
        run_id=run_id(data, config),
        model=config.model,
        version=behaviour_version(config.model),
        dataset={**data.stats(), "fingerprint": fingerprint(data)},
        data_path=str(data.path) if data.path else None,
        seed=config.seed,
        config=config.to_dict(),
        config_changes=config_changes(config),
        test=test,
        peak_memory_mb=peak_memory_mb(device),
        provenance=started_with,
        diagnostics=model.diagnostics(),
    )
    if out is not None:
        write_json(out / "analysis.json", model.analysis(data))
        with atomic_path(out / "per_user.npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **per_user)
        write_json(out / "record.json", record)
    return record


def _fit_closed_form(data: Interactions, config: Config, device: torch.device, progress: bool):
    """Pick the grid value with the best valid metric (model keys `<key>_grid`), refit, return."""
    grid_keys = [f.name for f in dataclasses.fields(config) if f.name.endswith("_grid") and getattr(config, f.name)]
    names = [k[: -len("_grid")] for k in grid_keys]
    candidates = list(itertools.product(*(getattr(config, k) for k in grid_keys))) or [()]
    history, best = [], None
    metric = config.valid_metric
    for values in tqdm(candidates, desc=f"{config.model} grid", disable=not progress):
        model = build_model(data, config.replace(**dict(zip(names, values))), device)
        t0 = time.perf_counter()
        model.fit()
        fit_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        valid, _ = _evaluate(model, data, "valid", config, device)
        history.append({**dict(zip(names, values)), "valid": valid, "fit_seconds": fit_seconds, "eval_seconds": time.perf_counter() - t0})
        if best is None or valid[metric] > best[1][metric]:
            best = (model, valid, dict(zip(names, values)))
    model, valid, chosen = best
    record = {"history": history, "chosen": chosen, "best_valid": valid, "best_epoch": None, "epochs": 0,
              "seconds_per_epoch": None,
              "eval_seconds": float(np.mean([h["eval_seconds"] for h in history])),
              "wall_seconds": float(sum(h["fit_seconds"] + h["eval_seconds"] for h in history))}
    return model, record


def _load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, weights_only=False)
    except Exception as err:  # noqa: BLE001 — any failure to unpickle means the file cannot be trusted
        raise RecordError(f"{path}: unreadable checkpoint ({type(err).__name__}: {err}); delete the folder "
                          f"{path.parent} to restart this run from its first epoch") from None


def make_optimizer(model: Recommender, config: Config) -> torch.optim.Adam:
    """The trainer's Adam (lr, weight_decay from the config), fused: one pass per parameter for the whole
    update, the same Adam at a tenth of the unfused step's time on CPU (13M parameters, 1 thread)."""
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)


def _train_sgd(data: Interactions, config: Config, device: torch.device, out: Path | None, progress: bool,
               trace: bool = False):
    model = build_model(data, config, device)
    sampler = NegativeSampler(data, config.batch_size, config.negative_items, model.batch_distinct_ids)
    optimizer = make_optimizer(model, config)
    metric = config.valid_metric
    state = {"epoch": 0, "history": [], "best_valid": None, "best_epoch": None, "since_best": 0, "wall_seconds": 0.0,
             "trace": new_trace() if trace else None}
    group_names, groups = zip(*model.parameter_groups().items())
    best_state = copy.deepcopy(model.state_dict())
    ckpt = checkpoints_dir(out) if out is not None else None
    if ckpt is not None and (ckpt / "last.pt").exists():
        saved = _load_checkpoint(ckpt / "last.pt")
        best_state = _load_checkpoint(ckpt / "best.pt")
        try:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            state = saved["state"]
        except (KeyError, TypeError, RuntimeError, ValueError) as err:
            raise RecordError(f"{ckpt / 'last.pt'}: checkpoint does not match this run ({err}); delete the folder "
                              f"{ckpt} to restart this run from its first epoch") from None
    if trace and state.get("trace") is None:  # resumed from a run started untraced: trace from here on
        state["trace"] = new_trace()
    resumed_at = state["epoch"]
    bar = tqdm(range(state["epoch"], config.epochs), desc=f"{config.model} on {data.name}",
               initial=state["epoch"], total=config.epochs, disable=not progress)
    for epoch in bar:
        if state["since_best"] > config.patience:  # MMRec: stop once the epochs since the best exceed it
            break
        t0 = time.perf_counter()
        rng = np.random.default_rng([config.seed, epoch])
        torch.manual_seed(config.seed * 100_003 + epoch)
        for group in optimizer.param_groups:  # a function of the epoch alone, so a resumed run gets the same lr
            group["lr"] = learning_rate(config, epoch)
        model.on_epoch_start(epoch)
        model.train()
        sums: dict[str, torch.Tensor] = {}  # on the device: read back once per epoch, no sync per batch
        grad_sq = torch.zeros(len(groups), device=device)  # Σ over batches of each group's ‖grad‖²
        for batch in sampler.epoch(rng):
            terms = model.loss_terms(batch.to(device))
            loss = sum(terms.values())
            for name, value in terms.items():
                sums[name] = sums[name] + value.detach() if name in sums else value.detach()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_sq += _squared_norms(groups, device)
            optimizer.step()
        sums = dict(zip(sums, torch.stack(list(sums.values())).tolist())) if sums else {}
        for name, value in sums.items():  # a non-finite term makes its epoch sum non-finite
            if not math.isfinite(value):
                raise TrainingError(f"non-finite loss term {name!r} (its sum over epoch {epoch} is {value}); stopping the run")
        train_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        valid, valid_per_user = _evaluate(model, data, "valid", config, device, item_hits=trace)
        eval_seconds = time.perf_counter() - t0
        losses = {k: v / len(sampler) for k, v in sums.items()}
        grad_norms = dict(zip(group_names, (grad_sq / len(sampler)).sqrt().tolist()))  # RMS over the batches
        state["history"].append({"epoch": epoch, "losses": losses, "valid": valid, "grad_norms": grad_norms,
                                 "diagnostics": model.epoch_diagnostics(),
                                 "train_seconds": train_seconds, "eval_seconds": eval_seconds})
        if trace:
            with torch.no_grad():
                add_epoch(state["trace"], epoch, valid_per_user, config.valid_metric, model.embeddings()[1])
        if state["best_valid"] is None or valid[metric] > state["best_valid"][metric]:
            state.update(best_valid=valid, best_epoch=epoch, since_best=0)
            best_state = copy.deepcopy(model.state_dict())
            if ckpt is not None:
                torch_save(ckpt / "best.pt", best_state)
        else:
            state["since_best"] += 1
        state["epoch"] = epoch + 1
        state["wall_seconds"] += train_seconds + eval_seconds
        if ckpt is not None:
            torch_save(ckpt / "last.pt", {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": state})
        bar.set_postfix(loss=f"{sum(losses.values()):.4f}", **{metric: f"{valid[metric]:.4f}"},
                        best=f"{state['best_valid'][metric]:.4f}")
    bar.close()
    model.load_state_dict(best_state)
    history = state["history"]
    if trace and out is not None and state["trace"]["epochs"]:
        save_trace(state["trace"], out / "trace.npz")
    record = {
        "history": history,
        "best_epoch": state["best_epoch"],
        "best_valid": state["best_valid"],
        "epochs": state["epoch"],
        "stopped_early": state["epoch"] < config.epochs,
        "resumed_at_epoch": resumed_at or None,
        "seconds_per_epoch": float(np.mean([h["train_seconds"] for h in history])) if history else None,
        "eval_seconds": float(np.mean([h["eval_seconds"] for h in history])) if history else None,
        "wall_seconds": state["wall_seconds"],
    }
    return model, record
