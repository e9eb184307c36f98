"""Options every command shares that act on the whole invocation: ``--threads``, ``--quiet``,
``--preset`` and ``--plan``, with the state they set (reset by :func:`farzictl.app.main` per call).

``--threads N`` sets torch's intra-op threads while the options are parsed, before any work (at most
the cores this process may use, :func:`farzi.limits.usable_cores`);
the library records ``torch.get_num_threads()`` in what it writes. ``--quiet`` silences progress
and the cost projection on stderr (:func:`farzictl.ui.progress_bars` reads :data:`STATE`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Annotated

import torch
import typer

from farzi.limits import usable_cores


@dataclass
class State:
    quiet: bool = False


STATE = State()


def reset() -> None:
    STATE.quiet = False


def _set_threads(value: int | None) -> int | None:
    """``--threads``: at most the cores this process may use (more only oversubscribe them, and far
    more make the thread pools fail: a panic, then a crash)."""
    if value is not None:
        most = usable_cores()
        if value > most:
            raise typer.BadParameter(
                f"{value} is more than the {most} cores this process may use; pass at most --threads {most}"
            )
        torch.set_num_threads(value)
    return value


def _set_quiet(value: bool) -> bool:
    STATE.quiet = bool(value)
    return value


class PresetName(str, Enum):
    cpu = "cpu"
    paper = "paper"


class NegativeSampling(str, Enum):  # farzi.evaluate.NEGATIVE_SAMPLING
    uniform = "uniform"
    popularity = "popularity"


Threads = Annotated[
    int | None,
    typer.Option(
        min=1,
        callback=_set_threads,
        help="torch intra-op threads, at most the cores this process may use (default: torch's own choice); "
        "set it on a shared machine.",
        show_default=False,
    ),
]
Quiet = Annotated[
    bool, typer.Option("--quiet", "-q", callback=_set_quiet, help="No progress and no cost projection on stderr.")
]
Plan = Annotated[
    bool,
    typer.Option(
        "--plan", help="Time a few real steps, print the projected wall time and peak memory, exit (writes nothing)."
    ),
]
Preset = Annotated[
    PresetName | None,
    typer.Option(
        help="Settings of a benchmark protocol: cpu (ml100k-cpu / ptb-cpu; beauty-cpu on amazon-beauty) or paper "
        "(ml100k-paper, a GPU run); options given on the command line win.",
        show_default=False,
    ),
]


def given(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` was set on the command line or by its environment variable."""
    source = ctx.get_parameter_source(name)  # a ParameterSource of the click typer uses (it vendors one)
    return source is not None and getattr(source, "name", "") not in ("DEFAULT", "DEFAULT_MAP")
