"""Run a batch of tasks: N processes on this machine, or a SLURM job array through submitit.

A task is any picklable zero-argument callable whose `str()` names it: one training run
(`fitmm.experiments.runs.Training`), or one tuning worker. A task with a `finished()` method
that returns True is counted as reused and not run. Every attempt writes its own log under
`log_dir` (its output, epoch bars included: `tail -f` it to follow a run); a failed task is
retried once, and the batch ends with a `Summary`:

    local   a pool of `jobs` spawned processes, each with cores // jobs threads (at least 1; at most
            the caller's OMP_NUM_THREADS where set: on a shared machine, more threads than free
            cores spin-wait and slow every run down); on Linux the workers end when the batch's
            process does (killed or interrupted), so no run goes on training unwatched
    slurm   one job array per attempt (submitit), `SlurmOptions` per array task; the job runs this
            interpreter with this package's folder on PYTHONPATH, so the folder must be on a file
            system the compute nodes share (as the results directory must be)

Runs stay idempotent across attempts and executors because `fitmm.trainer.train` reads a
finished record back and resumes an interrupted run from its last checkpoint.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import sys
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from tqdm.auto import tqdm

import fitmm
from fitmm.errors import DataError, TrainingError

EXECUTORS = ("local", "slurm")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class SlurmOptions:
    """Resources of each array task (sbatch's --partition, --time in minutes, --cpus-per-task,
    --gpus-per-node, --mem); None leaves the cluster's default."""

    partition: str | None = None
    time: int = 60
    cpus_per_task: int = 1
    gpus: int = 0
    mem: str | None = None


@dataclass(frozen=True)
class Failure:
    name: str
    log: str
    error: str


@dataclass
class Summary:
    """Names of the tasks that ran to the end, that were reused (already finished), and that failed twice."""

    done: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{len(self.done)} done, {len(self.reused)} reused, {len(self.failed)} failed"]
        lines += [f"  failed: {f.name}: {f.error} (log: {f.log})" for f in self.failed]
        return "\n".join(lines)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_per_job(jobs: int) -> int:
    """cores // jobs, at least 1, at most the caller's OMP_NUM_THREADS where set."""
    threads = max(1, cores() // jobs)
    cap = os.environ.get("OMP_NUM_THREADS", "")
    return min(threads, int(cap)) if cap.isdigit() and int(cap) > 0 else threads


def set_threads(threads: int) -> None:
    """This process's thread count for OpenMP/BLAS (children too) and torch's intra-op pool."""
    import torch

    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    torch.set_num_threads(threads)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")[:80]


def _run_logged(task: Callable[[], object], log: str, threads: int) -> str | None:
    """Run `task` in a pool worker with stdout and stderr (file descriptors too) sent to `log`;
    return None, or the error with the traceback left in the log."""
    set_threads(threads)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(log, "w") as fh:
        for fd in (1, 2):
            os.dup2(fh.fileno(), fd)
        try:
            task()
            return None
        except Exception as err:  # noqa: BLE001 — reported in the summary, the batch goes on
            traceback.print_exc()
            return f"{type(err).__name__}: {err}"
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in zip((1, 2), saved):
                os.dup2(copy, fd)
                os.close(copy)


PR_SET_PDEATHSIG = 1  # prctl(2)


def _die_with_parent(parent: int) -> None:
    """Pool-worker initializer: on Linux, ask the kernel to send this worker SIGTERM when the process that
    started it dies (killed, interrupted), so a run is not left training as an orphan; its lock is released by
    the kernel and its last checkpoint resumes it. Elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _local(tasks: list, logs: list[str], jobs: int) -> list[tuple[str | None, str]]:
    """(error or None, log) per task, from a pool of `jobs` processes that end with this one."""
    threads = threads_per_job(jobs)
    out: list[tuple[str | None, str]] = [("not run", log) for log in logs]
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_die_with_parent,
                             initargs=(os.getpid(),)) as pool:
        futures = {pool.submit(_run_logged, t, log, threads): i for i, (t, log) in enumerate(zip(tasks, logs))}
        for future in tqdm(as_completed(futures), total=len(futures), desc=f"local x{jobs}", unit="task"):
            i = futures[future]
            try:
                out[i] = (future.result(), logs[i])
            except Exception as err:  # noqa: BLE001 — the worker died (e.g. killed for memory)
                out[i] = (f"{type(err).__name__}: {err}", logs[i])
    return out


def _slurm_call(task: Callable[[], object], threads: int) -> object:
    """What each array task runs on its node."""
    set_threads(threads)
    return task()


def _slurm(tasks: list, log_dir: Path, attempt: int, options: SlurmOptions) -> list[tuple[str | None, str]]:
    """(error or None, log) per task, from one job array (submitit)."""
    import submitit

    package_root = Path(fitmm.__file__).resolve().parent.parent
    executor = submitit.SlurmExecutor(folder=log_dir / "slurm", python=sys.executable)
    executor.update_parameters(
        job_name=f"fitmm-{attempt}", partition=options.partition, time=options.time,
        cpus_per_task=options.cpus_per_task, gpus_per_node=options.gpus or None, mem=options.mem,
        stderr_to_stdout=True,
        setup=[f"export PYTHONPATH={package_root}${{PYTHONPATH:+:$PYTHONPATH}}",
               *(f"export {name}={options.cpus_per_task}" for name in THREAD_VARIABLES)])
    try:
        jobs = executor.map_array(_slurm_call, tasks, [options.cpus_per_task] * len(tasks))
    except (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError) as err:  # sbatch said no
        raise TrainingError(f"sbatch refused the job array ({options}): {str(err).strip()}") from err
    print(f"slurm: submitted job array {jobs[0].job_id.split('_')[0]} ({len(jobs)} tasks), logs in {log_dir / 'slurm'}")
    index = {job.job_id: i for i, job in enumerate(jobs)}
    out: list[tuple[str | None, str]] = [("not run", "") for _ in jobs]
    for job in tqdm(submitit.helpers.as_completed(jobs, poll_frequency=2), total=len(jobs), desc="slurm", unit="task"):
        error = job.exception()
        i = index[job.job_id]
        out[i] = (None if error is None else f"{type(error).__name__}: {str(error).strip().splitlines()[-1]}",
                  str(job.paths.stdout))
        tqdm.write(f"slurm: job {job.job_id} finished ({'ok' if error is None else 'failed'}): {tasks[i]}")
    return out


def execute(tasks: Iterable[Callable[[], object]], executor: str = "local", jobs: int = 1,
            slurm: SlurmOptions | None = None, log_dir: str | Path = "logs", retries: int = 1) -> Summary:
    """Run every unfinished task (`executor` 'local' with `jobs` processes, or 'slurm'), retry the
    failed ones `retries` times, and return what was done, reused and failed (with its last log)."""
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    summary = Summary()
    pending, stems = [], {}
    for i, task in enumerate(tasks):
        finished = getattr(task, "finished", None)
        if finished is not None and finished():
            summary.reused.append(str(task))
        else:
            pending.append(task)
            stems[id(task)] = f"{i:04d}-{_slug(str(task))}"
    for attempt in range(retries + 1):
        if not pending:
            break
        if attempt:
            print(f"retrying {len(pending)} failed task(s)")
        if executor == "local":
            if not attempt:
                print(f"local: each task's output (its progress bars too) goes to its log in {log_dir}")
            outcome = _local(pending, [str(log_dir / f"{stems[id(t)]}.{attempt}.log") for t in pending], jobs)
        else:
            outcome = _slurm(pending, log_dir, attempt, slurm or SlurmOptions())
        summary.done += [str(t) for t, (error, _) in zip(pending, outcome) if error is None]
        last = attempt == retries
        for t, (error, log) in zip(pending, outcome):
            if error is not None:
                print(f"failed: {t}: {error} (log: {log})")
                if last:
                    summary.failed.append(Failure(str(t), log, error))
        pending = [t for t, (error, _) in zip(pending, outcome) if error is not None]
    return summary


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 1, got {text}")
    return value


def add_arguments(cmd: argparse.ArgumentParser, unit: str) -> None:
    """`--executor`, `--jobs` and the SLURM resources of each `unit` (a run, a tuning worker)."""
    cmd.add_argument("--executor", choices=EXECUTORS, default="local",
                     help=f"where each {unit} executes: processes here, or a SLURM job array (submitit)")
    cmd.add_argument("--jobs", type=positive, default=1,
                     help=f"local executor: {unit}s at once (each gets cores // jobs threads)")
    slurm = cmd.add_argument_group("slurm executor")
    slurm.add_argument("--partition", help="SLURM partition")
    slurm.add_argument("--time", type=positive, metavar="MINUTES", help=f"time limit of each {unit}")
    slurm.add_argument("--cpus-per-task", type=positive, help=f"CPUs (and threads) of each {unit}")
    slurm.add_argument("--gpus", type=int, help=f"GPUs of each {unit}")
    slurm.add_argument("--mem", help=f"memory of each {unit}, e.g. 16G")


def slurm_options(args: argparse.Namespace, section: dict | None = None, where: str = "") -> SlurmOptions:
    """`section` (e.g. a profile's `slurm:` in profiles.yaml), each flag given overriding its key."""
    flags = {"partition": args.partition, "time": args.time, "cpus_per_task": args.cpus_per_task,
             "gpus": args.gpus, "mem": args.mem}
    merged = {**(section or {}), **{k: v for k, v in flags.items() if v is not None}}
    known = set(SlurmOptions.__dataclass_fields__)
    unknown = sorted(set(merged) - known)
    if unknown:
        raise DataError(f"{where}slurm: unknown key(s) {', '.join(unknown)}; expected some of {', '.join(sorted(known))}")
    return SlurmOptions(**merged)
