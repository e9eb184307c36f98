"""farzi.models registry: make_config, build_model, model_class, model_task."""

from __future__ import annotations

import pytest
import torch
from _zoo import ZOO

from farzi.errors import ConfigError
from farzi.models import (
    DEFAULT_MODEL,
    MODELS,
    ModelConfig,
    SequenceModel,
    build_model,
    count_parameters,
    make_config,
    model_class,
    model_task,
)


def test_zoo_under_test_covers_every_registered_model():
    assert {s.name for s in ZOO} == set(MODELS)
    assert set(DEFAULT_MODEL) == {"rec", "lm"}
    for task, name in DEFAULT_MODEL.items():
        assert model_task(name) == task


@pytest.mark.parametrize("name", list(MODELS))
def test_registry_entries_are_consistent(name):
    cls, cfg_cls = model_class(name)
    assert issubclass(cls, SequenceModel) and issubclass(cfg_cls, ModelConfig)
    assert cls.name == name
    assert cls.task in ("rec", "lm") and model_task(name) == cls.task


@pytest.mark.parametrize("name", list(MODELS))
def test_make_config_defaults_and_overrides(name):
    default = make_config(name, 23)
    assert default.vocab_size == 23
    cfg = make_config(name, 23, d_model=8, max_len=12, dropout=0, n_layers=None)
    assert (cfg.vocab_size, cfg.d_model, cfg.max_len) == (23, 8, 12)
    assert cfg.dropout == 0.0 and isinstance(cfg.dropout, float)  # coerced to the field's type
    assert getattr(cfg, "n_layers", None) == getattr(default, "n_layers", None)  # None = default
    # the defaults themselves are untouched by overriding another instance
    assert make_config(name, 23).d_model == default.d_model


def test_model_specific_override():
    cfg = make_config("rnn", 19, cell="lstm", d_hidden="16")
    assert cfg.cell == "lstm" and cfg.d_hidden == 16
    assert make_config("transformer", 19, n_heads=4).n_heads == 4


@pytest.mark.parametrize("build", [make_config, model_class, model_task], ids=lambda f: f.__name__)
def test_unknown_model_name_is_a_config_error(build):
    args = ("no-such-model", 19) if build is make_config else ("no-such-model",)
    with pytest.raises(ConfigError, match="no-such-model"):
        build(*args)


def test_build_model_unknown_name_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown model"):
        build_model("no-such-model", {"vocab_size": 19})


@pytest.mark.parametrize("name", list(MODELS))
def test_unknown_setting_is_a_config_error(name):
    with pytest.raises(ConfigError, match="no_such_setting"):
        make_config(name, 19, no_such_setting=3)
    with pytest.raises(ConfigError, match="no_such_setting"):
        build_model(name, {"vocab_size": 19, "no_such_setting": 3})


def test_setting_of_another_model_is_a_config_error():
    with pytest.raises(ConfigError, match="cell"):
        make_config("sasrec", 19, cell="lstm")


@pytest.mark.parametrize("spec", ZOO, ids=[s.id for s in ZOO])
def test_build_model_from_config_and_from_dict(spec):
    cfg = spec.config()
    torch.manual_seed(0)
    from_cfg = build_model(spec.name, cfg)
    torch.manual_seed(0)
    from_dict = build_model(spec.name, cfg.to_dict())
    assert from_cfg.config == cfg and from_dict.config == cfg
    assert type(from_dict) is MODELS[spec.name][0]
    assert count_parameters(from_cfg) == count_parameters(from_dict) > 0
    for (k, a), (_, b) in zip(from_cfg.state_dict().items(), from_dict.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("rnn", {"cell": "transformer"}),
        ("transformer", {"d_model": 8, "n_heads": 3}),
        ("sasrec", {"d_model": 10, "n_heads": 4}),
    ],
    ids=["rnn-unknown-cell", "transformer-heads-not-dividing", "sasrec-heads-not-dividing"],
)
def test_settings_the_model_rejects_are_config_errors(name, overrides):
    cfg = make_config(name, 19, **overrides)
    with pytest.raises(ConfigError, match=f"invalid config for model '{name}'"):
        build_model(name, cfg)
    with pytest.raises(ConfigError):
        build_model(name, cfg.to_dict())


@pytest.mark.parametrize(
    "overrides",
    [{"d_model": "wide"}, {"dropout": "high"}, {"to_dict": 1}, {"from_dict": 1}],
    ids=["non-int", "non-float", "method-to_dict", "method-from_dict"],
)
def test_bad_override_values_and_non_settings_are_config_errors(overrides):
    with pytest.raises(ConfigError):
        make_config("sasrec", 19, **overrides)
