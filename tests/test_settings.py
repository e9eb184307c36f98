"""farzi/settings.py: flat names, records, checks and the one merge of defaults, preset, recipe and flags."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from farzi.distill.config import DistillConfig, RecipeConfig
from farzi.errors import ConfigError
from farzi.presets import command_settings, protocol
from farzi.settings import from_record, markdown_rows, merge, settings_of, to_record

REPO = Path(__file__).resolve().parents[1]


def test_a_nested_setting_is_flat_in_names_options_and_records() -> None:
    names = [s.name for s in settings_of(DistillConfig)]
    assert ["recipe_lr", "recipe_weight_decay", "recipe_steps", "recipe_batch"] == [
        n for n in names if n.startswith("recipe_")
    ]
    cfg = DistillConfig.from_dict({"recipe_lr": 0.5, "mu": 3})
    assert cfg.recipe == RecipeConfig(lr=0.5) and cfg.mu == 3
    assert to_record(cfg)["recipe_lr"] == 0.5 and "recipe" not in to_record(cfg)
    assert DistillConfig.from_dict(cfg.to_dict()) == cfg


def test_an_unknown_name_is_refused_by_record_and_merge() -> None:
    with pytest.raises(ConfigError, match="unknown distill settings bogus"):
        DistillConfig.from_dict({"bogus": 1})
    with pytest.raises(ConfigError, match="the preset names a setting 'bogus' this command does not have"):
        merge(DistillConfig, [("preset", {"bogus": 1})])


def test_merge_layers_in_order_and_says_where_each_value_came_from() -> None:
    merged = merge(
        DistillConfig,
        [
            ("preset", {"tau": 2.0, "mu": 7, "model_overrides": {"d_model": 16, "max_len": 8}}),
            ("flag", {"tau": 3.0, "model_overrides": {"max_len": 32}}),
        ],
    )
    cfg = merged.config
    assert (cfg.tau, cfg.mu, cfg.xi, cfg.model_overrides) == (3.0, 7, 50, {"d_model": 16, "max_len": 32})
    assert merged.sources["tau"] == "flag" and merged.sources["mu"] == "preset" and merged.sources["xi"] == "default"
    assert merged.sources["model_overrides.d_model"] == "preset"
    assert merged.sources["model_overrides.max_len"] == "flag"
    assert DistillConfig().model_overrides == {}  # the defaults were copied, not changed


def test_a_bundles_recipe_sits_between_preset_and_flags() -> None:
    recipe = {"lr": 5e-3, "weight_decay": 0.1, "batch_size": 3, "max_steps": 7, "metric": "xent", "optimizer": "adam"}
    plain = command_settings("train-student", "rec", {"max_steps": 9}, recipe=recipe)
    assert (plain.config.train.lr, plain.config.train.batch_size, plain.config.train.max_steps) == (5e-3, 3, 9)
    assert sorted(plain.from_source("recipe")) == ["batch_size", "lr", "metric", "weight_decay"]
    # under a preset the recipe gives the learning rate and weight decay, and what the preset leaves open
    preset = command_settings("train-student", "rec", {}, preset="cpu", recipe=recipe)
    assert (preset.config.train.lr, preset.config.train.batch_size, preset.config.train.max_steps) == (5e-3, 128, 600)
    assert sorted(preset.from_source("recipe")) == ["lr", "metric", "weight_decay"]
    # beauty-cpu (the cpu preset on amazon-beauty) sizes its students on a bundle by the recipe's batch and steps
    beauty = command_settings("train-student", "rec", {}, preset="cpu", recipe=recipe, dataset="amazon-beauty")
    assert (beauty.config.train.lr, beauty.config.train.batch_size, beauty.config.train.max_steps) == (5e-3, 3, 7)
    assert sorted(beauty.from_source("recipe")) == ["batch_size", "lr", "max_steps", "metric", "weight_decay"]


def test_the_cpu_preset_takes_a_datasets_own_protocol() -> None:
    beauty = command_settings("distill", "rec", {}, preset="cpu", dataset="amazon-beauty").config
    ml100k = command_settings("distill", "rec", {}, preset="cpu", dataset="ml-100k").config
    assert (beauty.support, beauty.outer_steps, beauty.recipe.batch) == (64, 60, 16)
    assert (ml100k.support, ml100k.outer_steps, ml100k.recipe.batch) == (0, 100, 128)
    assert protocol("cpu", "rec", "amazon-beauty") == "beauty-cpu" and protocol("cpu", "rec", "ml-100k") == "ml100k-cpu"
    assert protocol("paper", "rec", "amazon-beauty") == "ml100k-paper"  # no paper protocol of its own


def test_checks_name_the_option_derived_from_the_field() -> None:
    cases = {
        "latent_dim": (0, "--latent-dim 0 must be at least 1"),
        "recipe_steps": (0, "--recipe-steps 0 must be at least 1"),
        "recipe_lr": (-1.0, "--recipe-lr -1.0 must be a positive number"),
        "inner_momentum": (1.5, r"--inner-momentum 1.5 must lie in \[0, 1\)"),
        "tau": (1e4, r"--tau 10000 is outside \[0.001, 1000\]"),
        "grad_clip": (math.nan, "--grad-clip nan must be a number >= 0"),
        "outer_lr": (1e39, "--outer-lr 1e\\+39 is beyond float32's range"),
        "objective": ("bogus", r"unknown objective 'bogus' \(--objective\)"),
        "mu": (0, r"--budget sequences \(MU\) 0 must be at least 1"),
    }
    for name, (value, message) in cases.items():
        with pytest.raises(ConfigError, match=message):
            DistillConfig.from_dict({name: value}).validate()


def test_the_format_document_lists_every_setting_as_the_dataclass_declares_it() -> None:
    doc = (REPO / "formats" / "farzi-data-v1.md").read_text(encoding="utf-8")
    section = doc[doc.index("### 4.1") : doc.index("## 5.")]
    for row in markdown_rows(DistillConfig):
        assert row in section, f"formats/farzi-data-v1.md section 4.1 lacks or differs in:\n{row}"


def test_records_of_other_configs_round_trip() -> None:
    from farzi.student import StudentConfig

    cfg = from_record(StudentConfig, {"lr": 0.1, "discrete": True, "model_overrides": {"d_model": 8}})
    assert cfg.train.lr == 0.1 and cfg.discrete and to_record(cfg)["model_overrides"] == {"d_model": 8}
