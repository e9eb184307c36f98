"""`farzictl distill` and `farzictl inspect` end to end, through the real entry point.

Every run goes through the shared in-process helper (``tests/cli_runner.py``:
``farzictl.app.main`` under Typer's ``CliRunner`` isolation), one after the
other in the module fixture: prepare two datasets, trajectories of one, one
successful distillation and the bad invocations, then what needs their
results. Each test then checks one finished run.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from cli_runner import Outcome, farzictl
from safetensors.torch import save_file

from farzi._safetensors import read_header
from farzi.errors import BundleError

CUDA = torch.cuda.is_available()
SYNTH = ["--synthetic-vocab", "30", "--synthetic-sequences", "120"]
TINY = [
    "--budget",
    "4x8",
    "--outer-steps",
    "3",
    "--inner-steps",
    "3",
    "--real-batch",
    "16",
    "--d-model",
    "16",
    "--n-layers",
    "1",
    "--max-len",
    "32",
]

# distill synthetic-lm with these options (after TINY, so the last --budget wins): (options, expected in the line)
BAD_DISTILL: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "budget-does-not-parse": (["--budget", "50by50"], ("budget '50by50' does not parse", "MUxXI")),
    "budget-too-many-sequences": (
        ["--budget", "500x8"],
        ("budget of 500 sequences exceeds the 120 training sequences", "at most 120"),
    ),
    "budget-too-long": (["--budget", "4x500"], ("budget length 500 exceeds the longest training sequence",)),
    "meta-grad-bogus": (["--meta-grad", "bogus"], ("--meta-grad", "'bogus' is not one of", "'reverse'")),
    "objective-bogus": (
        ["--objective", "bogus"],
        ("--objective", "'bogus' is not one of", "'farzi', 'mm', 'dc', 'mtt'"),
    ),
}
if not CUDA:  # where CUDA exists the case does not apply, so it is left out
    BAD_DISTILL["cuda-unavailable"] = (["--device", "cuda"], ("CUDA is not available", "--device cpu"))
OTHER_TRAJECTORIES = "trajectories-of-another-dataset"
BAD_INSPECT = {
    "truncated": ("truncated",),
    "newer-version": ("farzi-data v3", "upgrade farzi"),
}


@dataclass
class World:
    home: Path
    work: Path
    prepared: list[Outcome]
    trajectories: Outcome
    distilled: Outcome
    inspected: Outcome | None
    bad: dict[str, Outcome]


def _broken_copies(bundle: Path, work: Path) -> dict[str, Path]:
    data = bundle.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    cut = work / "truncated.safetensors"
    cut.write_bytes(data[: 8 + n + (len(data) - 8 - n) // 2])  # header intact, half the tensors
    newer = work / "newer.safetensors"
    meta = read_header(bundle, BundleError, "")[1]
    save_file({"latent": torch.zeros(4, 8, 8), "decoder": torch.zeros(8, 33)}, str(newer), {**meta, "version": "3"})
    return {"truncated": cut, "newer-version": newer}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    home, work = tmp_path_factory.mktemp("home"), tmp_path_factory.mktemp("work")
    prepared = [
        farzictl("prepare", "synthetic-lm", *SYNTH, "--json", home=home),
        farzictl("prepare", "synthetic-lm", *SYNTH, "--seed", "7", "--name", "other", "--json", home=home),
    ]
    for p in prepared:
        p.ok()
    trajectories = farzictl(
        "trajectories", "other", "--runs", "1", "--every", "1", "--max-steps", "2",
        "--batch-size", "8", "--d-model", "16", "--n-layers", "1", "--max-len", "32", "--json", home=home,
    )  # fmt: skip
    distilled = farzictl("distill", "synthetic-lm", *TINY, "--json", home=home)
    bad: dict[str, Outcome] = {
        name: farzictl("distill", "synthetic-lm", *TINY, *opts, "--seed", str(100 + i), home=home)
        for i, (name, (opts, _)) in enumerate(BAD_DISTILL.items())
    }
    if trajectories.code == 0:
        where = json.loads(trajectories.stdout)["path"]
        bad[OTHER_TRAJECTORIES] = farzictl(
            "distill", "synthetic-lm", *TINY, "--trajectories", where, "--seed", "99", home=home
        )
    inspected = None
    if distilled.code == 0:
        bundle = Path(json.loads(distilled.stdout)["bundle"])
        inspected = farzictl("inspect", bundle, "--json", home=home)
        for name, path in _broken_copies(bundle, work).items():
            bad[f"inspect-{name}"] = farzictl("inspect", path, home=home)
    return World(home, work, prepared, trajectories, distilled, inspected, bad)


def test_distill_succeeds_and_prints_the_bundle(world: World) -> None:
    proc = world.distilled.ok()
    assert proc.stderr == ""  # no progress-bar residue off a terminal
    info = json.loads(proc.stdout)
    bundle = Path(info["bundle"])
    assert bundle == world.home / "bundles" / "synthetic-lm" / "farzi-4x8-s0.safetensors"
    assert bundle.is_file() and Path(info["log"]).is_file()
    assert info["budget"] == "4x8" and info["complete"] is True and info["steps"] == 3
    assert info["trajectories"] is None
    assert len(Path(info["log"]).read_text(encoding="utf-8").splitlines()) == 3


def test_inspect_reports_the_bundle_valid(world: World) -> None:
    proc = world.inspected
    assert proc is not None, "distill failed"
    assert proc.ok().stderr == "", proc.stderr
    report = json.loads(proc.stdout)
    assert report["valid"] is True and report["verdict"] == "valid farzi-data v1 bundle"
    assert report["budget"] == "4x8" and report["format"] == "farzi-data v1" and report["task"] == "lm"
    assert report["shapes"] == {"latent": [4, 8, 8], "decoder": [8, 33]}
    assert report["dataset"]["name"] == "synthetic-lm" and report["dataset"]["train_sequences"] == 120
    assert report["distill"]["outer_steps"] == 3 and report["teacher"]["model"] == "transformer"
    assert report["share"]["sequences"] == pytest.approx(4 / 120)
    assert len(report["entropy"]["per_position"]) == 8 and len(report["entropy"]["per_sequence"]) == 4
    assert len(report["examples"]) == 3 and all(t["token"].startswith(("w", "<")) for t in report["examples"][0][0])


def _one_error_line(outcome: Outcome, expected: tuple[str, ...]) -> str:
    line = outcome.one_error_line()  # exit 2, one `error:` line, no traceback
    assert line[len("error: ") :].strip(), line
    for text in expected:
        assert text in line, line
    return line


@pytest.mark.parametrize("name", [*BAD_DISTILL, OTHER_TRAJECTORIES])
def test_bad_distill_fails_cleanly(world: World, name: str) -> None:
    if name == OTHER_TRAJECTORIES:
        world.trajectories.ok()
        expected: tuple[str, ...] = ("trajectory set was trained on", "'other'", "'synthetic-lm'")
    else:
        expected = BAD_DISTILL[name][1]
    proc = world.bad[name]
    _one_error_line(proc, expected)
    assert proc.stdout == ""


def test_failed_runs_leave_no_bundle_behind(world: World) -> None:
    assert all(p.code == 2 for p in world.bad.values())
    bundles = world.home / "bundles"
    # only the successful run's bundle and log: the failures wrote nothing, not even a directory
    assert sorted(str(p.relative_to(bundles)) for p in bundles.rglob("*")) == [
        "synthetic-lm",
        "synthetic-lm/farzi-4x8-s0.log.jsonl",
        "synthetic-lm/farzi-4x8-s0.safetensors",
    ]
    assert [p for p in world.home.rglob("*") if ".tmp-" in p.name or ".state." in p.name] == []


@pytest.mark.parametrize("name", list(BAD_INSPECT))
def test_inspect_of_a_broken_bundle(world: World, name: str) -> None:
    proc = world.bad.get(f"inspect-{name}")
    assert proc is not None, "distill failed"
    line = _one_error_line(proc, BAD_INSPECT[name])
    assert line.startswith("error: invalid: ")


@pytest.mark.parametrize("flag", ["--top-k", "--sequences", "--positions"])
def test_inspect_rejects_negative_counts(world: World, flag: str) -> None:
    bundle = world.home / "bundles" / "synthetic-lm" / "farzi-4x8-s0.safetensors"
    out = farzictl("inspect", bundle, flag, "-1", "--json", home=world.home)
    assert out.one_error_line() == f"error: {flag} -1 must not be negative; pass e.g. {flag} 3"
    assert out.stdout == "" and out.stderr == f"error: {flag} -1 must not be negative; pass e.g. {flag} 3\n"


def test_the_4_tb_bundle_is_one_line_for_inspect_and_train_student(world: World) -> None:
    """latent [1, 1e6, 1] x decoder [1, 1e6]: 8 MB that passes every per-tensor check but describes
    4 TB of distributions; both readers refuse it from the header, before anything is allocated."""
    good = world.home / "bundles" / "synthetic-lm" / "farzi-4x8-s0.safetensors"
    meta = {k: v for k, v in read_header(good, BundleError, "")[1].items() if k != "vocab"}
    meta["vocab_size"] = str(10**6)
    header = {
        "__metadata__": meta,
        "decoder": {"dtype": "F32", "shape": [1, 10**6], "data_offsets": [0, 4 * 10**6]},
        "latent": {"dtype": "F32", "shape": [1, 10**6, 1], "data_offsets": [4 * 10**6, 8 * 10**6]},
    }
    text = json.dumps(header).encode()
    huge = world.work / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", len(text)) + text + bytes(8 * 10**6))
    too_large = "one sequence's distributions are xi x |V| = 1000000 x 1000000 = 1000000000000 values, over the limit"
    line = farzictl("inspect", huge, home=world.home).one_error_line()
    assert line.startswith(f"error: invalid: {huge}: ") and too_large in line and "distill a shorter budget" in line
    out = world.work / "student"
    line = farzictl("train-student", "synthetic-lm", "--data", huge, "--out", out, home=world.home).one_error_line()
    assert line.startswith(f"error: {huge}: ") and too_large in line
    assert not out.exists()
