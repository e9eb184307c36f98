"""The command line under fuzzing (issue 26): at least 1,000 seeded random command lines over the writing
commands (prepare, trajectories, distill, train-student, export; plus eval and inspect), drawn from each
command's declared options, each run on tiny data under a memory limit and a timeout. Every draw must
exit 0 or 2 (one ``error:`` line), print no traceback, touch nothing outside its outputs and leave no
temporary file. The harness and the reasons behind its choices: ``fuzz_harness.py`` beside this file.

The slow test runs the harness as its own process (a fork server must not be a process that has run
torch work already, as this pytest process may have). ``FARZI_FUZZ_SEED`` (default 0) and
``FARZI_FUZZ_DRAWS`` (default 1000) choose the draws; ``FARZI_FUZZ_ONLY=N[,M]`` replays draws alone;
``FARZI_FUZZ_JOBS``, ``FARZI_FUZZ_TIMEOUT``, ``FARZI_FUZZ_MEMORY_MB`` and ``FARZI_FUZZ_MODE``
(``fork`` or ``subprocess``) tune the runs; ``FARZI_FUZZ_KEEP=DIR`` keeps each failing draw's tree. All
failures are collected and reported at the end, grouped by class, each with its seed, draw number and
command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import fuzz_harness as fh
import pytest

HARNESS = Path(fh.__file__).resolve()


def _harness(tmp_path: Path, *args: str, timeout: float | None = None) -> dict:
    """Run the harness in a process of its own; its report."""
    report = tmp_path / "report.json"
    log = tmp_path / "harness.log"
    env = {k: v for k, v in os.environ.items() if k != "FARZI_HOME"}
    with open(log, "w") as err:
        proc = subprocess.run(
            [sys.executable, str(HARNESS), "--work", str(tmp_path / "work"), "--report", str(report), *args],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
            timeout=timeout,
        )
    if not report.is_file():
        pytest.fail(f"the harness wrote no report (rc {proc.returncode}):\n{log.read_text()[-4000:]}")
    return json.loads(report.read_text())


def _failures(report: dict) -> list[dict]:
    return [r for r in report["records"] if r["failures"]]


@pytest.mark.slow
def test_a_thousand_random_command_lines_exit_cleanly_and_keep_every_other_file(tmp_path: Path) -> None:
    draws = int(os.environ.get("FARZI_FUZZ_DRAWS", "1000"))
    only = os.environ.get("FARZI_FUZZ_ONLY", "")
    args = ["--seed", os.environ.get("FARZI_FUZZ_SEED", "0"), "--draws", str(draws), "--only", only]
    for env, flag in (
        ("FARZI_FUZZ_JOBS", "--jobs"),
        ("FARZI_FUZZ_TIMEOUT", "--timeout"),
        ("FARZI_FUZZ_MEMORY_MB", "--memory-mb"),
        ("FARZI_FUZZ_MODE", "--mode"),
        ("FARZI_FUZZ_KEEP", "--keep"),
    ):
        if os.environ.get(env):
            args += [flag, os.environ[env]]
    report = _harness(tmp_path, *args)
    records = report["records"]
    if not only:
        writing = [r for r in records if r["command"] in fh.WRITING]
        assert len(writing) >= draws, f"{len(writing)} draws over the writing commands, expected {draws}"
        assert {r["command"] for r in writing} == set(fh.WRITING)
        assert sum(r["rc"] == 0 for r in writing) >= draws // 10, "too few draws got through: the data is not tiny?"
    if _failures(report):
        pytest.fail(fh.summarize(report), pytrace=False)


def test_the_harness_runs_fixed_command_lines_and_finds_them_clean(tmp_path: Path) -> None:
    """Five command lines that need no data, through the whole harness (fork server, limits, checks)."""
    argvs = [
        ["--help"],
        ["export", "--bogus"],
        ["prepare", "synthetic-rec", "--synthetic-vocab", "5", "--synthetic-sequences", "10", "--out", "out/ds"],
        ["trajectories", "nope", "--max-steps", "1"],
        ["distill", "tiny-rec", "--budget", "x"],
    ]
    report = _harness(tmp_path, "--bare", "--argv-json", json.dumps(argvs), timeout=120)
    assert [r["rc"] for r in report["records"]] == [0, 2, 0, 2, 2], fh.summarize(report)
    assert not _failures(report), fh.summarize(report)


def test_draws_are_seeded_and_cover_every_declared_option() -> None:
    params = fh.introspect()
    first, again, other = fh.Drawer(params, 0), fh.Drawer(params, 0), fh.Drawer(params, 1)
    draws = [first.draw(i) for i in range(1500)]
    assert [d.argv for d in draws[:50]] == [again.draw(i).argv for i in range(50)]  # replayable one by one
    assert [d.argv for d in draws[:50]] != [other.draw(i).argv for i in range(50)]
    assert {d.command for d in draws} == set(fh.WRITING)
    assert {first.draw(fh.READ_ONLY_BASE + i).command for i in range(40)} == set(fh.READ_ONLY)
    for command in fh.WRITING:  # an option added to a command is drawn without touching the harness
        drawn = {name for d in draws if d.command == command for name in d.values}
        assert {p.name for p in params[command]} <= drawn, command


def _outcome(rc: int = 0, stderr: str = "", **kw) -> fh.Outcome:
    return fh.Outcome(rc, "", stderr, 0.1, **kw)


def test_the_checks_catch_each_kind_of_failure(tmp_path: Path) -> None:
    root = tmp_path / "r"
    for d in ("home/datasets/tiny-rec", "inputs", "out", "tmp", "userhome"):
        (root / d).mkdir(parents=True)
    (root / "home/datasets/tiny-rec/manifest.json").write_text('{"name": "tiny-rec"}')
    (root / "inputs/notes.txt").write_text("keep me\n")
    values = {"dataset": "tiny-rec", "out": "out/b.safetensors"}
    draw = fh.Draw(0, 0, "distill", ["distill", "tiny-rec", "--out", "out/b.safetensors"], values)
    scope = fh.declared_outputs(draw, str(root))
    before = fh.snapshot(str(root))

    # a clean run: the bundle, its log, its parent's new directory are all its own
    (root / "out/b.safetensors").write_text("bundle")
    (root / "out/b.log.jsonl").write_text("{}\n")
    assert fh.check(draw, _outcome(), scope, before, fh.snapshot(str(root)), []) == []

    def classes(outcome: fh.Outcome, tmp: list[str] | None = None) -> set[str]:
        return {f.cls for f in fh.check(draw, outcome, scope, before, fh.snapshot(str(root)), tmp or [])}

    assert classes(_outcome(1, "Traceback (most recent call last):\nValueError: x")) == {"traceback", "exit-status"}
    assert classes(_outcome(2, "error: one\nerror: two")) == {"error-line"}
    assert classes(_outcome(2, "warming up\nerror: one")) == set()
    assert classes(_outcome(-9)) == {"exit-status"}
    assert classes(_outcome(0, timed_out=True)) == {"timeout"}
    assert classes(_outcome(0), ["farzi-ranks-abc"]) == {"leftover-temp"}
    (root / "out/.b.safetensors.tmp-1234").write_text("")
    assert classes(_outcome(0)) == {"leftover-temp"}
    (root / "out/.b.safetensors.tmp-1234").unlink()
    (root / "inputs/notes.txt").write_text("changed\n")
    assert classes(_outcome(0)) == {"touched"}
    (root / "inputs/notes.txt").write_text("keep me\n")
    (root / "home/datasets/tiny-rec/manifest.json").unlink()
    assert classes(_outcome(2, "error: x")) == {"touched"}


def test_an_output_that_holds_the_workspace_or_an_input_grants_nothing(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "home/datasets/tiny-rec").mkdir(parents=True)
    (root / "home/datasets/tiny-rec/vocab.json").write_text("[]")
    for out, granted in (
        ("home", False),  # the workspace
        (".", False),  # the current directory
        ("home/datasets", False),  # holds the input
        ("home/datasets/tiny-rec", False),  # the input
        ("home/datasets/tiny-rec/vocab.json", False),  # a file of the input
        ("home/datasets/tiny-rec/new", True),  # a new path inside it: the user asked
        ("out/x", True),
    ):
        draw = fh.Draw(0, 0, "trajectories", [], {"dataset": "tiny-rec", "out": out, "overwrite": "on"})
        scope = fh.declared_outputs(draw, str(root))
        assert bool(scope.granted(fh.snapshot(str(root)))) == granted, out
    plan = fh.Draw(0, 0, "trajectories", [], {"dataset": "tiny-rec", "plan": "on"})
    assert fh.declared_outputs(plan, str(root)).outputs == []  # --plan writes nothing
