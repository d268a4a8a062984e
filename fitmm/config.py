"""Typed configs: one frozen dataclass per model, defaults from its YAML, validated once.

Every model file defines `<Model>Config`, a subclass of `Config` (the protocol keys of
`fitmm/configs/defaults.yaml`) with one field per key of `fitmm/configs/<model>.yaml`.
A field carries its type, its allowed values and a one-line description (`option`);
the YAML files stay the only source of default values. `load_config` merges the
protocol defaults, the model's YAML and the overrides (CLI `--set key=value`, notebook
parameters), and validates every value before any data is read or compute starts:
a bad value raises `ConfigError` naming the key, the value and what is allowed.

    >>> config = load_config("lightgcn", {"n_layers": 3})
    >>> config.n_layers, config.lr
    (3, 0.001)
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Iterable

import yaml

from fitmm.errors import ConfigError

METRICS = ("recall", "ndcg", "precision", "map")


def option(doc: str, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
           choices: tuple | None = None, min_len: int | None = None) -> Any:
    """A config field: its one-line description and allowed range (no default: defaults live in the YAML)."""
    return field(metadata={"doc": doc, "ge": ge, "gt": gt, "le": le, "choices": choices, "min_len": min_len})


def resolve_device(name: str) -> "torch.device":
    """The torch device a config's `device` names: `auto` is the GPU where there is one, else the CPU."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass(frozen=True)
class Config:
    """The protocol every model runs under (MMRec's; book: methods page, "Protocol")."""

    model: str = option("model name (set by load_config)")
    seed: int = option("seed of the initialisation and of each epoch's sampling", ge=0, le=2**32 - 1)
    embedding_dim: int = option("embedding size d", ge=1)
    batch_size: int = option("training pairs per batch", ge=1)
    lr: float = option("Adam learning rate", gt=0)
    weight_decay: float = option("Adam weight decay", ge=0)
    epochs: int = option("epoch limit", ge=1)
    patience: int = option("early stopping: the run stops once more epochs than this pass without a better valid metric",
                           ge=0)
    lr_decay: float = option("learning-rate factor per lr_decay_every epochs (lr · lr_decay^(epoch/lr_decay_every))", gt=0)
    lr_decay_every: float = option("epochs over which the learning rate decays by lr_decay", gt=0)
    negative_items: str = option("items negatives are drawn from: train (those in the train split, MMRec's) or all",
                                 choices=("train", "all"))
    valid_metric: str = option("metric@K that selects the best epoch (K must be in topk)")
    topk: list[int] = option("cut-offs K of the evaluation", ge=1, min_len=1)
    eval_batch_users: int = option("users scored per evaluation batch (memory only)", ge=1)
    device: str = option("auto (cuda if available), cpu, cuda or cuda:N")

    def check(self) -> None:
        """Checks across fields, after each field's own; raise ConfigError. Models extend this."""
        metric, _, k = self.valid_metric.partition("@")
        if metric not in METRICS or not k.isdigit() or int(k) not in self.topk:
            raise ConfigError(f"valid_metric: {self.valid_metric!r} is not allowed; expected metric@K with metric "
                              f"in {', '.join(METRICS)} and K in topk {self.topk}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"device: {self.device!r} is not allowed; expected auto, cpu, cuda or cuda:N")
        if self.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ConfigError(f"device: {self.device!r}, but torch finds no CUDA device here; use auto or cpu")
            index = int(self.device.partition(":")[2] or 0)
            if index >= torch.cuda.device_count():
                raise ConfigError(f"device: {self.device!r}, but there are {torch.cuda.device_count()} CUDA devices")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> Config:
        """A validated copy with `changes` applied."""
        return build(type(self), {**self.to_dict(), **changes})


def _read(name: str) -> dict:
    path = resources.files("fitmm.configs").joinpath(f"{name}.yaml")
    if not path.is_file():
        raise ConfigError(f"no config for model {name!r}: expected fitmm/configs/{name}.yaml")
    return yaml.safe_load(path.read_text()) or {}


def available_models() -> list[str]:
    files = resources.files("fitmm.configs").iterdir()
    return sorted(f.name[:-5] for f in files if f.name.endswith(".yaml") and f.name != "defaults.yaml")


def config_class(model: str) -> type[Config]:
    from fitmm.models import MODELS

    if model not in MODELS:
        raise ConfigError(f"unknown model {model!r}; available: {', '.join(sorted(MODELS))}")
    return MODELS[model].config_class


def defaults(model: str) -> dict[str, Any]:
    """The protocol defaults, then the model's YAML (what a run gets with no overrides)."""
    return {**_read("defaults"), **_read(model), "model": model}


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """['lr=1e-4', 'n_layers=3'] -> {'lr': 0.0001, 'n_layers': 3} (values parsed as YAML)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key=value")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({err.problem})") from None
        if isinstance(parsed, str):  # YAML 1.1 reads '1e-4' as a string
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        out[key.strip()] = parsed
    return out


def load_config(model: str, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the model's YAML, then `overrides`, as the model's validated typed config."""
    cls = config_class(model)
    values = defaults(model)
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:  # a YAML key without a field: a bug in the package, not in the user's input
        raise ConfigError(f"fitmm/configs/{model}.yaml: keys {unknown} have no field in {cls.__name__}")
    for key, value in (overrides or {}).items():
        if key not in values:
            raise ConfigError(f"unknown config key {key!r} for model {model!r}; known keys: {', '.join(sorted(values))}")
        values[key] = value
    return build(cls, values)


def build(cls: type[Config], values: dict[str, Any]) -> Config:
    """Validate every field of `values` against `cls`, then the checks across fields."""
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    missing = [f.name for f in fields if f.name not in values]
    if missing:
        raise ConfigError(f"{cls.__name__}: no value for {', '.join(missing)}")
    config = cls(**{f.name: _validate(f, hints[f.name], values[f.name]) for f in fields})
    config.check()
    return config


def _validate(f: dataclasses.Field, hint: Any, value: Any) -> Any:
    meta = f.metadata
    refused = ConfigError(f"{f.name}: {value!r} is not allowed; expected {describe(f, hint)}")
    coerced = _coerce(hint, value)
    if coerced is _INVALID:
        raise refused
    items = coerced.values() if isinstance(coerced, dict) else coerced if isinstance(coerced, list) else [coerced]
    for v in items:
        if v is None or isinstance(v, (str, bool)):
            continue
        if ((meta["ge"] is not None and v < meta["ge"]) or (meta["gt"] is not None and v <= meta["gt"])
                or (meta["le"] is not None and v > meta["le"])):
            raise refused
    if meta["choices"] is not None and coerced not in meta["choices"]:
        raise refused
    if meta["min_len"] is not None and len(coerced) < meta["min_len"]:
        raise refused
    return coerced


_INVALID = object()  # what _coerce returns for a value of the wrong type


def _coerce(hint: Any, value: Any) -> Any:
    """`value` as type `hint` (int -> float widening only), or _INVALID."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            out = _coerce(arg, value)
            if out is not _INVALID:
                return out
        return _INVALID
    if origin is list:
        if not isinstance(value, list):
            return _INVALID
        out = [_coerce(args[0], v) for v in value]
        return _INVALID if any(v is _INVALID for v in out) else out
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            return _INVALID
        out = {k: _coerce(args[1], v) for k, v in value.items()}
        return _INVALID if any(v is _INVALID for v in out.values()) else out
    if hint is bool:
        return value if isinstance(value, bool) else _INVALID
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _INVALID
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and abs(value) != float("inf")
        return float(value) if ok else _INVALID
    if hint is str:
        return value if isinstance(value, str) else _INVALID
    raise TypeError(f"unsupported config type {hint}")


def describe(f: dataclasses.Field, hint: Any) -> str:
    """What a field allows, in words: 'an integer >= 1', 'one of: code, paper', ..."""
    meta = f.metadata
    if meta["choices"] is not None:
        return "one of: " + ", ".join(map(str, meta["choices"]))
    words = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        text = describe(f, inner[0]) if len(inner) == 1 else " or ".join(words.get(a, str(a)) for a in inner)
        return text + " or null"
    if origin is list:
        text = f"a list of {words[args[0]].split(' ', 1)[1]}s"
        if meta["min_len"]:
            text = f"a non-empty list of {words[args[0]].split(' ', 1)[1]}s"
    elif origin is dict:
        text = f"a mapping from names to {words[args[1]].split(' ', 1)[1]}s"
    else:
        text = words[hint]
    bounds = [f"{op} {_number(meta[k])}" for k, op in (("ge", ">="), ("gt", ">"), ("le", "<=")) if meta[k] is not None]
    return text + (f" {' and '.join(bounds)}" if bounds else "") + (" (each)" if bounds and origin in (list, dict) else "")


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def help_text(model: str) -> str:
    """The fields of a model's config: name, type and allowed values, default, description."""
    cls = config_class(model)
    hints = typing.get_type_hints(cls)
    values = defaults(model)
    lines = [f"{cls.__name__} (defaults: fitmm/configs/defaults.yaml, then fitmm/configs/{model}.yaml)"]
    for f in dataclasses.fields(cls):
        if f.name == "model":
            continue
        lines.append(f"  {f.name} = {yaml.safe_dump(values[f.name], default_flow_style=True).strip().removesuffix('...').strip()}")
        lines.append(f"      {f.metadata['doc']}; {describe(f, hints[f.name])}")
    return "\n".join(lines)
