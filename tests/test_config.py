"""Typed configs: every bad value is refused once, before any data or compute, naming key, value and what is allowed."""

import dataclasses
import hashlib
import json

import pytest

from fitmm.cli import main
from fitmm.config import available_models, defaults, help_text, load_config, parse_overrides
from fitmm.errors import ConfigError
from fitmm.models import MODELS
from fitmm.store import behaviour_version

# Each model's defaults (defaults.yaml + its YAML), pinned to its behaviour version. The run id hashes only the
# values that differ from the defaults, so when a default changes this test fails on purpose: if the new default
# changes what a default run computes, bump the model's `version` (or the trainer's PROTOCOL_VERSION for
# defaults.yaml) so that old records are not reused; then update the pin.
PINNED_DEFAULTS = {
    "bpr": ("p2.m1", "04714c94"),
    "ease": ("p2.m1", "3e511716"),
    "fitmm": ("p2.m1", "5dc4983b"),
    "freedom": ("p2.m2", "d9e111d0"),
    "lightgcn": ("p2.m2", "ffa948bb"),
    "smore": ("p2.m2", "ba0ae4c8"),
    "ssr": ("p2.m2", "13e89dab"),
    "vbpr": ("p2.m1", "97bb24c1"),
}


def defaults_digest(model: str) -> str:
    return hashlib.sha1(json.dumps(defaults(model), sort_keys=True).encode()).hexdigest()[:8]


def test_every_model_has_a_typed_config_whose_fields_are_its_yaml_keys():
    assert sorted(MODELS) == available_models()
    for name, model in MODELS.items():
        config = load_config(name)
        assert type(config) is model.config_class and dataclasses.is_dataclass(config)
        assert {f.name for f in dataclasses.fields(config)} == set(defaults(name))
        assert all(f.metadata["doc"] for f in dataclasses.fields(config))
        with pytest.raises(dataclasses.FrozenInstanceError):
            config.seed = 1


@pytest.mark.parametrize("model", sorted(MODELS))
def test_defaults_are_pinned_to_the_behaviour_version(model):
    assert (behaviour_version(model), defaults_digest(model)) == PINNED_DEFAULTS[model], (
        f"{model}'s defaults or version changed: bump the version if default runs now compute something else, "
        "then update PINNED_DEFAULTS")


@pytest.mark.parametrize("key,value,message", [
    ("epochs", 0, "epochs: 0 is not allowed; expected an integer >= 1"),
    ("epochs", -3, "epochs: -3 is not allowed; expected an integer >= 1"),
    ("epochs", "abc", "epochs: 'abc' is not allowed; expected an integer >= 1"),
    ("epochs", 1.5, "epochs: 1.5 is not allowed; expected an integer >= 1"),
    ("epochs", True, "epochs: True is not allowed"),
    ("patience", -1, "patience: -1 is not allowed; expected an integer >= 0"),
    ("lr", -1, "lr: -1 is not allowed; expected a number > 0"),
    ("lr", float("nan"), "lr: nan is not allowed"),
    ("seed", -1, "seed: -1 is not allowed; expected an integer >= 0 and <= 4294967295"),
    ("batch_size", 0, "batch_size: 0 is not allowed; expected an integer >= 1"),
    ("topk", [], "topk: \\[\\] is not allowed; expected a non-empty list of integers >= 1"),
    ("topk", [10, 0], "topk: \\[10, 0\\] is not allowed"),
    ("topk", 20, "topk: 20 is not allowed"),
    ("valid_metric", "foo@20", "valid_metric: 'foo@20' is not allowed; expected metric@K with metric in recall"),
    ("valid_metric", "recall@30", "valid_metric: 'recall@30' is not allowed.* K in topk"),
    ("device", "gpu", "device: 'gpu' is not allowed; expected auto, cpu, cuda or cuda:N"),
    ("n_layers", -1, "n_layers: -1 is not allowed; expected an integer >= 0"),
    ("embedding_dim", 0, "embedding_dim: 0 is not allowed; expected an integer >= 1"),
    ("reg_weight", "high", "reg_weight: 'high' is not allowed; expected a number >= 0"),
])
def test_bad_values_are_refused_with_key_value_and_range(key, value, message):
    with pytest.raises(ConfigError, match=message):
        load_config("lightgcn", {key: value})


def test_values_are_typed_and_ints_widen_to_floats():
    config = load_config("lightgcn", {"lr": 1, "topk": [20, 10]})
    assert config.lr == 1.0 and isinstance(config.lr, float) and config.topk == [20, 10]
    assert load_config("ssr", {"contrast_anchors": None}).contrast_anchors is None
    assert load_config("fitmm", {"item_graph_weights": {"image": 1}}).item_graph_weights == {"image": 1.0}
    with pytest.raises(ConfigError, match="item_graph_weights: \\{'image': -1\\} is not allowed"):
        load_config("fitmm", {"item_graph_weights": {"image": -1}})
    with pytest.raises(ConfigError, match="item_graph_weights: \\[0.5, 0.5\\] is not allowed; expected a mapping"):
        load_config("fitmm", {"item_graph_weights": [0.5, 0.5]})


def test_replace_validates():
    config = load_config("bpr")
    assert config.replace(seed=3).seed == 3 and config.seed == 999
    with pytest.raises(ConfigError, match="seed"):
        config.replace(seed=-2)


def test_overrides_parse_as_yaml():
    assert parse_overrides(["lr=1e-4", "n_layers=3", "topk=[10, 20]", "contrast_anchors=null", "bands=exact"]) == {
        "lr": 1e-4, "n_layers": 3, "topk": [10, 20], "contrast_anchors": None, "bands": "exact"}
    for bad, message in (("lr", "not of the form key=value"), ("=3", "not of the form"), ("topk=[1,", "not valid YAML")):
        with pytest.raises(ConfigError, match=message):
            parse_overrides([bad])


def test_cuda_without_a_gpu_is_refused(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="device: 'cuda', but torch finds no CUDA device here"):
        load_config("bpr", {"device": "cuda"})


def test_help_config_lists_every_field_with_its_default(capsys):
    assert main(["train", "--model", "ssr", "--help-config"]) == 0
    out = capsys.readouterr().out
    assert out == help_text("ssr") + "\n"
    for f in dataclasses.fields(load_config("ssr")):
        if f.name != "model":
            assert f"  {f.name} = " in out
    assert "bands = auto" in out and "one of: auto, chebyshev, exact, scalable" in out


@pytest.mark.parametrize("args,message", [
    (["--set", "epochs=0"], "epochs: 0 is not allowed"),
    (["--set", "epochs=abc"], "epochs: 'abc' is not allowed"),
    (["--seed", "-1"], "seed: -1 is not allowed"),
    (["--set", "valid_metric=foo@20"], "valid_metric: 'foo@20'"),
    (["--set", "learning_rate=0.1"], "unknown config key 'learning_rate'"),
    (["--set", "lr"], "not of the form key=value"),
])
def test_cli_refuses_bad_configs_with_exit_2_before_reading_data(tmp_path, capsys, args, message):
    # --data-dir points nowhere: the config error must come first, and nothing is written.
    argv = ["train", "--model", "bpr", "--dataset", "nope", "--data-dir", str(tmp_path / "missing"),
            "--results-dir", str(tmp_path / "results"), "--quiet", *args]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "results").exists()
