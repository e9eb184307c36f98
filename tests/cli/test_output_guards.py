"""What no command destroys, and what it refuses before any costly work.

``--overwrite`` replaces one artifact, never the workspace, a prepared dataset or an input of the
running command; files beside an output (a distillation's log and run state, a trajectory job's
finished runs) are replaced only when they are farzi's own; a second writer and a bad ``--out`` are
refused before the cost probe builds any model. Each refusal is checked as a script sees it (exit 2,
one ``error:`` line) and against a snapshot of the tree (names, bytes, modes).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cli_runner import farzictl
from snapshot import hidden, snapshot

import farzictl.app as cli_app
from farzi.data.prepared import load_prepared
from farzi.distill.config import DistillConfig, Objective
from farzi.distill.engine import Distillation, distill
from farzi.errors import ConfigError

DATASET = "synthetic-rec"
TINY = ["--d-model", "8", "--n-layers", "1", "--max-len", "20", "--batch-size", "8"]
PREPARE = ["prepare", DATASET, "--synthetic-vocab", "20", "--synthetic-sequences", "20"]
TRAJECTORIES = ["trajectories", DATASET, "--runs", "1", "--every", "1", "--max-steps", "1", *TINY]
STUDENT = ["train-student", DATASET, "--data", "head:5", "--max-steps", "1", *TINY]
DISTILL = ["distill", DATASET, "--budget", "2x4", "--objective", "mm", "--inner-steps", "1", "--real-batch", "4"]
DISTILL += [*TINY[:6], "--outer-steps", "1"]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("home")
    farzictl(*PREPARE, home=home).ok()
    return home


# ------------------------------------------------------------------ --overwrite never deletes the workspace or an input


@pytest.mark.parametrize("command", [STUDENT, TRAJECTORIES])
def test_overwrite_refuses_a_workspace(command: list[str], home: Path, tmp_path: Path) -> None:
    other = tmp_path / "other-home"
    farzictl(*PREPARE, home=other).ok()
    before = snapshot(tmp_path)
    line = farzictl(*command, "--out", other, "--overwrite", home=home).one_error_line()
    assert f"refusing to replace {other}: it holds a prepared dataset at {other / 'datasets' / DATASET}" in line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("where", "says"),
    [
        ("home", "it holds {home}/datasets/synthetic-rec, which is an input"),  # the workspace the input is in
        ("home/datasets/synthetic-rec", "it is an input of this command"),  # the input dataset itself
    ],
)
@pytest.mark.parametrize("command", [STUDENT, TRAJECTORIES])
def test_overwrite_refuses_an_input_or_what_holds_it(command: list[str], where: str, says: str, home: Path) -> None:
    target = home.joinpath(*where.split("/")[1:])
    before = snapshot(home)
    line = farzictl(*command, "--out", target, "--overwrite", home=home).one_error_line()
    assert f"refusing to replace {target}: {says.format(home=home)}" in line
    assert snapshot(home) == before


def test_overwrite_still_replaces_one_prepared_dataset_with_another(home: Path, tmp_path: Path) -> None:
    target = tmp_path / "ds"
    farzictl(*PREPARE, "--out", target, home=home).ok()
    farzictl(*PREPARE, "--out", target, "--seed", "3", "--overwrite", home=home).ok()
    assert (target / "manifest.json").is_file()


def test_overwrite_refuses_a_directory_holding_the_text_it_reads(home: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "train.txt").write_text("the cat sat\nthe dog ran\n" * 20)
    before = snapshot(tmp_path)
    line = farzictl(
        "prepare", "text", "--train", corpus / "train.txt", "--out", corpus, "--overwrite", home=home
    ).one_error_line()
    assert f"refusing to replace {corpus}: it holds {corpus / 'train.txt'}, which is an input" in line
    assert snapshot(tmp_path) == before


def test_export_or_student_cannot_replace_the_bundle_it_reads(home: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "b.safetensors"
    farzictl(*DISTILL, "--out", bundle, home=home).ok()
    before = snapshot(tmp_path)
    line = farzictl(
        "train-student", DATASET, "--data", bundle, "--out", tmp_path, "--overwrite", *TINY, home=home
    ).one_error_line()
    assert "refusing to replace" in line
    assert snapshot(tmp_path) == before


def test_a_directory_of_user_files_is_still_replaced_with_overwrite(home: Path, tmp_path: Path) -> None:
    target = tmp_path / "mine"
    (target / "sub").mkdir(parents=True)
    (target / "sub" / "notes.txt").write_text("x\n")
    farzictl(*STUDENT, "--out", target, "--overwrite", home=home).ok()
    assert sorted(p.name for p in target.iterdir()) == ["model.json", "model.safetensors"]


# ------------------------------------------------------------------ files beside an output


@pytest.mark.parametrize("name", ["g.log.jsonl", "g.state.safetensors"])
def test_distill_keeps_a_users_file_beside_the_bundle(name: str, home: Path, tmp_path: Path) -> None:
    (tmp_path / name).write_text("my own notes\n")
    before = snapshot(tmp_path)
    line = farzictl(*DISTILL, "--out", tmp_path / "g.safetensors", home=home).one_error_line()
    assert f"{tmp_path / name} exists beside the output and is not" in line and "--overwrite" in line
    assert snapshot(tmp_path) == before
    farzictl(*DISTILL, "--out", tmp_path / "g.safetensors", "--overwrite", home=home).ok()
    assert (tmp_path / "g.safetensors").is_file()


def test_distill_replaces_its_own_log_and_state(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "g.safetensors"
    farzictl(*DISTILL, "--out", out, "--outer-steps", "2", "--checkpoint-every", "1", home=home).ok()
    farzictl(*DISTILL, "--out", out, "--seed", "1", home=home).ok()  # its own log: replaced, no --overwrite
    assert len((tmp_path / "g.log.jsonl").read_text().splitlines()) == 1
    assert hidden(tmp_path) == []


def test_trajectories_keep_a_users_runs_directory(home: Path, tmp_path: Path) -> None:
    (tmp_path / ".traj.runs").mkdir()
    (tmp_path / ".traj.runs" / "notes.txt").write_text("mine\n")
    before = snapshot(tmp_path)
    line = farzictl(*TRAJECTORIES, "--out", tmp_path / "traj", home=home).one_error_line()
    assert f"{tmp_path / '.traj.runs'} exists beside the output" in line
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------ refused before the cost probe


@pytest.fixture
def no_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    def probe(*args, **kwargs):
        raise AssertionError("the cost probe ran before the output was refused")

    for name in ("plan_distill", "plan_student", "plan_trajectories"):
        monkeypatch.setattr(cli_app, name, probe)


def _hold_lock(target: Path) -> subprocess.Popen:
    """Another process holding ``target``'s lock, as a running farzi writer does."""
    code = (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(target.parent / f'.{target.name}.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(120)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.parametrize(("command", "name"), [(DISTILL, "b.safetensors"), (STUDENT, "model"), (TRAJECTORIES, "omega")])
def test_a_second_writer_is_refused_before_the_cost_probe(
    command: list[str], name: str, home: Path, tmp_path: Path, no_probe: None
) -> None:
    target = tmp_path / name
    holder = _hold_lock(target)
    try:
        line = farzictl(*command, "--out", target, home=home).one_error_line()
    finally:
        holder.kill()
        holder.wait()
    assert f"{target} is being written by another farzi process" in line


def test_a_bundle_path_without_the_suffix_is_refused_before_the_cost_probe(
    home: Path, tmp_path: Path, no_probe: None
) -> None:
    line = farzictl(*DISTILL, "--out", tmp_path / "b.bin", home=home).one_error_line()
    assert "must end in .safetensors" in line
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ a resume that does not match names the setting


def test_a_resume_with_other_settings_names_them(home: Path, tmp_path: Path) -> None:
    ds = load_prepared(home / "datasets" / DATASET)
    out = tmp_path / "g.safetensors"
    base = {"mu": 2, "xi": 4, "objective": Objective.mm, "inner_steps": 1, "real_batch": 4, "outer_steps": 3}
    base["model_overrides"] = {"d_model": 8, "n_layers": 1, "max_len": 20}
    Distillation(ds, DistillConfig(**base), out, checkpoint_every=1).run(until=1)
    with pytest.raises(ConfigError, match=r"made with other settings: --inner-lr 0.01 \(now 0.5\);"):
        distill(ds, DistillConfig(**{**base, "inner_lr": 0.5}), out, checkpoint_every=1, resume=True)
