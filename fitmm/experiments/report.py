"""How a chapter shows its results, so that the book reads like a paper: the notebook set-up, tables
(counts as integers, metrics to 4 decimals, p-values in scientific notation, column names in words, a
caption and the command that reruns them) and figures with a caption; and what the report chapter
needs to know about the build: which chapters ran to the end and when, and which runs they used.

Tables and figures are HTML outputs: a table sits under its caption in a `fitmm-scroll` box that scrolls
sideways when it is wider than the column (`book/_static/fitmm.css`), a figure is a `<figure>` with its
`<figcaption>`.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import pandas as pd

from fitmm.io import utc_now, write_json

if TYPE_CHECKING:
    from IPython.display import HTML

# Raw keys -> the words a table prints.
WORDS = {
    "mean_a": "mean of the first", "mean_b": "mean of the second", "mean_diff": "mean difference",
    "wilcoxon_p": "Wilcoxon p", "ttest_p": "paired t-test p", "seeds_welch_p": "Welch p over seeds",
    "best_epoch": "best epoch",
    "seconds_per_epoch": "seconds per epoch", "eval_seconds": "seconds per evaluation",
    "wall_seconds": "wall time (s)", "wall_hours": "wall time (h)", "peak_memory_mb": "peak memory (MB)",
    "git_commit": "commit", "run_id": "run", "n_train": "train pairs", "n_valid": "valid pairs", "n_test": "test pairs",
    "delta": "Δ Recall@20", "stopped_early": "stopped early",
}
# Cost columns, printed to the precision they are measured to.
UNITS = {"seconds_per_epoch": "{:.2f}", "eval_seconds": "{:.2f}", "wall_seconds": "{:,.1f}", "wall_hours": "{:.2f}",
         "peak_memory_mb": "{:,.0f}"}
# Parts of the per-band quantities models record (`diagnostics`), in words (figure titles).
QUANTITY = {"band_weights": "band weight ω", "mean_gate": "mean gate", "band_energy": "energy share",
            "modality_agreement": "modality agreement (cosine)", "gate_scale": "gate scale", "user": "users",
            "item": "items", "band_borders": "band borders (λ)", "r_u": "R of users", "r_i": "R of items",
            "h_u": "H of users", "h_i": "H of items"}
METRIC = re.compile(r"^(valid_)?(recall|ndcg|precision|map)@(\d+)$")
METRIC_NAMES = {"recall": "Recall", "ndcg": "NDCG", "precision": "Precision", "map": "MAP"}
# Columns holding counts (printed as integers).
COUNTS = {"users", "items", "pairs", "interactions", "seeds", "epochs", "best_epoch", "band", "bands", "runs", "edges",
          "nodes", "n_train", "n_valid", "n_test", "seed", "above shuffled top", "cold items", "directions"}


def setup() -> None:
    """A chapter's kernel: no warnings or log lines in the book (the test suite checks them), figures drawn
    off-screen and shown through `show_figure`, seaborn's paper style."""
    import matplotlib

    matplotlib.use("Agg")
    import seaborn as sns
    from matplotlib import pyplot as plt

    warnings.simplefilter("ignore")
    logging.getLogger("fitmm").setLevel(logging.ERROR)  # e.g. the loader's "dropped N valid/test rows" notice
    sns.set_theme(style="whitegrid", context="notebook")
    plt.rcParams.update({"figure.dpi": 96, "axes.titlesize": 11})
    pd.options.display.float_format = "{:.4f}".format


def words(name) -> str:
    """The printed name of a column or index key: 'recall@20' -> 'Recall@20', 'valid_recall@20' -> 'valid
    Recall@20', 'wilcoxon_p' -> 'Wilcoxon p', other snake_case keys with spaces; any other text (a device
    'cpu (x86_64, 1 threads)', a variant 'fitmm (lambda_ib=0.0)') as it is.

    >>> words("stopped_early"), words("cpu (x86_64, 1 threads)")
    ('stopped early', 'cpu (x86_64, 1 threads)')
    """
    if not isinstance(name, str):
        return name
    found = METRIC.match(name)
    if found:
        return f"{'valid ' if found[1] else ''}{METRIC_NAMES[found[2]]}@{found[3]}"
    return WORDS.get(name, name.replace("_", " ") if re.fullmatch(r"\w+", name) else name)


def quantity_words(key: str) -> str:
    """A recorded per-band quantity ('user/modality_agreement/image-audio') in words ('modality agreement
    (cosine), users, image–audio')."""
    parts = [QUANTITY.get(p, p.replace("-", "–").replace("_", " ")) for p in key.split("/")]
    named = [p for p in parts if p not in ("users", "items")] + [p for p in parts if p in ("users", "items")]
    return ", ".join(named)


def _index_words(value):
    return f"{value:g}" if isinstance(value, float) else words(value)


def rerun(profile: str, chapter: str) -> str:
    """The command that reruns a chapter (and trains only its missing runs)."""
    return f"fitmm reproduce --profile {profile} --only {chapter}"


def _kind(name, values: pd.Series, percent: Iterable, signed: Iterable, sci: Iterable) -> str:
    parts = name if isinstance(name, tuple) else (name,)
    if values.map(lambda v: isinstance(v, str)).any():  # already text (e.g. "–" for a model only a paper reports)
        return "other"
    if any(p in percent for p in parts):
        return "percent"
    if any(p in signed for p in parts):
        return "signed"
    if any(p in sci for p in parts):
        return "sci"
    unit = next((UNITS[p] for p in parts if p in UNITS), None)
    if unit and pd.api.types.is_numeric_dtype(values):
        return unit
    if any(isinstance(p, str) and (p.endswith("_p") or p.endswith(" p")) for p in parts):
        return "p"
    if pd.api.types.is_bool_dtype(values):
        return "bool"
    if any(p in COUNTS for p in parts) or pd.api.types.is_integer_dtype(values):
        return "count"
    if pd.api.types.is_float_dtype(values):
        return "float"
    return "other"


FORMATS = {"percent": "{:.1%}", "signed": "{:+.4f}", "p": "{:.2e}", "sci": "{:.2e}", "count": "{:,.0f}",
           "float": "{:.4f}", **{f: f for f in UNITS.values()}}


def format_table(frame: pd.DataFrame, caption: str, rerun: str, percent: Iterable = (),
                 signed: Iterable = ("mean_diff", "delta"), sci: Iterable = ()) -> HTML:
    """`frame` as a captioned table: counts as integers, p-values (columns ending in '_p') and `sci` columns as
    1.23e-04, `percent` columns as percentages, `signed` ones with their sign, cost columns to their precision
    (`UNITS`), other numbers to 4 decimals; column and index names in words; `rerun` (the exact command) under the
    caption. A RangeIndex is not printed.

    >>> out = format_table(pd.DataFrame({"users": [3.0], "wilcoxon_p": [0.000123], "recall@20": [0.1]}), "T", "cmd")
    >>> all(s in out.data for s in ("Recall@20", "Wilcoxon p", ">3<", "1.23e-04", "0.1000", "cmd"))
    True
    """
    kinds = {c: _kind(c, frame[c], set(percent), set(signed), set(sci)) for c in frame.columns}
    shown = frame.copy()
    for c, kind in kinds.items():
        if kind == "bool":
            shown[c] = shown[c].map({True: "yes", False: "no"})
    shown.columns = shown.columns.map(lambda c: tuple(words(p) for p in c) if isinstance(c, tuple) else words(c))
    shown.index.names = [words(n) for n in frame.index.names]
    renamed = dict(zip(frame.columns, shown.columns))
    styler = shown.style.format({renamed[c]: FORMATS[k] for c, k in kinds.items() if k in FORMATS}, na_rep="–")
    styler = styler.format_index(_index_words, axis=1)
    prose = [renamed[c] for c, k in kinds.items() if k == "other" and frame[c].astype(str).str.len().max() > 40]
    if prose:  # long text wraps; numbers never do
        styler = styler.set_properties(subset=prose, **{"white-space": "normal", "min-width": "18em"})
    styler = styler.hide(axis="index") if isinstance(frame.index, pd.RangeIndex) else styler.format_index(_index_words, axis=0)
    head = (f'<p class="fitmm-caption">{html.escape(caption)}<br>'
            f'<span class="fitmm-rerun">Rerun: <code>{html.escape(rerun)}</code></span></p>')
    return _html(f'<div class="fitmm-table">{head}<div class="fitmm-scroll">{styler.to_html()}</div></div>')


def _html(markup: str) -> HTML:
    """An HTML notebook output. IPython is imported here, not with the module: training imports these helpers
    (a run's analysis tabulates) where IPython may be absent, as on a bare GPU node."""
    from IPython.display import HTML

    return HTML(markup)


def show_table(frame: pd.DataFrame, caption: str, rerun: str, **kwargs) -> None:
    """Display `format_table(frame, caption, rerun, ...)`."""
    from IPython.display import display

    display(format_table(frame, caption, rerun, **kwargs))


def show_figure(fig, caption: str) -> None:
    """Display a matplotlib figure (or seaborn grid) as a PNG with its caption, and close it."""
    from matplotlib import pyplot as plt

    fig = getattr(fig, "figure", fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    from IPython.display import display

    display(_html(f'<figure class="fitmm-figure"><img src="data:image/png;base64,{data}" '
                 f'alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}</figcaption></figure>'))


@dataclass(frozen=True)
class Chapter:
    """One chapter being executed: its tables carry the command that reruns it, and it notes the runs it used.

    >>> Chapter("01_main_results", "smoke", Path("results/smoke")).rerun
    'fitmm reproduce --profile smoke --only 01_main_results'
    """

    name: str
    profile: str
    results_dir: Path | None = None  # None: a chapter that uses no run records

    @property
    def rerun(self) -> str:
        return rerun(self.profile, self.name)

    def table(self, frame: pd.DataFrame, caption: str, **kwargs) -> None:
        show_table(frame, caption, self.rerun, **kwargs)

    def figure(self, fig, caption: str) -> None:
        show_figure(fig, caption)

    def used(self, *frames: pd.DataFrame) -> None:
        """Note the run records behind this chapter (rows of `Runs.frame`, column `path`) for the report's
        provenance table: `<results_dir>/claims/<profile>/runs-<chapter>.json`."""
        paths = sorted({os.path.relpath(p, self.results_dir) for f in frames if "path" in f for p in f["path"]})
        write_json(Path(self.results_dir) / "claims" / self.profile / f"runs-{self.name}.json",
                   {"chapter": self.name, "saved": utc_now(), "runs": paths})


def chapter_states(results_dir: str | Path, profile: str) -> dict[str, dict]:
    """The state of each executed chapter of a profile (`fitmm.reproduce.executed_dir`): status, executed,
    finished, seconds, profile, from the metadata `fitmm reproduce` writes."""
    from fitmm.reproduce import executed_dir

    states = {}
    for path in sorted(executed_dir(Path(results_dir), profile).glob("[0-9][0-9]_*.ipynb")):
        state = json.loads(path.read_text()).get("metadata", {}).get("fitmm")
        if state:
            states[path.stem] = state
    return states


def freshness(saved: str | None, chapter: str, states: dict[str, dict]) -> str:
    """'this build' when `saved` (a verdict's or a run list's time) falls within the execution of `chapter` whose
    output is in the book and ran to the end; otherwise 'stale' with the date it was saved and why."""
    saved = saved if isinstance(saved, str) else None  # a claims-table cell with no verdict saved is NaN
    state = states.get(chapter)
    if state and state.get("status") == "ok" and saved and state["executed"] <= saved <= state["finished"]:
        return "this build"
    when = f"saved {saved[:10]}" if saved else "date unknown"
    why = ("chapter not executed" if state is None else "chapter failed" if state.get("status") != "ok"
           else "not from the chapter's last execution")
    return f"stale ({when}; {why})"


def used_runs(results_dir: str | Path, profile: str, states: dict[str, dict]) -> pd.DataFrame:
    """The run records the chapters of this build used (`Chapter.used`), one row each: run, dataset, model, seed,
    commit (12 characters, '+dirty' kept), device, wall time, and the chapters that used it."""
    from fitmm.store import read_record

    users: dict[str, list[str]] = {}
    for path in sorted((Path(results_dir) / "claims" / profile).glob("runs-*.json")):
        listed = json.loads(path.read_text())
        if freshness(listed["saved"], listed["chapter"], states) == "this build":
            for run in listed["runs"]:
                users.setdefault(run, []).append(listed["chapter"])
    rows = []
    for run, chapters in users.items():
        record = read_record(Path(results_dir) / run / "record.json")
        commit = record["provenance"]["git_commit"] or "–"
        rows.append({"run": record["run_id"], "dataset": record["dataset"]["name"], "model": record["model"],
                     "seed": record["seed"], "commit": commit[:12] + ("+dirty" if commit.endswith("+dirty") else ""),
                     "device": record["provenance"]["device"], "wall_seconds": record["wall_seconds"],
                     "chapters": ", ".join(c[:2] for c in chapters)})
    return pd.DataFrame(rows)


def compute_spent(used: pd.DataFrame, results_dir: str | Path, datasets: Iterable[str], tuned: bool) -> pd.DataFrame:
    """The compute behind this build, from the run records: per dataset and device, the runs and their wall hours,
    for the runs the chapters used (`used_runs`) and, under a tuned profile, the trials of the searches on
    `datasets` that chose their configurations (a search's trial of the first seed that a chapter also used is
    counted once, as used). A CPU run's device names its threads, so CPU-hours are wall hours times threads."""
    from fitmm.store import read_record
    from fitmm.tune import load_trials, trial_record

    rows = [{"dataset": r.dataset, "device": r.device, "kind": "used by a chapter", "run": r.run,
             "wall_seconds": r.wall_seconds} for r in used.itertuples()]
    if tuned:
        seen = set(used.get("run", []))
        trials = load_trials(results_dir)
        for t in trials[trials.dataset.isin(list(datasets))].itertuples():
            if t.run_id not in seen:
                record = read_record(trial_record(results_dir, t.dataset, t.model, t.run_id))
                rows.append({"dataset": t.dataset, "device": record["provenance"]["device"],
                             "kind": "search trial", "run": t.run_id, "wall_seconds": record["wall_seconds"]})
    frame = pd.DataFrame(rows, columns=["dataset", "device", "kind", "run", "wall_seconds"])
    return (frame.groupby(["dataset", "device", "kind"])
            .agg(runs=("run", "size"), wall_hours=("wall_seconds", lambda x: x.sum() / 3600)))
