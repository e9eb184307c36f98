"""Run ``farzictl`` in-process, as a user's shell would see it: the one shared CLI test helper.

``farzictl(*args, home=HOME)`` calls the real entry point (:func:`farzictl.app.main`, which turns
usage errors into one line and exit 2) with captured stdout / stderr, under Typer's ``CliRunner``
isolation. An exception that escapes ``main`` is a traceback a user would see: it is kept in
``Outcome.exception`` (and :meth:`Outcome.one_error_line` fails on it), never swallowed.

Tests that need a real process (signals, concurrency, the console script) use
:func:`farzictl_process` (run to the end) or :func:`farzictl_start` (a running child) instead;
all share the argument handling.
"""

from __future__ import annotations

import os
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

from farzictl.app import main

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    exception: BaseException | None = None
    traceback: str = ""

    def one_error_line(self) -> str:
        """Assert the failure a script expects (exit 2, one ``error:`` line, no traceback); return the line."""
        assert self.exception is None, f"traceback instead of an error line:\n{self.traceback}"
        assert self.code == 2, f"exit {self.code}, expected 2; stderr: {self.stderr!r}"
        lines = [x for x in self.stderr.splitlines() if x.strip()]
        assert len(lines) == 1, f"expected one stderr line, got {lines!r}"
        assert lines[0].startswith("error: "), lines[0]
        assert "Traceback" not in self.stderr + self.stdout
        return lines[0]

    def ok(self) -> Outcome:
        """Assert success; return self."""
        assert self.exception is None, f"traceback:\n{self.traceback}"
        assert self.code == 0, f"exit {self.code}; stderr: {self.stderr!r}"
        return self


def _argv(args: tuple[str | os.PathLike, ...], home: Path | None) -> list[str]:
    argv = [str(a) for a in args]
    if home is not None:
        argv += ["--home", str(home)]
    return argv


def farzictl(*args: str | os.PathLike, home: Path | None = None, env: dict[str, str] | None = None) -> Outcome:
    """``farzictl ARGS [--home HOME]`` in this process; FARZI_HOME is unset unless ``env`` sets it.

    Ranks that ``--nproc`` spawns get one thread each, as this process has (conftest), whatever
    OMP_NUM_THREADS the shell set: bitwise comparisons with an in-process run depend on it."""
    runner = CliRunner()
    overrides: dict[str, str | None] = {
        "FARZI_HOME": None,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        **(env or {}),
    }
    exception, tb, code = None, "", 0
    with runner.isolation(env=overrides) as streams:
        try:
            main(_argv(args, home))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException as exc:  # noqa: BLE001 - a traceback is what the test must see
            exception, tb, code = exc, traceback.format_exc(), 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        out = streams[0].getvalue().decode("utf-8", "replace")
        err = streams[1].getvalue().decode("utf-8", "replace")
    return Outcome(code, out, err, exception, tb)


def farzictl_process(
    *args: str | os.PathLike, home: Path | None = None, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``python -m farzictl ARGS [--home HOME]`` in a child process (one intra-op thread)."""
    return subprocess.run(
        [sys.executable, "-m", "farzictl", *_argv(args, home)],
        cwd=REPO,
        env=_child_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def farzictl_start(
    *args: str | os.PathLike, home: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """Start ``python -m farzictl ARGS [--home HOME]`` and return at once (to signal or race it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "farzictl", *_argv(args, home)],
        cwd=REPO,
        env=_child_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _child_env(env: dict[str, str] | None) -> dict[str, str]:
    child_env = {k: v for k, v in os.environ.items() if k != "FARZI_HOME"}
    child_env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **(env or {}))
    return child_env
