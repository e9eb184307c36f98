"""Options built from config dataclasses (farzictl/options.py): every setting of ``DistillConfig`` is a
``distill`` option with the field's default and help, reaches the bundle, and a setting added to the
dataclass alone gets its option, help, checks, preset support and record."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
import typer
import typer.main
import typer.testing
from cli_runner import farzictl

from farzi.distill.config import MODEL_FLAGS, DistillConfig
from farzi.errors import ConfigError
from farzi.settings import merge, setting, settings_of
from farzictl import options
from farzictl.app import app

# settings with an option of their own name (mu and xi are --budget, model_overrides is --max-len, ...)
OWN = [s for s in settings_of(DistillConfig) if s.name not in ("mu", "xi", "model_overrides")]


def _options(command: str = "distill", group: Any = None) -> dict[str, Any]:
    cmd = typer.main.get_command(group or app)
    cmd = cmd.commands[command] if hasattr(cmd, "commands") else cmd
    return {opt: p for p in cmd.params for opt in p.opts}


def test_every_setting_has_its_option_with_the_configs_default_and_help() -> None:
    opts = _options()
    assert "--budget" in opts and all("--" + k.replace("_", "-") in opts for k in MODEL_FLAGS)
    for s in OWN:
        assert s.flag in opts, f"DistillConfig setting {s.name} has no {s.flag} option"
        param = opts[s.flag]
        default = getattr(s.default, "value", s.default)
        assert param.default in (default, s.default), s.name
        if s.name != "seed":  # the shared, range-checked --seed of every command
            assert param.help == s.help, s.name


def test_choices_are_listed_in_help() -> None:
    out = farzictl("distill", "--help", env={"COLUMNS": "250"}).ok().stdout
    for words in ("farzi|mm|dc|mtt", "adam|sgd", "teacher|real|random", "reverse|checkpointed|unroll|paper"):
        assert words in out, words


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
        "decoder": "tied-frozen",
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
        "feature_align": 0.1,
        "recipe_lr": 0.003,
        "recipe_weight_decay": 0.002,
        "learn_tau": True,
        "learn_inner_lr": True,
        "support": 3,
        "inner_softmax": "candidates",
        "inner_negatives": 7,
        "meta_softmax": "sampled",
        "meta_negatives": 9,
        "support_refresh": 1,
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
    assert set(values) == {s.name for s in OWN} - {"model"}
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


@dataclasses.dataclass
class _Grown(DistillConfig):
    """DistillConfig with one setting more, declared as a field and nothing else."""

    foo_rate: float = setting(0.5, "A new rate of the test.", positive=True)


def test_a_setting_added_to_the_dataclass_gets_option_help_checks_preset_and_record(tmp_path) -> None:
    seen: dict[str, Any] = {}
    grown = typer.Typer()

    @options.config_command(grown, "distill", _Grown)
    def distill_cmd(dataset: str, *, flags: dict[str, Any]) -> None:
        seen.update(flags)

    @grown.command("other")
    def other() -> None:  # a second command keeps typer from flattening the group
        pass

    opts = _options("distill", grown)
    assert opts["--foo-rate"].help == "A new rate of the test." and opts["--foo-rate"].default == 0.5
    runner = typer.testing.CliRunner()
    assert runner.invoke(grown, ["distill", "ds", "--foo-rate", "0.25", "--tau", "2"]).exit_code == 0
    assert seen == {"foo_rate": 0.25, "tau": 2.0}  # what the user gave, nothing else
    merged = merge(_Grown, [("preset", {"foo_rate": 0.75, "tau": 3.0}), ("flag", {"tau": 2.0})])
    assert (merged.config.foo_rate, merged.config.tau) == (0.75, 2.0)
    assert (merged.sources["foo_rate"], merged.sources["tau"], merged.sources["mu"]) == ("preset", "flag", "default")
    with pytest.raises(ConfigError, match=r"--foo-rate -1\.0 must be a positive number"):
        _Grown(foo_rate=-1.0).validate()
    record = _Grown(foo_rate=0.125).to_dict()
    assert record["foo_rate"] == 0.125 and _Grown.from_dict(record) == _Grown(foo_rate=0.125)


@pytest.mark.parametrize("command", ["distill", "trajectories"])
def test_the_job_runs_on_the_merged_device_not_the_flag(command: str, tiny_rec, monkeypatch) -> None:
    """--preset paper sets device cuda: the ranks' backend and device follow it (not the --device default)."""
    from farzictl import launch

    seen: list[tuple[str, bool]] = []
    monkeypatch.setattr(DistillConfig, "validate", lambda self, ds=None: None)  # no CUDA here: skip the device check
    monkeypatch.setattr(launch, "run_job", lambda job, *a, **k: seen.append((job.device, job.ranks)))
    farzictl(command, str(tiny_rec.path), "--preset", "paper", "--json").ok()
    assert seen == [("cuda", True)]
