"""The work of a GPU lease (benchmarks/device_batch.sh's WORK), from what a profile still lacks here.

    python benchmarks/device_work.py --data-dir data [--profile full --max-jobs 16] > .device/work.txt

No run record travels to the device, so there every planned run looks unfinished: the work names each run
still to train here by its label ('ssr on sports, seed 1'), which `fitmm reproduce --runs-matching` selects.
One line per job, all started at once by device_batch.sh:
- one `reproduce` line for every planned run not finished here (all chapters: the device needs every dataset);
- per unfinished search, a `tune` line that finishes it (`--reclaim` frees the trials left running here), then,
  joined by ' && ', the `reproduce` of its model's runs on its dataset for the profile's other seeds (the
  search's own seed is its chosen trial's record), which can be planned only once the search has finished.
Nothing is printed when nothing is left. Prints to stdout; the summary goes to stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fitmm.config import load_config
from fitmm.experiments.plan import pending_searches
from fitmm.reproduce import planned_runs, profiles
from fitmm.tune import tune_command

ROOT = Path(__file__).resolve().parents[1]


def quoted(labels: list[str]) -> str:
    return " ".join(f'"{label}"' for label in labels)


def work_lines(profile_name: str, data_dir: str | None, results_dir: str | None, max_jobs: int) -> list[str]:
    """The WORK lines (see the module docstring)."""
    with pending_searches() as pending:
        _, _, by_chapter, _ = planned_runs(profile_name, ROOT, None, results_dir, data_dir)
    tasks = {t.spec.key(): t for ts in by_chapter.values() for t in ts}  # each run once
    left = [str(t.spec) for t in tasks.values() if not t.finished()]
    lines = []
    if left:
        lines.append(f"reproduce --profile {profile_name} --runs-only --jobs {min(len(left), max_jobs)} "
                     f"--runs-matching {quoted(left)}")
    seeds = profiles()[profile_name]["seeds"]
    for (dataset, model), (done, size, fixed) in sorted(pending.items()):
        search = tune_command(model, dataset, size, "results", fixed).removeprefix("fitmm ")
        search_seed = load_config(model, fixed).seed  # its chosen trial is the run of that seed
        after = [f"{model} on {dataset}, seed {seed}" for seed in seeds if seed != search_seed]
        lines.append(f"{search} --jobs {min(size - done, max_jobs)} --reclaim --quiet && reproduce --profile "
                     f"{profile_name} --runs-only --jobs {len(after)} --runs-matching {quoted(after)}")
    print(f"device_work: {len(left)} run(s) still to train, {len(pending)} search(es) not finished", file=sys.stderr)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="full")
    ap.add_argument("--data-dir", help="the profile's datasets (default: the profile's data_dir)")
    ap.add_argument("--results-dir", help="the records and journals here (default: the profile's results_dir)")
    ap.add_argument("--max-jobs", type=int, default=16, help="runs (or search workers) at once, per line")
    args = ap.parse_args()
    print("\n".join(work_lines(args.profile, args.data_dir, args.results_dir, args.max_jobs)))


if __name__ == "__main__":
    main()
