"""The text layouts of interaction logs that sequential-recommendation code uses, read as (user, item, time).

``csv`` is a table with named columns (:mod:`farzi.data.interactions`); this module reads the others:

* ``lines``: one user per line, ``user item item ...`` in time order, whitespace-separated integers
  (S3-Rec, ICLRec, DuoRec; Amazon Beauty as they preprocessed it);
* ``pairs``: ``user item`` per line, whitespace-separated integers, in time order (SASRec): a user's
  lines need not be adjacent, their order in the file is the time order;
* ``recbole``: RecBole's atomic ``.inter`` files: tab-separated, a typed header
  (``user_id:token<TAB>item_id:token<TAB>rating:float<TAB>timestamp:float``); the columns are found by
  their names before the colon (``user_id``, ``item_id`` and, when present, ``timestamp``).

Without timestamps the order in the file is the time order: the frame's ``time`` is the position in the
file, and the prepared dataset's ``params.time_order`` says ``"file"``. The result goes through the same
pipeline as a CSV log (:func:`farzi.data.interactions.build_sequences`), so a log in any of these layouts
gives the same prepared dataset as the CSV ``user,item,time`` with ``time`` the position in the file.

A malformed line is refused before anything is built, with one line naming the file, the line number
(1-based, the header included) and the fix. The file is parsed with polars on one string (no Python
object per line or token).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from farzi.data._read import reading
from farzi.data.interactions import ITEM, MISSING_MARKERS, TIME, USER
from farzi.data.text import decode_text
from farzi.data.vocab import PAD
from farzi.errors import ConfigError, DataError

FORMATS = ("csv", "lines", "pairs", "recbole")
_INTEGER = r"^[0-9]+$"
_LINE = "_line"
_LAYOUT = {
    "lines": "`user item item ...` (whitespace-separated integers, one user per line)",
    "pairs": "`user item` (two whitespace-separated integers per line)",
}
_RECBOLE_HEADER = "user_id:token<TAB>item_id:token<TAB>timestamp:float (timestamp optional)"


def resolve_format(path: Path, fmt: str | None) -> str:
    """The layout of ``path``: ``fmt`` checked, or from the file name when empty (``.inter``: recbole, else csv)."""
    if fmt:
        if fmt not in FORMATS:
            raise ConfigError(
                f"--format {fmt!r} is not a log layout",
                f"choose one of: {', '.join(FORMATS)} (or leave it out: recbole for a .inter file, else csv)",
            )
        return fmt
    return "recbole" if Path(path).suffix.lower() == ".inter" else "csv"


def time_order(fmt: str, has_timestamps: bool) -> str:
    """``"timestamps"`` when the log's times order a user's items, ``"file"`` when the file order does."""
    return "timestamps" if fmt == "csv" or has_timestamps else "file"


def read_log(path: Path, fmt: str) -> tuple[pl.LazyFrame, dict[str, str], bool]:
    """``(frame, labels, has_timestamps)``: the log at ``path`` in layout ``fmt`` (not csv) as (user, item, time).

    Ids are text, as written; ``time`` is the position in the file (Int64) or, for a RecBole file with
    a ``timestamp`` column, its value as text (checked to be a number; the pipeline orders it exactly).
    ``labels`` name the columns in the pipeline's messages.
    """
    path = Path(path)
    lines = _lines(path, fmt)
    if fmt == "lines":
        frame, stamped = _parse_lines(path, lines), False
    elif fmt == "pairs":
        frame, stamped = _parse_pairs(path, lines), False
    elif fmt == "recbole":
        frame, stamped = _parse_recbole(path, lines)
    else:
        raise ValueError(f"read_log reads lines, pairs or recbole, not {fmt!r}")
    labels = {
        USER: f"the user ids (--format {fmt})",
        ITEM: f"the item ids (--format {fmt})",
        TIME: "the timestamp column (--format recbole)" if stamped else f"the file order (--format {fmt})",
    }
    return frame.lazy(), labels, stamped


# ---------------------------------------------------------------- reading


def _lines(path: Path, fmt: str) -> pl.DataFrame:
    """The file's lines (``_line``: 1-based number, ``line``: text without ``\\r\\n``), checked as text."""
    with reading(path):
        exists, is_file = path.exists(), path.is_file()
        empty = is_file and path.stat().st_size == 0
    if not exists:
        raise DataError(f"file {path} does not exist", "check the path")
    if not is_file:
        raise DataError(f"{path} is not a file", f"pass a text file in the --format {fmt} layout")
    if empty:
        raise DataError(f"file {path} is empty", "pass a file with interactions in it")
    nul_fix = "pass the log as UTF-8 text, or a parquet/CSV table with --format csv"
    text = decode_text(path, "log", f"a text log (--format {fmt})", nul_fix)
    if "\r" in text and "\n" not in text.rstrip():
        raise DataError(
            f"{path} ends its lines with \\r only (classic Mac line endings): it would be read as one line",
            "convert the line endings to \\n (e.g. tr '\\r' '\\n' < old > new)",
        )
    if text.endswith("\n"):
        text = text[:-1]  # the last line's end, not an empty line after it
    frame = pl.DataFrame({"line": [text]}).select(pl.col("line").str.split("\n")).explode("line")
    return frame.select(pl.col("line").str.strip_suffix("\r")).with_row_index(_LINE, offset=1)


def _first(frame: pl.DataFrame, bad: pl.Expr, *values: str) -> tuple[int, dict] | None:
    """``(count, first row)`` of the rows of ``frame`` where ``bad`` holds (in file order), or None."""
    hits = frame.filter(bad)
    if hits.height == 0:
        return None
    return hits.height, hits.select(_LINE, *values).row(0, named=True)


def _of(count: int) -> str:
    return f" (the first of {count} such lines)" if count > 1 else ""


def _shown(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:37] + "...")


# ---------------------------------------------------------------- whitespace layouts (lines, pairs)


def _fields(lines: pl.DataFrame) -> pl.DataFrame:
    """Whitespace-separated fields of each line (``fields``; ``[""]`` for a blank line)."""
    return lines.with_columns(
        pl.col("line").str.replace_all(r"\s+", " ").str.strip_chars(" ").str.split(" ").alias("fields")
    )


def _refuse_blank(path: Path, lines: pl.DataFrame, fmt: str) -> None:
    hit = _first(lines, pl.col("fields").list.first() == "")
    if hit:
        count, row = hit
        raise DataError(
            f"{path} line {row[_LINE]} is blank{_of(count)}: --format {fmt} needs {_LAYOUT[fmt]} on every line",
            "remove the blank line(s)",
        )


def _refuse_non_integers(path: Path, tokens: pl.DataFrame, fmt: str, what: str) -> None:
    """``tokens`` (``_line``, ``token``, ``role``) in file order: every one must be a non-negative integer."""
    bad = pl.col("token").is_not_null() & ~pl.col("token").str.contains(_INTEGER)
    hit = _first(tokens, bad, "token", "role")
    if not hit:
        return
    count, row = hit
    token = row["token"]
    hint = _table_hint(token)
    raise DataError(
        f"{path} line {row[_LINE]}: the {row['role']} id {_shown(token)} is not an integer{_of(count)}: "
        f"--format {fmt} reads {what}",
        "write the ids as integers (e.g. 17), or pass the file's own --format (csv or recbole for other ids)" + hint,
    )


def _table_hint(text: str) -> str:
    """A fix's tail for a field that holds a table's separator."""
    for sep, name in ((",", "comma"), (";", "semicolon"), ("|", "pipe")):
        if sep in text:
            return f"; it holds a {name}: if the file is a table with a header, pass --format csv"
    return ""


def _parse_lines(path: Path, lines: pl.DataFrame) -> pl.DataFrame:
    lines = _fields(lines)
    _refuse_blank(path, lines, "lines")
    users = lines.select(_LINE, pl.col("fields").list.first().alias(USER))
    per_item = lines.select(
        _LINE, pl.col("fields").list.first().alias(USER), pl.col("fields").list.slice(1).alias(ITEM)
    ).explode(ITEM)
    tokens = pl.concat(
        [
            users.select(_LINE, pl.col(USER).alias("token"), pl.lit("user").alias("role"), pl.lit(0).alias("_k")),
            per_item.select(_LINE, pl.col(ITEM).alias("token"), pl.lit("item").alias("role"), pl.lit(1).alias("_k")),
        ]
    ).sort([_LINE, "_k"], maintain_order=True)
    _refuse_non_integers(path, tokens, "lines", _LAYOUT["lines"])
    hit = _first(lines, pl.col("fields").list.len() == 1, "fields")
    if hit:
        count, row = hit
        raise DataError(
            f"{path} line {row[_LINE]} holds the user {_shown(row['fields'][0])} and no items{_of(count)}: "
            f"--format lines needs {_LAYOUT['lines']}",
            "add the user's items in time order, or remove the line",
        )
    repeat = _first(users, ~pl.col(USER).is_first_distinct(), USER)
    if repeat:
        count, row = repeat
        earlier = users.filter(pl.col(USER) == row[USER]).item(0, _LINE)
        raise DataError(
            f"{path} line {row[_LINE]} repeats the user {_shown(row[USER])} of line {earlier}{_of(count)}: "
            "--format lines holds each user's whole sequence on one line",
            "merge the user's lines into one (items in time order), or pass --format pairs if the file "
            "holds `user item` pairs",
        )
    return per_item.with_row_index(TIME).select(USER, ITEM, pl.col(TIME).cast(pl.Int64))


def _parse_pairs(path: Path, lines: pl.DataFrame) -> pl.DataFrame:
    lines = _fields(lines)
    _refuse_blank(path, lines, "pairs")
    hit = _first(lines, pl.col("fields").list.len() != 2, "fields")
    if hit:
        count, row = hit
        n = len(row["fields"])
        also = "; if each line holds a user's whole sequence, pass --format lines" if n > 2 else ""
        also += _table_hint(row["fields"][0]) if n == 1 else ""
        raise DataError(
            f"{path} line {row[_LINE]} has {n} field{'' if n == 1 else 's'}{_of(count)}: "
            f"--format pairs needs {_LAYOUT['pairs']}",
            "fix the line" + also,
        )
    pairs = lines.select(_LINE, pl.col("fields").list.get(0).alias(USER), pl.col("fields").list.get(1).alias(ITEM))
    tokens = pl.concat(
        [
            pairs.select(_LINE, pl.col(USER).alias("token"), pl.lit("user").alias("role"), pl.lit(0).alias("_k")),
            pairs.select(_LINE, pl.col(ITEM).alias("token"), pl.lit("item").alias("role"), pl.lit(1).alias("_k")),
        ]
    ).sort([_LINE, "_k"], maintain_order=True)
    _refuse_non_integers(path, tokens, "pairs", _LAYOUT["pairs"])
    return pairs.select(USER, ITEM, pl.col(_LINE).cast(pl.Int64).alias(TIME))


# ---------------------------------------------------------------- RecBole atomic files


def _parse_recbole(path: Path, lines: pl.DataFrame) -> tuple[pl.DataFrame, bool]:
    header = lines.item(0, "line").split("\t")
    names = [field.split(":", 1)[0].strip() for field in header]
    shown = ", ".join(_shown(f) for f in header[:12]) + (", ..." if len(header) > 12 else "")
    seen: set[str] = set()
    for name in names:
        if name in seen and name in ("user_id", "item_id", "timestamp"):
            raise DataError(
                f"{path} line 1 (the header) names the column {name!r} twice: which one is meant is ambiguous",
                "rename one of them in the header",
            )
        seen.add(name)
    for need in ("user_id", "item_id"):
        if need not in names:
            raise DataError(
                f"{path} line 1 (the header) has no {need} column (it has: {shown}): "
                "--format recbole reads RecBole's atomic .inter files",
                f"start the file with RecBole's typed header, tab-separated, e.g. {_RECBOLE_HEADER}",
            )
    width = len(header)
    body = lines.slice(1).with_columns(pl.col("line").str.split("\t").alias("fields"))
    if body.height == 0:
        raise DataError(f"{path} holds a header and no interactions", "pass a file with interactions in it")
    hit = _first(body, pl.col("fields").list.len() != width, "line", "fields")
    if hit:
        count, row = hit
        n = 0 if not row["line"].strip() else len(row["fields"])
        what = "is blank" if n == 0 else f"has {n} tab-separated fields, the header {width}"
        raise DataError(
            f"{path} line {row[_LINE]} {what}{_of(count)}: every line of a RecBole .inter file has the header's fields",
            "fix or remove the line (fields are separated by tabs, one per header column)",
        )
    stamped = "timestamp" in names
    cols = [
        pl.col("fields").list.get(names.index(n)).str.strip_chars().alias(c)
        for n, c in (("user_id", USER), ("item_id", ITEM))
    ]
    if stamped:
        cols.append(pl.col("fields").list.get(names.index("timestamp")).str.strip_chars().alias(TIME))
    frame = body.select(_LINE, *cols)
    for key, name, merged in ((USER, "user_id", "merged into one user"), (ITEM, "item_id", "counted as one item")):
        hit = _first(frame, pl.col(key).str.to_lowercase().is_in(MISSING_MARKERS), key)
        if hit:
            count, row = hit
            value = "an empty value" if not row[key] else _shown(row[key])
            raise DataError(
                f"{path} line {row[_LINE]} has no {name} ({value}){_of(count)}",
                f"fill in or remove the line(s): lines without an id would all be {merged}",
            )
    hit = _first(frame, pl.col(ITEM) == PAD, ITEM)
    if hit:
        count, row = hit
        raise DataError(
            f"{path} line {row[_LINE]} has the item_id {PAD!r}, reserved for padding{_of(count)}",
            f"rename that item in the log (any id but {PAD!r})",
        )
    if stamped:
        number = pl.col(TIME).cast(pl.Float64, strict=False).is_finite().fill_null(False)
        hit = _first(frame, ~number, TIME)
        if hit:
            count, row = hit
            value = "an empty value" if not row[TIME] else _shown(row[TIME])
            raise DataError(
                f"{path} line {row[_LINE]}: the timestamp {value} is not a number{_of(count)}",
                "fix or remove the line: a RecBole timestamp is a finite number (e.g. Unix seconds)",
            )
        return frame.select(USER, ITEM, TIME), True
    return frame.select(USER, ITEM, pl.col(_LINE).cast(pl.Int64).alias(TIME)), False
