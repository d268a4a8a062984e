"""`fitmm reproduce`: execute every planned run, then every notebook under a profile with papermill,
then build the book; `fitmm book`: build the book from a profile's executed notebooks, executing nothing.

    profile --plan.plan--> RunSpecs --fitmm.executor (local processes | SLURM array)--> results_dir/runs
    notebooks/NN_name.ipynb --papermill(profile parameters)--> <results_dir>/notebooks/<profile>/NN_name.ipynb
    <results_dir>/notebooks/<profile>/ --stage--> book/notebooks/ (+ book/status.md, the execution-status page)
    book/ (markdown pages + executed notebooks) --jupyter-book build --all -W--> book/_build/html

A profile's executed notebooks are results, kept with its run records, one folder per profile (profiles
may share a results_dir and its records): the published profile's (`full`, results_dir `results`) in
`results/notebooks/full/`, committed, so that `fitmm book` renders the study on a fresh clone in minutes,
the quick `cpu` profile's beside them in `results/notebooks/cpu/`; the smoke profile's in the ignored
`results/smoke/notebooks/smoke/`.
book/notebooks/ and book/status.md are build inputs, written by `stage` and ignored by git.

Paths in a profile (`results_dir`, `data_dir`) are relative to the project root; `--results-dir`,
`--data-dir` or FITMM_RESULTS / FITMM_DATA replace them (`fitmm.settings`). The folders so resolved
reach every notebook's kernel through FITMM_RESULTS / FITMM_DATA, whatever the current directory.

The runs come first (`--executor local --jobs N`, or `--executor slurm` with the profile's `slurm:`
resources, which flags override); their logs go to `results_dir/logs/`. The notebooks then run
with `FITMM_RECORDS_ONLY=1` and only read records: a run that failed in the batch (twice) is a
note in its chapter, not a third attempt. The book never executes anything itself (`execute_notebooks: off`): every output comes
from the papermill run, whose parameters are injected into each executed notebook.
An executed notebook records in its metadata a digest of its source and parameters, whether
it ran to the end, its run time and when it ran; a rerun skips notebooks whose digest matches
and that ran to the end, and the report (which gathers the other chapters' verdicts) reruns
whenever another notebook's output changed. A chapter that fails (an exception, a dead kernel,
a cell timeout) is written out as its title and a "this chapter failed" note with the error;
the others still run, the book is still built, and the command exits 1. `--only` executes
some chapters and builds the book with the others' last outputs (a "not executed yet" page
for a chapter that has none).

Math renders offline: MathJax 3 is fetched once with `npm pack` into the gitignored
`book/_mathjax/` (checked against the registry's sha1) and copied into the site by
Sphinx's `html_extra_path`; `mathjax_path` points at that copy.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from importlib import resources
from pathlib import Path
from unittest import mock

import yaml
from tqdm.auto import tqdm

from fitmm import settings
from fitmm.data import dataset_folder
from fitmm.executor import SlurmOptions, Summary, add_arguments as add_executor_arguments, slurm_options
from fitmm.executor import execute as execute_tasks
from fitmm.io import utc_now

NOTEBOOKS = Path("notebooks")
EXECUTED = Path("book/notebooks")
BOOK = Path("book")
REPORT = "07_report"  # depends on every other chapter's output: executed last
MATHJAX = {"package": "mathjax@3.2.2", "sha1": "c754d7b46a679d7f3fa03543d6b8bf124ddf9f6b",
           "dest": BOOK / "_mathjax" / "mathjax", "entry": "tex-svg.js"}


def profiles() -> dict[str, dict]:
    """Every profile, `defaults` merged in (a profile's keys win)."""
    raw = yaml.safe_load(resources.files("fitmm.experiments").joinpath("profiles.yaml").read_text())
    defaults = raw.pop("defaults")
    return {name: {**defaults, **values, "profile": name} for name, values in raw.items()}


def notebook_parameters(notebook: Path, profile: dict) -> dict:
    """The profile values of the parameters the notebook's `parameters` cell declares."""
    import papermill

    declared = papermill.inspect_notebook(str(notebook))
    missing = [name for name in declared if name not in profile]
    if missing:
        raise KeyError(f"{notebook}: parameters {', '.join(missing)} are not set by profile {profile['profile']!r}")
    return {name: profile[name] for name in declared}


def digest(notebook: Path, parameters: dict, extra: str = "") -> str:
    h = hashlib.sha256(notebook.read_bytes())
    h.update(json.dumps(parameters, sort_keys=True).encode())
    h.update(extra.encode())
    return h.hexdigest()[:16]


def executed_state(path: Path) -> dict | None:
    """The `fitmm` metadata of an executed notebook (digest, status, seconds), or None."""
    if not path.exists():
        return None
    return json.loads(path.read_text()).get("metadata", {}).get("fitmm")


def profile_banner(profile: dict, seconds: float, stamp: str) -> str:
    """The note an executed chapter opens with: which profile produced it, what that profile is, when."""
    return (f"```{{admonition}} Profile: {profile['profile']}\n:class: tip\n"
            f"{' '.join(profile['about'].split())} Executed by `fitmm reproduce --profile {profile['profile']}` "
            f"on {stamp[:16]} UTC in {seconds:.0f} s.\n```")


def title_cell(src: Path):
    """The first line of a source notebook's first markdown cell (its `# Title`), as a markdown cell."""
    import nbformat

    nb = nbformat.read(src, as_version=4)
    first = next((c.source for c in nb.cells if c.cell_type == "markdown"), f"# {src.stem}")
    return nbformat.v4.new_markdown_cell(first.strip().splitlines()[0])


def placeholder(src: Path, profile: str, title: str, text: str, kind: str):
    """A chapter that shows no results: its title and an admonition (`kind`: error, warning) saying why and the
    command that makes it."""
    import nbformat

    command = f"fitmm reproduce --profile {profile} --only {src.stem}"
    note = (f"```{{admonition}} {title}\n:class: {kind}\n{text} To make it: `{command}` (runs that finished are "
            f"read back, not retrained).\n```")
    nb = nbformat.v4.new_notebook()
    nb.cells = [title_cell(src), nbformat.v4.new_markdown_cell(note)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def one_line(text: str, limit: int = 300) -> str:
    """An error message for a MyST admonition: its first line, no backticks, at most `limit` characters."""
    line = (text.strip().splitlines() or [""])[0].replace("`", "'")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def execute(src: Path, out: Path, profile: dict, parameters: dict, key: str, root: Path,
            timeout: int | None = None) -> tuple[bool, float, str]:
    """Run one notebook with `parameters` (from `profile`) and write it to `out` with the profile's banner after its
    title. Any failure (an exception in a cell, a dead kernel, a cell over `timeout` seconds) is caught: `out` then
    holds the chapter's title and a "this chapter failed" note with the error, no traceback, and the batch goes
    on. Returns (ok, seconds, error)."""
    import nbformat
    import papermill

    t0, started = time.perf_counter(), utc_now()
    error = ""
    with tempfile.TemporaryDirectory() as tmp:
        tmp_out = Path(tmp) / out.name
        try:
            papermill.execute_notebook(str(src), str(tmp_out), parameters=parameters, cwd=str(root),
                                       progress_bar=False, kernel_name="python3", execution_timeout=timeout)
        except papermill.PapermillExecutionError as err:
            error = f"{err.ename}: {one_line(err.evalue)}"
        except Exception as err:  # noqa: BLE001 — a dead kernel or a timeout fails this chapter, not the batch
            error = f"{type(err).__name__}: {one_line(str(err))}"
        seconds = time.perf_counter() - t0
        if error:
            nb = placeholder(src, profile["profile"], "This chapter failed",
                             f"This chapter failed under profile `{profile['profile']}` on {started[:16]} UTC, after "
                             f"{seconds:.0f} s: `{error.rstrip('.')}`. Its results are not shown.", "error")
        else:
            nb = nbformat.read(tmp_out, as_version=4)
            nb.metadata["papermill"].update(input_path=settings.as_typed(src, root),  # no path of this machine
                                            output_path=settings.as_typed(out, root))
            for cell in nb.cells:  # the defaults cell is shadowed by papermill's injected one
                if "parameters" in cell.metadata.get("tags", []):
                    cell.metadata["tags"] = [*cell.metadata["tags"], "remove-cell"]
            after_title = 1 if nb.cells and nb.cells[0].cell_type == "markdown" else 0
            nb.cells.insert(after_title, nbformat.v4.new_markdown_cell(profile_banner(profile, seconds, started)))
        nb.metadata["fitmm"] = {"digest": key, "profile": profile["profile"], "status": "failed" if error else "ok",
                                "error": error, "seconds": round(seconds, 1), "executed": started,
                                "finished": utc_now()}
        out.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, tmp_out)
        os.replace(tmp_out, out)
    return not error, seconds, error


def locations(profile: dict, results_dir: str | Path | None = None, data_dir: str | Path | None = None) -> dict[str, Path]:
    """The profile's results and data folders as `fitmm.settings` resolves them, keyed by the
    environment variable that hands them to the notebooks."""
    return {settings.ENV["results"]: settings.results_dir(results_dir, default=profile["results_dir"]).resolve(),
            settings.ENV["data"]: settings.data_dir(data_dir, default=profile["data_dir"]).resolve()}


def select(notebooks: list[Path], only: list[str] | None) -> list[Path]:
    """Notebooks whose stem equals or starts with one of `only` (all when None)."""
    if not only:
        return notebooks
    chosen = [nb for nb in notebooks if any(nb.stem == o or nb.stem.startswith(o) for o in only)]
    unknown = [o for o in only if not any(nb.stem == o or nb.stem.startswith(o) for nb in notebooks)]
    if unknown:
        raise KeyError(f"no notebook matches {', '.join(unknown)}; notebooks: {', '.join(nb.stem for nb in notebooks)}")
    return chosen


def executed_dir(results: Path, profile: str) -> Path:
    """Where a profile's executed notebooks are kept: with its run records, `<results_dir>/notebooks/<profile>/`
    (the cpu and full profiles share `results/` and its records, not their chapters). Both are committed, the
    published study in results/notebooks/full/; the smoke profile's stay in the ignored results/smoke/. `stage`
    copies them into book/notebooks/ for the build."""
    return Path(results) / "notebooks" / profile


def reproduce(profile_name: str, root: Path, only: list[str] | None = None, force: bool = False,
              results_dir: str | Path | None = None, data_dir: str | Path | None = None,
              timeout: int | None = None) -> dict[str, str]:
    """Execute the (selected) notebooks under a profile into `executed_dir`; return {notebook: 'ok' | 'up to date'
    | 'failed: ...'}. A failing notebook does not stop the others (`execute`).

    `results_dir` / `data_dir` replace the profile's folders (as `fitmm.settings` resolves them); `timeout`
    bounds each cell (seconds)."""
    profile = profiles()[profile_name]
    where = locations(profile, results_dir, data_dir)
    where_key = json.dumps({k: os.path.relpath(v, root) for k, v in where.items()})
    notebooks = sorted((root / NOTEBOOKS).glob("[0-9][0-9]_*.ipynb"), key=lambda nb: (nb.stem == REPORT, nb.stem))
    executed = executed_dir(where[settings.ENV["results"]], profile_name)
    # The kernel ("python3", started as `python`) must be this interpreter.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    outcome = {}
    chosen = select(notebooks, only)
    if chosen[-1].stem != REPORT:  # the report gathers the verdicts of the chapters in this build
        chosen.append(notebooks[-1])
    bar = tqdm(chosen, desc=f"reproduce ({profile_name})", unit="notebook")
    for src in bar:
        bar.set_postfix_str(src.stem)
        out = executed / src.name
        parameters = notebook_parameters(src, profile)
        extra = ""
        if src.stem == REPORT:  # rerun when any other chapter's output changed
            extra = json.dumps([executed_state(executed / nb.name) for nb in notebooks if nb.stem != REPORT])
        key = digest(src, parameters, extra + where_key)
        state = executed_state(out)
        if not force and state and state["digest"] == key and state["status"] == "ok":
            outcome[src.stem] = "up to date"
            continue
        with mock.patch.dict(os.environ, {k: str(v) for k, v in where.items()}):  # the kernel's environment
            ok, seconds, error = execute(src, out, profile, parameters, key, root, timeout)
        outcome[src.stem] = f"ok ({seconds:.0f} s)" if ok else f"failed: {error}"
        tqdm.write(f"{src.stem}: {outcome[src.stem]}")
    return outcome


def planned_runs(profile_name: str, root: Path, only: list[str] | None, results_dir: str | Path | None,
                 data_dir: str | Path | None, matching: list[str] | None = None
                 ) -> tuple[list[str], dict[str, Path], dict[str, list], dict[str, str]]:
    """The selected chapters, the resolved folders (`locations`), each chapter's planned runs (`Training` tasks)
    of the registered models, with configs and dataset folders checked, before any compute starts, and the runs
    left out because their model cannot run on their data ({run: why}, e.g. VBPR on a set without item content:
    the chapters note them; executing them would only fail).

    `results_dir` / `data_dir` replace the profile's folders (as `fitmm.settings` resolves them). `matching`: keep
    only the runs whose label ('ssr [no masking] on baby, seed 1') contains one of these texts (KeyError, naming
    the planned groups, when none does)."""
    from fitmm.experiments.plan import RECORDS_ONLY, DataSpec, noted_searches, plan
    from fitmm.experiments.runs import Training, split_models, unrunnable

    profile = profiles()[profile_name]
    chapters = [nb.stem for nb in select(sorted((root / NOTEBOOKS).glob("[0-9][0-9]_*.ipynb")), only)]
    # Workers (and SLURM jobs) need not share this working directory: the folders are resolved here.
    where = locations(profile, results_dir, data_dir)
    results_dir = where[settings.ENV["results"]]
    resolved = {**profile, "data_dir": str(where[settings.ENV["data"]]), "results_dir": str(results_dir)}
    with mock.patch.dict(os.environ):  # a batch trains: its plan never takes the records-only leniency
        os.environ.pop(RECORDS_ONLY, None)
        by_chapter = {chapter: plan(resolved, [chapter]) for chapter in chapters}
    present, missing = split_models(list(dict.fromkeys(s.model for specs in by_chapter.values() for s in specs)))
    for model in missing:
        print(f"{model}: not in fitmm.models.MODELS yet, its runs are skipped")
    tasks = {chapter: [Training(s, str(results_dir)) for s in specs if s.model in present]
             for chapter, specs in by_chapter.items()}
    if matching:
        kept = {chapter: [t for t in ts if any(text in str(t.spec) for text in matching)]
                for chapter, ts in tasks.items()}
        if not any(kept.values()):
            groups = list(dict.fromkeys(t.spec.group for ts in tasks.values() for t in ts))
            shown = ", ".join(groups[:8]) + (f", … ({len(groups)} in all)" if len(groups) > 8 else "")
            raise KeyError(f"--runs-matching {' '.join(map(repr, matching))}: no planned run matches; the planned "
                           f"groups: {shown or 'none'} (--dry-run lists the runs still to train)"
                           + waiting_for(noted_searches()))  # the wanted run may wait for its search
        tasks = kept
    for task in (t for ts in tasks.values() for t in ts):  # bad config keys fail here, before any compute starts
        task.spec.config()
    for name, folder in {(t.spec.data.name, t.spec.data.data_dir) for ts in tasks.values() for t in ts
                         if t.spec.data.size is None}:
        dataset_folder(name, folder)  # and missing dataset folders
    left_out = {}
    for task in {t.spec.key(): t for ts in tasks.values() for t in ts}.values():
        spec = task.spec
        if spec.data.size is None:  # a named set (or a sparsified copy, which keeps its features)
            why = unrunnable(spec.config(), DataSpec(spec.data.name, spec.data.data_dir).load())
            if why:
                left_out[spec.key()] = f"{spec}: {why}"
    tasks = {chapter: [t for t in ts if t.spec.key() not in left_out] for chapter, ts in tasks.items()}
    return chapters, where, tasks, left_out


def waiting_for(pending: dict) -> str:
    """'; not planned until their search finishes: lightgcn on sports (6/12 trials), …' for the searches a lenient
    plan noted (`pending_searches`); '' when none."""
    if not pending:
        return ""
    return "; not planned until their search finishes: " + ", ".join(
        f"{model} on {dataset} ({done}/{size} trials)" for (dataset, model), (done, size, _) in sorted(pending.items()))


def run_batch(profile_name: str, root: Path, only: list[str] | None = None, executor: str = "local", jobs: int = 1,
              slurm: SlurmOptions | None = None, results_dir: str | Path | None = None,
              data_dir: str | Path | None = None, matching: list[str] | None = None) -> Summary:
    """Execute every run the (selected) chapters plan under the profile (those `matching`, when given), each once;
    logs in results_dir/logs. With `matching`, a search that has not finished holds back only its own runs, which
    are not planned (and so cannot match) until it finishes; without, it stops the batch before any compute."""
    from fitmm.experiments.plan import pending_searches

    with pending_searches() if matching else contextlib.nullcontext({}) as pending:
        chapters, where, by_chapter, left_out = planned_runs(profile_name, root, only, results_dir, data_dir, matching)
    tasks = list({t.spec.key(): t for ts in by_chapter.values() for t in ts}.values())
    print(f"runs ({profile_name}): {len(tasks)} planned for {', '.join(chapters) or 'no chapter'}, executor {executor}"
          + (f", {jobs} job(s)" if executor == "local" else f", {slurm}")
          + (f"; {len(left_out)} left out, their model cannot run on their data (the chapters note why)"
             if left_out else "") + waiting_for(pending))
    return execute_tasks(tasks, executor, jobs, slurm, where[settings.ENV["results"]] / "logs")


def dry_run(profile_name: str, root: Path, only: list[str] | None = None, results_dir: str | Path | None = None,
            data_dir: str | Path | None = None, matching: list[str] | None = None) -> str:
    """What is left of a profile, training nothing: the searches it needs that have not finished (their runs
    cannot be planned yet), per chapter the runs planned, finished and still to train, then those runs (each once,
    under the first chapter that plans it) with their seeds; only the runs `matching`, when given."""
    from fitmm.experiments.plan import DataSpec, pending_searches, seeds_phrase
    from fitmm.store import checkpoint_state
    from fitmm.tune import running_trials, tune_command

    with pending_searches() as pending:
        _, where, by_chapter, left_out = planned_runs(profile_name, root, only, results_dir, data_dir, matching)
    results = where[settings.ENV["results"]]
    lines = []
    if pending:
        lines.append(f"searches not finished ({len(pending)}; the runs that need them are not planned yet):")
        trials = profiles()[profile_name]["tuning_trials"]
        for (dataset, model), (trials_done, size, fixed) in sorted(pending.items()):
            lines.append(f"  {dataset:10s} {model:9s} {trials_done:3d}/{size:<3d} "
                         f"{tune_command(model, dataset, trials, results, fixed, where[settings.ENV['data']])}")
            data = DataSpec(dataset, str(where[settings.ENV["data"]])).load()
            lines += [f"  {'':24s} running: {line}" for line in running_trials(model, data, results, fixed)]
    done = {t.spec.key(): t.finished() for ts in by_chapter.values() for t in ts}  # each run looked up once
    rows = [(chapter, len(ts), sum(done[t.spec.key()] for t in ts)) for chapter, ts in by_chapter.items()]
    rows.append(("all (each run once)", len(done), sum(done.values())))
    lines.append(f"runs ({profile_name}, results in {results}"
                 + (f"; {len(left_out)} left out, their model cannot run on their data" if left_out else "") + "):")
    lines.append(f"  {'chapter':26s} {'planned':>8s} {'finished':>9s} {'to train':>9s}")
    lines += [f"  {name:26s} {n:8d} {finished:9d} {n - finished:9d}" for name, n, finished in rows]
    first = {}  # each run once, with the first chapter that plans it
    for chapter, ts in by_chapter.items():
        for task in ts:
            first.setdefault(task.spec.key(), (chapter, task))
    left, started = {}, {}  # (chapter, 'model [variant] on dataset') -> seeds still to train, where each started one is
    for key, (chapter, task) in first.items():
        spec = task.spec
        if not done[key]:
            left.setdefault((chapter, spec.group), []).append(spec.seed)
            state = checkpoint_state(task.path())
            if state and state["epoch"]:
                started.setdefault((chapter, spec.group), []).append(
                    f"seed {spec.seed} at epoch {state['epoch']} of {spec.config().epochs}, best {state['best_epoch']}, "
                    f"{state['wall_seconds'] / state['epoch']:.0f} s/epoch")
    if left:
        lines.append("still to train (a started run resumes from its last checkpoint):")
        lines += [f"  {chapter:26s} {group}: {seeds_phrase(seeds)}"
                  + (f" ({'; '.join(started[chapter, group])})" if (chapter, group) in started else "")
                  for (chapter, group), seeds in left.items()]
    return "\n".join(lines)


def fetch_mathjax(root: Path) -> Path:
    """MathJax's es5 build in book/_mathjax/mathjax (npm pack once, sha1-checked); returns the folder."""
    dest = root / MATHJAX["dest"]
    if (dest / MATHJAX["entry"]).exists():
        return dest
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("MathJax: `npm` not found; install Node.js/npm (the book serves MathJax from "
                           f"{MATHJAX['dest']} so that math renders offline)")
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([npm, "pack", MATHJAX["package"], "--silent"], cwd=tmp, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"MathJax: `npm pack {MATHJAX['package']}` failed: {done.stderr.strip()}")
        tarball = Path(tmp) / done.stdout.strip().splitlines()[-1]
        sha1 = hashlib.sha1(tarball.read_bytes()).hexdigest()
        if sha1 != MATHJAX["sha1"]:
            raise RuntimeError(f"MathJax: {tarball.name} has sha1 {sha1}, expected {MATHJAX['sha1']}")
        with tarfile.open(tarball) as tar:
            tar.extractall(tmp, members=[m for m in tar.getmembers() if m.name.startswith("package/es5/")],
                           filter="data")
        staged = dest.with_name(f".{dest.name}.tmp")
        shutil.rmtree(staged, ignore_errors=True)
        # tex-svg.js needs no font files; the other combined bundles are never loaded.
        unused = shutil.ignore_patterns("tex-chtml*.js", "tex-mml-*.js", "tex-svg-full.js", "mml-*.js", "node-main.js")
        shutil.copytree(Path(tmp) / "package" / "es5", staged, ignore=unused)
        os.replace(staged, dest)
    return dest


def stage(root: Path, executed: Path, profile: str) -> list[dict]:
    """Put a profile's executed notebooks (`executed`) into book/notebooks/ (replacing what is there), a "not
    executed yet" page for each chapter that has none, and write the execution-status page book/status.md.
    Returns each chapter's state (name, title, status, profile, seconds, executed)."""
    import nbformat

    book = root / EXECUTED
    shutil.rmtree(book, ignore_errors=True)
    book.mkdir(parents=True)
    rows = []
    for src in sorted((root / NOTEBOOKS).glob("[0-9][0-9]_*.ipynb")):
        title = title_cell(src).source.lstrip("# ").strip()
        state = executed_state(executed / src.name)
        if state is None:
            nb = placeholder(src, profile, "Not executed yet",
                             f"This chapter has not been executed under profile `{profile}` ({executed} holds no "
                             f"{src.name}).", "warning")
            nbformat.write(nb, book / src.name)
            state = {"status": "not executed", "profile": profile, "seconds": None, "executed": None}
        else:
            shutil.copyfile(executed / src.name, book / src.name)
        rows.append({"name": src.stem, "title": title, **state})
    lines = ["# Execution status", "",
             f"Each chapter of this build: the profile it was executed under, whether it ran to the end, its run time "
             f"and when (UTC). The executed notebooks come from `{os.path.relpath(executed, root)}/`; "
             "`fitmm book` renders them without executing anything.", "",
             "| chapter | profile | status | run time (s) | executed (UTC) |", "|---|---|---|---:|---|"]
    for r in rows:
        seconds = "–" if r["seconds"] is None else f"{r['seconds']:.0f}"
        lines.append(f"| [{r['title']}](notebooks/{r['name']}.ipynb) | {r['profile']} | {r['status']} | {seconds} | "
                     f"{(r['executed'] or '–')[:16]} |")
    (root / BOOK / "status.md").write_text("\n".join(lines) + "\n")
    return rows


def build_book(root: Path) -> int:
    """`jupyter-book build book --all -W` (warnings are errors) on what book/notebooks/ holds; returns its exit
    code. Nothing is executed (`execute_notebooks: off`)."""
    fetch_mathjax(root)
    shutil.rmtree(root / BOOK / "_build" / ".doctrees", ignore_errors=True)  # no glue data left from an older build
    cmd = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()",
           "build", str(root / BOOK), "--all", "-W", "--keep-going"]
    return subprocess.run(cmd, cwd=root).returncode


def publish(root: Path, profile: str, results_dir: str | Path | None = None) -> tuple[int, list[str]]:
    """Stage the profile's executed notebooks and build the book; print what it holds and where it is.
    Returns the build's exit code (2: MathJax could not be fetched) and the chapters without results."""
    results = locations(profiles()[profile], results_dir)[settings.ENV["results"]]
    rows = stage(root, executed_dir(results, profile), profile)
    for r in rows:
        print(f"  {r['name']:28s} {r['status']}" + (f" ({r['executed'][:16]} UTC)" if r["executed"] else ""))
    try:
        built = build_book(root)
    except RuntimeError as err:
        print(f"fitmm: error: {err}", file=sys.stderr)
        built = 2
    print(f"book: {root / BOOK / '_build' / 'html' / 'index.html'}" if built == 0
          else "book: the build failed (warnings count as errors), see above")
    incomplete = [r["name"] for r in rows if r["status"] != "ok"]
    if incomplete:
        print(f"chapters without results: {', '.join(incomplete)}")
    return built, incomplete


def _root(args: argparse.Namespace) -> Path | None:
    root = Path(args.root).resolve()
    if not (root / NOTEBOOKS).is_dir():
        print(f"fitmm: error: {root / NOTEBOOKS}: not found; pass --root (the source checkout holding notebooks/)",
              file=sys.stderr)
        return None
    return root


def _reproduce(args: argparse.Namespace) -> int:
    root = _root(args)
    if root is None:
        return 2
    t0 = time.perf_counter()
    try:
        profile = profiles()[args.profile]
        slurm = slurm_options(args, profile.get("slurm"), f"fitmm/experiments/profiles.yaml: profile {args.profile!r}, ")
        if args.dry_run:
            print(dry_run(args.profile, root, args.only, args.results_dir, args.data_dir, args.runs_matching))
            return 0
        batch = Summary() if args.records_only else run_batch(args.profile, root, args.only, args.executor, args.jobs,
                                                              slurm, args.results_dir, args.data_dir,
                                                              args.runs_matching)
    except KeyError as err:  # an --only name, a --runs-matching text no run has, or a parameter the profile lacks
        print(f"fitmm: error: {err.args[0]}", file=sys.stderr)
        return 2
    print(f"runs ({args.profile}): " + ("none trained (--records-only)" if args.records_only else
                                        f"{batch}, {time.perf_counter() - t0:.0f} s"))
    if args.runs_only:
        return 1 if batch.failed else 0
    from fitmm.experiments.runs import RECORDS_ONLY

    before = os.environ.get(RECORDS_ONLY)
    os.environ[RECORDS_ONLY] = "1"  # the kernels inherit it: the notebooks read, they do not train
    try:
        outcome = reproduce(args.profile, root, args.only, args.force, args.results_dir, args.data_dir,
                            args.cell_timeout)
    except KeyError as err:  # a parameter the profile does not set
        print(f"fitmm: error: {err.args[0]}", file=sys.stderr)
        return 2
    finally:  # an in-process caller (a test, a notebook) trains again afterwards
        if before is None:
            os.environ.pop(RECORDS_ONLY)
        else:
            os.environ[RECORDS_ONLY] = before
    failed = [name for name, status in outcome.items() if status.startswith("failed")]
    for name, status in outcome.items():
        print(f"  {name:28s} {status}")
    code = 1 if failed or batch.failed else 0
    if not args.no_book:
        built, _ = publish(root, args.profile, args.results_dir)
        code = code or built
    print(f"run records: {locations(profiles()[args.profile], args.results_dir)[settings.ENV['results']]}")
    print(f"reproduce ({args.profile}): {len(outcome)} notebook(s), {len(failed)} failed, "
          f"{time.perf_counter() - t0:.0f} s")
    return code


def _book(args: argparse.Namespace) -> int:
    root = _root(args)
    if root is None:
        return 2
    t0 = time.perf_counter()
    built, incomplete = publish(root, args.profile, args.results_dir)
    print(f"book ({args.profile}): {time.perf_counter() - t0:.0f} s, nothing executed")
    return built or (1 if incomplete else 0)


def _common(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--results-dir", help="where run records and executed notebooks are read and written (default: "
                                           "$FITMM_RESULTS, else the profile's results_dir under the project root)")
    cmd.add_argument("--root", default=settings.project_root() or Path.cwd(),
                     help="the source checkout holding notebooks/ and book/ (default: the one fitmm is imported from)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `reproduce` and `book` commands."""
    cmd = subparsers.add_parser("reproduce", help="execute the book's notebooks under a profile, then build the book")
    cmd.add_argument("--profile", required=True, choices=sorted(profiles()),
                     help="smoke: synthetic, minutes; cpu: the data on hand on this machine; full: the papers' protocol")
    cmd.add_argument("--only", nargs="+", metavar="NAME",
                     help="only these notebooks (name or prefix, e.g. 01 04); the book keeps the others' last outputs")
    cmd.add_argument("--force", action="store_true", help="re-execute notebooks even when their output is up to date")
    cmd.add_argument("--no-book", action="store_true", help="execute the notebooks but do not build the book")
    cmd.add_argument("--cell-timeout", type=int, metavar="SECONDS",
                     help="fail a chapter whose cell runs longer than this (default: no limit)")
    cmd.add_argument("--data-dir", help="folder holding the profile's datasets (default: $FITMM_DATA, "
                                        "else the profile's data_dir under the project root)")
    _common(cmd)
    runs = cmd.add_mutually_exclusive_group()
    runs.add_argument("--runs-only", action="store_true", help="stop after the runs (no notebooks, no book)")
    runs.add_argument("--records-only", action="store_true",
                      help="train nothing: the notebooks show the records there are and note the missing runs")
    runs.add_argument("--dry-run", action="store_true",
                      help="train and execute nothing: list the searches not finished, per chapter the runs planned, "
                           "finished and still to train, and those runs with their seeds")
    cmd.add_argument("--runs-matching", nargs="+", metavar="TEXT",
                     help="train (or, with --dry-run, list) only the planned runs whose label contains one of these "
                          "texts, e.g. 'ssr [no masking] on baby' or 'on baby, seed 1' (labels as --dry-run prints "
                          "them; runs whose search has not finished are not planned yet); the notebooks still show "
                          "every record there is")
    add_executor_arguments(cmd, "run")  # SLURM resources default to the profile's slurm: section
    cmd.set_defaults(func=_reproduce)
    book = subparsers.add_parser("book", help="build the book from a profile's executed notebooks, executing nothing")
    book.add_argument("--profile", default="full", choices=sorted(profiles()),
                      help="whose executed notebooks (<results_dir>/notebooks/) to render (default: full, the "
                           "published study)")
    _common(book)
    book.set_defaults(func=_book)
