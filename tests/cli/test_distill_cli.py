"""`farzictl distill` and `farzictl inspect` end to end, through the real entry point.

Every run is ``python -m farzictl ... --home HOME`` in a subprocess. Interpreter
start-up dominates, so the module fixture runs independent commands at once (a
thread pool), in three waves: prepare two datasets; then trajectories, one
successful distillation and the bad invocations; then what needs their
results. Each test then checks one finished run.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from farzi._safetensors import read_header
from farzi.errors import BundleError

REPO = Path(__file__).resolve().parents[2]
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
    "newer-version": ("farzi-data v2", "upgrade farzi"),
}


def farzictl(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "FARZI_HOME"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # several runs share two cores
    return subprocess.run(
        [sys.executable, "-m", "farzictl", *args, "--home", str(home)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@dataclass
class World:
    home: Path
    work: Path
    prepared: list[subprocess.CompletedProcess]
    trajectories: subprocess.CompletedProcess
    distilled: subprocess.CompletedProcess
    inspected: subprocess.CompletedProcess | None
    bad: dict[str, subprocess.CompletedProcess]


def _broken_copies(bundle: Path, work: Path) -> dict[str, Path]:
    data = bundle.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    cut = work / "truncated.safetensors"
    cut.write_bytes(data[: 8 + n + (len(data) - 8 - n) // 2])  # header intact, half the tensors
    newer = work / "newer.safetensors"
    meta = read_header(bundle, BundleError, "")[1]
    save_file({"latent": torch.zeros(4, 8, 8), "decoder": torch.zeros(8, 33)}, str(newer), {**meta, "version": "2"})
    return {"truncated": cut, "newer-version": newer}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    home, work = tmp_path_factory.mktemp("home"), tmp_path_factory.mktemp("work")
    with ThreadPoolExecutor(max_workers=4) as pool:
        prep = [
            pool.submit(farzictl, home, "prepare", "synthetic-lm", *SYNTH, "--json"),
            pool.submit(farzictl, home, "prepare", "synthetic-lm", *SYNTH, "--seed", "7", "--name", "other", "--json"),
        ]
        prepared = [f.result() for f in prep]
        for p in prepared:
            assert p.returncode == 0, p.stderr
        traj = pool.submit(
            farzictl, home, "trajectories", "other", "--runs", "1", "--every", "1", "--max-steps", "2",
            "--batch-size", "8", "--d-model", "16", "--n-layers", "1", "--max-len", "32", "--json",
        )  # fmt: skip
        good = pool.submit(farzictl, home, "distill", "synthetic-lm", *TINY, "--json")
        bad: dict[str, Future] = {
            name: pool.submit(farzictl, home, "distill", "synthetic-lm", *TINY, *opts, "--seed", str(100 + i))
            for i, (name, (opts, _)) in enumerate(BAD_DISTILL.items())
        }
        trajectories = traj.result()
        if trajectories.returncode == 0:
            where = json.loads(trajectories.stdout)["path"]
            bad[OTHER_TRAJECTORIES] = pool.submit(
                farzictl, home, "distill", "synthetic-lm", *TINY, "--trajectories", where, "--seed", "99"
            )
        distilled = good.result()
        inspected = None
        if distilled.returncode == 0:
            bundle = Path(json.loads(distilled.stdout)["bundle"])
            ok = pool.submit(farzictl, home, "inspect", str(bundle), "--json")
            for name, path in _broken_copies(bundle, work).items():
                bad[f"inspect-{name}"] = pool.submit(farzictl, home, "inspect", str(path))
            inspected = ok.result()
        return World(home, work, prepared, trajectories, distilled, inspected, {k: f.result() for k, f in bad.items()})


def test_distill_succeeds_and_prints_the_bundle(world: World) -> None:
    proc = world.distilled
    assert proc.returncode == 0, proc.stderr
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
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    report = json.loads(proc.stdout)
    assert report["valid"] is True and report["verdict"] == "valid farzi-data v1 bundle"
    assert report["budget"] == "4x8" and report["format"] == "farzi-data v1" and report["task"] == "lm"
    assert report["shapes"] == {"latent": [4, 8, 8], "decoder": [8, 33]}
    assert report["dataset"]["name"] == "synthetic-lm" and report["dataset"]["train_sequences"] == 120
    assert report["distill"]["outer_steps"] == 3 and report["teacher"]["model"] == "transformer"
    assert report["share"]["sequences"] == pytest.approx(4 / 120)
    assert len(report["entropy"]["per_position"]) == 8 and len(report["entropy"]["per_sequence"]) == 4
    assert len(report["examples"]) == 3 and all(t["token"].startswith(("w", "<")) for t in report["examples"][0][0])


def _one_error_line(proc: subprocess.CompletedProcess, expected: tuple[str, ...]) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("error: ") and line[len("error: ") :].strip(), line
    for text in expected:
        assert text in line, line
    return line


@pytest.mark.parametrize("name", [*BAD_DISTILL, OTHER_TRAJECTORIES])
def test_bad_distill_fails_cleanly(world: World, name: str) -> None:
    if name == OTHER_TRAJECTORIES:
        assert world.trajectories.returncode == 0, world.trajectories.stderr
        expected: tuple[str, ...] = ("trajectory set was trained on", "'other'", "'synthetic-lm'")
    else:
        expected = BAD_DISTILL[name][1]
    proc = world.bad[name]
    _one_error_line(proc, expected)
    assert proc.stdout == ""


def test_failed_runs_leave_no_bundle_behind(world: World) -> None:
    assert all(p.returncode == 2 for p in world.bad.values())
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
def test_inspect_rejects_negative_counts(
    world: World, flag: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from farzictl.app import main  # in-process: option checks need no interpreter of their own

    monkeypatch.delenv("FARZI_HOME", raising=False)
    bundle = world.home / "bundles" / "synthetic-lm" / "farzi-4x8-s0.safetensors"
    with pytest.raises(SystemExit) as info:
        main(["inspect", str(bundle), flag, "-1", "--json", "--home", str(world.home)])
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"error: {flag} -1 must not be negative; pass e.g. {flag} 3\n"
