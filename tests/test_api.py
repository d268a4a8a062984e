"""The notebook API and path settings: docstring examples run, folders resolve to the project from
any current directory, and a chapter run by papermill elsewhere writes only into the results folder."""

from __future__ import annotations

import doctest
import os
import subprocess
import sys
from pathlib import Path

import papermill
import pytest

import fitmm
from fitmm import api, settings
from fitmm.errors import ConfigError
from fitmm.experiments import claims, notes, report, significance, tables

from conftest import file_states

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def scratch_env(tmp_path, monkeypatch):
    """Results and cache in tmp_path, no FITMM_DATA; the current directory is an empty folder."""
    monkeypatch.setenv("FITMM_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("FITMM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FITMM_DATA", raising=False)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    return tmp_path


@pytest.mark.parametrize("module", [api, claims, notes, report, tables, significance], ids=lambda m: m.__name__)
def test_docstring_examples_run(module, scratch_env):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
    assert not any((scratch_env / "cwd").iterdir())


def test_settings_examples_run(monkeypatch):
    monkeypatch.delenv("FITMM_RESULTS", raising=False)
    result = doctest.testmod(settings)
    assert result.attempted > 0 and result.failed == 0


def test_folders_resolve_to_the_project_not_the_cwd(tmp_path, monkeypatch):
    for name in settings.ENV.values():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    assert settings.project_root() == ROOT
    assert settings.results_dir() == ROOT / "results"
    assert settings.results_dir(default="results/smoke") == ROOT / "results" / "smoke"
    assert settings.data_dir(default="../shared/data") == ROOT / ".." / "shared" / "data"
    assert settings.data_dir() == ROOT / "data" and settings.cache_dir() == ROOT / "cache"
    monkeypatch.setenv("FITMM_DATA", str(tmp_path / "d"))
    assert settings.data_dir(default="../shared/data") == tmp_path / "d"
    assert settings.data_dir("x") == Path("x")  # an explicit value, as given


def test_installed_without_a_project_root_falls_back(tmp_path, monkeypatch):
    for name in settings.ENV.values():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(settings, "project_root", lambda: None)
    assert settings.results_dir() == tmp_path / "results"
    assert settings.data_dir(default="../shared/data") == tmp_path / ".." / "shared" / "data"
    assert settings.cache_dir() == Path.home() / ".cache" / "fitmm"


def test_paths_in_the_book_are_shown_as_a_reader_types_them(tmp_path, monkeypatch):
    """Relative to the project root, a folder linked in from elsewhere (data/clothing -> shared) included."""
    root, shared = tmp_path / "project", tmp_path / "shared" / "clothing"
    (root / "data").mkdir(parents=True)
    shared.mkdir(parents=True)
    (root / "data" / "clothing").symlink_to(shared)
    monkeypatch.setattr(settings, "project_root", lambda: root)
    monkeypatch.chdir(root)
    assert settings.as_typed(root / "data" / "clothing") == settings.as_typed("data/clothing") == "data/clothing"
    assert settings.as_typed(shared) == str(shared)


def test_import_is_cheap_and_exports_the_api():
    code = "import sys, fitmm; assert 'torch' not in sys.modules and 'pandas' not in sys.modules; print(*fitmm.__all__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["load", "train", "runs", "main_table", "paired_test"]
    assert fitmm.train is api.train and fitmm.main_table is tables.with_published
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        fitmm.trian  # noqa: B018


def test_load_by_path_and_by_name(scratch_env, monkeypatch):
    from fitmm.data import generate

    folder = generate(scratch_env / "data", "mine", n_users=200, n_items=120, seed=1)
    by_path = api.load(folder)
    monkeypatch.setenv("FITMM_DATA", str(scratch_env / "data"))
    by_name = api.load("mine")
    assert by_path.name == by_name.name == "mine" and (by_path.train == by_name.train).all()
    assert api.load(str(folder)).n_users == by_path.n_users


def test_train_rejects_an_unknown_key_before_training(scratch_env):
    with pytest.raises(ConfigError, match="lambda_ibb"):
        api.train("fitmm", "synthetic", lambda_ibb=0)
    assert not (scratch_env / "results").exists()


@pytest.mark.slow
def test_chapter_run_from_another_folder_writes_only_into_the_results_folder(scratch_env, monkeypatch):
    """`cd elsewhere && papermill notebooks/01_main_results.ipynb out.ipynb` with FITMM_RESULTS set."""
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    # The repository's results folder is compared only where the chapter writes: training jobs
    # running in this checkout may add records and checkpoints elsewhere in it meanwhile.
    notebooks_before = sorted((ROOT / "notebooks").rglob("*"))
    results_before = file_states(ROOT / "results")
    cwd = scratch_env / "cwd"
    papermill.execute_notebook(str(ROOT / "notebooks" / "01_main_results.ipynb"), "out.ipynb",
                               parameters={"models": ["bpr", "lightgcn"], "budget": {"epochs": 1, "batch_size": 4096}},
                               cwd=str(cwd), progress_bar=False, kernel_name="python3")
    assert sorted(p.name for p in cwd.rglob("*")) == ["out.ipynb"]
    assert sorted((ROOT / "notebooks").rglob("*")) == notebooks_before
    written = set(file_states(scratch_env / "results"))
    results_after = file_states(ROOT / "results")
    assert {rel: results_after.get(rel) for rel in written} == {rel: results_before.get(rel) for rel in written}
    records = sorted((scratch_env / "results").glob("runs/*/*/*/record.json"))
    assert [p.relative_to(scratch_env / "results").parts[1:3] for p in records] == [("synthetic", "bpr"),
                                                                                      ("synthetic", "lightgcn")]
    assert sorted(p.name for p in (scratch_env / "results" / "claims" / "smoke").iterdir()) == [
        "fitmm-beats-baselines.json", "runs-01_main_results.json", "ssr-beats-baselines.json"]
