"""The runs a profile needs: one small, picklable `RunSpec` per training run, planned per chapter.

Each `*_runs` function takes the notebook parameters of the same name (`profiles.yaml`) and
returns its chapter's runs; the notebooks train-or-read exactly these (`runs.run_specs`), and
`plan(profile)` calls the same functions with the profile's values, so `fitmm reproduce` can
execute every run up front (`fitmm.executor`) and the notebooks then only read records.

    DataSpec   how to build a dataset in any process: a named set, with train edges dropped
               (sparsification chapter) or a synthetic graph of a given size (cost chapter)
    RunSpec    DataSpec + model + seed + config overrides (+ the ablation label it belongs to, and whether
               the run is traced: `fitmm.trace`, the diagnosis chapter)
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import inspect
import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from fitmm import settings
from fitmm.config import Config, load_config
from fitmm.data import get_dataset, synthetic_dataset
from fitmm.data.dataset import Interactions
from fitmm.errors import ConfigError, DataError
from fitmm.experiments import claims


SNR_CHECK = "snr check"  # the label of the theory chapter's band-weight run (`theory_runs`)
RECORDS_ONLY = "FITMM_RECORDS_ONLY"  # set to 1: read records, train nothing (`runs.run_specs`)
# Inside `pending_searches()`: where unfinished searches are noted instead of raised (`Tuning.overrides`).
_PENDING: contextvars.ContextVar[dict | None] = contextvars.ContextVar("pending_searches", default=None)


@dataclass(frozen=True)
class DataSpec:
    """A dataset by recipe: `name` from `data_dir` (or the embedded synthetic set), then either
    `drop` > 0 of its train edges dropped with `seed` (`groups.sparsify`), or, with `size`
    = (users, items), a synthetic graph of that size generated with `seed` instead."""

    name: str
    data_dir: str | None = None
    drop: float = 0.0
    size: tuple[int, int] | None = None
    seed: int = 0

    @property
    def label(self) -> str:
        """The built dataset's name (what its run folders are filed under)."""
        if self.size is not None:
            return f"{self.name}-u{self.size[0]}-i{self.size[1]}"
        return f"{self.name}-drop{round(100 * self.drop)}-s{self.seed}" if self.drop else self.name

    def load(self) -> Interactions:
        return _load(self)


@functools.lru_cache(maxsize=16)
def _load(spec: DataSpec) -> Interactions:
    """Build a dataset once per process: a grid runs every model and seed of a dataset in a row, and a
    sparsified copy re-reads its (still cached) base."""
    from fitmm.experiments.groups import sparsify  # groups imports runs, which imports this module

    if spec.size is not None:
        return dataclasses.replace(synthetic_dataset(*spec.size, spec.seed), name=spec.label)
    if spec.drop:
        return sparsify(_load(dataclasses.replace(spec, drop=0.0, seed=0)), spec.drop, spec.seed)
    return get_dataset(spec.name, spec.data_dir)


def seeds_phrase(seeds: Sequence) -> str:
    """'seed 1' or 'seeds 999, 1, 2': how notes and listings name the seeds of one group of runs."""
    return f"seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))}"


@dataclass(frozen=True)
class RunSpec:
    """One training run: `config()` is what `fitmm.trainer.train` gets, `data.load()` its data; `trace`
    asks for its per-epoch trace too (which does not change what it trains, so it is not part of `key`).
    `waiting_for`, set only when records are read (`RECORDS_ONLY`): the unfinished search its configuration
    comes from, so the chapter notes the run instead of reading it."""

    data: DataSpec
    model: str
    seed: int
    overrides: dict[str, Any] = field(default_factory=dict, hash=False)
    variant: str = ""
    trace: bool = False
    waiting_for: str = ""

    def config(self) -> Config:
        return load_config(self.model, {**self.overrides, "seed": self.seed})

    def key(self) -> str:
        """What makes two specs the same run (the variant label is only a name, the trace an extra output)."""
        return json.dumps([dataclasses.asdict(self.data), self.model, self.seed, self.overrides], sort_keys=True)

    @property
    def group(self) -> str:
        """The runs this one belongs with, whatever the seed: 'model [variant] on dataset'."""
        return f"{self.model}{f' [{self.variant}]' if self.variant else ''} on {self.data.label}"

    def __str__(self) -> str:
        return f"{self.group}, seed {self.seed}"


@dataclass(frozen=True)
class Tuning:
    """Where a tuned profile's configurations come from: the `fitmm tune` searches of `trials` trials under
    `results_dir` (`tune.chosen_overrides`, per model and dataset)."""

    trials: int
    results_dir: str

    def overrides(self, model: str, data: DataSpec) -> dict | None:
        """The chosen overrides of `model` on `data`'s base dataset; {} when there is no search because the model
        cannot run on that dataset (no item content): the run is then skipped with the model's own message.
        A search that has not finished raises ConfigError, or inside `pending_searches()` is noted there and
        gives None (the runs that need it are left out of the plan)."""
        from fitmm.models import MODELS
        from fitmm.tune import chosen_overrides, search_progress, tune_command  # only tuned profiles need these

        try:
            return chosen_overrides(model, data.name, self.trials, self.results_dir)
        except ConfigError as untuned:
            try:
                base = dataclasses.replace(data, drop=0.0, seed=0).load()
            except DataError as unreadable:  # the data comes first: its search cannot run without it either
                raise ConfigError(f"{unreadable}; the plan needs it for {model}, whose search has not finished "
                                  f"({untuned})") from None
            fixed = MODELS[model].fallback_overrides(base)
            try:
                MODELS[model].check_data(load_config(model, fixed), base)
            except ConfigError:
                return {}
            pending = _PENDING.get()
            if pending is None:
                if not fixed:
                    raise
                raise ConfigError(f"{untuned}; on {data.name} its search runs as "
                                  f"`{tune_command(model, data.name, self.trials, self.results_dir, fixed)}`") from None
            pending[data.name, model] = (*search_progress(model, data.name, self.trials, self.results_dir), fixed)
            return None


@contextlib.contextmanager
def pending_searches():
    """Plan leniently: inside the block, {(dataset, model): (finished trials, trials needed, the search's --set
    overrides)} of each search the plan needs that has not finished, whose runs the plan leaves out."""
    token = _PENDING.set({})
    try:
        yield _PENDING.get()
    finally:
        _PENDING.reset(token)


def noted_searches() -> dict:
    """What the innermost `pending_searches()` block has noted so far ({} outside one)."""
    return _PENDING.get() or {}


def tuning(tuning_trials: int | None, results_dir: str) -> Tuning | None:
    """A profile's `tuning_trials` (None: every model in its YAML configuration) as a `Tuning`."""
    return None if tuning_trials is None else Tuning(int(tuning_trials), str(results_dir))


def grid(data: Sequence[DataSpec], models: Sequence[str], seeds: Sequence[int], overrides: dict | None = None,
         variants: dict[str, dict] | None = None, tuned: Tuning | None = None) -> list[RunSpec]:
    """Every (dataset, model, variant, seed), in that nesting order; `overrides` apply to every run on top of
    the model's tuned configuration on the dataset (with `tuned`), `variants` maps a label to extra overrides
    (default: one unlabelled variant). A closed-form model (EASE) gives the same result for every seed, so it
    runs once, with the first seed."""
    from fitmm.models import MODELS

    chosen, waiting = _configurations(data, models, tuned)
    runs_of = {model: seeds if getattr(MODELS.get(model), "trainable", True) else seeds[:1] for model in models}
    return [RunSpec(d, model, seed, {**chosen[d.name, model], **(overrides or {}), **extra}, label,
                    waiting_for=waiting.get((d.name, model), ""))
            for d in data for model in models if chosen[d.name, model] is not None
            for label, extra in (variants or {"": {}}).items() for seed in runs_of[model]]


def _configurations(data: Sequence[DataSpec], models: Sequence[str],
                    tuned: Tuning | None) -> tuple[dict[tuple[str, str], dict | None], dict[tuple[str, str], str]]:
    """Each (dataset, model)'s overrides (`Tuning.overrides`; {} untuned), and why a run waits: {(dataset, model):
    message}. Inside `pending_searches()` a run whose search has not finished is left out (None); when records are
    only read (`RECORDS_ONLY`), it is kept with its search's fixed overrides and the message, so that a chapter
    shows the study as far as it has gone and names each search still to run."""
    if tuned is None:
        return {(d.name, model): {} for d in data for model in models}, {}
    lenient = _PENDING.get() is None and os.environ.get(RECORDS_ONLY) == "1"
    with pending_searches() if lenient else contextlib.nullcontext({}) as pending:
        chosen = {(d.name, model): tuned.overrides(model, d) for d in data for model in models}
    if not lenient:
        return chosen, {}
    from fitmm.tune import tune_command

    folders = {d.name: d.data_dir for d in data}
    waiting = {}
    for (name, model), (done, size, fixed) in pending.items():
        chosen[name, model] = fixed
        data_dir = None if folders[name] is None else settings.as_typed(folders[name])
        command = tune_command(model, name, tuned.trials, settings.as_typed(tuned.results_dir), fixed, data_dir)
        waiting[name, model] = f"its {size}-trial search has {done} finished; run `{command}`"
    return chosen, waiting


def named(datasets: Sequence[str], data_dir: str | None) -> list[DataSpec]:
    return [DataSpec(name, data_dir) for name in datasets]


def main_runs(datasets: list[str], data_dir: str | None, models: list[str], seeds: list[int], budget: dict,
              tuning_trials: int | None, results_dir: str) -> list[RunSpec]:
    """Every model on every dataset and seed (main results, user groups, cost tables)."""
    return grid(named(datasets, data_dir), models, seeds, budget, tuned=tuning(tuning_trials, results_dir))


def pair_runs(datasets: list[str], data_dir: str | None, targets: list[str], seeds: list[int], budget: dict,
              tuning_trials: int | None, results_dir: str) -> list[RunSpec]:
    """The models under study, head to head."""
    return grid(named(datasets, data_dir), targets, seeds, budget, tuned=tuning(tuning_trials, results_dir))


def sparsity_runs(secondary_datasets: list[str], data_dir: str | None, sparsity_models: list[str],
                  sparsity_fractions: list[float], sparsity_seed: int, secondary_seeds: list[int], budget: dict,
                  tuning_trials: int | None, results_dir: str) -> list[RunSpec]:
    """The sparsity models on each dataset with 0 and each fraction of its train edges dropped (in the
    configuration tuned on the full dataset)."""
    reduced = [DataSpec(name, data_dir, fraction, seed=sparsity_seed if fraction else 0)
               for fraction in [0.0, *sparsity_fractions] for name in secondary_datasets]
    return grid(reduced, sparsity_models, secondary_seeds, budget, tuned=tuning(tuning_trials, results_dir))


def theory_runs(theory_dataset: str, band_datasets: list[str], data_dir: str | None, seeds: list[int],
                budget: dict, snr_check_overrides: dict, snr_check_budget: dict, tuning_trials: int | None,
                results_dir: str) -> list[RunSpec]:
    """FITMM and SSR on the planted-truth dataset and (as in the main results) on the real ones whose trained
    bands are checked (first seed), then the FITMM run whose band weights are checked against the planted gains
    (label 'snr check': a variant and a budget long enough for the weights to move)."""
    models = ["fitmm", "ssr"]
    return (grid(named([theory_dataset], data_dir), models, seeds[:1], budget)
            + grid(named(band_datasets, data_dir), models, seeds[:1], budget, tuned=tuning(tuning_trials, results_dir))
            + grid(named([theory_dataset], data_dir), ["fitmm"], seeds[:1], snr_check_budget,
                   {SNR_CHECK: snr_check_overrides}))


def ablation_runs(secondary_datasets: list[str], data_dir: str | None, ablations: dict[str, dict[str, dict]],
                  secondary_seeds: list[int], seeds: list[int], budget: dict, tuning_trials: int | None,
                  results_dir: str) -> list[RunSpec]:
    """Each model's labelled variants (model -> label -> overrides, on top of its tuned configuration) on the
    secondary datasets and seeds. The paper readings that decide a discrepancy (`claims.deciding_readings`) and the
    model's reference (its first variant) also run on the main seeds on the first secondary dataset: a finding
    rests on as many seeds as a main result."""
    tuned = tuning(tuning_trials, results_dir)
    extra_seeds = [seed for seed in seeds if seed not in secondary_seeds]
    specs = []
    for model, table in ablations.items():
        deciding = claims.deciding_readings(model, table.values())
        readings = {label: overrides for i, (label, overrides) in enumerate(table.items())
                    if i == 0 or overrides in deciding}
        specs += grid(named(secondary_datasets, data_dir), [model], secondary_seeds, budget, table, tuned)
        specs += grid(named(secondary_datasets[:1], data_dir), [model], extra_seeds, budget, readings, tuned)
    return specs


def growth_runs(cost_models: list[str], cost_sizes: list[list[int]], cost_budget: dict, seed: int = 0) -> list[RunSpec]:
    """The cost models on synthetic graphs of each (users, items) size (before the 5-core filter)."""
    return grid([DataSpec("synthetic", size=(int(u), int(i)), seed=seed) for u, i in cost_sizes], cost_models, [seed],
                cost_budget)


def explore_runs(explore_dataset: str, data_dir: str | None, models: list[str], seeds: list[int], budget: dict,
                 explore_model: str, explore_overrides: dict, tuning_trials: int | None,
                 results_dir: str) -> list[RunSpec]:
    """The Explore chapter: the main runs on one dataset, and one model's variant (label: its overrides)."""
    label = f"{explore_model} ({', '.join(f'{k}={v}' for k, v in explore_overrides.items())})"
    return (main_runs([explore_dataset], data_dir, models, seeds, budget, tuning_trials, results_dir)
            + grid(named([explore_dataset], data_dir), [explore_model], seeds, budget, {label: explore_overrides},
                   tuning(tuning_trials, results_dir)))


def diagnosis_variant_runs(diagnosis_dataset: str, data_dir: str | None, diagnosis_runs: dict[str, list[int]],
                           diagnosis_budget: dict) -> list[RunSpec]:
    """FITMM's diagnosis variants (`diagnosis.VARIANTS`, label -> seeds), traced, then the reference model
    (LightGCN) on the released variant's seeds; the budget applies on top."""
    from fitmm.experiments import diagnosis  # diagnosis imports groups, which imports runs, then this module

    data = DataSpec(diagnosis_dataset, data_dir)
    variants = [RunSpec(data, "fitmm", seed, {**diagnosis.VARIANTS[label], **diagnosis_budget}, label, trace=True)
                for label, seeds in diagnosis_runs.items() for seed in seeds]
    return variants + grid([data], [diagnosis.REFERENCE_MODEL], diagnosis_runs.get("released", []), diagnosis_budget,
                           {diagnosis.REFERENCE_LABEL: {}})


def diagnosis_repeat_runs(repeat_dataset: str, repeat_data_dir: str | None, repeat_runs: dict[str, list[int]],
                          diagnosis_budget: dict) -> list[RunSpec]:
    """The decisive diagnosis variants again on a second dataset, whose folder (`repeat_data_dir`, relative to the
    project root) may differ from the profile's: Baby with its rebuilt text modality lives in `<project>/data`."""
    where = None if repeat_data_dir is None else str(settings.project_path(repeat_data_dir))
    return diagnosis_variant_runs(repeat_dataset, where, repeat_runs, diagnosis_budget)


# Which planner functions each chapter's notebook calls (tests/test_plan.py checks the notebooks).
CHAPTERS: dict[str, list[Callable[..., list[RunSpec]]]] = {
    "01_main_results": [main_runs],
    "02_fitmm_vs_ssr": [pair_runs],
    "03_sparsity_cold_start": [main_runs, sparsity_runs],
    "04_spectral_theory": [theory_runs],
    "05_ablations": [ablation_runs],
    "06_cost": [main_runs, growth_runs],
    "08_explore": [explore_runs],
    "09_fitmm_diagnosis": [diagnosis_variant_runs, diagnosis_repeat_runs],
}


def call(fn: Callable[..., list[RunSpec]], profile: dict) -> list[RunSpec]:
    """`fn` with the profile's values for its parameters (those with a default keep it)."""
    names = [p.name for p in inspect.signature(fn).parameters.values() if p.default is inspect.Parameter.empty]
    unset = [name for name in names if name not in profile]
    if unset:
        raise KeyError(f"profile {profile.get('profile')!r} does not set {', '.join(unset)} (plan.{fn.__name__} needs it)")
    return fn(**{name: profile[name] for name in names})


def plan(profile: dict, chapters: Sequence[str] | None = None) -> list[RunSpec]:
    """Every run the (selected) chapters need under `profile`, each once, in chapter order; traced when
    any chapter needs its trace."""
    specs: dict[str, RunSpec] = {}
    for chapter, functions in CHAPTERS.items():
        if chapters is None or chapter in chapters:
            for fn in functions:
                for spec in call(fn, profile):
                    first = specs.setdefault(spec.key(), spec)
                    if spec.trace and not first.trace:
                        specs[spec.key()] = dataclasses.replace(first, trace=True)
    return list(specs.values())
