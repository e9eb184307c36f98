"""Runs that say what they cost (--plan, the projection before the work), progress for scripts
(plain lines off a terminal, --quiet), --threads, and --preset (issue 11, items 2 and 3)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from cli_runner import farzictl

from farzi.distill.bundle import load_bundle
from farzi.presets import PROTOCOLS, preset_values

TINY = ["--d-model", "8", "--n-layers", "1", "--max-len", "16"]
LINE = re.compile(r"^\[(\d+\.\d)s\] trajectory run 1/1: (\d+)/(\d+)( done)?")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("home")
    farzictl("prepare", "synthetic-rec", "--synthetic-vocab", "20", "--synthetic-sequences", "30", home=home).ok()
    farzictl("prepare", "synthetic-lm", "--synthetic-vocab", "20", "--synthetic-sequences", "30", home=home).ok()
    return home


def _traj(home: Path, out: Path, *flags: str, env: dict[str, str] | None = None):
    args = ["trajectories", "synthetic-rec", *TINY, "--runs", "1", "--every", "50", "--out", out, *flags]
    return farzictl(*args, home=home, env=env)


# ------------------------------------------------------------------ progress
def test_off_a_terminal_progress_is_plain_lines_at_the_set_interval(home: Path, tmp_path: Path) -> None:
    interval = 0.2
    env = {"FARZI_PROGRESS_SECONDS": str(interval)}
    res = _traj(home, tmp_path / "t", "--max-steps", "400", "--json", env=env).ok()
    lines = res.stderr.splitlines()
    parsed = [LINE.match(x) for x in lines]
    assert lines and all(parsed), lines[:5]
    assert parsed[-1].group(4) == " done" and parsed[-1].group(2) == "400"  # the stage's end, once shown
    timed = [m for m in parsed if not m.group(4)]
    assert len(timed) >= 2, lines
    stamps = [float(m.group(1)) for m in timed]
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    assert min(gaps) >= interval - 0.1 - 1e-9, gaps  # stamps are rounded to 0.1 s
    assert stamps[0] >= interval - 0.1 - 1e-9  # nothing before the first interval has passed
    assert re.search(r" [0-9.e+]+(/s|s each) ETA ", timed[-1].string), timed[-1].string
    assert "ETA" in timed[-1].string and "loss=" in timed[-1].string


def test_the_default_interval_leaves_a_short_run_quiet_and_quiet_silences_progress(home: Path, tmp_path: Path) -> None:
    assert _traj(home, tmp_path / "a", "--max-steps", "3", "--json").ok().stderr == ""
    env = {"FARZI_PROGRESS_SECONDS": "0"}
    assert _traj(home, tmp_path / "b", "--max-steps", "5", "--json", "--quiet", env=env).ok().stderr == ""
    assert _traj(home, tmp_path / "c", "--max-steps", "5", "-q", env=env).ok().stderr == ""
    loud = _traj(home, tmp_path / "d", "--max-steps", "5", "--json", env=env).ok()
    assert len(loud.stderr.splitlines()) == 6  # interval 0: a line per step, and the stage's end


def test_the_projection_shows_on_stderr_when_the_work_starts(home: Path, tmp_path: Path) -> None:
    res = _traj(home, tmp_path / "t", "--max-steps", "4").ok()
    first = res.stderr.splitlines()[0]
    assert first.startswith("plan: trajectories will take about ") and "peak memory about" in first
    assert "1 runs: training: 4 x" in res.stderr


def test_a_bad_progress_interval_is_one_error_line(home: Path, tmp_path: Path) -> None:
    line = _traj(home, tmp_path / "t", "--max-steps", "2", env={"FARZI_PROGRESS_SECONDS": "soon"}).one_error_line()
    assert "FARZI_PROGRESS_SECONDS" in line and "soon" in line
    assert not (tmp_path / "t").exists()


# ------------------------------------------------------------------ --plan
def test_plan_prints_the_projection_and_writes_nothing(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "t"
    info = json.loads(_traj(home, out, "--max-steps", "30", "--plan", "--json").ok().stdout)
    assert not out.exists()
    assert info["command"] == "trajectories" and info["seconds"] > 0 and info["peak_memory_bytes"] > 0
    training = next(s for s in info["stages"] if s["unit"] == "step")
    assert training["count"] == 30 and training["seconds_each"] > 0
    assert info["seconds"] == pytest.approx(sum(s["seconds"] for s in info["stages"]), abs=0.2)
    text = _traj(home, out, "--max-steps", "30", "--plan").ok()
    assert text.stdout.startswith("plan: trajectories will take about ") and text.stderr == ""
    assert not out.exists()


def test_plan_for_distill_and_train_student_writes_nothing(home: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "b.safetensors"
    distill = ["distill", "synthetic-rec", *TINY, "--budget", "4x8", "--outer-steps", "50", "--inner-steps", "2"]
    info = json.loads(
        farzictl(*distill, "--real-batch", "4", "--out", bundle, "--plan", "--json", home=home).ok().stdout
    )
    assert info["command"] == "distill" and info["seconds"] > 0
    assert any(s["unit"] == "outer step" and s["count"] == 50 for s in info["stages"])
    assert not bundle.exists() and not bundle.with_suffix(".log.jsonl").exists()
    model = tmp_path / "m"
    student = ["train-student", "synthetic-rec", *TINY, "--data", "random:10", "--max-steps", "40", "--out", model]
    info = json.loads(farzictl(*student, "--plan", "--json", home=home).ok().stdout)
    assert info["command"] == "train-student" and info["seconds"] > 0 and not model.exists()
    assert not (home / "models").exists() and not (home / "bundles").exists()


def test_a_long_projection_names_the_flags_that_bring_it_down(home: Path, tmp_path: Path) -> None:
    info = json.loads(_traj(home, tmp_path / "t", "--max-steps", "10000000", "--plan", "--json").ok().stdout)
    assert info["long"] is True
    flags = {lv["flag"]: lv for lv in info["levers"]}
    assert {"--max-steps", "--runs", "--max-len"} <= set(flags)
    assert 1 <= flags["--max-steps"]["suggested"] < 10000000
    text = _traj(home, tmp_path / "t", "--max-steps", "10000000", "--plan").ok().stdout
    assert "bring it down with --max-steps" in text


def test_demo_plan_writes_nothing(tmp_path: Path) -> None:
    info = json.loads(farzictl("demo", "--task", "rec", "--plan", "--json", home=tmp_path).ok().stdout)
    assert info["command"] == "demo" and info["seconds"] > 0
    assert any("distill outer steps" in s["name"] and s["count"] > 1 for s in info["stages"])
    assert not any(tmp_path.iterdir())


def test_a_run_reports_its_projection_in_json(home: Path, tmp_path: Path) -> None:
    info = json.loads(_traj(home, tmp_path / "t", "--max-steps", "6", "--json").ok().stdout)
    assert info["plan"]["command"] == "trajectories" and info["plan"]["seconds"] > 0


# ------------------------------------------------------------------ --threads
def test_threads_set_torch_threads_and_are_recorded(home: Path, tmp_path: Path) -> None:
    before = torch.get_num_threads()
    res = json.loads(_traj(home, tmp_path / "t", "--max-steps", "2", "--threads", "2", "--json").ok().stdout)
    assert res["threads"] == 2 and res["plan"]["threads"] == 2
    assert json.loads((tmp_path / "t" / "manifest.json").read_text())["threads"] == 2
    assert torch.get_num_threads() == before  # the call's setting ends with the call
    model = tmp_path / "m"
    farzictl("train-student", "synthetic-rec", *TINY, "--data", "random:5", "--max-steps", "2", "--out", model,
             "--threads", "2", "--json", home=home).ok()  # fmt: skip
    assert json.loads((model / "model.json").read_text())["threads"] == 2
    bundle = tmp_path / "b.safetensors"
    args = ["--budget", "4x8", "--outer-steps", "1", "--inner-steps", "1", "--real-batch", "4", "--objective", "mm"]
    farzictl("distill", "synthetic-rec", *TINY, *args, "--out", bundle, "--threads", "1", home=home).ok()
    assert load_bundle(bundle).meta["distill"]["threads"] == 1
    farzictl("inspect", bundle, "--threads", "1", "--json", home=home).ok()


@pytest.mark.parametrize(
    "command", ["prepare", "trajectories", "distill", "train-student", "eval", "inspect", "export"]
)
def test_threads_zero_is_one_error_line(home: Path, command: str) -> None:
    line = farzictl(command, "somewhere", "--threads", "0", home=home).one_error_line()
    assert "--threads" in line


# ------------------------------------------------------------------ --preset
def test_a_preset_fills_the_options_and_flags_win(home: Path, tmp_path: Path) -> None:
    traj = PROTOCOLS["ml100k-cpu"]["trajectories"]
    out = tmp_path / "t"
    flags = ["--preset", "cpu", "--runs", "1", "--max-steps", "2", "--d-model", "8", "--n-layers", "1"]
    farzictl("trajectories", "synthetic-rec", *flags, "--out", out, "--json", home=home).ok()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["runs"] == 1 and manifest["every"] == traj["every"]  # flag / preset
    assert (
        manifest["train"]["lr"] == traj["train"]["lr"]
        and manifest["train"]["batch_size"] == traj["train"]["batch_size"]
    )
    assert manifest["train"]["max_steps"] == 2
    cfg = manifest["config"]
    assert (cfg["d_model"], cfg["n_layers"]) == (8, 1)  # flags
    assert (cfg["max_len"], cfg["dropout"]) == (50, 0.2)  # the preset's
    student = PROTOCOLS["ml100k-cpu"]["student"]
    model = tmp_path / "m"
    farzictl("train-student", "synthetic-rec", "--preset", "cpu", *TINY, "--data", "random:5", "--max-steps", "2",
             "--out", model, home=home).ok()  # fmt: skip
    train = json.loads((model / "model.json").read_text())["train"]
    assert (train["lr"], train["batch_size"], train["patience"]) == (
        student["lr"],
        student["batch_size"],
        student["patience"],
    )
    assert train["eval_every"] == student["eval_every"] and train["max_steps"] == 2
    bundle = tmp_path / "b.safetensors"
    args = ["--budget", "4x8", "--outer-steps", "1", "--syn-batch", "2", "--real-batch", "4", "--objective", "mm"]
    farzictl("distill", "synthetic-rec", "--preset", "cpu", *TINY, *args, "--out", bundle, home=home).ok()
    rec = load_bundle(bundle).meta["distill"]
    dist = PROTOCOLS["ml100k-cpu"]["distill"]
    assert rec["inner_steps"] == dist["inner_steps"] and rec["outer_lr"] == dist["outer_lr"]  # the preset's
    assert (rec["mu"], rec["xi"], rec["outer_steps"], rec["syn_batch"]) == (4, 8, 1, 2)  # flags


def test_preset_values_carry_the_protocols() -> None:
    values = preset_values("cpu", "lm", "trajectories")
    ptb = PROTOCOLS["ptb-cpu"]
    assert values["model"] == ptb["model"] and values["model_overrides"] == ptb["model_overrides"]
    assert values["max_steps"] == ptb["trajectories"]["train"]["max_steps"]
    paper = preset_values("paper", "rec", "distill")
    assert (paper["mu"], paper["xi"]) == (50, 150)
    assert preset_values("paper", "rec", "train-student")["device"] == "cuda"


def test_the_bench_reads_its_protocols_from_the_presets() -> None:
    from bench.experiments.sample_efficiency import SETTINGS

    for name in ("ml100k-cpu", "ptb-cpu", "ml100k-paper"):
        assert SETTINGS[name] == PROTOCOLS[name]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["trajectories", "synthetic-rec", "--preset", "fast"], ("--preset", "'fast'")),
        (["distill", "synthetic-rec", "--preset", "gpu"], ("--preset", "'gpu'")),
        (["train-student", "synthetic-lm", "--preset", "paper"], ("no 'paper' preset for lm",)),
    ],
)
def test_a_bad_preset_is_one_error_line(home: Path, args: list[str], words: tuple[str, ...]) -> None:
    line = farzictl(*args, home=home).one_error_line()
    assert all(w in line for w in words), line
