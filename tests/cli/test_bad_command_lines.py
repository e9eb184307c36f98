"""Command lines that once crashed or lost data silently: exit 2, one line, files kept.

Each case builds what the command line needs inside a scratch directory, snapshots that
directory (names, bytes, modes), runs the command in-process the way a script would, and
checks: exit status 2, exactly one ``error:`` line naming the problem, no traceback, and the
scratch directory exactly as it was. The detailed behaviour of each fix is tested beside its
code; this file is the checklist of whole command lines.
"""

from __future__ import annotations

import json
import struct
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from cli_runner import farzictl
from snapshot import snapshot

from farzi._io import claim_output

TINY = ["--d-model", "8", "--n-layers", "1", "--max-len", "16"]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("home")
    farzictl("prepare", "synthetic-rec", "--synthetic-vocab", "20", "--synthetic-sequences", "30", home=home).ok()
    farzictl("prepare", "synthetic-lm", "--synthetic-vocab", "20", "--synthetic-sequences", "30", home=home).ok()
    return home


def _user_dir(root: Path) -> list[str]:
    (root / "v" / "sub").mkdir(parents=True)
    (root / "v" / "notes.txt").write_text("x\n")
    return [str(root / "v")]


def _log(root: Path, rows: list[str], name: str = "log.csv") -> str:
    path = root / name
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def _huge_bundle(root: Path) -> str:
    """The issue's 8 MB bundle: latent [1, 1e6, 1] and decoder [1, 1e6], valid by every per-tensor check."""
    n = 1_000_000
    meta = {
        "format": "farzi-data",
        "version": "1",
        "task": "rec",
        "tau": "1.0",
        "vocab_size": str(n),
        "vocab_sha256": "0" * 64,
        "specials": json.dumps({"<pad>": 0}),
        "masked_tokens": "[0]",
        "dataset": "{}",
        "teacher": "{}",
        "distill": "{}",
        "package": json.dumps({"name": "farzi", "version": "0.1.0"}),
        "created": "2026-01-01T00:00:00Z",
    }
    header = {
        "__metadata__": meta,
        "decoder": {"dtype": "F32", "shape": [1, n], "data_offsets": [0, 4 * n]},
        "latent": {"dtype": "F32", "shape": [1, n, 1], "data_offsets": [4 * n, 8 * n]},
    }
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path = root / "huge.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        f.write(b"\0" * (8 * n))
    return str(path)


def _negative_offset_bundle(root: Path) -> str:
    header = {"latent": {"dtype": "F32", "shape": [4, 8, 40], "data_offsets": [-5120, 0]}}
    text = json.dumps(header).encode()
    path = root / "neg.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"\0" * 64)
    return str(path)


def _file(root: Path) -> str:
    (root / "file").write_text("keep me\n")
    return str(root / "file")


# name: (build the arguments inside the scratch dir, words the error line must hold)
Case = tuple[Callable[[Path], list[str]], tuple[str, ...]]
CASES: dict[str, Case] = {
    "train-student onto a user's directory": (
        lambda r: [
            "train-student",
            "synthetic-rec",
            "--data",
            "head:5",
            "--max-steps",
            "1",
            *TINY,
            "--out",
            *_user_dir(r),
        ],
        ("exists and is not", "--overwrite"),
    ),
    "trajectories onto a user's directory": (
        lambda r: ["trajectories", "synthetic-rec", "--runs", "1", "--max-steps", "1", *TINY, "--out", *_user_dir(r)],
        ("exists and is not", "--overwrite"),
    ),
    "interactions with nan user ids": (
        lambda r: [
            "prepare",
            "interactions",
            "--name",
            "log",
            "--path",
            _log(r, ["user,item,time", *[f"{u},{i},{i}" for u in range(12) for i in range(3)], "nan,1,5", "NaN,2,6"]),
        ],
        ("user",),
    ),
    "interactions with nan timestamps": (
        lambda r: [
            "prepare",
            "interactions",
            "--name",
            "log",
            "--path",
            _log(r, ["user,item,time", *[f"{u},{i},{i}" for u in range(12) for i in range(3)], "3,9,nan"]),
        ],
        ("time",),
    ),
    "interactions mixing ISO dates and epoch numbers": (
        lambda r: [
            "prepare",
            "interactions",
            "--name",
            "log",
            "--path",
            _log(
                r, ["user,item,time", *[f"{u},{i},{1000 + i}" for u in range(12) for i in range(3)], "3,9,2020-01-01"]
            ),
        ],
        ("time",),
    ),
    "inspect of a bundle that would need 4 TB": (
        lambda r: ["inspect", _huge_bundle(r)],
        ("over the limit",),
    ),
    "prepare with a home that is a file": (
        lambda r: ["prepare", "synthetic-lm", "--home", _file(r)],
        ("is a file",),
    ),
    "prepare with a negative seed": (
        lambda r: ["prepare", "synthetic-rec", "--seed", "-1", "--out", str(r / "out")],
        ("--seed",),
    ),
    "distill with a seed of 2**64": (
        lambda r: ["distill", "synthetic-rec", "--seed", "18446744073709551616", "--out", str(r / "b.safetensors")],
        ("--seed",),
    ),
    "distill with a latent dimension of 1e9": (
        lambda r: [
            "distill",
            "synthetic-rec",
            "--budget",
            "4x8",
            "--latent-dim",
            "1000000000",
            "--objective",
            "mm",
            "--out",
            str(r / "b.safetensors"),
        ],
        ("latent", "limit"),
    ),
    "train-student on a tpu": (
        lambda r: ["train-student", "synthetic-rec", "--device", "tpu", "--out", str(r / "m")],
        ("unknown device 'tpu'",),
    ),
    "trajectories on cuda without CUDA": (
        lambda r: ["trajectories", "synthetic-rec", "--device", "cuda", "--out", str(r / "t")],
        ("CUDA is not available",),
    ),
    "train-student onto a path under a file": (
        lambda r: [
            "train-student",
            "synthetic-rec",
            "--data",
            "head:5",
            "--max-steps",
            "1",
            *TINY,
            "--out",
            str(Path(_file(r)) / "sub"),
        ],
        ("is a file, not a directory",),
    ),
    "a workspace name with a trailing newline": (
        lambda r: ["prepare", "synthetic-rec", "--name", "ml\n", "--home", str(r / "h")],
        ("not a valid workspace name",),
    ),
    "a TSV read as CSV": (
        lambda r: [
            "prepare",
            "interactions",
            "--name",
            "log",
            "--path",
            _log(r, ["user\titem\ttime", *[f"{u}\t{i}\t{i}" for u in range(12) for i in range(3)]]),
        ],
        ("--separator",),
    ),
    "distill with --tau 1e300": (
        lambda r: [
            "distill",
            "synthetic-rec",
            "--budget",
            "4x8",
            "--tau",
            "1e300",
            "--objective",
            "mm",
            "--out",
            str(r / "b.safetensors"),
        ],
        ("--tau",),
    ),
    "inspect of a tensor with a negative offset": (
        lambda r: ["inspect", _negative_offset_bundle(r)],
        ("negative",),
    ),
}
if torch.cuda.is_available():  # the case cannot arise where CUDA exists
    del CASES["trajectories on cuda without CUDA"]


@pytest.mark.parametrize("name", list(CASES))
def test_command_line_exits_2_with_one_line_and_keeps_files(name: str, home: Path, tmp_path: Path) -> None:
    build, words = CASES[name]
    args = build(tmp_path)
    before = snapshot(tmp_path)
    outcome = farzictl(*args, home=None if "--home" in args else home)
    line = outcome.one_error_line()
    for word in words:
        assert word in line, line
    assert snapshot(tmp_path) == before


def test_a_second_distill_of_one_bundle_is_refused_at_once(home: Path, tmp_path: Path) -> None:
    """The loser of two writers exits 2 at once (the real two-process race is in test_outputs.py)."""
    target = tmp_path / "b.safetensors"
    held, release = threading.Event(), threading.Event()

    def writer() -> None:
        with claim_output(target, "bundle"):
            held.set()
            release.wait(60)

    t = threading.Thread(target=writer)
    t.start()
    try:
        assert held.wait(30)
        before = snapshot(tmp_path)
        args = ["distill", "synthetic-rec", "--budget", "2x4", "--objective", "mm", "--out", str(target)]
        line = farzictl(*args, home=home).one_error_line()
        assert "being written by another farzi process" in line
        assert snapshot(tmp_path) == before
    finally:
        release.set()
        t.join()
