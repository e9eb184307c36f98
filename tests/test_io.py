"""farzi._io: output claims (lock, ownership, stale temporaries), atomic writes and their modes."""

from __future__ import annotations

import copy
import fcntl
import os
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from snapshot import hidden, snapshot

import farzi._io as io_mod
from farzi._io import atomic_dir, atomic_file, claim_output, held_claim, write_json
from farzi.data.prepare import PrepareOptions, prepare
from farzi.data.prepared import FORMAT_NAME as PREPARED_FORMAT
from farzi.data.prepared import PreparedDataset
from farzi.distill.bundle import FORMAT_NAME as BUNDLE_FORMAT
from farzi.distill.bundle import save_bundle
from farzi.errors import ConfigError
from farzi.progress import ProgressEvent
from farzi.student import train_student
from farzi.train import TrainConfig
from farzi.trajectories import FORMAT_NAME as TRAJECTORIES_FORMAT
from farzi.trajectories import train_trajectories
from farzi.workspace import home_dir

TINY_MODEL = {"d_model": 8, "n_layers": 1, "n_heads": 1, "max_len": 20}
ONE_STEP = TrainConfig(max_steps=1, batch_size=8, eval_every=1, patience=0, seed=0)


def _prepared_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    write_json(path / "manifest.json", {"format": PREPARED_FORMAT, "version": 1})
    (path / "train.parquet").write_bytes(b"old")
    return path


@pytest.fixture
def umask():
    """Set the process umask for one test; restore it afterwards."""
    before = os.umask(0o022)
    os.umask(before)
    yield lambda mask: os.umask(mask)
    os.umask(before)


# ------------------------------------------------------------------ what a claim refuses and accepts


def test_the_format_names_are_the_modules_own() -> None:
    assert io_mod._KINDS["prepared"].format == PREPARED_FORMAT
    assert io_mod._KINDS["trajectories"].format == TRAJECTORIES_FORMAT
    assert io_mod._KINDS["bundle"].format == BUNDLE_FORMAT
    from farzi.checkpoint import FORMAT_NAME as MODEL_FORMAT

    assert io_mod._KINDS["model"].format == MODEL_FORMAT


def _foreign(tmp_path: Path, case: str) -> Path:
    target = tmp_path / "out"
    if case == "file":
        target.write_text("keep me\n")
    elif case == "directory":
        (target / "sub").mkdir(parents=True)
        (target / "notes.txt").write_text("keep me\n")
    elif case == "other-kind":  # a trajectory set where a prepared dataset goes
        target.mkdir()
        write_json(target / "manifest.json", {"format": TRAJECTORIES_FORMAT, "version": 1})
    elif case == "own-plus-a-user-file":
        _prepared_dir(target)
        (target / "notes.txt").write_text("keep me\n")
    elif case == "symlink":
        _prepared_dir(tmp_path / "real")
        target.symlink_to(tmp_path / "real")
    return target


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("file", "is not a prepared dataset but a file"),
        ("directory", "exists and is not a prepared dataset"),
        ("other-kind", "exists and is not a prepared dataset"),
        ("own-plus-a-user-file", "also holds files farzi did not write (notes.txt)"),
        ("symlink", "is a symbolic link"),
    ],
)
def test_a_claim_refuses_what_is_not_its_own_and_touches_nothing(tmp_path: Path, case: str, says: str) -> None:
    target = _foreign(tmp_path, case)
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError, match="--overwrite") as err:
        with claim_output(target, "prepared"):
            pytest.fail("the claim should not be granted")
    assert says in str(err.value)
    assert snapshot(tmp_path) == before  # no lock, no temporary, nothing removed


@pytest.mark.parametrize("case", ["file", "directory", "other-kind", "own-plus-a-user-file", "symlink"])
def test_overwrite_replaces_anything(tmp_path: Path, case: str) -> None:
    target = _foreign(tmp_path, case)
    with claim_output(target, "prepared", overwrite=True) as claim, atomic_dir(target) as tmp:
        assert claim.existing == "foreign"
        (tmp / "manifest.json").write_text("{}")
    assert target.is_dir() and not target.is_symlink()
    assert sorted(p.name for p in target.iterdir()) == ["manifest.json"]
    if case == "symlink":  # the link was replaced, what it pointed to is kept
        assert (tmp_path / "real" / "train.parquet").read_bytes() == b"old"
    assert hidden(tmp_path) == []


@pytest.mark.parametrize("case", ["absent", "empty", "own"])
def test_a_claim_accepts_nothing_an_empty_directory_or_its_own_artifact(tmp_path: Path, case: str) -> None:
    target = tmp_path / "out"
    if case == "empty":
        target.mkdir()
    elif case == "own":
        _prepared_dir(target)
    with claim_output(target, "prepared") as claim:
        assert claim.existing == case
        assert (tmp_path / ".out.lock").read_text() == f"{os.getpid()}\n"
        with atomic_dir(target) as tmp:
            (tmp / "manifest.json").write_text("{}")
    assert sorted(p.name for p in target.iterdir()) == ["manifest.json"]
    assert hidden(tmp_path) == []


def test_a_file_kind_refuses_a_directory_and_recognizes_its_own_file(tmp_path: Path) -> None:
    directory = tmp_path / "b.safetensors"
    directory.mkdir()
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError, match="is a directory, not a Farzi Data bundle"):
        with claim_output(directory, "bundle"):
            pass
    assert snapshot(tmp_path) == before
    bundle = tmp_path / "a.safetensors"
    _save_tiny_bundle(bundle)
    with claim_output(bundle, "bundle") as claim:
        assert claim.existing == "own"
        _save_tiny_bundle(bundle)
    not_a_bundle = tmp_path / "c.safetensors"
    not_a_bundle.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(ConfigError, match="is not a Farzi Data bundle"):
        with claim_output(not_a_bundle, "bundle"):
            pass


def test_overwrite_never_replaces_the_current_directory_or_a_parent_of_it(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "a" / "b")
    before = snapshot(tmp_path)
    for target in (tmp_path / "a", tmp_path / "a" / "b", Path(".")):
        with pytest.raises(ConfigError):
            with claim_output(target, "model", overwrite=True):
                pass
    assert snapshot(tmp_path) == before


def test_claims_nest_in_one_thread_but_exclude_another(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with claim_output(target, "prepared") as outer:
        with claim_output(target, "prepared") as inner:
            assert inner is outer and held_claim(target) is outer
        with pytest.raises(ValueError, match="already claimed"):
            with claim_output(target, "model"):
                pass
        errors: list[BaseException] = []

        def other() -> None:
            try:
                with claim_output(target, "prepared"):
                    pass
            except ConfigError as exc:
                errors.append(exc)

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert len(errors) == 1 and "is being written by another farzi process" in str(errors[0])
        assert (tmp_path / ".out.lock").exists()  # the loser did not remove the winner's lock
    assert held_claim(target) is None
    assert hidden(tmp_path) == []


def test_a_lock_held_by_another_process_is_refused_at_once_and_names_it(tmp_path: Path) -> None:
    target = tmp_path / "out.safetensors"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
                import sys
                from farzi._io import claim_output
                with claim_output(sys.argv[1], "bundle"):
                    print("held", flush=True)
                    sys.stdin.readline()
                """
            ),
            str(target),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(ConfigError, match=rf"is being written by another farzi process \(pid {holder.pid}\)"):
            with claim_output(target, "bundle"):
                pass
    finally:
        holder.communicate("\n", timeout=60)
    assert holder.returncode == 0
    assert hidden(tmp_path) == []
    with claim_output(target, "bundle"):  # released
        pass


def test_a_lock_file_unlinked_by_its_releasing_holder_is_not_trusted(tmp_path: Path, monkeypatch) -> None:
    """The holder removes the lock file just after we opened it and before our flock: we must lock a fresh one."""
    target = tmp_path / "out"
    lock = tmp_path / ".out.lock"
    real_flock = fcntl.flock
    opened: list[int] = []

    def flock_after_the_holder_left(fd: int, op: int) -> None:
        opened.append(os.fstat(fd).st_ino)
        if len(opened) == 1:
            lock.unlink()  # what a releasing holder does
        real_flock(fd, op)

    monkeypatch.setattr(io_mod.fcntl, "flock", flock_after_the_holder_left)
    with claim_output(target, "prepared"):
        assert len(opened) == 2  # retried on a new file
        monkeypatch.setattr(io_mod.fcntl, "flock", real_flock)
        fd = os.open(lock, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):  # the file now at the path is the locked one
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    assert not lock.exists()


# ------------------------------------------------------------------ what a claim cleans and checks


def test_stale_temporaries_of_the_target_are_removed_and_others_kept(tmp_path: Path) -> None:
    _prepared_dir(tmp_path / "out")
    (tmp_path / ".out.tmp-0a1b2c3d").mkdir()
    (tmp_path / ".out.tmp-0a1b2c3d" / "train.parquet").write_bytes(b"half")
    (tmp_path / ".out.tmp-k2_x9qzz").write_bytes(b"an older farzi's temporary")
    (tmp_path / ".out.old-4242").mkdir()
    keep = [".out.tmp-b.tmp-0a1b2c3d", ".other.tmp-0a1b2c3d", "out.tmp-0a1b2c3d", ".out.lockish"]
    for name in keep:
        (tmp_path / name).write_text("not ours\n")
    (tmp_path / ".log.tmp-99").write_text("a companion's\n")
    with claim_output(tmp_path / "out", "prepared", companions=[tmp_path / "log"]):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", *keep])
    assert (tmp_path / "out" / "train.parquet").read_bytes() == b"old"


def test_a_previous_artifact_moved_aside_by_a_killed_run_is_put_back(tmp_path: Path) -> None:
    _prepared_dir(tmp_path / ".out.old-0a1b2c3d")
    (tmp_path / ".out.tmp-1b2c3d4e").mkdir()
    with claim_output(tmp_path / "out", "prepared") as claim:
        assert claim.existing == "own"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (tmp_path / "out" / "train.parquet").read_bytes() == b"old"


def test_a_path_under_a_file_fails_up_front(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("keep me\n")
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError, match=r"file is a file, not a directory"):
        with claim_output(tmp_path / "file" / "sub" / "out", "model"):
            pass
    assert snapshot(tmp_path) == before


def test_parent_directories_are_created_and_removed_if_nothing_was_written(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out"
    with claim_output(target, "model"):
        assert target.parent.is_dir()
    assert list(tmp_path.iterdir()) == []
    with claim_output(target, "model"), atomic_dir(target) as tmp:
        (tmp / "model.json").write_text("{}")
    assert (target / "model.json").is_file()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_location_fails_up_front(tmp_path: Path) -> None:
    locked = tmp_path / "ro"
    locked.mkdir(mode=0o555)
    try:
        with pytest.raises(ConfigError, match="permission denied"):
            with claim_output(locked / "out", "model"):
                pass
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_something_put_at_the_target_during_the_run_is_not_replaced(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with claim_output(target, "model"):
        target.mkdir()
        (target / "notes.txt").write_text("written meanwhile\n")
        before = snapshot(tmp_path)
        with pytest.raises(ConfigError, match="appeared while this run was working"):
            with atomic_dir(target) as tmp:
                (tmp / "model.json").write_text("{}")
        assert snapshot(tmp_path) == before


# ------------------------------------------------------------------ atomic writes: failures and modes


def test_a_failed_final_rename_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "b.safetensors"
    (target / "inner").mkdir(parents=True)
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError, match=r"cannot write .*b\.safetensors \(it is a directory\)"):
        _save_tiny_bundle(target)
    assert snapshot(tmp_path) == before


def test_a_failed_directory_swap_restores_the_previous_artifact(tmp_path: Path, monkeypatch) -> None:
    target = _prepared_dir(tmp_path / "out")
    before = snapshot(tmp_path)
    real_replace = os.replace

    def replace(src: Any, dst: Any) -> None:
        if Path(src).name.startswith(".out.tmp-"):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(io_mod.os, "replace", replace)
    with pytest.raises(ConfigError, match="no space left on device"):
        with atomic_dir(target) as tmp:
            (tmp / "manifest.json").write_text("{}")
    assert snapshot(tmp_path) == before


def test_a_full_disk_while_writing_is_one_error_and_no_temporary(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\(no space left on device\); free some space"):
        with atomic_file(tmp_path / "x.json") as tmp:
            tmp.write_text("{")
            raise OSError(28, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_an_interrupt_removes_the_temporary_directory(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "f").write_text("x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def _modes(root: Path) -> dict[str, int]:
    return {k: v[1] for k, v in snapshot(root).items()}


def _save_tiny_bundle(path: Path) -> None:
    save_bundle(
        path,
        torch.zeros(2, 3, 2),
        torch.zeros(2, 4),
        1.0,
        "rec",
        vocab=["<pad>", "a", "b", "c"],
        vocab_sha256="0" * 64,
        specials={"pad": 0},
        masked_tokens=[0],
        dataset={"name": "x"},
        teacher={"model": "sasrec"},
        distill={},
    )


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_artifacts_follow_the_umask(tmp_path: Path, tiny_rec: PreparedDataset, umask, mask: int) -> None:
    umask(mask)
    files, dirs = 0o666 & ~mask, 0o777 & ~mask
    bundle = tmp_path / "b.safetensors"
    _save_tiny_bundle(bundle)
    assert stat.S_IMODE(bundle.stat().st_mode) == files
    home = tmp_path / "home"
    ds = prepare("synthetic-rec", PrepareOptions(synthetic_vocab=10, synthetic_sequences=20), home=home)
    train_trajectories(ds, "sasrec", 1, 1, ONE_STEP, tmp_path / "omega", TINY_MODEL)
    train_student(ds, "sasrec", "head:5", ONE_STEP, tmp_path / "student", TINY_MODEL)
    for artifact in (ds.path, tmp_path / "omega", tmp_path / "student"):
        modes = _modes(artifact)
        assert modes.pop(".") == dirs, artifact
        assert set(modes.values()) == {files}, (artifact, modes)
    assert stat.S_IMODE((home / "datasets").stat().st_mode) == dirs  # parents made on the way


# ------------------------------------------------------------------ the library's writers claim before working


def _events() -> tuple[list[ProgressEvent], Any]:
    seen: list[ProgressEvent] = []
    return seen, seen.append


@pytest.mark.parametrize("writer", ["prepare", "trajectories", "train-student"])
def test_writers_refuse_a_foreign_output_before_any_work(tmp_path: Path, tiny_rec: PreparedDataset, writer: str):
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "notes.txt").write_text("keep me\n")
    before = snapshot(tmp_path)
    seen, progress = _events()
    with pytest.raises(ConfigError, match="--overwrite"):
        if writer == "prepare":
            prepare("synthetic-rec", PrepareOptions(synthetic_sequences=20), out=out, home=tmp_path, progress=progress)
        elif writer == "trajectories":
            train_trajectories(tiny_rec, "sasrec", 1, 1, ONE_STEP, out, TINY_MODEL, progress=progress)
        else:
            train_student(tiny_rec, "sasrec", "head:5", ONE_STEP, out, TINY_MODEL, progress=progress)
    assert seen == []  # not one step of work
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("writer", ["trajectories", "train-student"])
def test_writers_refuse_a_path_under_a_file_before_training(tmp_path: Path, tiny_rec: PreparedDataset, writer: str):
    (tmp_path / "file").write_text("keep me\n")
    out = tmp_path / "file" / "sub"
    seen, progress = _events()
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        if writer == "trajectories":
            train_trajectories(tiny_rec, "sasrec", 1, 1, ONE_STEP, out, TINY_MODEL, progress=progress)
        else:
            train_student(tiny_rec, "sasrec", "head:5", ONE_STEP, out, TINY_MODEL, progress=progress)
    assert seen == []
    assert (tmp_path / "file").read_text() == "keep me\n"


def test_save_refuses_a_foreign_directory_unless_overwrite(tmp_path: Path, tiny_rec: PreparedDataset) -> None:
    ds = copy.copy(tiny_rec)  # save() records its path: leave the shared fixture alone
    out = tmp_path / "ds"
    out.mkdir()
    (out / "notes.txt").write_text("keep me\n")
    with pytest.raises(ConfigError, match="is not a prepared dataset"):
        ds.save(out)
    assert (out / "notes.txt").read_text() == "keep me\n"
    ds.save(out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(io_mod._KINDS["prepared"].names)
    assert hidden(tmp_path) == []


# ------------------------------------------------------------------ the workspace home


@pytest.mark.parametrize("below", [False, True])
def test_a_home_that_is_a_file_is_one_error(tmp_path: Path, below: bool) -> None:
    (tmp_path / "file").write_text("keep me\n")
    home = tmp_path / "file" / "sub" if below else tmp_path / "file"
    with pytest.raises(ConfigError, match="is a file, not a directory; pass --home"):
        home_dir(home)
    with pytest.raises(ConfigError, match="--home"):
        prepare("synthetic-lm", PrepareOptions(synthetic_sequences=10), home=home)
    assert (tmp_path / "file").read_text() == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_home_from_the_environment_is_checked_too(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("FARZI_HOME", str(tmp_path / "file"))
    with pytest.raises(ConfigError, match=r"\(FARZI_HOME\) is a file"):
        home_dir()
    monkeypatch.setenv("FARZI_HOME", str(tmp_path / "new" / "home"))
    assert home_dir() == tmp_path / "new" / "home"  # absent is fine: created when first written
    assert not (tmp_path / "new").exists()
