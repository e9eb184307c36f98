"""`farzictl prepare` on bad input: exit 2, one `error:` line, nothing half-written.

Every case runs the real entry point in this process through the shared helper
(``tests/cli_runner.py``), each on its own workspace and input directory; the
module fixture runs them all once and each test checks one finished run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cli_runner import Outcome, farzictl

# twelve users with two interactions each: enough for train/validation/test
GOOD_LOG = "user,item,time\n" + "".join(f"{u},{u % 4},{t}\n" for u in range(12) for t in range(2))
ONE_EACH = "user,item,time\n" + "".join(f"{u},7,1\n" for u in range(20))


@dataclass
class Case:
    """``args`` after ``prepare``; ``{src}`` stands for the case's own input directory."""

    args: list[str]
    expected: tuple[str, ...] = ()
    files: dict[str, str | bytes] = field(default_factory=dict)  # written under {src}


BAD_INPUT = {
    "unknown-dataset": Case(["imagenet"], ("unknown dataset 'imagenet'", "choose one of: ptb")),
    "netflix-without-source": Case(["netflix"], ("netflix needs --source DIR",)),
    "source-does-not-exist": Case(["ml-100k", "--source", "{src}/nowhere"], ("--source", "nowhere does not exist")),
    "missing-file-in-source": Case(
        ["ptb", "--source", "{src}"],
        ("ptb.train.txt is missing",),
        files={"ptb.valid.txt": " a b \n"},
    ),
    "empty-file": Case(["ml-100k", "--source", "{src}"], ("u.data is empty",), files={"u.data": ""}),
    "malformed-line-interactions": Case(
        ["interactions", "--path", "{src}/log.csv"],
        ("column 'time' (--time-col) has 1 value(s) that are not a time", "'yesterday' at data row 25"),
        files={"log.csv": GOOD_LOG + "5,1,yesterday\n"},
    ),
    "checksum-mismatch": Case(
        ["ptb-offline", "--source", "{src}"],
        ("checksum mismatch", "ptb.valid.txt", "expected aa0affc06ff7c36e977d7cd49e3839bf"),
        files={"ptb.valid.txt": " not the penn treebank \n", "ptb.test.txt": " nor this \n"},
    ),
    "nonexistent-column": Case(
        ["interactions", "--path", "{src}/log.csv", "--user-col", "uid"],
        ("no column 'uid'", "--user-col"),
        files={"log.csv": GOOD_LOG},
    ),
    "no-users-left": Case(
        ["interactions", "--path", "{src}/log.csv"],
        ("no users left", "20 interaction rows read"),
        files={"log.csv": ONE_EACH},
    ),
    "bad-option-value": Case(["ml-100k", "--seed", "abc"], ("Invalid value for '--seed'",)),
}
SUCCESS = Case(["interactions", "--path", "{src}/log.csv", "--name", "tiny"], files={"log.csv": GOOD_LOG})


@dataclass
class Run:
    home: Path
    src: Path
    proc: Outcome


def _run(case: Case, root: Path) -> Run:
    src, home = root / "src", root / "home"
    src.mkdir(parents=True)
    for name, data in case.files.items():
        (src / name).write_bytes(data.encode() if isinstance(data, str) else data)
    args = [a.format(src=src) for a in case.args]
    return Run(home=home, src=src, proc=farzictl("prepare", *args, home=home))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    cases = {**BAD_INPUT, "success": SUCCESS}
    return {name: _run(case, tmp_path_factory.mktemp(name)) for name, case in cases.items()}


@pytest.mark.parametrize("name", list(BAD_INPUT))
def test_bad_input_fails_cleanly(runs: dict[str, Run], name: str) -> None:
    run = runs[name]
    line = run.proc.one_error_line()  # exit 2, one `error:` line, no traceback
    assert line[len("error: ") :].strip(), line
    for text in BAD_INPUT[name].expected:
        assert text in line, line
    # nothing half-written: no dataset directory, no temporary directories or files
    datasets = run.home / "datasets"
    assert not datasets.exists() or list(datasets.iterdir()) == []
    written = [p for p in run.home.rglob("*") if ".tmp-" in p.name or ".part-" in p.name]
    assert written == []


def test_success_exits_zero_with_a_quiet_stderr(runs: dict[str, Run]) -> None:
    run = runs["success"]
    run.proc.ok()
    assert run.proc.stderr == ""  # no progress-bar residue when stderr is not a terminal
    assert "tiny (rec)" in run.proc.stdout
    datasets = run.home / "datasets"
    assert [p.name for p in datasets.iterdir()] == ["tiny"]
    assert sorted(p.name for p in (datasets / "tiny").iterdir()) == [
        "manifest.json",
        "test.offsets.npy",
        "test.parquet",
        "test.tokens.npy",
        "train.offsets.npy",
        "train.parquet",
        "train.tokens.npy",
        "valid.offsets.npy",
        "valid.parquet",
        "valid.tokens.npy",
        "vocab.json",
    ]
    manifest = json.loads((datasets / "tiny" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["statistics"]["users"] == 12
