"""Interaction logs -> per-user item sequences: filtering, ordering, numbering, splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from farzi.data.interactions import build_sequences, scan_table, select_columns
from farzi.data.prepare import PrepareOptions, prepare
from farzi.data.prepared import load_prepared
from farzi.errors import DataError

# Worked by hand:
#   user 1: (10,t1) (2,t3) (9,t3)   -> ties at t3 keep file order: 2 before 9
#   user 2: (2,t6) (9,t7)
#   user 3, user 4: one interaction each -> dropped (item 55 only occurs there)
#   user 5: (9,t1) (100,t2)
#   user 6: (2,t1) (2,t2)           -> repeats are kept
#   user 7: (5,t3) (10,t4)
#   user 8: (7,t1) (5,t1)           -> tie: file order
# items of kept users in natural order: 2 5 7 9 10 100 -> ids 1..6
LOG = """user,item,time
3,10,5
1,2,3
1,10,1
2,9,7
1,9,3
2,2,6
4,55,1
5,100,2
5,9,1
6,2,1
6,2,2
7,10,4
7,5,3
8,7,1
8,5,1
"""
EXPECTED = {
    "1": [5, 1, 4],
    "2": [1, 4],
    "5": [4, 6],
    "6": [1, 1],
    "7": [2, 5],
    "8": [3, 2],
}
ITEMS = ["<pad>", "2", "5", "7", "9", "10", "100"]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def build(
    path: Path,
    seed: int = 0,
    user: str = "user",
    item: str = "item",
    time: str = "time",
    separator: str | None = None,
):
    lf = select_columns(scan_table(path, separator=separator), path, user, item, time)
    return build_sequences(lf, str(path), seed=seed)


def as_dict(splits) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for seqs in splits.values():
        for uid, seq in zip(seqs.ids, seqs, strict=True):
            out[uid] = seq.tolist()
    return out


def test_hand_worked_log(tmp_path: Path) -> None:
    vocab, splits, info = build(write(tmp_path / "log.csv", LOG))
    assert vocab.tokens == ITEMS
    assert as_dict(splits) == EXPECTED
    assert info == {"rows_read": 15, "users_dropped": 2}
    # 6 users: round(0.6) = 1 each for validation and test, 4 for training
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [4, 1, 1]
    for seqs in splits.values():  # users in natural order within every split
        assert seqs.ids == sorted(seqs.ids, key=int)
        assert seqs.tokens.dtype == np.int32 and seqs.offsets.dtype == np.int64


def test_min_length_drops_more_users(tmp_path: Path) -> None:
    log = "user,item,time\n" + "".join(
        f"{u},{i},{i}\n"
        for u in range(12)
        for i in range(2 + u % 2)  # even users: 2, odd: 3
    )
    path = write(tmp_path / "log.csv", log)
    lf = select_columns(scan_table(path), path, "user", "item", "time")
    _, splits, info = build_sequences(lf, str(path), seed=0, min_length=3)
    assert sorted(as_dict(splits), key=int) == ["1", "3", "5", "7", "9", "11"]
    assert info["users_dropped"] == 6


def test_items_are_numbered_in_numeric_not_lexical_order(tmp_path: Path) -> None:
    log = "user,item,time\n" + "".join(f"u{u},{item},1\n" for u in range(6) for item in (100, 9, 20))
    vocab, splits, _ = build(write(tmp_path / "log.csv", log))
    assert vocab.tokens == ["<pad>", "9", "20", "100"]
    # equal times: file order 100, 9, 20 -> ids 3, 1, 2
    assert set(map(tuple, as_dict(splits).values())) == {(3, 1, 2)}


def test_non_numeric_items_and_users_sort_as_strings(tmp_path: Path) -> None:
    log = "user,item,time\n" + "".join(
        f"user{u},{item},{t}\n" for u in range(6) for t, item in enumerate(("b", "a10", "a9"))
    )
    vocab, splits, _ = build(write(tmp_path / "log.csv", log))
    assert vocab.tokens == ["<pad>", "a10", "a9", "b"]
    assert set(map(tuple, as_dict(splits).values())) == {(3, 1, 2)}


def test_date_strings_order_by_time(tmp_path: Path) -> None:
    log = "user,item,time\n" + "".join(f"{u},1,2021-03-01\n{u},2,2020-12-31\n" for u in range(6))
    _, splits, _ = build(write(tmp_path / "log.csv", log))
    assert set(map(tuple, as_dict(splits).values())) == {(2, 1)}


def _many_users(n: int) -> str:
    rng = np.random.default_rng(1)
    rows = ["user,item,time"]
    for u in range(n):
        for t in range(int(rng.integers(2, 6))):
            rows.append(f"{u},{int(rng.integers(1, 30))},{t}")
    return "\n".join(rows) + "\n"


@pytest.mark.parametrize(("users", "sizes"), [(50, (40, 5, 5)), (20, (16, 2, 2)), (943, (755, 94, 94))])
def test_split_sizes_are_80_10_10_and_disjoint(tmp_path: Path, users: int, sizes) -> None:
    _, splits, _ = build(write(tmp_path / "log.csv", _many_users(users)))
    assert tuple(len(splits[s]) for s in ("train", "valid", "test")) == sizes
    ids = {s: set(splits[s].ids) for s in splits}
    assert not ids["train"] & ids["valid"]
    assert not ids["train"] & ids["test"]
    assert not ids["valid"] & ids["test"]
    assert ids["train"] | ids["valid"] | ids["test"] == {str(u) for u in range(users)}


def test_same_seed_same_split_other_seed_other_split(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", _many_users(50))

    def layout(seed: int) -> dict[str, list[str]]:
        _, splits, _ = build(path, seed=seed)
        return {s: splits[s].ids for s in splits}

    assert layout(3) == layout(3)
    assert layout(3) != layout(4)
    _, a, _ = build(path, seed=3)
    _, b, _ = build(path, seed=3)
    for s in a:
        assert np.array_equal(a[s].tokens, b[s].tokens)
        assert np.array_equal(a[s].offsets, b[s].offsets)


# ---------------------------------------------------------------- other formats


def test_tsv_and_parquet_inputs_give_the_same_sequences(tmp_path: Path) -> None:
    csv = write(tmp_path / "log.csv", LOG)
    tsv = write(tmp_path / "log.tsv", LOG.replace(",", "\t"))
    frame = pl.read_csv(csv)
    frame.write_parquet(tmp_path / "log.parquet")
    expected = build(csv)
    for path in (tsv, tmp_path / "log.parquet"):
        vocab, splits, info = build(path)
        assert vocab.tokens == expected[0].tokens
        assert as_dict(splits) == EXPECTED
        assert info == expected[2]


def test_explicit_separator_and_custom_column_names(tmp_path: Path) -> None:
    text = LOG.replace("user,item,time", "uid;movie;ts").replace(",", ";")
    path = write(tmp_path / "log.txt", text)
    vocab, splits, _ = build(path, user="uid", item="movie", time="ts", separator=";")
    assert vocab.tokens == ITEMS
    assert as_dict(splits) == EXPECTED


def test_prepare_interactions_end_to_end(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", LOG.replace("user,item,time", "who,what,when"))
    opts = PrepareOptions(path=path, user_col="who", item_col="what", time_col="when", seed=0)
    ds = prepare("interactions", opts, home=tmp_path / "home")
    assert ds.path == tmp_path / "home" / "datasets" / "interactions"
    loaded = load_prepared(ds.path)
    assert as_dict(loaded.splits) == EXPECTED
    assert loaded.vocab.tokens == ITEMS
    stats = loaded.statistics()
    assert (stats["users"], stats["items"], stats["interactions"]) == (6, 6, 13)
    assert loaded.params == {
        "source": "interactions",
        "seed": 0,
        "min_length": 2,
        "format": "csv",  # the layout (--format, from the file name) ...
        "time_order": "timestamps",  # ... and what orders a user's items (a csv log has a time column)
        "user_col": "who",
        "item_col": "what",
        "time_col": "when",
    }


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("flag", "kwargs"),
    [
        ("--user-col", {"user": "uid"}),
        ("--item-col", {"item": "movie"}),
        ("--time-col", {"time": "ts"}),
    ],
)
def test_missing_column_names_the_column_and_the_flag(tmp_path: Path, flag: str, kwargs) -> None:
    path = write(tmp_path / "log.csv", LOG)
    missing = next(iter(kwargs.values()))
    with pytest.raises(DataError, match=f"no column '{missing}'") as err:
        build(path, **kwargs)
    assert flag in str(err.value)
    assert "user, item, time" in str(err.value)  # lists the columns it has


def test_non_numeric_time_is_an_error_naming_the_row(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", LOG.replace("5,9,1", "5,9,yesterday"))
    with pytest.raises(
        DataError, match=r"the time column has 1 value\(s\) that are not a time \('yesterday' at data row 9,"
    ):
        build(path)


def test_too_many_fields_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", LOG.replace("2,2,6", "2,2,6,7"))
    with pytest.raises(DataError, match="cannot parse"):
        build(path)


def test_too_few_fields_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", LOG.replace("2,2,6", "2,2"))
    with pytest.raises(DataError, match="data row 6"):
        build(path)


def test_unbalanced_quote_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", LOG.replace("2,2,6", '"2,2,6'))
    with pytest.raises(DataError):
        build(path)


def test_empty_and_missing_files_are_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is empty"):
        scan_table(write(tmp_path / "empty.csv", ""))
    with pytest.raises(DataError, match="does not exist"):
        scan_table(tmp_path / "missing.csv")
    with pytest.raises(DataError, match="is not a file"):
        scan_table(tmp_path)


def test_header_only_file_leaves_no_users(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no users left"):
        build(write(tmp_path / "log.csv", "user,item,time\n"))


def test_no_users_left_after_filtering_is_an_error(tmp_path: Path) -> None:
    log = "user,item,time\n" + "".join(f"{u},{u},1\n" for u in range(30))
    with pytest.raises(DataError, match=r"no users left .* \(30 interaction rows read\)"):
        build(write(tmp_path / "log.csv", log))


def test_too_few_users_for_three_splits_is_an_error(tmp_path: Path) -> None:
    log = "user,item,time\n" + "".join(f"{u},{i},{i}\n" for u in range(3) for i in range(2))
    with pytest.raises(DataError, match="only 3 user"):
        build(write(tmp_path / "log.csv", log))


def test_ml100k_source_with_a_malformed_or_empty_udata(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    rows = "".join(f"{u}\t{i}\t3\t{880000 + i}\n" for u in range(1, 13) for i in (1, 2))
    (src / "u.data").write_text(rows + "13\tnot-an-item\t3\t880001\n")
    with pytest.raises(DataError, match="cannot parse .*u.data"):
        prepare("ml-100k", PrepareOptions(source=src), home=tmp_path / "home")
    (src / "u.data").write_text("")
    with pytest.raises(DataError, match="u.data is empty"):
        prepare("ml-100k", PrepareOptions(source=src), home=tmp_path / "home")
    assert not (tmp_path / "home").exists()
