"""Rendering for the CLI: progress bars, tables, JSON, and one-line errors."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from farzi._io import os_error
from farzi.errors import FarziError
from farzi.progress import ProgressEvent, ProgressFn
from farzictl import session

stdout = Console(highlight=False, soft_wrap=True)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one error line to stderr and return the exit to raise."""
    line = " ".join(str(message).split())
    print(f"error: {line}", file=sys.stderr)
    return typer.Exit(code)


def handle_errors(fn: F) -> F:
    """Turn library errors into one stderr line and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FarziError as exc:
            raise fail(exc.one_line()) from None
        except OSError as exc:  # the file system's answer about a path the user gave (too long, ...)
            raise fail(os_error(exc).one_line()) from None
        except (MemoryError, RuntimeError) as exc:
            if not out_of_memory(exc):
                raise
            raise fail(
                "out of memory: the run asked for more memory than this machine could give "
                f"({_allocation(exc)}); lower the sizes (--batch-size, --budget, --latent-dim, --real-batch, "
                "--d-model, --max-len) or free memory"
            ) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation that failed (Python's, torch's CPU allocator's or CUDA's)."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc)
    return "can't allocate memory" in text or "not enough memory" in text or "out of memory" in text.lower()


def _allocation(exc: BaseException) -> str:
    found = re.search(r"allocate (\d+) bytes", str(exc))
    return f"{int(found.group(1)) / 2**30:.1f} GiB at once" if found else type(exc).__name__


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


PROGRESS_ENV = "FARZI_PROGRESS_SECONDS"  # seconds between plain progress lines (default 30)
PROGRESS_SECONDS = 30.0


def progress_interval() -> float:
    """Seconds between plain progress lines: ``FARZI_PROGRESS_SECONDS``, else 30."""
    raw = os.environ.get(PROGRESS_ENV, "").strip()
    if not raw:
        return PROGRESS_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise fail(f"{PROGRESS_ENV}={raw!r:.20} is not a number of seconds; set e.g. {PROGRESS_ENV}=30 or unset it")
    return value


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class ProgressLines:
    """Progress for logs: one plain stderr line about every ``interval`` seconds (stage, step /
    total, rate, ETA, the latest figures), and a last line for a stage that was shown once done."""

    def __init__(self, interval: float, preface: str | None = None) -> None:
        self.interval = interval
        self.preface = preface  # printed at the first event: the work has started
        self.start = self.last = time.monotonic()
        self.first: dict[str, tuple[float, int]] = {}
        self.shown: set[str] = set()

    def __call__(self, event: ProgressEvent) -> None:
        now = time.monotonic()
        if self.preface:
            print(self.preface, file=sys.stderr, flush=True)
            self.preface = None
        self.first.setdefault(event.task, (now, event.completed))
        due = event.task in self.shown if event.done else now - self.last >= self.interval
        if not due:
            return
        self.last = now
        self.shown.add(event.task)
        print(self.line(event, now), file=sys.stderr, flush=True)

    def line(self, event: ProgressEvent, now: float) -> str:
        t0, c0 = self.first[event.task]
        parts = [f"[{now - self.start:.1f}s] {event.task}:"]
        parts.append(f"{event.completed}/{event.total}" if event.total is not None else f"{event.completed}")
        rate = (event.completed - c0) / (now - t0) if now > t0 and event.completed > c0 else 0.0
        if event.done:
            parts.append("done")
        elif rate > 0:
            parts.append(f"{rate:.3g}/s" if rate >= 1 else f"{1 / rate:.3g}s each")
            if event.total is not None:
                parts.append(f"ETA {_duration(max(0, event.total - event.completed) / rate)}")
        parts += [f"{k}={_fmt(v)}" for k, v in event.info.items()]
        return " ".join(parts)


@contextlib.contextmanager
def progress_bars(enabled: bool = True, preface: str | None = None) -> Iterator[ProgressFn | None]:
    """Progress on stderr driven by library progress events: a live rich display on a terminal;
    plain lines (:class:`ProgressLines`) when stderr is not a terminal or ``enabled`` is False
    (``--json``); nothing with ``--quiet``. ``preface`` (the cost projection) is printed at the
    first event, once the work has started: a command refused before that prints its error alone."""
    if session.STATE.quiet:
        yield None
        return
    if not enabled or not sys.stderr.isatty():
        # off a terminal rich would print the bars' last frame on stderr: plain lines instead,
        # none before the first interval has passed (a short run leaves stderr empty)
        yield ProgressLines(progress_interval(), preface)
        return
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=stderr,
        transient=False,
    )
    tasks: dict[str, TaskID] = {}

    pending = [preface] if preface else []

    def on_event(event: ProgressEvent) -> None:
        while pending:
            progress.console.print(pending.pop(), markup=False, highlight=False)
        info = "  ".join(f"{k}={_fmt(v)}" for k, v in event.info.items())
        if event.task not in tasks:
            tasks[event.task] = progress.add_task(event.task, total=event.total, info=info)
        tid = tasks[event.task]
        progress.update(tid, completed=event.completed, total=event.total, info=info)
        if event.done:
            total = event.total if event.total is not None else event.completed
            progress.update(tid, completed=total, total=total)

    with progress:
        try:
            yield on_event
        except BaseException:
            progress.live.transient = True  # clear the bars: the error line stands alone
            raise


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def plan_text(plan: dict[str, Any]) -> str:
    """A projection (``farzi.plan.Plan.to_dict()``) as a few plain lines."""
    lines = [
        f"plan: {plan['command']} will take about {_duration(plan['seconds'])} on {plan['threads']} thread(s) "
        f"({plan['device']}), peak memory about {_bytes(plan['peak_memory_bytes'])} "
        f"(from {plan['probe_seconds']:.1f}s of timed steps)"
    ]
    for st in plan["stages"]:
        if st["count"]:
            each = f"{_fmt(st['seconds_each'])}s per {st['unit']}"
            lines.append(f"  {st['name']}: {st['count']} x {each} = {_duration(st['seconds'])}")
    lines += [f"  note: {n}" for n in plan["notes"]]
    if plan["long"]:
        hints = []
        for lv in plan["levers"]:
            if lv["suggested"] is not None:
                hints.append(f"{lv['flag']} {lv['suggested']} (now {lv['value']})")
            else:
                hints.append(f"{lv['flag']} (now {lv['value']}; {lv['effect']})")
        lines.append(f"  long (over {_duration(plan['long_seconds'])}): bring it down with " + ", ".join(hints))
    return "\n".join(lines)


def announce_plan(plan: Any, only: bool, json_out: bool) -> str | None:
    """``--plan``: print the projection on stdout (JSON with ``--json``) and exit 0. Otherwise the
    text to show on stderr when the work starts (None with ``--json``, where it is a field, or ``--quiet``)."""
    info = plan.to_dict()
    if only:
        if json_out:
            print_json(info)
        else:
            print(plan_text(info), flush=True)
        raise typer.Exit(0)
    return None if json_out or session.STATE.quiet else plan_text(info)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def kv_table(title: str, rows: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("key", style="bold")
    table.add_column("value")
    for k, v in rows.items():
        table.add_row(str(k), _fmt(v))
    return table


def grid(title: str, columns: list[str], rows: list[list[Any]], caption: str | None = None) -> Table:
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*[_fmt(v) for v in row])
    return table
