"""``prepare interactions --format lines|pairs|recbole`` and the ``amazon-beauty`` source (issue 29).

The three text layouts go through the CSV pipeline after parsing, so a log written in each of them
prepares to the same dataset as the CSV ``user,item,time`` with ``time`` the position in the file:
same vocabulary, same users with the same sequences in each split, same fingerprint (which covers the
vocabulary and the splits' tokens only, not ``params`` or ``source``). Only ``params.format`` and
``params.time_order`` tell them apart.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import polars as pl
import pytest
from cli_runner import farzictl
from shared_data import SHARED

from farzi.data.prepare import AMAZON_BEAUTY_SHA256, PrepareOptions, prepare
from farzi.data.prepared import load_prepared
from farzi.errors import ConfigError, DataError

# 14 users; user 9 has one interaction (dropped at --min-length 2), user 4 two, user 12 repeats an item.
# Ids are not in order, and item 100 sorts after 20 numerically (natural order, as in the CSV path).
SEQUENCES: dict[str, list[str]] = {
    "3": ["5", "7", "5", "100"],
    "1": ["2", "3", "4"],
    "10": ["20", "2", "3", "7", "8"],
    "4": ["8", "9"],
    "9": ["55"],
    "2": ["3", "4", "5", "6", "7", "8"],
    "12": ["7", "7", "7"],
    "5": ["100", "20", "2"],
    "6": ["6", "5", "4", "3"],
    "7": ["9", "2"],
    "8": ["4", "3", "20"],
    "11": ["2", "100", "8", "6", "5"],
    "13": ["5", "8"],
    "14": ["3", "9", "6"],
}


def interleaved() -> list[tuple[str, str]]:
    """All (user, item) pairs, users interleaved at random, each user's items in their order."""
    rng = random.Random(7)
    queues = {u: list(items) for u, items in SEQUENCES.items()}
    out = []
    while queues:
        user = rng.choice(sorted(queues))
        out.append((user, queues[user].pop(0)))
        if not queues[user]:
            del queues[user]
    return out


def write_logs(root: Path) -> dict[str, tuple[Path, dict]]:
    """The same log in every layout: name -> (file, PrepareOptions fields)."""
    pairs = interleaved()
    root.mkdir(parents=True, exist_ok=True)
    files: dict[str, tuple[Path, dict]] = {}
    csv = root / "log.csv"
    csv.write_text("user,item,time\n" + "".join(f"{u},{i},{t}\n" for t, (u, i) in enumerate(pairs)))
    files["csv"] = (csv, {})
    lines = root / "log.txt"
    lines.write_text("".join(f"{u} {' '.join(items)}\n" for u, items in SEQUENCES.items()))
    files["lines"] = (lines, {"format": "lines"})
    pairs_file = root / "pairs.txt"
    pairs_file.write_text("".join(f"{u} {i}\n" for u, i in pairs))
    files["pairs"] = (pairs_file, {"format": "pairs"})
    plain = root / "plain.inter"  # no timestamp: the file order; the format from the file name
    plain.write_text("user_id:token\titem_id:token\trating:float\n" + "".join(f"{u}\t{i}\t4.0\n" for u, i in pairs))
    files["recbole"] = (plain, {})
    # with timestamps, rows shuffled: the timestamps (not the file order) give the order
    rows = [f"{i}\t{u}\t{1_600_000_000 + 60 * t}\t5\n" for t, (u, i) in enumerate(pairs)]
    random.Random(3).shuffle(rows)
    stamped = root / "stamped.txt"
    stamped.write_text("item_id:token\tuser_id:token\ttimestamp:float\trating:float\n" + "".join(rows))
    files["recbole-timestamps"] = (stamped, {"format": "recbole"})
    return files


def content(ds) -> dict:
    return {
        "vocab": ds.vocab.tokens,
        "splits": {s: dict(zip(ds.splits[s].ids, (x.tolist() for x in ds.splits[s]), strict=True)) for s in ds.splits},
        "fingerprint": ds.fingerprint(),
        "statistics": ds.statistics(),
    }


@pytest.mark.parametrize("min_length", [2, 3])
def test_every_layout_prepares_to_the_csv_dataset(tmp_path: Path, min_length: int) -> None:
    logs = write_logs(tmp_path / "logs")
    got = {}
    for name, (path, fields) in logs.items():
        opts = PrepareOptions(path=path, min_length=min_length, seed=5, **fields)
        ds = prepare("interactions", opts, name=name, home=tmp_path / "home")
        got[name] = content(load_prepared(tmp_path / "home" / "datasets" / name))
        assert got[name]["fingerprint"] == ds.fingerprint()
    for name in logs:
        assert got[name] == got["csv"], name
    kept = {u: s for u, s in SEQUENCES.items() if len(s) >= min_length}
    assert got["csv"]["statistics"]["users"] == len(kept)
    vocab = got["csv"]["vocab"]
    for split in got["csv"]["splits"].values():  # each user's items in time order, repeats kept
        for user, seq in split.items():
            assert [vocab[t] for t in seq] == kept[user]


def test_the_manifest_records_the_layout_and_the_time_order(tmp_path: Path) -> None:
    logs = write_logs(tmp_path / "logs")
    expected = {
        "csv": ("csv", "timestamps"),
        "lines": ("lines", "file"),
        "pairs": ("pairs", "file"),
        "recbole": ("recbole", "file"),
        "recbole-timestamps": ("recbole", "timestamps"),
    }
    for name, (path, fields) in logs.items():
        prepare("interactions", PrepareOptions(path=path, **fields), name=name, home=tmp_path / "home")
        manifest = json.loads((tmp_path / "home" / "datasets" / name / "manifest.json").read_text())
        params = manifest["params"]
        assert (params["format"], params["time_order"]) == expected[name], name
        assert ("user_col" in params) == (name == "csv")
        assert manifest["source"]["kind"] == "interactions"
        assert manifest["source"]["files"][0]["name"] == path.name


def test_crlf_tabs_and_padding_spaces_are_whitespace(tmp_path: Path) -> None:
    logs = write_logs(tmp_path / "logs")
    messy = tmp_path / "messy.txt"
    messy.write_bytes(b"".join(f"  {u}\t{'   '.join(items)} \r\n".encode() for u, items in SEQUENCES.items()))
    a = prepare("interactions", PrepareOptions(path=logs["lines"][0], format="lines"), name="a", home=tmp_path)
    b = prepare("interactions", PrepareOptions(path=messy, format="lines"), name="b", home=tmp_path)
    assert content(a) == content(b)


GOOD_LINES = "".join(f"{u} {' '.join(items)}\n" for u, items in SEQUENCES.items())
GOOD_PAIRS = "".join(f"{u} {i}\n" for u, i in interleaved())
HEADER = "user_id:token\titem_id:token\ttimestamp:float\n"
GOOD_INTER = HEADER + "".join(f"{u}\t{i}\t{t}\n" for t, (u, i) in enumerate(interleaved()))
N_LINES, N_PAIRS = len(SEQUENCES), len(interleaved())  # after the good ones: line N + 1 (the header is line 1)

# name -> (file name, contents, --format or None, texts the one error line holds)
MALFORMED = {
    "lines-blank-line": (
        "log.txt",
        "".join(GOOD_LINES.splitlines(keepends=True)[:2]) + "  \n" + GOOD_LINES,
        "lines",
        ("line 3 is blank", "remove the blank line"),
    ),
    "lines-user-without-items": (
        "log.txt",
        GOOD_LINES + "77\n",
        "lines",
        (f"line {N_LINES + 1} holds the user '77' and no items",),
    ),
    "lines-not-an-integer": (
        "log.txt",
        GOOD_LINES + "15 3 B00X 4\n",
        "lines",
        (f"line {N_LINES + 1}: the item id 'B00X' is not an integer", "--format lines"),
    ),
    "lines-a-csv-file": (
        "log.txt",
        "user,item,time\n1,2,3\n",
        "lines",
        ("line 1: the user id 'user,item,time' is not an integer", "pass --format csv"),
    ),
    "lines-repeated-user": (
        "log.txt",
        GOOD_LINES + "2 9 9\n",
        "lines",
        (f"line {N_LINES + 1} repeats the user '2' of line 6", "merge"),
    ),
    "pairs-three-fields": (
        "log.txt",
        GOOD_PAIRS + "1 2 3\n",
        "pairs",
        (f"line {N_PAIRS + 1} has 3 fields", "--format lines"),
    ),
    "pairs-one-field": ("log.txt", "1 2\n1\n", "pairs", ("line 2 has 1 field:",)),
    "pairs-not-an-integer": ("log.txt", "1 2\n1 -3\n", "pairs", ("line 2: the item id '-3' is not an integer",)),
    "pairs-blank-line": ("log.txt", GOOD_PAIRS + "\n1 2\n", "pairs", (f"line {N_PAIRS + 1} is blank",)),
    "recbole-no-user-id": (
        "log.inter",
        "uid:token\titem_id:token\n1\t2\n",
        None,
        ("line 1 (the header) has no user_id column", "'uid:token'", "user_id:token"),
    ),
    "recbole-no-header": (
        "log.inter",
        "1\t2\t3\n",
        None,
        ("line 1 (the header) has no user_id column",),
    ),
    "recbole-field-count": (
        "log.inter",
        GOOD_INTER + "1\t2\n",
        None,
        (f"line {N_PAIRS + 2} has 2 tab-separated fields, the header 3",),
    ),
    "recbole-blank-line": ("log.inter", GOOD_INTER + "\n", None, (f"line {N_PAIRS + 2} is blank",)),
    "recbole-missing-item": ("data.txt", HEADER + "1\t\t5\n", "recbole", ("line 2 has no item_id (an empty value)",)),
    "recbole-nan-user": ("log.inter", HEADER + "1\t2\t5\nNaN\t2\t6\n", None, ("line 3 has no user_id ('NaN')",)),
    "recbole-bad-timestamp": (
        "log.inter",
        GOOD_INTER + "1\t2\tyesterday\n2\t2\tinf\n",
        None,
        (f"line {N_PAIRS + 2}: the timestamp 'yesterday' is not a number (the first of 2 such lines)",),
    ),
    "not-utf8": ("log.txt", b"1 2 3\n2 \xff 4\n", "lines", ("line 2 is not valid UTF-8",)),
    "unknown-format": ("log.txt", GOOD_LINES, "jsonl", ("--format 'jsonl' is not a log layout", "lines, pairs")),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_a_malformed_log_is_refused_with_one_line_naming_the_line(tmp_path: Path, name: str) -> None:
    fname, data, fmt, texts = MALFORMED[name]
    path = tmp_path / "src" / fname
    path.parent.mkdir()
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    args = ["prepare", "interactions", "--path", str(path), *(["--format", fmt] if fmt else [])]
    home = tmp_path / "home"
    line = farzictl(*args, home=home).one_error_line()  # exit 2, one `error:` line, no traceback
    if "format" not in name:
        assert str(path) in line, line
    for text in texts:
        assert text in line, line
    assert not (home / "datasets").exists() or list((home / "datasets").iterdir()) == []


def test_column_options_belong_to_csv(tmp_path: Path) -> None:
    path = tmp_path / "log.txt"
    path.write_text(GOOD_LINES)
    with pytest.raises(ConfigError, match="--time-col applies to --format csv only"):
        prepare("interactions", PrepareOptions(path=path, format="lines", time_col="ts"), home=tmp_path)
    with pytest.raises(ConfigError, match="--separator applies to --format csv only"):
        prepare("interactions", PrepareOptions(path=path, format="pairs", separator=" "), home=tmp_path)
    table = tmp_path / "log.parquet"
    pl.DataFrame({"user": ["1"], "item": ["2"], "time": [3]}).write_parquet(table)
    with pytest.raises(ConfigError, match="parquet table"):
        prepare("interactions", PrepareOptions(path=table, format="recbole"), home=tmp_path)


def test_a_header_only_inter_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.inter"
    path.write_text(HEADER)
    with pytest.raises(DataError, match="holds a header and no interactions"):
        prepare("interactions", PrepareOptions(path=path), home=tmp_path)


# ---------------------------------------------------------------- amazon-beauty

BEAUTY = SHARED / "amazon-beauty"
needs_beauty = pytest.mark.skipif(
    not (BEAUTY / "Beauty.txt").is_file(),
    reason=f"Amazon Beauty not found at {BEAUTY} (only the maintainers' checkout has ../shared)",
)


def test_amazon_beauty_needs_a_source_and_says_why(tmp_path: Path) -> None:
    line = farzictl("prepare", "amazon-beauty", home=tmp_path).one_error_line()
    assert "amazon-beauty needs --source DIR with Beauty.txt" in line
    assert "no public URL" in line


def test_amazon_beauty_checks_the_sha256_first(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "Beauty.txt").write_text(GOOD_LINES)
    line = farzictl("prepare", "amazon-beauty", "--source", str(src), home=tmp_path / "home").one_error_line()
    assert "checksum mismatch" in line and "Beauty.txt" in line
    assert f"expected {AMAZON_BEAUTY_SHA256}" in line
    assert "sha256 " in line.split("expected")[0]  # the digest found, then the one expected
    assert not (tmp_path / "home" / "datasets").exists()


@needs_beauty
def test_amazon_beauty_statistics(tmp_path: Path) -> None:
    start = time.perf_counter()
    out = farzictl("prepare", "amazon-beauty", "--source", str(BEAUTY), "--json", home=tmp_path).ok()
    seconds = time.perf_counter() - start
    result = json.loads(out.stdout)
    stats = result["statistics"]
    # the README's figures; Beauty is 5-core (every user has at least 5 items), so --min-length 2 drops nobody
    assert (stats["users"], stats["items"], stats["interactions"]) == (22363, 12101, 198502)
    assert result["extra"] == {"rows_read": 198502, "users_dropped": 0}
    assert (stats["length_min"], stats["length_median"], stats["length_max"]) == (5, 6.0, 204)
    assert {s: v["sequences"] for s, v in stats["splits"].items()} == {"train": 17891, "valid": 2236, "test": 2236}
    ds = load_prepared(result["path"])
    assert ds.vocab.tokens[1:4] == ["1", "2", "3"]  # ids renumbered from 1: item k is token k
    assert ds.params["format"] == "lines" and ds.params["time_order"] == "file"
    assert ds.source["files"][0]["sha256"] == AMAZON_BEAUTY_SHA256
    assert ds.source["files"][0]["sha256_pinned"] is True
    first = {u: s.tolist() for split in ds.splits.values() for u, s in zip(split.ids, split, strict=True)}["1"]
    assert first == [1, 2, 3, 4, 5]  # the file's first line, "1 1 2 3 4 5", in its order
    # the same file through `interactions --format lines` is the same dataset
    same = prepare("interactions", PrepareOptions(path=BEAUTY / "Beauty.txt", format="lines"), home=tmp_path)
    assert same.fingerprint() == result["fingerprint"]
    assert seconds < 60, seconds


@needs_beauty
def test_amazon_beauty_with_a_longer_min_length(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(BEAUTY, src)
    ds = prepare("amazon-beauty", PrepareOptions(source=src, min_length=10), home=tmp_path)
    lengths = [len(line.split()) - 1 for line in (src / "Beauty.txt").read_text().splitlines()]
    kept = [n for n in lengths if n >= 10]
    stats = ds.statistics()
    assert (stats["users"], stats["interactions"]) == (len(kept), sum(kept))
    assert ds.extra["users_dropped"] == 22363 - len(kept)
    assert stats["items"] <= 12101
