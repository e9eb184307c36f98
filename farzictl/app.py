"""farzictl: distill autoregressive datasets into Farzi Data.

Every command takes ``--home`` (or ``FARZI_HOME``) for the workspace, ``--seed``
for reproducibility and ``--json`` for scripts. Bad input prints one line on
stderr and exits with status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from farzi.data.prepare import SOURCES, PrepareOptions, prepare
from farzictl import ui

app = typer.Typer(
    name="farzictl",
    help="Distill autoregressive datasets (text corpora, interaction logs) into Farzi Data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Home = Annotated[
    Path | None,
    typer.Option("--home", envvar="FARZI_HOME", help="Workspace directory (default ~/.farzi).", show_default=False),
]
Seed = Annotated[int, typer.Option("--seed", help="Random seed; same seed, same result on CPU.")]
Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]


@app.command("prepare")
@ui.handle_errors
def prepare_cmd(
    name: Annotated[str, typer.Argument(help=f"Dataset: {', '.join(SOURCES)}.", show_default=False)],
    source: Annotated[Path | None, typer.Option(help="Directory with the dataset's files (no download).")] = None,
    train: Annotated[Path | None, typer.Option(help="text: training corpus, one sentence per line.")] = None,
    valid: Annotated[Path | None, typer.Option(help="text: validation corpus (default: 10% of --train).")] = None,
    test: Annotated[Path | None, typer.Option(help="text: test corpus (default: 10% of --train).")] = None,
    path: Annotated[Path | None, typer.Option(help="interactions: CSV/TSV/parquet log.")] = None,
    user_col: Annotated[str, typer.Option(help="interactions: user column.")] = "user",
    item_col: Annotated[str, typer.Option(help="interactions: item column.")] = "item",
    time_col: Annotated[str, typer.Option(help="interactions: time column.")] = "time",
    separator: Annotated[str | None, typer.Option(help="interactions: field separator (default from the file name).")] = None,
    vocab_size: Annotated[int, typer.Option(help="LM: keep this many most frequent training words.")] = 2000,
    min_length: Annotated[int, typer.Option(help="Recommendation: drop users with fewer interactions.")] = 2,
    synthetic_vocab: Annotated[int | None, typer.Option(help="synthetic-*: number of words/items.")] = None,
    synthetic_sequences: Annotated[int | None, typer.Option(help="synthetic-*: number of training sequences/users.")] = None,
    mirror: Annotated[str | None, typer.Option(help="Download from this URL (base URL for ptb) instead.")] = None,
    as_name: Annotated[str | None, typer.Option("--name", help="Name in the workspace (default: the dataset's).")] = None,
    out: Annotated[Path | None, typer.Option(help="Write here instead of HOME/datasets/NAME.")] = None,
    seed: Seed = 0,
    home: Home = None,
    json: Json = False,
) -> None:
    """Download or read a dataset and write it in farzi's prepared format."""
    opts = PrepareOptions(
        source=source, train=train, valid=valid, test=test, path=path,
        user_col=user_col, item_col=item_col, time_col=time_col, separator=separator,
        vocab_size=vocab_size, min_length=min_length, seed=seed, mirror=mirror,
        synthetic_vocab=synthetic_vocab, synthetic_sequences=synthetic_sequences,
    )
    with ui.progress_bars(not json) as progress:
        ds = prepare(name, opts, name=as_name, home=home, out=out, progress=progress)
    stats = ds.statistics()
    if json:
        ui.print_json({"name": ds.name, "task": ds.task, "path": str(ds.path),
                       "fingerprint": ds.fingerprint(), "statistics": stats, "extra": ds.extra})
        return
    rows = {k: v for k, v in stats.items() if k != "splits"}
    for split, s in stats["splits"].items():
        rows[f"{split} sequences / tokens"] = f"{s['sequences']} / {s['tokens']}"
    ui.stdout.print(ui.kv_table(f"{ds.name} ({ds.task}) -> {ds.path}", rows))


def _not_yet(command: str) -> None:
    raise ui.fail(f"'{command}' is not available yet in this version of farzictl")


@app.command("trajectories")
def trajectories_cmd() -> None:
    """Train R runs of a model on the real data and keep checkpoints (Omega)."""
    _not_yet("trajectories")


@app.command("distill")
def distill_cmd() -> None:
    """Distill a prepared dataset into Farzi Data."""
    _not_yet("distill")


@app.command("inspect")
def inspect_cmd() -> None:
    """Show and validate a Farzi Data bundle."""
    _not_yet("inspect")


@app.command("train-student")
def train_student_cmd() -> None:
    """Train a model from scratch on full data, a sample, or Farzi Data."""
    _not_yet("train-student")


@app.command("eval")
def eval_cmd() -> None:
    """Evaluate a trained model on a split."""
    _not_yet("eval")


@app.command("demo")
def demo_cmd() -> None:
    """Run the whole pipeline on the embedded synthetic dataset."""
    _not_yet("demo")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app; usage errors become one line and exit 2."""
    try:
        code = app(args=argv, prog_name="farzictl", standalone_mode=False)
    except Exception as exc:  # noqa: BLE001 - usage errors from typer's click
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            ctx = getattr(exc, "ctx", None)
            where = f"run '{ctx.command_path} --help'" if ctx is not None else "run 'farzictl --help'"
            msg = " ".join(str(exc.format_message()).split())
            print(f"error: {msg}; {where}", file=sys.stderr)
            sys.exit(2)
        raise
    sys.exit(code if isinstance(code, int) else 0)
