"""Configs: protocol defaults, one YAML per model, and key=value overrides."""

from __future__ import annotations

from importlib import resources
from typing import Any, Iterable

import yaml

from fitmm.errors import TrainingError


def _read(name: str) -> dict:
    path = resources.files("fitmm.configs").joinpath(f"{name}.yaml")
    if not path.is_file():
        raise TrainingError(f"no config for model {name!r}: expected fitmm/configs/{name}.yaml")
    return yaml.safe_load(path.read_text()) or {}


def available_models() -> list[str]:
    files = resources.files("fitmm.configs").iterdir()
    return sorted(f.name[:-5] for f in files if f.name.endswith(".yaml") and f.name != "defaults.yaml")


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """['lr=1e-4', 'n_layers=3'] -> {'lr': 0.0001, 'n_layers': 3} (values parsed as YAML)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise TrainingError(f"override {item!r} is not of the form key=value")
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):  # YAML 1.1 reads '1e-4' as a string
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        out[key.strip()] = parsed
    return out


def load_config(model: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Defaults, then the model's YAML, then `overrides`; unknown keys are an error (typos)."""
    config = {**_read("defaults"), **_read(model), "model": model}
    for key, value in (overrides or {}).items():
        if key not in config:
            raise TrainingError(f"unknown config key {key!r} for model {model!r}; known keys: {', '.join(sorted(config))}")
        if isinstance(config[key], float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        config[key] = value
    return config
