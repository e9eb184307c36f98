"""Interaction logs -> per-user item sequences (sequential recommendation).

Preprocessing follows the Farzi paper: drop users with fewer than two
interactions, order each user's items by time (ties keep file order), split the
users 80/10/10 % into train/validation/test with a seeded permutation (strong
generalization). All heavy lifting is polars, lazily, so a 100M-row log never
becomes Python objects.

Real logs are dirty, and a value that is silently coerced changes the data: a
``NaN`` user id would merge every such row into one user, a ``nan`` time would sort
last and become a test target. So before anything is built every user id, item id
and time is checked (:func:`_validate`), and a bad value is refused with one line
that names the column, how many rows are affected, the first of them and the fix.
CSV/TSV columns are read as text (no type guessing from the first rows): ids are
labels, taken as written with surrounding whitespace removed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from farzi.data._read import check_readable, reading
from farzi.data.sequences import Sequences
from farzi.data.vocab import PAD, Vocabulary, build_item_vocab
from farzi.errors import ConfigError, DataError

USER, ITEM, TIME = "user", "item", "time"
_ROW = "_row"

# What a writer puts where a value is missing (pandas, R, SQL dumps, JavaScript): never an id or a time.
MISSING_MARKERS = ("", "nan", "-nan", "+nan", "null", "none", "na", "n/a", "<na>", "nat", "#n/a", "nil", "undefined")
# Date-times a time column may hold (ISO 8601 and the unambiguous slash form); a trailing "Z" means UTC,
# and so do date-times without an offset. Ambiguous forms (12/31/2020 vs 31/12/2020) are refused, not guessed.
DATE_FORMATS = (
    "%Y-%m-%d",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S%z",
    "%Y-%m-%d %H:%M:%S%.f%z",
    "%Y-%m-%dT%H:%M:%S%z",
    "%Y-%m-%dT%H:%M:%S%.f%z",
    "%Y-%m-%dT%H:%M:%SZ",
    "%Y-%m-%dT%H:%M:%S%.fZ",
    "%Y/%m/%d",
    "%Y/%m/%d %H:%M:%S",
)
# An integer as written (the sign optional): what Int64 cannot hold is ordered exactly by :func:`_integer_key`.
_INTEGER = r"^[+-]?[0-9]+$"
_SEPARATOR_NAMES = {"\\t": "\t", "tab": "\t", "TAB": "\t"}
_SEPARATOR_SHOWN = {"\t": "'\\t'", ",": "','", ";": "';'", "|": "'|'"}


def polars_problem(exc: Exception) -> str:
    """First meaningful line of a polars error, for a one-line message."""
    for line in str(exc).splitlines():
        line = line.strip()
        if line:
            return line[:300]
    return exc.__class__.__name__


def _is_parquet(path: Path) -> bool:
    return "".join(path.suffixes[-2:]).lower().endswith(".parquet")


def resolve_separator(path: Path, separator: str | None) -> str | None:
    """The field separator for ``path``: ``separator`` checked (``\\t`` and ``tab`` mean a tab), or the
    default from the file name (tab for .tsv/.tab/.data, else comma); None for parquet."""
    path = Path(path)
    if _is_parquet(path):
        return None
    if separator is None:
        suffix = "".join(path.suffixes[-2:]).lower()
        return "\t" if suffix.endswith((".tsv", ".tab", ".data")) else ","
    sep = _SEPARATOR_NAMES.get(separator, separator)
    if len(sep) != 1 or len(sep.encode("utf-8")) != 1 or sep in '"\r\n':
        raise ConfigError(
            f"--separator {separator!r} is not a single one-byte character",
            "pass one character, e.g. --separator ';' (or --separator '\\t' for tabs)",
        )
    return sep


def scan_table(
    path: Path,
    separator: str | None = None,
    has_header: bool = True,
    columns: list[str] | None = None,
    schema: dict[str, pl.DataType] | None = None,
    encoding: str = "utf8",
) -> pl.LazyFrame:
    """Lazily open a CSV/TSV/parquet table; the format comes from the file name.

    Without a ``schema`` every CSV column is read as text: guessing types from the
    first rows turns ``007`` into ``7``, a ``NaN`` id into a float column and a late
    ``u101`` into a parse error.
    """
    path = Path(path)
    with reading(path):  # stat in a directory one may not enter: permission denied, not "does not exist"
        exists, is_file = path.exists(), path.is_file()
        empty = is_file and path.stat().st_size == 0
    if not exists:
        raise DataError(f"file {path} does not exist", "check the path")
    if not is_file:
        raise DataError(f"{path} is not a file", "pass a CSV, TSV or parquet file")
    if empty:
        raise DataError(f"file {path} is empty", "pass a file with interactions in it")
    check_readable(path)
    sep = resolve_separator(path, separator)
    if sep is None:
        return pl.scan_parquet(path)
    kwargs: dict = {"separator": sep, "has_header": has_header}
    if schema is not None:
        kwargs["schema"] = schema
    else:
        kwargs["infer_schema"] = False
        if columns is not None:
            kwargs["new_columns"] = columns
    if encoding != "utf8":
        kwargs["encoding"] = "utf8-lossy"
    return pl.scan_csv(path, **kwargs)


def select_columns(
    lf: pl.LazyFrame, path: Path, user: str, item: str, time: str, separator: str | None = None
) -> pl.LazyFrame:
    """Pick the user, item and time columns (renamed to ``user``, ``item``, ``time``).

    ``separator`` is the one the table was read with (default: from the file name);
    a header that came out as one column holding another separator is a wrong
    ``--separator``, not a wrong column name.
    """
    path = Path(path)
    try:
        names = lf.collect_schema().names()
    except pl.exceptions.PolarsError as exc:
        raise DataError(f"cannot read {path}: {polars_problem(exc)}", "check the file's format") from exc
    used = resolve_separator(path, separator)
    if used is not None and any("_duplicated_" in name for name in names):
        _refuse_duplicate_header(path, used)
    for flag, col in (("--user-col", user), ("--item-col", item), ("--time-col", time)):
        if col in names:
            continue
        if used is not None and len(names) == 1:
            for sep, shown in _SEPARATOR_SHOWN.items():
                if sep != used and sep in names[0]:
                    raise DataError(
                        f"{path}'s header {names[0]!r} came out as one column when split on "
                        f"{_SEPARATOR_SHOWN.get(used, repr(used))}: the separator is probably {shown}",
                        f"pass --separator {shown}",
                    )
        raise DataError(
            f"{path} has no column {col!r} (it has: {', '.join(names[:20])})",
            f"pass the right name with {flag}",
        )
    return lf.select(pl.col(user).alias(USER), pl.col(item).alias(ITEM), pl.col(time).alias(TIME))


def _refuse_duplicate_header(path: Path, separator: str) -> None:
    """Refuse a header that names a column twice (polars would rename the second ``item`` to
    ``item_duplicated_0`` and carry on); the header is read as a data row to see the names as written."""
    try:
        header = pl.read_csv(
            path, separator=separator, has_header=False, n_rows=1, infer_schema=False, encoding="utf8-lossy"
        ).row(0)
    except pl.exceptions.PolarsError:
        return  # not this check's business: reading the table reports it
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise DataError(
                f"{path}'s header names the column {name!r} twice: which one is meant is ambiguous",
                "rename one of them in the header (each column needs its own name)",
            )
        seen.add(name)


def column_labels(user: str, item: str, time: str) -> dict[str, str]:
    """How messages name the user's columns: ``column 'who' (--user-col)``."""
    return {
        USER: f"column {user!r} (--user-col)",
        ITEM: f"column {item!r} (--item-col)",
        TIME: f"column {time!r} (--time-col)",
    }


_DEFAULT_LABELS = {USER: "the user column", ITEM: "the item column", TIME: "the time column"}
_FLAGS = {USER: "--user-col", ITEM: "--item-col", TIME: "--time-col"}


def _is_text(dtype: pl.DataType) -> bool:
    return dtype == pl.Utf8 or isinstance(dtype, pl.Categorical | pl.Enum)


def _text(col: str) -> pl.Expr:
    return pl.col(col).cast(pl.Utf8).str.strip_chars()


def _wrong_type(label: str, desc: str, key: str, dtype: pl.DataType, holds: str) -> DataError:
    flag = _FLAGS[key]
    fix = f"pass the column with the {holds} with {flag}" if desc.endswith(f"({flag})") else "check the file's columns"
    if dtype == pl.Boolean:
        return DataError(f"{label}: {desc} holds booleans (true/false), not {holds}", fix)
    return DataError(f"{label}: {desc} has type {dtype}, which cannot hold {holds}", fix)


def _id_column(key: str, dtype: pl.DataType, label: str, desc: str) -> tuple[pl.Expr, pl.Expr]:
    """(row is bad, the id as text) for a user or item column of ``dtype``."""
    col = pl.col(key)
    if _is_text(dtype):
        text = _text(key)
        return (text.is_null() | text.str.to_lowercase().is_in(MISSING_MARKERS)).fill_null(True), text
    if dtype.is_integer():
        return col.is_null(), col.cast(pl.Utf8)
    if dtype.is_float():  # e.g. pandas turns an integer id column with a gap into floats with NaN
        return (col.is_null() | ~col.is_finite()).fill_null(True), col.cast(pl.Utf8)
    if dtype == pl.Null:
        return pl.lit(True), col.cast(pl.Utf8)
    raise _wrong_type(label, desc, key, dtype, f"{key} ids")


def _parsed_dates(text: pl.Expr) -> dict[str, pl.Expr]:
    """Per format of :data:`DATE_FORMATS`: microseconds since 1970-01-01 UTC, or null where it does not parse."""
    return {f: text.str.to_datetime(f, strict=False, time_unit="us").dt.epoch("us") for f in DATE_FORMATS}


def _time_checks(dtype: pl.DataType, label: str, desc: str) -> dict[str, pl.Expr]:
    """Per-row flags for the time column of ``dtype``: ``time`` = the value is not a time.

    For a text column the cheap pass only tells numbers from the rest (``time_other``);
    which of the rest are dates is decided on those rows alone (date parsing is slow).
    """
    col = pl.col(TIME)
    if _is_text(dtype):
        text = _text(TIME)
        is_number = text.cast(pl.Float64, strict=False).is_finite().fill_null(False)
        return {
            "time_number": is_number,
            "time_other": ~is_number,
            "time_integer": text.cast(pl.Int64, strict=False).is_not_null(),
            "time_wide": text.str.contains(_INTEGER) & text.cast(pl.Int64, strict=False).is_null(),
        }
    if dtype.is_integer() or dtype == pl.Date or isinstance(dtype, pl.Datetime | pl.Duration):
        return {"time": col.is_null()}
    if dtype.is_float():
        return {"time": (col.is_null() | ~col.is_finite()).fill_null(True)}
    if dtype == pl.Null:
        return {"time": pl.lit(True)}
    raise _wrong_type(label, desc, TIME, dtype, "times")


def _shown(value: object) -> str:
    if value is None or value == "":
        return "an empty value"
    text = str(value)
    if not text.strip():
        return "a blank value"  # one_line() would collapse the spaces of its repr
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _flag_stats(frame: pl.LazyFrame, flags: dict[str, tuple[str, pl.Expr]], extra: dict[str, pl.Expr]) -> dict:
    """Count, first data row and first value of each flag (name -> (column shown, per-row boolean)); one pass.

    The flags are computed once as columns, then aggregated (an expression used three
    times in one ``select`` would be evaluated three times).
    """
    frame = frame.with_columns(**{f"_{name}": expr for name, (_, expr) in flags.items()})
    aggs = [pl.len().alias("n"), *(expr.alias(name) for name, expr in extra.items())]
    for name, (column, _) in flags.items():
        flag = pl.col(f"_{name}")
        aggs += [
            flag.sum().alias(f"{name}.n"),
            pl.col(_ROW).filter(flag).first().alias(f"{name}.row"),
            pl.col(column).cast(pl.Utf8).filter(flag).first().alias(f"{name}.value"),
        ]
    return frame.select(aggs).collect(engine="streaming").row(0, named=True)


def _validate(lf: pl.LazyFrame, label: str, labels: dict[str, str]) -> pl.LazyFrame:
    """Refuse missing ids and bad times (one line: column, count, first data row, fix).

    Returns ``lf`` with the user and item ids as text and the time as a sort key:
    integers stay integers (nanosecond stamps do not fit a float; beyond Int64 they
    become a text key in the same order, :func:`_integer_key`), dates become
    microseconds since 1970 (UTC).
    """
    schema = lf.collect_schema()
    user_bad, user_text = _id_column(USER, schema[USER], label, labels[USER])
    item_bad, item_text = _id_column(ITEM, schema[ITEM], label, labels[ITEM])
    time_checks = _time_checks(schema[TIME], label, labels[TIME])
    flags = {USER: (USER, user_bad), ITEM: (ITEM, item_bad), **{k: (TIME, e) for k, e in time_checks.items()}}
    stats = _flag_stats(lf, flags, {})

    def first(name: str, st: dict = stats) -> str:
        return f"{_shown(st[f'{name}.value'])} at data row {int(st[f'{name}.row']) + 1}, the first"

    for key, what, merged in ((USER, "a user", "merged into one user"), (ITEM, "an item", "counted as one item")):
        if stats[f"{key}.n"]:
            raise DataError(
                f"{label}: {labels[key]} has {stats[f'{key}.n']} row(s) without {what} id ({first(key)})",
                f"fill in or remove those rows: rows without {what} id would all be {merged}",
            )
    not_a_time = (
        "fix or remove those rows: a time is a finite number (e.g. Unix seconds) "
        "or an ISO 8601 date such as 2021-03-01 or 2021-03-01T10:00:00"
    )
    if "time.n" in stats:  # a typed column: its values are used as they are
        if stats["time.n"]:
            raise DataError(
                f"{label}: {labels[TIME]} has {stats['time.n']} value(s) that are not a time ({first('time')})",
                not_a_time,
            )
        return lf.with_columns(user_text.alias(USER), item_text.alias(ITEM))
    text = _text(TIME)
    if not stats["time_other.n"]:  # numbers only
        integers = stats["time_integer.n"] == stats["n"]
        if stats["time_wide.n"] and not integers:  # beyond Int64: a float would tie or misorder them
            if stats["time_integer.n"] + stats["time_wide.n"] < stats["n"]:
                not_integer = (TIME, ~text.str.contains(_INTEGER))
                odd = _flag_stats(lf, {"time_fraction": not_integer}, {})
                raise DataError(
                    f"{label}: {labels[TIME]} mixes integers too large for 64 bits ({first('time_wide')}) with "
                    f"{odd['time_fraction.n']} of {stats['n']} time(s) that are not integers "
                    f"({first('time_fraction', odd)}): as decimals they could not be ordered exactly",
                    "write every time as an integer in one unit (e.g. Unix nanoseconds), or remove those rows",
                )
            return lf.with_columns(user_text.alias(USER), item_text.alias(ITEM), _integer_key(text).alias(TIME))
        key = text.cast(pl.Int64 if integers else pl.Float64, strict=False)
        return lf.with_columns(user_text.alias(USER), item_text.alias(ITEM), key.alias(TIME))
    # some values are not numbers: dates, or not times at all (parsed on those rows only)
    parsed = _parsed_dates(text)
    rest = lf.filter(~text.cast(pl.Float64, strict=False).is_finite().fill_null(False))
    dates, bad, forms = _date_stats(rest, parsed)
    if bad["time.n"] and bad["booleans"] == stats["n"]:
        raise _wrong_type(label, labels[TIME], TIME, pl.Boolean, "times")
    if bad["time.n"]:
        raise DataError(
            f"{label}: {labels[TIME]} has {bad['time.n']} value(s) that are not a time ({first('time', bad)})",
            not_a_time,
        )
    numbers = stats["time_number.n"]
    if numbers:
        # the minority is the odd one out (on a tie, the kind that starts later)
        if numbers != dates["time_date.n"]:
            number_minority = numbers < dates["time_date.n"]
        else:
            number_minority = stats["time_number.row"] > dates["time_date.row"]
        minority, st, kind = ("time_number", stats, "numbers") if number_minority else ("time_date", dates, "dates")
        raise DataError(
            f"{label}: {labels[TIME]} mixes numbers and dates: {st[f'{minority}.n']} of {stats['n']} "
            f"time(s) are {kind} ({first(minority, st)})",
            "write every time the same way (all Unix-time numbers or all ISO dates), or remove those rows",
        )
    key = pl.coalesce([parsed[f] for f in forms])  # only the forms the column uses: parsing is the slow part
    return lf.with_columns(user_text.alias(USER), item_text.alias(ITEM), key.alias(TIME))


def _integer_key(text: pl.Expr) -> pl.Expr:
    """Text that sorts like the integers ``text`` holds (written as :data:`_INTEGER`), however many digits.

    ``1`` + digit count (3 digits: a finite float has at most 309) + digits for ``n >= 0``; for
    ``n < 0`` ``0`` + the same with every digit complemented (9 - d), so a larger magnitude sorts first.
    """
    digits = text.str.strip_chars_start("+-").str.strip_chars_start("0")
    digits = pl.when(digits == "").then(pl.lit("0")).otherwise(digits)  # -0 is 0
    body = digits.str.len_bytes().cast(pl.Utf8).str.zfill(3) + digits
    complement = body.str.replace_many(list("0123456789"), list("9876543210"))
    negative = text.str.starts_with("-") & (digits != "0")
    return pl.when(negative).then("0" + complement).otherwise("1" + body)


def _date_stats(rest: pl.LazyFrame, parsed: dict[str, pl.Expr]) -> tuple[dict, dict, list[str]]:
    """Which of ``rest`` (the rows whose time is not a number) hold dates, in which forms.

    Returns the stats of the dates (``time_date``), of the values that are not dates
    (``time``, plus ``booleans``: how many are true/false) and the forms used, in
    :data:`DATE_FORMATS` order. Parsing every form on every row is slow, so the forms
    are found on the first 1000 rows, the whole column is parsed with those, and only
    rows that none of them parses are tried with all forms.
    """
    sample = rest.head(1000).select(**{f: e.is_not_null().sum() for f, e in parsed.items()}).collect()
    forms = [f for f in parsed if sample[f].item()]

    def parses(which: list[str]) -> pl.Expr:
        return pl.coalesce([parsed[f] for f in which]).is_not_null() if which else pl.lit(False)

    is_date = pl.col("_is_date")  # parsed once per row, used by both flags
    dates = _flag_stats(
        rest.with_columns(_is_date=parses(forms)), {"time_date": (TIME, is_date), "time": (TIME, ~is_date)}, {}
    )
    if not dates["time.n"]:
        return dates, {"time.n": 0, "booleans": 0}, forms
    others = [f for f in parsed if f not in forms]
    left = rest.filter(~parses(forms))
    found = left.select(**{f: parsed[f].is_not_null().sum() for f in others}).collect() if others else None
    more = [f for f in others if found is not None and found[f].item()]
    bad = _flag_stats(
        left.with_columns(_is_date=parses(more)),
        {"time_date": (TIME, is_date), "time": (TIME, ~is_date)},
        {"booleans": _text(TIME).str.to_lowercase().is_in(("true", "false")).sum()},
    )
    if bad["time_date.n"]:
        rows = [r for r in (dates["time_date.row"], bad["time_date.row"]) if r is not None]
        first_row = min(rows)
        dates = {
            **dates,
            "time_date.n": dates["time_date.n"] + bad["time_date.n"],
            "time_date.row": first_row,
            "time_date.value": dates["time_date.value"]
            if first_row == dates["time_date.row"]
            else bad["time_date.value"],
        }
    return dates, bad, [f for f in parsed if f in forms or f in more]


def _sorted_unique(values: pl.Series) -> list[str]:
    """Distinct values in natural order (numeric if they are all numbers), as strings."""
    uniq = values.unique()
    as_num = uniq.cast(pl.Float64, strict=False) if uniq.dtype == pl.Utf8 else None
    if as_num is not None and as_num.null_count() == 0:
        order = np.lexsort((uniq.to_numpy().astype(str), as_num.to_numpy()))
        uniq = uniq.gather(order)
    else:
        uniq = uniq.sort()
    return [str(v) for v in uniq.to_list()]


def build_sequences(
    lf: pl.LazyFrame,
    path_label: str,
    seed: int,
    min_length: int = 2,
    titles: dict[str, str] | None = None,
    fractions: tuple[float, float] = (0.1, 0.1),
    labels: dict[str, str] | None = None,
) -> tuple[Vocabulary, dict[str, Sequences], dict]:
    """Turn a lazy (user, item, time) frame into a vocabulary and user splits.

    ``labels`` names the columns in messages (default "the user column" ...; see
    :func:`column_labels`). Bad ids and times are refused before anything is built.
    """
    labels = {**_DEFAULT_LABELS, **(labels or {})}
    try:
        lf = _validate(lf.with_row_index(_ROW), path_label, labels)
        raw_count = lf.select(pl.len()).collect(engine="streaming").item()
        kept = lf.filter(pl.len().over(USER) >= min_length)
        items = _sorted_unique(kept.select(pl.col(ITEM).unique()).collect(engine="streaming")[ITEM])
        if not items:
            raise DataError(
                f"{path_label}: no users left after dropping users with fewer than {min_length} interactions "
                f"({raw_count} interaction rows read)",
                "pass a log where users have at least two interactions each",
            )
        if PAD in items:
            _refuse_pad_item(lf, path_label, labels[ITEM])
        item_map = pl.LazyFrame({ITEM: items, "_id": np.arange(1, len(items) + 1, dtype=np.int32)})
        per_user = (
            kept.join(item_map, on=ITEM, how="left")
            .sort([USER, TIME, _ROW])
            .group_by(USER, maintain_order=True)
            .agg(pl.col("_id"))
            .collect(engine="streaming")
        )
    except pl.exceptions.PolarsError as exc:
        raise DataError(
            f"cannot parse {path_label}: {polars_problem(exc)}",
            "check that the file is a well-formed table with the expected columns",
        ) from exc
    users = per_user[USER]
    order = np.array(_order_index(users), dtype=np.int64)
    per_user = per_user[order]
    n = per_user.height
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_valid = round(fractions[0] * n)
    n_test = round(fractions[1] * n)
    n_train = n - n_valid - n_test
    if n_train < 1 or n_valid < 1 or n_test < 1:
        raise DataError(
            f"{path_label}: only {n} user(s) remain after filtering, too few for train/validation/test",
            "pass a log with at least 10 users with two or more interactions each",
        )
    parts = {
        "train": np.sort(perm[:n_train]),
        "valid": np.sort(perm[n_train : n_train + n_valid]),
        "test": np.sort(perm[n_train + n_valid :]),
    }
    ids_all = per_user[USER].to_list()
    lists = per_user["_id"]
    lengths = lists.list.len().to_numpy().astype(np.int64)
    flat = lists.explode().to_numpy().astype(np.int32)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    splits = {}
    for name, idx in parts.items():
        sub_lengths = lengths[idx]
        sub_offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(sub_lengths, out=sub_offsets[1:])
        tokens = np.concatenate([flat[offsets[i] : offsets[i + 1]] for i in idx]) if len(idx) else flat[:0]
        splits[name] = Sequences(ids=[ids_all[i] for i in idx], offsets=sub_offsets, tokens=tokens)
    vocab = build_item_vocab(items, titles)
    info = {"rows_read": int(raw_count), "users_dropped": None}
    info["users_dropped"] = int(lf.select(pl.col(USER).n_unique()).collect(engine="streaming").item() - n)
    return vocab, splits, info


def _refuse_pad_item(lf: pl.LazyFrame, label: str, desc: str) -> None:
    """Refuse the item id ``<pad>``: id 0 is the padding token, and no item may take its name."""
    st = _flag_stats(lf, {"pad": (ITEM, pl.col(ITEM) == PAD)}, {})
    raise DataError(
        f"{label}: {desc} has {st['pad.n']} row(s) with the item id {PAD!r}, reserved for padding "
        f"(data row {int(st['pad.row']) + 1}, the first)",
        f"rename that item in the log (any id but {PAD!r})",
    )


def _order_index(users: pl.Series) -> list[int]:
    """Users in natural order (numeric when all numeric): a deterministic layout."""
    as_num = users.cast(pl.Float64, strict=False)
    keys = users.to_numpy().astype(str)
    if as_num.null_count() == 0:
        return list(np.lexsort((keys, as_num.to_numpy())))
    return list(np.argsort(keys, kind="stable"))
