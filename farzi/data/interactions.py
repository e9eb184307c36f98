"""Interaction logs -> per-user item sequences (sequential recommendation).

Preprocessing follows the Farzi paper: drop users with fewer than two
interactions, order each user's items by time (ties keep file order), split the
users 80/10/10 % into train/validation/test with a seeded permutation (strong
generalization). All heavy lifting is polars, lazily, so a 100M-row log never
becomes Python objects.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from farzi.data.sequences import Sequences
from farzi.data.vocab import Vocabulary, build_item_vocab
from farzi.errors import DataError

USER, ITEM, TIME = "user", "item", "time"


def polars_problem(exc: Exception) -> str:
    """First meaningful line of a polars error, for a one-line message."""
    for line in str(exc).splitlines():
        line = line.strip()
        if line:
            return line[:300]
    return exc.__class__.__name__


def scan_table(
    path: Path,
    separator: str | None = None,
    has_header: bool = True,
    columns: list[str] | None = None,
    schema: dict[str, pl.DataType] | None = None,
    encoding: str = "utf8",
) -> pl.LazyFrame:
    """Lazily open a CSV/TSV/parquet table; the format comes from the file name."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"file {path} does not exist", "check the path")
    if not path.is_file():
        raise DataError(f"{path} is not a file", "pass a CSV, TSV or parquet file")
    if path.stat().st_size == 0:
        raise DataError(f"file {path} is empty", "pass a file with interactions in it")
    suffix = "".join(path.suffixes[-2:]).lower()
    if suffix.endswith(".parquet"):
        return pl.scan_parquet(path)
    if separator is None:
        separator = "\t" if suffix.endswith((".tsv", ".tab", ".data")) else ","
    kwargs: dict = {"separator": separator, "has_header": has_header}
    if schema is not None:
        kwargs["schema"] = schema
    elif columns is not None:
        kwargs["new_columns"] = columns
    if encoding != "utf8":
        kwargs["encoding"] = "utf8-lossy"
    return pl.scan_csv(path, **kwargs)


def select_columns(lf: pl.LazyFrame, path: Path, user: str, item: str, time: str) -> pl.LazyFrame:
    try:
        names = lf.collect_schema().names()
    except pl.exceptions.PolarsError as exc:
        raise DataError(f"cannot read {path}: {polars_problem(exc)}", "check the file's format") from exc
    for flag, col in (("--user-col", user), ("--item-col", item), ("--time-col", time)):
        if col not in names:
            raise DataError(
                f"{path} has no column {col!r} (it has: {', '.join(names[:20])})",
                f"pass the right name with {flag}",
            )
    return lf.select(pl.col(user).alias(USER), pl.col(item).alias(ITEM), pl.col(time).alias(TIME))


def _time_as_number(lf: pl.LazyFrame) -> pl.LazyFrame:
    dtype = lf.collect_schema()[TIME]
    if dtype == pl.Utf8:
        parsed = pl.col(TIME).cast(pl.Float64, strict=False)
        return lf.with_columns(
            pl.when(parsed.is_null() & pl.col(TIME).is_not_null())
            .then(pl.col(TIME).str.to_datetime(strict=False).dt.epoch("s").cast(pl.Float64))
            .otherwise(parsed)
            .alias(TIME)
        )
    if dtype in (pl.Date,) or isinstance(dtype, pl.Datetime):
        return lf.with_columns(pl.col(TIME).dt.epoch("s").cast(pl.Float64))
    return lf.with_columns(pl.col(TIME).cast(pl.Float64))


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
) -> tuple[Vocabulary, dict[str, Sequences], dict]:
    """Turn a lazy (user, item, time) frame into a vocabulary and user splits."""
    try:
        lf = _time_as_number(lf).with_row_index("_row")
        lf = lf.with_columns(pl.col(USER).cast(pl.Utf8), pl.col(ITEM).cast(pl.Utf8))
        null_rows = (
            lf.filter(pl.col(USER).is_null() | pl.col(ITEM).is_null() | pl.col(TIME).is_null())
            .select(pl.col("_row").first(), pl.len())
            .collect()
        )
        if null_rows["len"][0] > 0:
            raise DataError(
                f"{path_label}: {null_rows['len'][0]} row(s) have an empty or unparsable user, item or time "
                f"(first at data row {int(null_rows['_row'][0]) + 1})",
                "fix or remove those rows, or pick other columns",
            )
        raw_count = lf.select(pl.len()).collect(engine="streaming").item()
        kept = lf.filter(pl.len().over(USER) >= min_length)
        items = _sorted_unique(kept.select(pl.col(ITEM).unique()).collect(engine="streaming")[ITEM])
        if not items:
            raise DataError(
                f"{path_label}: no users left after dropping users with fewer than {min_length} interactions "
                f"({raw_count} interaction rows read)",
                "pass a log where users have at least two interactions each",
            )
        item_map = pl.LazyFrame({ITEM: items, "_id": np.arange(1, len(items) + 1, dtype=np.int32)})
        per_user = (
            kept.join(item_map, on=ITEM, how="left")
            .sort([USER, TIME, "_row"])
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


def _order_index(users: pl.Series) -> list[int]:
    """Users in natural order (numeric when all numeric): a deterministic layout."""
    as_num = users.cast(pl.Float64, strict=False)
    keys = users.to_numpy().astype(str)
    if as_num.null_count() == 0:
        return list(np.lexsort((keys, as_num.to_numpy())))
    return list(np.argsort(keys, kind="stable"))
