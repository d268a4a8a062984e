"""fitmm: a reproducibility study of frequency-aware multimodal recommendation (FITMM, SSR).

The functions a notebook cell needs, imported on first use (`import fitmm` stays cheap):

- `load(name, data_dir=None)`: a dataset (`fitmm.api.load`);
- `train(model, data, results_dir=None, seed=None, **overrides)`: the run record (`fitmm.api.train`);
- `runs(results_dir=None, dataset=None, model=None)`: finished runs as a DataFrame (`fitmm.api.runs`);
- `main_table(frame, dataset)`: the main-results table, ours beside the published numbers
  (`fitmm.experiments.tables.with_published`);
- `paired_test(a, b, metric)`: Wilcoxon and paired t-test over users (`fitmm.experiments.significance`).
"""

from importlib import import_module

__version__ = "0.1.0"

_LAZY = {"load": ("fitmm.api", "load"), "train": ("fitmm.api", "train"), "runs": ("fitmm.api", "runs"),
         "main_table": ("fitmm.experiments.tables", "with_published"),
         "paired_test": ("fitmm.experiments.significance", "paired_test")}
__all__ = list(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'fitmm' has no attribute {name!r}")
    module, attr = _LAZY[name]
    return getattr(import_module(module), attr)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
