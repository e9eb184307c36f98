"""DistillConfig is the single source of truth: every field has its `distill` option and its row in the format."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import typer.main
from cli_runner import farzictl

from farzi.distill.config import MODEL_FLAGS, DistillConfig
from farzictl.app import DISTILL_OPTION_FIELDS, app

REPO = Path(__file__).resolve().parents[2]
FIELDS = [f.name for f in dataclasses.fields(DistillConfig)]


def _distill_command():
    return typer.main.get_command(app).commands["distill"]


def _options() -> dict[str, object]:
    return {opt: p for p in _distill_command().params for opt in p.opts}


def test_every_field_has_its_option_with_the_configs_default_and_help() -> None:
    options = _options()
    defaults = DistillConfig()
    helps = {f.name: f.metadata["help"] for f in dataclasses.fields(DistillConfig)}
    for name in FIELDS:
        if name in ("mu", "xi"):
            assert "--budget" in options
            continue
        if name == "model_overrides":
            assert all("--" + k.replace("_", "-") in options for k in MODEL_FLAGS)
            continue
        flag = "--" + name.replace("_", "-")
        assert flag in options, f"DistillConfig.{name} has no {flag} option"
        if name == "model":
            continue  # shared with the other commands
        param = options[flag]
        default = getattr(defaults, name)
        assert param.default == getattr(default, "value", default) or param.default == default, name
        assert param.help == helps[name], name
    assert set(DISTILL_OPTION_FIELDS) == set(FIELDS) - {"mu", "xi", "model", "model_overrides"}


def test_choices_are_listed_in_help() -> None:
    out = farzictl("distill", "--help", env={"COLUMNS": "250"}).ok().stdout
    for words in ("farzi|mm|dc|mtt", "adam|sgd", "teacher|real|random", "reverse|checkpointed|unroll|paper"):
        assert words in out, words


def test_the_format_document_names_every_field() -> None:
    doc = (REPO / "formats" / "farzi-data-v1.md").read_text(encoding="utf-8")
    section = doc[doc.index("### 4.1") : doc.index("## 5.")]
    for name in [*FIELDS, "package_version"]:
        assert f"| `{name}` |" in section, f"formats/farzi-data-v1.md section 4.1 lacks {name}"


@pytest.mark.parametrize(
    ("option", "value", "match"),
    [
        ("--objective", "bogus", "objective"),
        ("--meta-grad", "bogus", "meta-grad"),
        ("--init", "nope", "init"),
        ("--inner-optimizer", "rmsprop", "inner-optimizer"),
    ],
)
def test_unknown_choice_is_one_line(tmp_path, option: str, value: str, match: str) -> None:
    line = farzictl("distill", "somewhere", option, value, home=tmp_path).one_error_line()
    assert match in line and value in line


def test_every_option_reaches_the_bundle(tiny_lm, tmp_path) -> None:
    """Non-default values for every option land in the bundle's distill record."""
    values = {
        "latent_dim": 3,
        "tau": 0.5,
        "inner_steps": 2,
        "inner_lr": 0.02,
        "inner_optimizer": "sgd",
        "inner_state": "fresh",
        "inner_momentum": 0.5,
        "inner_weight_decay": 0.001,
        "outer_steps": 2,
        "outer_lr": 0.004,
        "outer_weight_decay": 1e-5,
        "syn_batch": 2,
        "real_batch": 4,
        "meta_batch": 2,
        "meta_grad": "checkpointed",
        "segment": 1,
        "objective": "mm",
        "mtt_offset": 3,
        "omega_runs": 0,
        "omega_min_step": 0,
        "omega_max_step": 0,
        "start_weighting": "none",
        "recipe_lr": 0.003,
        "recipe_weight_decay": 0.002,
        "learn_tau": True,
        "learn_inner_lr": True,
        "recipe_steps": 3,
        "recipe_batch": 2,
        "select_every": 1,
        "grad_clip": 2.0,
        "init": "random",
        "init_windows": "joined",
        "init_mix": 0.3,
        "init_scale": 0.5,
        "init_sharpness": 5.0,
        "seed": 4,
        "device": "cpu",
    }
    assert set(values) == set(DISTILL_OPTION_FIELDS)
    args = [
        (f"--{k.replace('_', '-')}" if v else f"--no-{k.replace('_', '-')}")
        if isinstance(v, bool)
        else f"--{k.replace('_', '-')}={v}"
        for k, v in values.items()
    ]
    out = tmp_path / "b.safetensors"
    model_args = ["--model", "transformer", "--max-len", "16", "--d-model", "8", "--n-layers", "1", "--n-heads", "2"]
    farzictl("distill", str(tiny_lm.path), "--budget", "3x5", *args, *model_args, "--out", str(out), "--json").ok()
    from farzi.distill.bundle import load_bundle

    record = load_bundle(out).meta["distill"]
    for key, value in values.items():
        assert record[key] == value, key
    assert (record["mu"], record["xi"], record["model"]) == (3, 5, "transformer")
    assert record["model_overrides"] == {"max_len": 16, "d_model": 8, "n_layers": 1, "n_heads": 2}
    assert json.loads(json.dumps(record))  # plain JSON, enums as strings
