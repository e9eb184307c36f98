"""Progress reporting: the library calls a callback, the CLI draws the bars."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ProgressEvent:
    """One report from long-running work.

    ``task`` names the unit of work (e.g. ``"train run 2"``); ``completed`` out of
    ``total`` units are done (``total`` is None when unknown); ``info`` holds the
    latest figures worth showing (loss, metric, step time).
    """

    task: str
    completed: int
    total: int | None = None
    info: dict[str, Any] = field(default_factory=dict)
    done: bool = False


ProgressFn = Callable[[ProgressEvent], None]


def no_progress(event: ProgressEvent) -> None:
    """The default callback: report nothing."""


def report(
    fn: ProgressFn | None,
    task: str,
    completed: int,
    total: int | None = None,
    done: bool = False,
    **info: Any,
) -> None:
    """Send one event to ``fn`` if there is one."""
    if fn is not None:
        fn(ProgressEvent(task=task, completed=completed, total=total, info=info, done=done))
