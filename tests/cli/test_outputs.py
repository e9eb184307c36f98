"""Where `prepare`, `trajectories` and `train-student` write: never over a user's files, one writer at a time.

Each refusal is checked the way a script sees it (exit 2, one ``error:`` line) and against a
snapshot of the tree around the output (names, bytes, modes, hidden entries included): the
user's files are as they were, and no temporary or lock is left behind. The lock and the
clean-up after SIGKILL are checked with real child processes.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from cli_runner import farzictl, farzictl_start
from snapshot import hidden, snapshot

from farzi.distill.bundle import load_bundle

DATASET = "synthetic-rec"
TINY = ["--d-model", "8", "--n-layers", "1", "--max-len", "20", "--batch-size", "8"]
PREPARE = ["prepare", DATASET, "--synthetic-vocab", "20", "--synthetic-sequences", "20"]


def _trajectories(steps: int) -> list[str]:
    return ["trajectories", DATASET, "--runs", "1", "--every", "1", "--max-steps", str(steps), *TINY]


TRAJECTORIES = _trajectories(1)
STUDENT = ["train-student", DATASET, "--data", "head:5", "--max-steps", "1", *TINY]
COMMANDS = {"prepare": PREPARE, "trajectories": TRAJECTORIES, "train-student": STUDENT}
OWN_FILES = {
    # each split as parquet and as memory-mapped arrays (flat int32 tokens + offsets)
    "prepare": [
        "manifest.json",
        *(
            f"{split}.{kind}"
            for split in ("test", "train", "valid")
            for kind in ("offsets.npy", "parquet", "tokens.npy")
        ),
        "vocab.json",
    ],
    # step 0 is the initialization: no optimizer moments yet
    "trajectories": [
        "manifest.json",
        "run0-step0.safetensors",
        "run0-step1.adam.safetensors",
        "run0-step1.safetensors",
    ],
    "train-student": ["model.json", "model.safetensors"],
}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace holding the prepared dataset the training commands read."""
    home = tmp_path_factory.mktemp("home")
    farzictl(*PREPARE, home=home).ok()
    return home


def _user_dir(root: Path) -> Path:
    """The issue's case: ``mkdir -p DIR/sub && echo x > DIR/notes.txt``."""
    target = root / "v"
    (target / "sub").mkdir(parents=True)
    (target / "notes.txt").write_text("x\n")
    return target


@pytest.mark.parametrize("command", list(COMMANDS))
def test_an_existing_user_directory_is_refused_and_kept(command: str, home: Path, tmp_path: Path) -> None:
    target = _user_dir(tmp_path)
    before = snapshot(tmp_path)
    line = farzictl(*COMMANDS[command], "--out", target, home=home).one_error_line()
    assert str(target) in line and "exists and is not" in line and "--overwrite" in line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command", list(COMMANDS))
def test_an_existing_user_file_is_refused_and_kept(command: str, home: Path, tmp_path: Path) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("keep me\n")
    before = snapshot(tmp_path)
    line = farzictl(*COMMANDS[command], "--out", target, home=home).one_error_line()
    assert str(target) in line and "but a file" in line and "--overwrite" in line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command", list(COMMANDS))
def test_another_kind_of_farzi_artifact_is_refused(command: str, home: Path, tmp_path: Path) -> None:
    other = "train-student" if command != "train-student" else "prepare"
    target = tmp_path / "out"
    farzictl(*COMMANDS[other], "--out", target, home=home).ok()
    before = snapshot(tmp_path)
    line = farzictl(*COMMANDS[command], "--out", target, home=home).one_error_line()
    assert "exists and is not" in line and "--overwrite" in line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command", list(COMMANDS))
def test_overwrite_replaces_the_user_directory(command: str, home: Path, tmp_path: Path) -> None:
    target = _user_dir(tmp_path)
    farzictl(*COMMANDS[command], "--out", target, "--overwrite", home=home).ok()
    assert sorted(p.name for p in target.iterdir()) == OWN_FILES[command]
    assert hidden(tmp_path) == []


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_rerun_replaces_its_own_artifact_and_an_empty_directory_is_fine(
    command: str, home: Path, tmp_path: Path
) -> None:
    target = tmp_path / "out"
    target.mkdir()
    farzictl(*COMMANDS[command], "--out", target, home=home).ok()
    first = snapshot(target)
    farzictl(*COMMANDS[command], "--out", target, "--seed", "1", home=home).ok()
    assert sorted(p.name for p in target.iterdir()) == OWN_FILES[command]
    assert snapshot(target) != first  # written again (another seed), not skipped
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_the_default_workspace_target_is_protected_too(command: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    farzictl(*PREPARE, home=home).ok()
    where = {
        "prepare": home / "datasets" / DATASET,
        "trajectories": home / "trajectories" / DATASET / "sasrec",
        "train-student": home / "models" / DATASET / "sasrec-head-5-s0",
    }[command]
    if command == "prepare":
        (where / "notes.txt").write_text("mine\n")  # a user's file inside an earlier prepared dataset
    else:
        where.mkdir(parents=True)
        (where / "notes.txt").write_text("mine\n")
    before = snapshot(home)
    line = farzictl(*COMMANDS[command], home=home).one_error_line()
    assert str(where) in line
    assert snapshot(home) == before


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_path_under_a_file_fails_up_front(command: str, home: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("keep me\n")
    before = snapshot(tmp_path)
    line = farzictl(*COMMANDS[command], "--out", tmp_path / "file" / "sub", home=home).one_error_line()
    assert f"{tmp_path / 'file'} is a file, not a directory" in line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("below", [False, True])
def test_a_home_that_is_a_file_is_one_line(command: str, below: bool, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("keep me\n")
    home = tmp_path / "file" / "sub" if below else tmp_path / "file"
    before = snapshot(tmp_path)
    line = farzictl(*COMMANDS[command], home=home).one_error_line()
    assert "is a file, not a directory" in line and "--home" in line
    assert snapshot(tmp_path) == before


def test_a_home_that_is_a_file_via_the_environment(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("keep me\n")
    line = farzictl(*PREPARE, env={"FARZI_HOME": str(tmp_path / "file")}).one_error_line()
    assert "(FARZI_HOME) is a file" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_overwrite_is_listed_in_help() -> None:
    for command in COMMANDS:
        assert "--overwrite" in farzictl(command, "--help").ok().stdout


# ------------------------------------------------------------------ real processes: the lock, SIGKILL


def _wait_for(predicate, proc, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the child ended (rc {proc.returncode}) before {what}: {err[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def _temps(parent: Path, name: str) -> list[Path]:
    return sorted(parent.glob(f".{name}.tmp-*"))


def test_a_second_writer_exits_2_at_once_while_the_first_completes(home: Path, tmp_path: Path) -> None:
    target = tmp_path / "omega"
    args = [*_trajectories(40), "--out", target, "--json"]
    winner = farzictl_start(*args, home=home)
    try:
        # trajectories write each run into .NAME.runs/ beside the target (formats/trajectories-v1.md)
        _wait_for(lambda: (tmp_path / ".omega.runs").is_dir(), winner, "the first writer started writing")
        os.kill(winner.pid, signal.SIGSTOP)  # hold it mid-run, whatever the machine's speed
        try:
            line = farzictl(*args, home=home).one_error_line()
            assert f"{target} is being written by another farzi process (pid {winner.pid})" in line
            assert winner.poll() is None  # the loser did not wait for the winner
        finally:
            os.kill(winner.pid, signal.SIGCONT)
        out, err = winner.communicate(timeout=300)
    finally:
        if winner.poll() is None:
            winner.kill()
    assert winner.returncode == 0, err
    assert json.loads(out)["checkpoints"] == 41
    assert len(json.loads((target / "manifest.json").read_text())["checkpoints"]) == 41
    assert hidden(tmp_path) == []


def test_a_killed_run_leaves_temporaries_that_the_next_run_removes(home: Path, tmp_path: Path) -> None:
    target = tmp_path / "omega"
    args = [*_trajectories(100000), "--out", target]
    victim = farzictl_start(*args, home=home)
    try:
        _wait_for(
            # runs are written one by one under .omega.runs/, each through its own temporary directory
            lambda: any((t / "run0-step0.safetensors").is_file() for t in _temps(tmp_path / ".omega.runs", "run0")),
            victim,
            "the first checkpoint in the run's temporary directory",
        )
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    left = hidden(tmp_path)
    assert ".omega.lock" in left and ".omega.runs" in left  # what a kill leaves: the lock, the run half-written
    assert _temps(tmp_path / ".omega.runs", "run0")
    assert not target.exists()
    farzictl(*TRAJECTORIES, "--out", target, home=home).ok()  # the lock died with its process
    assert sorted(p.name for p in target.iterdir()) == OWN_FILES["trajectories"]
    assert hidden(tmp_path) == []


# ------------------------------------------------------------------ distill: a bundle file and its log and state

DISTILL = [
    "distill",
    DATASET,
    "--budget",
    "2x4",
    "--objective",
    "mm",
    "--inner-steps",
    "1",
    "--real-batch",
    "4",
    *TINY[:6],
]


def test_distill_refuses_a_users_file_and_overwrite_replaces_it(home: Path, tmp_path: Path) -> None:
    target = tmp_path / "notes.safetensors"
    target.write_text("keep me\n")
    before = snapshot(tmp_path)
    line = farzictl(*DISTILL, "--outer-steps", "1", "--out", target, home=home).one_error_line()
    assert str(target) in line and "--overwrite" in line
    assert snapshot(tmp_path) == before
    farzictl(*DISTILL, "--outer-steps", "1", "--out", target, "--overwrite", home=home).ok()
    first = target.read_bytes()
    assert load_bundle(target).mu == 2  # a bundle now
    farzictl(*DISTILL, "--outer-steps", "1", "--out", target, "--seed", "1", home=home).ok()  # its own: replaced
    assert target.read_bytes() != first
    assert hidden(tmp_path) == []


def test_distill_onto_a_directory_fails_up_front(home: Path, tmp_path: Path) -> None:
    target = tmp_path / "b.safetensors"
    target.mkdir()
    (target / "x").write_text("mine\n")
    before = snapshot(tmp_path)
    farzictl(*DISTILL, "--outer-steps", "1", "--out", target, home=home).one_error_line()
    assert snapshot(tmp_path) == before


def test_a_second_distill_of_the_same_bundle_exits_2_at_once(home: Path, tmp_path: Path) -> None:
    target = tmp_path / "b.safetensors"
    args = [*DISTILL, "--outer-steps", "400", "--out", target, "--json"]
    winner = farzictl_start(*args, home=home)
    log = tmp_path / "b.log.jsonl"
    try:
        _wait_for(lambda: log.is_file() and log.read_text().count("\n") >= 1, winner, "the first outer step")
        os.kill(winner.pid, signal.SIGSTOP)
        try:
            line = farzictl(*DISTILL, "--outer-steps", "3", "--out", target, home=home).one_error_line()
            assert f"{target} is being written by another farzi process (pid {winner.pid})" in line
        finally:
            os.kill(winner.pid, signal.SIGCONT)
        out, err = winner.communicate(timeout=600)
    finally:
        if winner.poll() is None:
            winner.kill()
    assert winner.returncode == 0, err
    assert json.loads(out)["steps"] == 400
    assert len(log.read_text().splitlines()) == 400  # the loser never touched the log
    assert hidden(tmp_path) == []
