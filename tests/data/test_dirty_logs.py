"""What real interaction logs throw at `prepare interactions`: missing ids, bad times, wrong separators.

Each bad value is refused with one line naming the column, how many rows, the first data row
(1-based, header excluded) and the fix; nothing is silently coerced (a ``NaN`` user id used to
merge every such row into one user, a ``nan`` time used to sort last and become a test target).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from cli_runner import farzictl

from farzi.data.interactions import build_sequences, scan_table, select_columns
from farzi.data.prepare import PrepareOptions, prepare
from farzi.errors import ConfigError, DataError

# 12 users x 2 interactions: rows[i] is data row i + 1
ROWS = [[str(u), str(u % 4), str(t)] for u in range(12) for t in range(2)]


def csv(rows: list[list[str]], sep: str = ",", header: str = "user,item,time") -> str:
    return header.replace(",", sep) + "\n" + "".join(sep.join(r) + "\n" for r in rows)


def with_cell(row: int, col: int, value: str, rows: list[list[str]] | None = None) -> list[list[str]]:
    """A copy of ``rows`` with data row ``row`` (1-based), column ``col`` set to ``value``."""
    out = [list(r) for r in (rows or ROWS)]
    out[row - 1][col] = value
    return out


def prep(path: Path, home: Path, **kwargs) -> object:
    return prepare("interactions", PrepareOptions(path=path, **kwargs), home=home)


def refused(path: Path, home: Path, **kwargs) -> str:
    """The one-line message ``prepare`` refuses ``path`` with; nothing may be written."""
    with pytest.raises(DataError) as err:
        prep(path, home, **kwargs)
    assert not home.exists()
    line = str(err.value)
    assert "\n" not in line
    return line


def as_dict(splits) -> dict[str, list[int]]:
    return {uid: seq.tolist() for seqs in splits.values() for uid, seq in zip(seqs.ids, seqs, strict=True)}


# ---------------------------------------------------------------- missing user / item ids


def test_nan_user_ids_are_refused_not_merged_into_one_user(tmp_path: Path) -> None:
    # the reported case: 30 users whose id was lost became one user "NaN" with 60 interactions
    rows = [[str(u) if u < 10 else "NaN", str(u % 7), str(t)] for u in range(40) for t in range(2)]
    path = tmp_path / "log.csv"
    path.write_text(csv(rows))
    line = refused(path, tmp_path / "home")
    assert line.startswith(f"{path}: column 'user' (--user-col) has 60 row(s) without a user id ('NaN' at data row 21,")
    assert "fill in or remove those rows" in line and "merged into one user" in line


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("nan", "'nan'"),
        ("NaN", "'NaN'"),
        ("", "an empty value"),
        ("   ", "a blank value"),
        ("null", "'null'"),
        ("NULL", "'NULL'"),
        ("None", "'None'"),
        ("NA", "'NA'"),
        ("N/A", "'N/A'"),
        ("<NA>", "'<NA>'"),
    ],
)
def test_missing_value_markers_are_not_user_ids(tmp_path: Path, value: str, shown: str) -> None:
    path = tmp_path / "log.csv"
    path.write_text(csv(with_cell(7, 0, value)))
    line = refused(path, tmp_path / "home")
    assert f"column 'user' (--user-col) has 1 row(s) without a user id ({shown} at data row 7, the first)" in line


@pytest.mark.parametrize("value", ["nan", "NaN", "", "null"])
def test_missing_item_ids_are_refused(tmp_path: Path, value: str) -> None:
    path = tmp_path / "log.csv"
    rows = with_cell(20, 1, value, with_cell(3, 1, value))
    path.write_text(csv(rows, header="who,what,when"))
    line = refused(path, tmp_path / "home", user_col="who", item_col="what", time_col="when")
    assert "column 'what' (--item-col) has 2 row(s) without an item id" in line
    assert "at data row 3, the first" in line and "counted as one item" in line


# ---------------------------------------------------------------- bad times


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("nan", "'nan'"),
        ("NaN", "'NaN'"),
        ("inf", "'inf'"),
        ("-Infinity", "'-Infinity'"),
        ("1e999", "'1e999'"),  # overflows to infinity
        ("", "an empty value"),
        ("null", "'null'"),
        ("yesterday", "'yesterday'"),
        ("12/31/2020", "'12/31/2020'"),  # ambiguous (US or European?): refused, not guessed
        ("2021-02-30", "'2021-02-30'"),
    ],
)
def test_values_that_are_not_times_are_refused(tmp_path: Path, value: str, shown: str) -> None:
    # a nan time used to sort last, so it became the held-out user's test target
    path = tmp_path / "log.csv"
    path.write_text(csv(with_cell(24, 2, value, with_cell(9, 2, value))))
    line = refused(path, tmp_path / "home")
    assert f"column 'time' (--time-col) has 2 value(s) that are not a time ({shown} at data row 9, the first)" in line
    assert "a time is a finite number (e.g. Unix seconds) or an ISO 8601 date" in line


def test_mixed_dates_and_epoch_numbers_are_refused(tmp_path: Path) -> None:
    rows = [list(r) for r in ROWS]
    for i in (4, 11, 17):  # three of 24 times written as dates among Unix seconds
        rows[i - 1][2] = "2021-03-01"
    path = tmp_path / "log.csv"
    path.write_text(csv(rows))
    line = refused(path, tmp_path / "home")
    assert "column 'time' (--time-col) mixes numbers and dates: 3 of 24 time(s) are dates" in line
    assert "('2021-03-01' at data row 4, the first)" in line
    assert "write every time the same way" in line


def test_mixed_times_name_the_minority_numbers(tmp_path: Path) -> None:
    rows = [[str(u), "1", f"2021-03-{t + 1:02d}"] for u in range(12) for t in range(2)]
    rows[13][2] = "1614556800"
    path = tmp_path / "log.csv"
    path.write_text(csv(rows))
    assert "1 of 24 time(s) are numbers ('1614556800' at data row 14, the first)" in refused(path, tmp_path / "home")


def test_a_time_column_of_booleans_is_the_wrong_column(tmp_path: Path) -> None:
    rows = [[u, i, "true" if int(t) else "false"] for u, i, t in ROWS]
    path = tmp_path / "log.csv"
    path.write_text(csv(rows))
    line = refused(path, tmp_path / "home")
    assert line == (
        f"{path}: column 'time' (--time-col) holds booleans (true/false), not times; "
        "pass the column with the times with --time-col"
    )


# ---------------------------------------------------------------- parquet: typed columns


def _parquet(tmp_path: Path, **columns: pl.Series) -> Path:
    frame = pl.DataFrame(
        {
            "user": pl.Series([float(u) for u, _, _ in ROWS]),  # pandas' float ids (an int column with a gap)
            "item": pl.Series([int(i) for _, i, _ in ROWS]),
            "time": pl.Series([float(t) for _, _, t in ROWS]),
        }
    ).with_columns(**columns)
    path = tmp_path / "log.parquet"
    frame.write_parquet(path)
    return path


def test_parquet_float_nan_user_ids_are_refused(tmp_path: Path) -> None:
    users = [float(u) for u, _, _ in ROWS]
    users[4] = users[5] = float("nan")
    line = refused(_parquet(tmp_path, user=pl.Series(users)), tmp_path / "home")
    assert "column 'user' (--user-col) has 2 row(s) without a user id ('NaN' at data row 5, the first)" in line


def test_parquet_nulls_in_an_integer_item_column_are_refused(tmp_path: Path) -> None:
    items: list[int | None] = [int(i) for _, i, _ in ROWS]
    items[10] = None
    line = refused(_parquet(tmp_path, item=pl.Series(items, dtype=pl.Int64)), tmp_path / "home")
    assert (
        "column 'item' (--item-col) has 1 row(s) without an item id (an empty value at data row 11, the first)" in line
    )


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), None])
def test_parquet_non_finite_or_null_times_are_refused(tmp_path: Path, bad: float | None) -> None:
    times: list[float | None] = [float(t) for _, _, t in ROWS]
    times[2] = bad
    line = refused(_parquet(tmp_path, time=pl.Series(times, dtype=pl.Float64)), tmp_path / "home")
    assert "column 'time' (--time-col) has 1 value(s) that are not a time" in line
    assert "at data row 3, the first" in line


def test_parquet_boolean_or_nested_columns_are_the_wrong_column(tmp_path: Path) -> None:
    flags = pl.Series([bool(int(t)) for _, _, t in ROWS])
    line = refused(_parquet(tmp_path, time=flags), tmp_path / "home")
    assert "column 'time' (--time-col) holds booleans (true/false), not times; pass the column" in line
    nested = pl.Series([[1, 2]] * len(ROWS))
    line = refused(_parquet(tmp_path, item=nested), tmp_path / "home")
    assert "column 'item' (--item-col) has type List(Int64), which cannot hold item ids" in line


def test_parquet_datetimes_order_by_time_to_the_microsecond(tmp_path: Path) -> None:
    import datetime as dt

    base = dt.datetime(2021, 3, 1, 12, 0, 0)
    # per user: item 9 at base, then (in file order) item 5 one microsecond earlier -> 5 before 9
    frame = pl.DataFrame(
        {
            "user": [u for u in range(12) for _ in range(2)],
            "item": [9, 5] * 12,
            "time": [base, base - dt.timedelta(microseconds=1)] * 12,
        }
    )
    path = tmp_path / "log.parquet"
    frame.write_parquet(path)
    ds = prep(path, tmp_path / "home")
    assert ds.vocab.tokens == ["<pad>", "5", "9"]
    assert set(map(tuple, as_dict(ds.splits).values())) == {(1, 2)}


# ---------------------------------------------------------------- what is accepted, and how it is read


def test_ids_are_labels_taken_as_written_with_whitespace_removed(tmp_path: Path) -> None:
    rows = [[f" {u} ", "007" if t == "0" else "7", t] for u, _, t in ROWS]
    path = tmp_path / "log.csv"
    path.write_text(csv(rows))
    ds = prep(path, tmp_path / "home")
    # "007" and "7" are two items; natural order: equal as numbers, then by string ("007" < "7")
    assert ds.vocab.tokens == ["<pad>", "007", "7"]
    users = as_dict(ds.splits)
    assert sorted(users, key=int) == [str(u) for u in range(12)]  # " 3 " is user "3"
    assert set(map(tuple, users.values())) == {(1, 2)}


def test_iso_date_times_with_offsets_order_by_the_instant(tmp_path: Path) -> None:
    times = {"a": "2021-01-01T10:00:00+02:00", "b": "2021-01-01T09:00:00Z", "c": "2021-01-01 08:30:00"}
    # instants: a = 08:00Z, c = 08:30Z (naive counts as UTC), b = 09:00Z -> order a, c, b
    rows = [[str(u), item, times[item]] for u in range(12) for item in ("b", "c", "a")]
    path = tmp_path / "log.csv"
    path.write_text(csv(rows))
    ds = prep(path, tmp_path / "home")
    assert ds.vocab.tokens == ["<pad>", "a", "b", "c"]
    assert set(map(tuple, as_dict(ds.splits).values())) == {(1, 3, 2)}


def test_integer_times_beyond_float_precision_keep_their_order(tmp_path: Path) -> None:
    # nanosecond stamps: 2**53 < t, so t and t + 1 are the same float64 and used to tie (file order won)
    t = 1_600_000_000_000_000_000
    rows = [[str(u), item, str(t + (1 if item == "9" else 0))] for u in range(12) for item in ("9", "5")]
    path = tmp_path / "log.csv"
    path.write_text(csv(rows))
    ds = prep(path, tmp_path / "home")
    assert ds.vocab.tokens == ["<pad>", "5", "9"]
    assert set(map(tuple, as_dict(ds.splits).values())) == {(1, 2)}  # 5 (at t) before 9 (at t + 1)


@pytest.mark.parametrize("sign", ["", "-"])
def test_integer_times_beyond_int64_keep_their_exact_order(tmp_path: Path, sign: str) -> None:
    # 20-digit times used to become float64 (all three equal to 1e20), so file order won
    times = {"a": "100000000000000000001", "b": "100000000000000000000", "c": "99999999999999999999"}
    rows = [[str(u), item, sign + times[item]] for u in range(12) for item in ("a", "b", "c")]
    rows[1][2] = f" {sign or '+'}0{times['b']} "  # user 0's b with a sign, a leading zero and spaces: same time
    path = tmp_path / "log.csv"
    path.write_text(csv(rows))
    ds = prep(path, tmp_path / "home")
    assert ds.vocab.tokens == ["<pad>", "a", "b", "c"]
    expected = (3, 2, 1) if not sign else (1, 2, 3)  # c < b < a; negated: -a < -b < -c
    assert set(map(tuple, as_dict(ds.splits).values())) == {expected}


def test_integer_times_beyond_int64_mixed_with_small_and_zero_times(tmp_path: Path) -> None:
    times = {"a": "-100000000000000000000", "b": "-5", "c": "0", "d": "-0", "e": "7", "f": "99999999999999999999"}
    rows = [[str(u), item, times[item]] for u in range(12) for item in ("f", "e", "d", "c", "b", "a")]
    path = tmp_path / "log.csv"
    path.write_text(csv(rows))
    ds = prep(path, tmp_path / "home")
    # a < b < c = d (a tie keeps file order: d first) < e < f
    assert set(map(tuple, as_dict(ds.splits).values())) == {(1, 2, 4, 3, 5, 6)}


def test_integer_times_beyond_int64_mixed_with_decimals_are_refused(tmp_path: Path) -> None:
    # as floats the 20-digit times would tie: refused, not ordered approximately
    rows = with_cell(7, 2, "2.5", with_cell(3, 2, "100000000000000000001"))
    path = tmp_path / "log.csv"
    path.write_text(csv(rows))
    line = refused(path, tmp_path / "home")
    assert (
        "column 'time' (--time-col) mixes integers too large for 64 bits ('100000000000000000001' at data row 3, "
        "the first) with 1 of 24 time(s) that are not integers ('2.5' at data row 7, the first)"
    ) in line
    assert line.endswith("write every time as an integer in one unit (e.g. Unix nanoseconds), or remove those rows")


def test_the_reserved_pad_id_as_an_item_is_refused_with_a_real_fix(tmp_path: Path) -> None:
    # it used to end in "the vocabulary has duplicate tokens; rebuild it with farzictl prepare"
    path = tmp_path / "log.csv"
    path.write_text(csv(with_cell(9, 1, " <pad> ", with_cell(4, 1, "<pad>"))))
    line = refused(path, tmp_path / "home")
    assert line == (
        f"{path}: column 'item' (--item-col) has 2 row(s) with the item id '<pad>', reserved for padding "
        "(data row 4, the first); rename that item in the log (any id but '<pad>')"
    )


def test_a_late_non_numeric_id_is_not_a_type_guessing_error(tmp_path: Path) -> None:
    # polars used to guess Int64 from the first 100 rows and fail on row 201
    rows = [[str(u), str(u % 5), str(t)] for u in range(100) for t in range(2)] + [
        ["u-late", "1", "0"],
        ["u-late", "2", "1"],
    ]
    path = tmp_path / "log.csv"
    path.write_text(csv(rows))
    ds = prep(path, tmp_path / "home")
    assert ds.statistics()["users"] == 101


# ---------------------------------------------------------------- separators


@pytest.mark.parametrize(("sep", "shown"), [("\t", "'\\t'"), (";", "';'"), ("|", "'|'")])
def test_a_header_that_is_one_column_means_the_wrong_separator(tmp_path: Path, sep: str, shown: str) -> None:
    path = tmp_path / "log.csv"  # .csv: read with ','
    path.write_text(csv(ROWS, sep=sep))
    line = refused(path, tmp_path / "home")
    assert f"the separator is probably {shown}; pass --separator {shown}" in line
    assert "--user-col" not in line


def test_a_tsv_given_a_comma_separator_suggests_a_tab(tmp_path: Path) -> None:
    path = tmp_path / "log.tsv"
    path.write_text(csv(ROWS, sep="\t"))
    line = refused(path, tmp_path / "home", separator=",")
    assert "when split on ','" in line and line.endswith("pass --separator '\\t'")


@pytest.mark.parametrize("spelled", ["\t", "\\t", "tab"])
def test_a_tab_separator_may_be_spelled_as_in_a_shell(tmp_path: Path, spelled: str) -> None:
    path = tmp_path / "log.txt"
    path.write_text(csv(ROWS, sep="\t"))
    assert prep(path, tmp_path / "home", separator=spelled).statistics()["users"] == 12


@pytest.mark.parametrize("bad", [";;", "", '"', "\n", "é"])
def test_a_separator_must_be_one_byte(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "log.csv"
    path.write_text(csv(ROWS))
    with pytest.raises(ConfigError, match="is not a single one-byte character; pass one character"):
        prep(path, tmp_path / "home", separator=bad)


@pytest.mark.parametrize(
    ("header", "name"),
    [("user,item,item,time", "item"), ('user,item,time,"x",x', "x"), ("user,item,time,time", "time")],
)
def test_a_header_naming_a_column_twice_is_refused(tmp_path: Path, header: str, name: str) -> None:
    # polars renames the second one to f"{name}_duplicated_0" and carried on: which item was meant?
    extra = header.count(",") - 2
    path = tmp_path / "log.csv"
    path.write_text(csv([r + ["1"] * extra for r in ROWS], header=header))
    line = refused(path, tmp_path / "home")
    assert line == (
        f"{path}'s header names the column {name!r} twice: which one is meant is ambiguous; "
        "rename one of them in the header (each column needs its own name)"
    )


def test_a_column_named_like_a_polars_duplicate_is_not_a_duplicate(tmp_path: Path) -> None:
    path = tmp_path / "log.tsv"
    path.write_text(csv([r + ["1"] for r in ROWS], sep="\t", header="user,item,time,item_duplicated_0"))
    assert prep(path, tmp_path / "home").statistics()["users"] == 12


def test_a_one_column_header_without_separators_is_a_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user\n1\n2\n")
    assert "has no column 'item' (it has: user); pass the right name with --item-col" in refused(
        path, tmp_path / "home"
    )


def test_default_labels_for_sources_without_column_flags(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text(csv(with_cell(2, 0, "nan")))
    lf = select_columns(scan_table(path), path, "user", "item", "time")
    with pytest.raises(DataError, match=r"the user column has 1 row\(s\) without a user id \('nan' at data row 2"):
        build_sequences(lf, str(path), seed=0)


# ---------------------------------------------------------------- the CLI: exit 2, one line, nothing written


def _cli_refuses(tmp_path: Path, *args: str) -> str:
    home = tmp_path / "home"
    line = farzictl("prepare", "interactions", *args, home=home).one_error_line()
    assert not home.exists()
    return line


def test_cli_nan_user_ids(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text(csv(with_cell(3, 0, "NaN")))
    line = _cli_refuses(tmp_path, "--path", str(path))
    assert "column 'user' (--user-col) has 1 row(s) without a user id ('NaN' at data row 3, the first)" in line


def test_cli_nan_time(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text(csv(with_cell(5, 2, "nan")))
    assert "column 'time' (--time-col) has 1 value(s) that are not a time ('nan' at data row 5" in _cli_refuses(
        tmp_path, "--path", str(path)
    )


def test_cli_mixed_times(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text(csv(with_cell(6, 2, "2021-03-01T10:00:00")))
    line = _cli_refuses(tmp_path, "--path", str(path))
    assert "mixes numbers and dates: 1 of 24 time(s) are dates ('2021-03-01T10:00:00' at data row 6" in line


def test_cli_parquet_nan_items(tmp_path: Path) -> None:
    items = [float(i) for _, i, _ in ROWS]
    items[7] = float("nan")
    path = _parquet(tmp_path, item=pl.Series(items))
    assert "column 'item' (--item-col) has 1 row(s) without an item id ('NaN' at data row 8" in _cli_refuses(
        tmp_path, "--path", str(path)
    )


def test_cli_duplicated_header(tmp_path: Path) -> None:
    path = tmp_path / "log.tsv"
    path.write_text(csv([[u, i, i, t] for u, i, t in ROWS], sep="\t", header="user,item,item,time"))
    assert _cli_refuses(tmp_path, "--path", str(path)) == (
        f"error: {path}'s header names the column 'item' twice: which one is meant is ambiguous; "
        "rename one of them in the header (each column needs its own name)"
    )


def test_cli_tsv_read_as_csv_suggests_the_separator(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text(csv(ROWS, sep="\t"))
    line = _cli_refuses(tmp_path, "--path", str(path))
    assert line.endswith("the separator is probably '\\t'; pass --separator '\\t'")
    ok = farzictl("prepare", "interactions", "--path", str(path), "--separator", "\\t", home=tmp_path / "ok").ok()
    assert "(rec)" in ok.stdout
