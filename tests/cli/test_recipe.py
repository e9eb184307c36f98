"""A bundle records the recipe it was distilled for, and train-student follows it unless flags say otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_runner import farzictl

from farzi.compare import student_run
from farzi.data.prepare import PrepareOptions, prepare
from farzi.train import TrainConfig

TINY = ["--d-model", "8", "--n-layers", "1", "--max-len", "16"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    home = tmp_path_factory.mktemp("home")
    farzictl("prepare", "synthetic-rec", "--synthetic-vocab", "20", "--synthetic-sequences", "30", home=home).ok()
    out = home / "b.safetensors"
    args = ["--budget", "4x8", "--objective", "mm", "--outer-steps", "1", "--inner-steps", "1", "--real-batch", "4"]
    recipe = ["--recipe-lr", "0.004", "--recipe-weight-decay", "0.002", "--recipe-steps", "7", "--recipe-batch", "2"]
    farzictl("distill", "synthetic-rec", *args, *recipe, *TINY, "--out", out, home=home).ok()
    return home, out


def _train(home: Path, out: Path, *flags: str) -> dict:
    farzictl("train-student", "synthetic-rec", *TINY, "--out", out, "--json", *flags, home=home).ok()
    return json.loads((out / "model.json").read_text())["train"]


def test_train_student_follows_the_bundles_recipe(bundle: tuple[Path, Path], tmp_path: Path) -> None:
    home, b = bundle
    train = _train(home, tmp_path / "m", "--data", str(b))
    assert (train["lr"], train["max_steps"], train["batch_size"], train["patience"]) == (0.004, 7, 2, 0)
    assert (train["metric"], train["weight_decay"]) == ("xent", 0.002)
    fields = ["lr", "weight_decay", "max_steps", "batch_size", "eval_every", "patience", "metric"]
    assert sorted(train["from_recipe"]) == sorted(fields)


def test_flags_win_over_the_recipe(bundle: tuple[Path, Path], tmp_path: Path) -> None:
    home, b = bundle
    train = _train(home, tmp_path / "m", "--data", str(b), "--lr", "0.01", "--max-steps", "3", "--weight-decay", "0")
    assert (train["lr"], train["max_steps"], train["batch_size"], train["weight_decay"]) == (0.01, 3, 2, 0.0)
    assert not {"lr", "max_steps", "weight_decay"} & set(train["from_recipe"])


def test_samples_keep_the_defaults(bundle: tuple[Path, Path], tmp_path: Path) -> None:
    home, _ = bundle
    train = _train(home, tmp_path / "m", "--data", "head:5", "--max-steps", "2")
    assert (train["lr"], train["batch_size"], train["patience"], train["from_recipe"]) == (1e-3, 128, 10, [])
    assert train["weight_decay"] == 0.0


def test_inspect_shows_the_recipe_and_the_log_by_stage(tmp_path: Path) -> None:
    home = tmp_path / "home"
    farzictl("prepare", "synthetic-rec", "--synthetic-vocab", "20", "--synthetic-sequences", "30", home=home).ok()
    traj = ["trajectories", "synthetic-rec", "--runs", "1", "--every", "2", "--max-steps", "4", "--batch-size", "8"]
    farzictl(*traj, *TINY, home=home).ok()
    out = home / "b.safetensors"
    args = ["--budget", "4x8", "--outer-steps", "3", "--inner-steps", "1", "--real-batch", "4", "--select-every", "2"]
    farzictl("distill", "synthetic-rec", *args, "--recipe-steps", "2", *TINY, "--out", out, home=home).ok()
    report = json.loads(farzictl("inspect", out, "--json", home=home).ok().stdout)
    assert report["recipe"]["max_steps"] == 2
    assert report["history"]["selection"]["selected_step"] in (0, 2, 3)
    assert report["history"]["log"]["outer_steps"] == 3
    # 30 users of at least 10 items each, longer than xi 8: windows inside them
    assert report["history"]["init"] == {"init": "teacher", "windows": "within"}
    text = farzictl("inspect", out, home=home, env={"COLUMNS": "200"}).ok().stdout
    assert "selected outer step" in text and "distillation log by checkpoint stage" in text
    assert "teacher, within windows" in text


def test_student_run_takes_only_the_named_recipe_fields(bundle: tuple[Path, Path], tmp_path: Path) -> None:
    """The benchmarks' students on a bundle take its learning rate and keep their own budget."""
    home, b = bundle
    ds = prepare("synthetic-rec", PrepareOptions(synthetic_vocab=20, synthetic_sequences=30), home=home)
    cfg = TrainConfig(lr=1e-3, batch_size=8, max_steps=3, eval_every=3, patience=0, seed=0)
    tiny = {"d_model": 8, "n_layers": 1, "max_len": 16}
    row = student_run(ds, "sasrec", str(b), cfg, tmp_path / "m", tiny, recipe_fills=("lr",))
    assert (row["lr"], row["from_recipe"], row["steps"]) == (0.004, ["lr"], 3)
    sample = student_run(ds, "sasrec", "head:5", cfg, tmp_path / "h", tiny, recipe_fills=("lr",))
    assert (sample["lr"], sample["from_recipe"]) == (1e-3, [])


def test_under_a_preset_a_bundle_still_takes_its_recipe_lr(bundle: tuple[Path, Path], tmp_path: Path) -> None:
    """The preset's student lr (1e-3 for cpu) and weight decay (0) yield to the bundle's recipe
    (0.004, 0.002); its budget does not."""
    home, b = bundle
    flags = ["--preset", "cpu", "--max-steps", "2", "--eval-every", "1"]
    train = _train(home, tmp_path / "m", "--data", str(b), *flags)
    assert (train["lr"], train["weight_decay"], train["max_steps"]) == (0.004, 0.002, 2)
    assert sorted(train["from_recipe"]) == ["lr", "metric", "weight_decay"]
    assert train["patience"] == 15 and train["batch_size"] == 128  # the preset's
    assert _train(home, tmp_path / "f", "--data", str(b), *flags, "--lr", "0.02")["lr"] == 0.02
    assert _train(home, tmp_path / "h", "--data", "head:5", *flags)["lr"] == 1e-3  # no recipe on a sample


def test_a_recipe_written_before_weight_decay_was_recorded_means_none() -> None:
    """Bundles from before the recipe recorded weight decay: their students train without it."""
    from farzi.distill.select import recipe_config
    from farzi.student import apply_recipe

    old = {"lr": 0.004, "batch_size": 2, "max_steps": 7, "eval_every": 1, "patience": 0, "metric": "xent"}
    assert recipe_config(old, seed=3).weight_decay == 0.0
    config, taken = apply_recipe(TrainConfig(weight_decay=0.5), old, ("lr", "weight_decay"))
    assert (config.lr, config.weight_decay, taken) == (0.004, 0.5, ["lr"])
