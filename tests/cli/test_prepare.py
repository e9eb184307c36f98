"""`farzictl prepare` on bad input: exit 2, one `error:` line, nothing half-written.

Every case runs the real entry point (`python -m farzictl ... --home HOME`) in a
subprocess. Interpreter start-up dominates, so the module starts all runs at
once (a thread pool) and each test then checks one finished run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

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
    proc: subprocess.CompletedProcess


def _run(case: Case, root: Path) -> Run:
    src, home = root / "src", root / "home"
    src.mkdir(parents=True)
    for name, data in case.files.items():
        (src / name).write_bytes(data.encode() if isinstance(data, str) else data)
    args = [a.format(src=src) for a in case.args]
    env = {k: v for k, v in os.environ.items() if k != "FARZI_HOME"}
    proc = subprocess.run(
        [sys.executable, "-m", "farzictl", "prepare", *args, "--home", str(home)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return Run(home=home, src=src, proc=proc)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    cases = {**BAD_INPUT, "success": SUCCESS}
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {name: pool.submit(_run, case, tmp_path_factory.mktemp(name)) for name, case in cases.items()}
        return {name: fut.result() for name, fut in futures.items()}


@pytest.mark.parametrize("name", list(BAD_INPUT))
def test_bad_input_fails_cleanly(runs: dict[str, Run], name: str) -> None:
    run = runs[name]
    proc = run.proc
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("error: ") and line[len("error: ") :].strip(), line
    for text in BAD_INPUT[name].expected:
        assert text in line, line
    # nothing half-written: no dataset directory, no temporary directories or files
    datasets = run.home / "datasets"
    assert not datasets.exists() or list(datasets.iterdir()) == []
    written = [p for p in run.home.rglob("*") if ".tmp-" in p.name or ".part-" in p.name]
    assert written == []


def test_success_exits_zero_with_a_quiet_stderr(runs: dict[str, Run]) -> None:
    run = runs["success"]
    assert run.proc.returncode == 0, run.proc.stderr
    assert run.proc.stderr == ""  # no progress-bar residue when stderr is not a terminal
    assert "tiny (rec)" in run.proc.stdout
    datasets = run.home / "datasets"
    assert [p.name for p in datasets.iterdir()] == ["tiny"]
    assert sorted(p.name for p in (datasets / "tiny").iterdir()) == [
        "manifest.json",
        "test.parquet",
        "train.parquet",
        "valid.parquet",
        "vocab.json",
    ]
    manifest = json.loads((datasets / "tiny" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["statistics"]["users"] == 12
