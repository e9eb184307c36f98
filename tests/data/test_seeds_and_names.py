"""Seeds and workspace names are checked before any work: one line with the fix, nothing written."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runner import farzictl

from farzi._seed import SEED_MAX, check_seed, seed_everything
from farzi.data.prepare import PrepareOptions, prepare
from farzi.errors import ConfigError
from farzi.workspace import check_name

TINY = {"synthetic_vocab": 20, "synthetic_sequences": 12}


# ---------------------------------------------------------------- check_seed


@pytest.mark.parametrize("seed", [0, 1, 2**32, SEED_MAX, np.int64(7)])
def test_valid_seeds(seed) -> None:
    assert check_seed(seed) == int(seed) and type(check_seed(seed)) is int


@pytest.mark.parametrize(
    ("seed", "message"),
    [
        (-1, "--seed -1 is out of range; pass an integer from 0 to 9223372036854775807 (2**63 - 1)"),
        (2**63, "--seed 9223372036854775808 is out of range"),
        (2**64, "--seed 18446744073709551616 is out of range"),
        (True, "--seed True is not an integer"),
        (1.5, "--seed 1.5 is not an integer"),
        ("3", "--seed '3' is not an integer"),
    ],
)
def test_invalid_seeds_are_named_with_the_fix(seed, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_seed(seed)
    assert str(err.value).startswith(message)


def test_check_seed_names_the_option_it_checks() -> None:
    with pytest.raises(ConfigError, match=r"^seed -5 is out of range"):
        check_seed(-5, what="seed")


@pytest.mark.parametrize("seed", [0, 2**32 + 5, SEED_MAX])
def test_seed_everything_is_reproducible_up_to_the_largest_seed(seed: int) -> None:
    def draw() -> tuple:
        gen = seed_everything(seed)
        return random.random(), float(np.random.rand()), torch.rand(3).tolist(), torch.rand(3, generator=gen).tolist()

    first = draw()
    assert draw() == first
    assert seed_everything(seed).initial_seed() == seed


def test_seed_everything_refuses_a_negative_seed() -> None:
    with pytest.raises(ConfigError, match="--seed -1 is out of range"):
        seed_everything(-1)


# ---------------------------------------------------------------- prepare --seed


def test_prepare_options_check_the_seed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--seed -1 is out of range"):
        PrepareOptions(seed=-1)
    opts = PrepareOptions(**TINY)
    opts.seed = -1  # changed after construction: prepare() checks again
    with pytest.raises(ConfigError, match="--seed -1 is out of range"):
        prepare("synthetic-rec", opts, home=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_the_largest_seed_prepares(tmp_path: Path) -> None:
    ds = prepare("synthetic-rec", PrepareOptions(seed=SEED_MAX, **TINY), home=tmp_path)
    assert ds.params["seed"] == SEED_MAX


@pytest.mark.parametrize("seed", ["-1", "9223372036854775808", "18446744073709551616"])
def test_cli_out_of_range_seed(tmp_path: Path, seed: str) -> None:
    home = tmp_path / "home"
    line = farzictl("prepare", "synthetic-rec", "--seed", seed, home=home).one_error_line()
    bound = "greater than or equal to 0" if seed == "-1" else "less than or equal to 9223372036854775807"
    assert "'--seed'" in line and bound in line  # Typer's range check names the bound
    assert not home.exists()


# ---------------------------------------------------------------- workspace names


@pytest.mark.parametrize("name", ["ml\n", "ml\r\n", "\nml", "m l", "", ".hidden", "a" * 65, "x/y", "..", "é"])
def test_invalid_workspace_names(name: str) -> None:
    with pytest.raises(ConfigError, match="is not a valid workspace name"):
        check_name(name)


@pytest.mark.parametrize("name", ["ml", "ml-100k", "a" * 64, "A.b_c-1"])
def test_valid_workspace_names(name: str) -> None:
    assert check_name(name) == name


def test_cli_name_with_a_trailing_newline(tmp_path: Path) -> None:
    home = tmp_path / "home"
    line = farzictl("prepare", "synthetic-lm", "--name", "ml\n", home=home).one_error_line()
    assert "dataset name 'ml\\n' is not a valid workspace name" in line
    assert not home.exists()
