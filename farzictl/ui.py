"""Rendering for the CLI: progress bars, tables, JSON, and one-line errors."""

from __future__ import annotations

import contextlib
import functools
import json
import sys
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

from farzi.errors import FarziError
from farzi.progress import ProgressEvent, ProgressFn

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
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@contextlib.contextmanager
def progress_bars(enabled: bool = True) -> Iterator[ProgressFn | None]:
    """A rich progress display (on stderr) driven by library progress events."""
    if not enabled or not sys.stderr.isatty():
        # off a terminal rich would print the bars' last frame on stderr, where
        # scripts expect nothing but an 'error:' line when something fails
        yield None
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

    def on_event(event: ProgressEvent) -> None:
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
