"""The book's sources: notebooks, profiles, toc and config agree (no execution), and the runner's
skip / resume / failure behaviour on throwaway notebooks (one kernel per execution)."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import nbformat
import papermill
import pytest
import yaml

from fitmm import reproduce

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PROFILES = reproduce.profiles()


def glue_patterns(nb: nbformat.NotebookNode) -> list[re.Pattern]:
    """Keys a notebook glues: glue_text("key", ...) literals, f-string keys as patterns."""
    keys = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            for f, key in re.findall(r'glue_text\((f?)"([^"]+)"', cell.source):
                keys.append(re.compile(re.sub(r"\\\{[^}]*\\\}", ".+", re.escape(key)) if f else re.escape(key)))
    return keys


def glued_in_markdown(text: str) -> list[tuple[str, str]]:
    """(document, key) of every {glue:text} role; document '' for the same notebook."""
    out = []
    for ref in re.findall(r"\{glue:text\}`([^`]+)`", text):
        doc, _, key = ref.rpartition("::")
        out.append((doc, key.split(":")[0]))
    return out


def test_there_are_the_ten_chapters():
    assert [nb.stem[:2] for nb in NOTEBOOKS] == [f"{i:02d}" for i in range(10)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_valid_nbformat_with_cell_ids(path):
    nb = json.loads(path.read_text())
    ids = [c.get("id") for c in nb["cells"]]  # before validate(), which fills in missing ids
    assert all(ids) and len(set(ids)) == len(ids), "every cell has a unique id"
    nbformat.validate(nb)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0] is code[0], "one parameters cell, the first code cell"
    tree = ast.parse(tagged[0].source)
    assert all(isinstance(s, ast.Assign) for s in tree.body), "the parameters cell only assigns"
    defaults = {s.targets[0].id: ast.literal_eval(s.value) for s in tree.body}
    assert "profile" in defaults
    for name, profile in PROFILES.items():
        assert set(reproduce.notebook_parameters(path, profile)) == set(defaults)  # every profile sets them all
    smoke = PROFILES["smoke"]
    assert defaults == {k: smoke[k] for k in defaults}, "defaults mirror the smoke profile"
    if path.stem != "08_explore":  # the Explore chapter shows its code: it is the example to copy
        hidden = [c for c in code[1:] if "hide-input" not in c.metadata.get("tags", [])]
        assert not hidden, "every other code cell folds its source (tag hide-input): the page shows outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_glued_key_is_computed(path):
    nb = nbformat.read(path, as_version=4)
    patterns = glue_patterns(nb)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for doc, key in glued_in_markdown(cell.source):
                assert doc == "" and any(p.fullmatch(key) for p in patterns), f"{key!r} is not glued in {path.name}"


def test_pages_glue_from_existing_notebooks():
    for page in (ROOT / "book").glob("*.md"):
        for doc, key in glued_in_markdown(page.read_text()):
            nb = nbformat.read(ROOT / "notebooks" / Path(doc).name, as_version=4)
            assert any(p.fullmatch(key) for p in glue_patterns(nb)), f"{page.name}: {doc}::{key} is never glued"


def test_toc_lists_every_notebook_and_page():
    toc = yaml.safe_load((ROOT / "book" / "_toc.yml").read_text())
    files = [toc["root"]] + [c["file"] for part in toc["parts"] for c in part["chapters"]]
    assert [f for f in files if f.startswith("notebooks/")] == [f"notebooks/{nb.stem}" for nb in NOTEBOOKS]
    for f in files:
        if f == "status":  # the execution-status page, written by reproduce.stage
            continue
        if not f.startswith("notebooks/"):
            assert (ROOT / "book" / f"{f}.md").exists()
    assert files[-1] == "status"


def test_config_never_executes_and_serves_mathjax_locally():
    config = yaml.safe_load((ROOT / "book" / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "off"
    sphinx = config["sphinx"]["config"]
    extra = sphinx["html_extra_path"]
    dest = reproduce.MATHJAX["dest"]
    assert [f"{dest.parent.name}"] == extra and dest.parent.parent == reproduce.BOOK
    # Sphinx prefixes mathjax_path with _static/: ../ climbs back to the site root, where html_extra_path copies to
    assert sphinx["mathjax_path"] == f"../{dest.name}/{reproduce.MATHJAX['entry']}"
    assert not list((ROOT / "book" / "_static").rglob("*.js"))  # jupyter-book would inject every .js under static paths
    assert [(ROOT / "book" / "_static" / f).is_file() for f in sphinx["html_css_files"]] == [True]  # tables scroll
    assert sphinx["html_theme_options"]["use_download_button"]  # each chapter's .ipynb


def test_select_by_name_or_prefix(tmp_path):
    paths = [tmp_path / f"{s}.ipynb" for s in ("00_data", "01_main", "10_other")]
    assert reproduce.select(paths, None) == paths
    assert reproduce.select(paths, ["01", "00_data"]) == paths[:2]
    with pytest.raises(KeyError, match="no notebook matches 02"):
        reproduce.select(paths, ["02"])


def write_notebook(path: Path, body: str) -> None:
    params = nbformat.v4.new_code_cell('profile = "x"')
    params.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=[params, nbformat.v4.new_code_cell(body)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.mark.slow
def test_reproduce_resumes_and_reports_failures(tmp_path):
    (tmp_path / "notebooks").mkdir()
    write_notebook(tmp_path / "notebooks" / "00_ok.ipynb", "print(profile)")
    write_notebook(tmp_path / "notebooks" / "01_bad.ipynb", "raise ValueError('boom')")
    write_notebook(tmp_path / "notebooks" / "02_dead.ipynb", "import os\nos._exit(1)")  # the kernel dies
    write_notebook(tmp_path / "notebooks" / f"{reproduce.REPORT}.ipynb", "1")
    results = tmp_path / "results"
    first = reproduce.reproduce("smoke", tmp_path, results_dir=results)
    assert first["00_ok"].startswith("ok") and first["01_bad"] == "failed: ValueError: boom"
    assert first["02_dead"].startswith("failed: DeadKernelError")
    assert first[reproduce.REPORT].startswith("ok")  # failures do not stop the others
    out = reproduce.executed_dir(results, "smoke")
    assert out == results / "notebooks" / "smoke"  # profiles sharing a results_dir keep their own chapters
    for name in ("01_bad", "02_dead"):
        failed = nbformat.read(out / f"{name}.ipynb", as_version=4)
        assert reproduce.executed_state(out / f"{name}.ipynb")["status"] == "failed"
        text = "".join(c.source for c in failed.cells)
        assert "This chapter failed" in text and "Traceback" not in text and len(failed.cells) == 2
    assert "`ValueError: boom`" in nbformat.read(out / "01_bad.ipynb", as_version=4).cells[1].source
    executed = nbformat.read(out / "00_ok.ipynb", as_version=4)
    assert "smoke" in "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert executed.cells[0].cell_type == "markdown" and "Profile: smoke" in executed.cells[0].source  # the banner
    defaults = next(c for c in executed.cells if "parameters" in c.metadata.get("tags", []))
    assert "remove-cell" in defaults.metadata["tags"]  # defaults hidden behind the injected cell

    second = reproduce.reproduce("smoke", tmp_path, only=["00"], results_dir=results)  # the report comes along
    assert second == {"00_ok": "up to date", reproduce.REPORT: "up to date"}
    write_notebook(tmp_path / "notebooks" / "00_ok.ipynb", "print(profile, 2)")
    third = reproduce.reproduce("smoke", tmp_path, only=["00"], results_dir=results)
    assert third["00_ok"].startswith("ok") and third[reproduce.REPORT].startswith("ok")  # the report follows
    papermill_meta = json.loads((out / "00_ok.ipynb").read_text())["metadata"]["papermill"]
    assert papermill_meta["parameters"] == {"profile": "smoke"}
    assert (papermill_meta["input_path"], papermill_meta["output_path"]) == (  # as typed in a clone, not this machine's
        "notebooks/00_ok.ipynb", "results/notebooks/smoke/00_ok.ipynb")
    assert papermill.inspect_notebook(str(out / "00_ok.ipynb"))  # still a parameterised notebook

    write_notebook(tmp_path / "notebooks" / "03_new.ipynb", "1")  # never executed
    rows = {r["name"]: r for r in reproduce.stage(tmp_path, out, "smoke")}
    assert [rows[n]["status"] for n in ("00_ok", "01_bad", "03_new")] == ["ok", "failed", "not executed"]
    staged = tmp_path / reproduce.EXECUTED
    assert sorted(p.stem for p in staged.glob("*.ipynb")) == sorted(rows)
    assert "Not executed yet" in nbformat.read(staged / "03_new.ipynb", as_version=4).cells[1].source
    status = (tmp_path / reproduce.BOOK / "status.md").read_text()
    assert "| [# 00_ok](notebooks/00_ok.ipynb) | smoke | ok |" not in status  # titles without the '#'
    assert "[00_ok](notebooks/00_ok.ipynb) | smoke | ok |" in status and "| not executed | – |" in status


def test_chapters_of_a_study_in_progress_run_to_the_end(tmp_path, monkeypatch):
    """Records-only chapters on a study part-way through: FITMM and SSR have runs on one dataset and none on another
    (where they cannot run), the Explore variant has none. The chapters note what is missing and still finish."""
    from fitmm.data.synthetic import generate
    from fitmm.experiments import plan, runs

    monkeypatch.setenv("FITMM_CACHE", str(tmp_path / "cache"))
    generate(tmp_path / "data", "bare", 120, 80, seed=0, modalities={})
    budget = {"epochs": 1, "batch_size": 4096}
    results = tmp_path / "results"
    runs.run_specs(plan.pair_runs(["synthetic"], None, ["fitmm", "ssr"], [999], budget, None, str(results)), results)
    smoke = {**PROFILES["smoke"], "datasets": ["synthetic", "bare"], "models": ["fitmm", "ssr"], "budget": budget,
             "data_dir": str(tmp_path / "data")}
    monkeypatch.setattr(reproduce, "profiles", lambda: {"smoke": smoke})
    monkeypatch.setenv(plan.RECORDS_ONLY, "1")
    outcome = reproduce.reproduce("smoke", ROOT, ["02", "08"], results_dir=results)
    assert all(status.startswith("ok") for status in outcome.values()), outcome
    explore = nbformat.read(reproduce.executed_dir(results, "smoke") / "08_explore.ipynb", as_version=4)
    shown = "".join(str(o.get("data", {})) for c in explore.cells for o in c.get("outputs", []))
    assert "has no finished run yet" in shown
