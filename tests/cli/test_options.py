"""Options every command shares: ``--seed`` is range-checked by Typer, ``--device`` by
``farzi.device.resolve_device``; both fail with one line, exit 2, and nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import typer
from cli_runner import farzictl

from farzi.checkpoint import dataset_record, save_checkpoint
from farzi.data.prepare import PrepareOptions, prepare
from farzi.models import build_model, make_config
from farzictl.app import SEED_MAX as MAX_SEED
from farzictl.app import app

COMMANDS = sorted(c.name for c in app.registered_commands if c.name)
# arguments that reach the point where the seed or the device is used ({home} filled in per test)
ARGS = {
    "prepare": ["prepare", "synthetic-rec", "--synthetic-sequences", "20"],
    "trajectories": ["trajectories", "synthetic-rec", "--runs", "1", "--max-steps", "1"],
    "train-student": ["train-student", "synthetic-rec", "--data", "random:4", "--max-steps", "1"],
    "eval": ["eval", "{model}"],
    "distill": ["distill", "synthetic-rec", "--budget", "2x4", "--outer-steps", "1", "--objective", "mm"],
    "inspect": ["inspect", "{home}/none.safetensors"],
    "export": ["export", "{home}/none.safetensors"],
    "audit": ["audit", "{home}/none.safetensors"],
    "demo": ["demo"],
}
DEVICE_LINE = "error: unknown device 'tpu'; use --device cpu or --device cuda"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("home")
    ds = prepare("synthetic-rec", PrepareOptions(synthetic_vocab=20, synthetic_sequences=30), home=home)
    cfg = make_config("sasrec", ds.vocab_size, d_model=8, n_layers=1, max_len=8)
    save_checkpoint(home / "model" / "model.safetensors", build_model("sasrec", cfg), dataset_record(ds))
    return home


def _args(command: str, home: Path) -> list[str]:
    return [a.format(home=home, model=home / "model") for a in ARGS[command]]


def _files(home: Path) -> list[str]:
    return sorted(str(p.relative_to(home)) for p in home.rglob("*"))


def test_every_command_takes_a_ranged_seed_and_is_listed_here() -> None:
    assert COMMANDS == sorted(ARGS)
    group = typer.main.get_command(app)
    for name, command in group.commands.items():  # what the user gets: the click options Typer built
        (seed,) = [p for p in command.params if p.name == "seed"]
        assert (seed.opts, seed.min, seed.max, seed.default) == (["--seed"], 0, 2**63 - 1, 0), name
    assert MAX_SEED == 2**63 - 1


@pytest.mark.parametrize("command", sorted(ARGS))
@pytest.mark.parametrize(
    ("seed", "expected"),
    [
        ("-1", "Input should be greater than or equal to 0"),
        (str(2**63), "Input should be less than or equal to 9223372036854775807"),
        ("18446744073709551616", "Input should be less than or equal to 9223372036854775807"),
    ],
)
def test_a_seed_out_of_range_is_one_line(home: Path, command: str, seed: str, expected: str) -> None:
    before = _files(home)
    line = farzictl(*_args(command, home), "--seed", seed, home=home).one_error_line()
    assert line == f"error: Invalid value for '--seed': {expected}; run 'farzictl {command} --help'"
    assert _files(home) == before


@pytest.mark.parametrize("command", ["trajectories", "train-student", "eval", "distill"])
def test_an_unknown_device_is_one_line_before_any_work(home: Path, command: str) -> None:
    before = _files(home)
    out_dir = [] if command == "eval" else ["--out", home / "out"]  # eval writes nothing and has no --out
    out = farzictl(*_args(command, home), "--device", "tpu", *out_dir, home=home)
    assert out.one_error_line() == DEVICE_LINE and out.stdout == ""
    assert _files(home) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
@pytest.mark.parametrize("command", ["trajectories", "train-student", "eval", "distill"])
def test_cuda_on_a_machine_without_it(home: Path, command: str) -> None:
    before = _files(home)
    line = farzictl(*_args(command, home), "--device", "cuda", home=home).one_error_line()
    assert line == "error: --device cuda was asked for but CUDA is not available on this machine; use --device cpu"
    assert _files(home) == before
