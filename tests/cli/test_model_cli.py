"""`farzictl trajectories`, `train-student` and `eval` through the real entry point.

Every run goes through the shared in-process helper (``tests/cli_runner.py``:
``farzictl.app.main`` under Typer's ``CliRunner`` isolation) on one workspace:
prepare, trajectories, train-student, eval of the student, and the bad inputs,
checked as a shell sees them: exit status (0, or 2 with exactly one ``error:``
line on stderr and no traceback) and output. One bad input runs as a real
process (``python -m farzictl``), the smoke test of the module entry point.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from cli_runner import Outcome, farzictl, farzictl_process

from farzi.checkpoint import dataset_record, save_checkpoint
from farzi.data.prepare import PrepareOptions, prepare
from farzi.models import build_model, make_config

DATASET = "synthetic-rec"
TINY = ["--d-model", "8", "--n-layers", "1", "--max-len", "20"]

# (arguments, texts the single error line must hold). {foreign} is a model trained on
# another dataset ('other': same source, another seed); {corrupt} a truncated copy of it.
BAD_INPUT = {
    "unknown-model": (["train-student", DATASET, "--model", "nosuch"], ("unknown model 'nosuch'", "sasrec")),
    "empty-sample": (["train-student", DATASET, "--data", "random:0"], ("empty sample",)),
    "sample-too-large": (
        ["train-student", DATASET, "--data", "random:100000"],
        ("more sequences than the 80 training sequences",),
    ),
    "head-not-a-number": (["train-student", DATASET, "--data", "head:abc"], ("head needs a count", "head:N")),
    "max-len-zero": (["trajectories", DATASET, "--max-len", "0"], ("--max-len 0 must be at least 2",)),
    "other-dataset": (["eval", "{foreign}", "--dataset", DATASET], ("was trained on", "'other'", f"'{DATASET}'")),
    "corrupt-checkpoint": (["eval", "{corrupt}"], ("model.safetensors", "truncated")),
    "unknown-split": (["eval", "{foreign}", "--split", "nope"], ("unknown split 'nope'",)),
    "too-many-negatives": (["eval", "{foreign}", "--negatives", "100000"], ("--negatives 100000 is more than",)),
    "negatives-below-zero": (["eval", "{foreign}", "--negatives", "-1"], ("--negatives",)),
    "unknown-negative-sampling": (["eval", "{foreign}", "--negative-sampling", "zipf"], ("zipf",)),
}
AS_SUBPROCESS = "corrupt-checkpoint"


def _ok(outcome: Outcome) -> dict:
    outcome.ok()
    assert outcome.stderr == "", outcome.stderr
    return json.loads(outcome.stdout)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # module scope: set up before conftest's per-test thread limit
    try:
        yield _run_all(tmp_path_factory.mktemp("home"))
    finally:
        torch.set_num_threads(before)


def _run_all(home: Path) -> dict:
    out: dict = {"home": home}
    size = ["--synthetic-vocab", "40", "--synthetic-sequences", "100"]
    out["prepare"] = farzictl("prepare", DATASET, *size, "--json", home=home)
    # another dataset (same source, another seed), a model of it, and a truncated copy
    other = prepare("synthetic-rec", PrepareOptions(synthetic_vocab=40, synthetic_sequences=100, seed=7), "other", home)
    torch.manual_seed(0)
    cfg = make_config("sasrec", other.vocab_size, d_model=8, n_layers=1, max_len=20)
    foreign = home / "foreign" / "model.safetensors"
    save_checkpoint(foreign, build_model("sasrec", cfg), dataset_record(other))
    corrupt = home / "corrupt"
    shutil.copytree(foreign.parent, corrupt)
    data = (corrupt / "model.safetensors").read_bytes()
    (corrupt / "model.safetensors").write_bytes(data[: len(data) // 2])
    out["fill"] = {"foreign": str(foreign.parent), "corrupt": str(corrupt)}
    with ThreadPoolExecutor(max_workers=1) as pool:  # the process starts torch while the rest runs here
        process = pool.submit(
            farzictl_process, *[a.format(**out["fill"]) for a in BAD_INPUT[AS_SUBPROCESS][0]], home=home
        )
        common = ["--max-steps", "10", *TINY, "--json"]
        out["trajectories"] = farzictl("trajectories", DATASET, "--runs", "1", "--every", "5", *common, home=home)
        out["student"] = farzictl("train-student", DATASET, "--data", "random:10", *common, home=home)
        ok = out["student"].code == 0
        out["model"] = json.loads(out["student"].stdout)["path"] if ok else str(home / "missing")
        out["eval"] = farzictl("eval", out["model"], "--json", home=home)
        out[AS_SUBPROCESS] = process.result()
    return out


def test_prepare(runs: dict) -> None:
    doc = _ok(runs["prepare"])
    assert doc["name"] == DATASET and doc["task"] == "rec"
    assert doc["statistics"]["splits"]["train"]["sequences"] == 80


def test_trajectories(runs: dict) -> None:
    doc = _ok(runs["trajectories"])
    path = Path(doc["path"])
    assert path == runs["home"] / "trajectories" / DATASET / "sasrec"
    assert (doc["model"], doc["runs"], doc["every"], doc["checkpoints"]) == ("sasrec", 1, 5, 3)
    assert doc["summaries"][0]["steps"] == 10
    assert sorted(p.name for p in path.iterdir()) == [
        "manifest.json",
        "run0-step0.safetensors",
        "run0-step10.adam.safetensors",
        "run0-step10.safetensors",
        "run0-step5.adam.safetensors",
        "run0-step5.safetensors",
    ]
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["config"]["d_model"] == 8 and manifest["config"]["max_len"] == 20


def test_train_student(runs: dict) -> None:
    doc = _ok(runs["student"])
    path = Path(doc["path"])
    assert path == runs["home"] / "models" / DATASET / "sasrec-random-10-s0"
    assert sorted(p.name for p in path.iterdir()) == ["model.json", "model.safetensors"]
    assert doc["model"] == "sasrec" and doc["data"]["kind"] == "random" and doc["data"]["n"] == 10
    # students select their best state on validation cross-entropy by default
    assert doc["result"]["steps"] == 10 and doc["result"]["metric"] == "xent"
    assert [p["step"] for p in doc["curve"]] == [10]


def test_eval(runs: dict) -> None:
    doc = _ok(runs["eval"])
    assert {"hr@10", "ndcg@10", "hr@100", "ndcg@100", "auc"} <= set(doc)
    assert (doc["dataset"], doc["model_name"], doc["split"], doc["users"]) == (DATASET, "sasrec", "test", 10)
    assert doc["hr@100"] == 100.0  # 40 items
    assert 0.0 <= doc["hr@10"] <= 100.0 and 0.0 <= doc["auc"] <= 1.0
    assert "strata" not in doc


def test_eval_stratified(runs: dict) -> None:
    plain = _ok(runs["eval"])
    doc = _ok(farzictl("eval", runs["model"], "--stratify", "popularity", "--json", home=runs["home"]))
    assert {k: doc[k] for k in plain} == plain  # the same metrics, plus the strata
    assert set(doc["strata"]) == {"item_popularity", "user_activity"}
    for rows in doc["strata"].values():
        assert [r["decile"] for r in rows] == list(range(1, 11))
        assert sum(r["users"] for r in rows) == doc["users"]


def test_eval_with_sampled_negatives(runs: dict) -> None:
    args = ("eval", runs["model"], "--negatives", "3", "--negative-sampling", "popularity", "--json")
    doc = _ok(farzictl(*args, "--seed", "3", home=runs["home"]))
    assert doc["ranking"] == "3 popularity negatives, seed 3" and _ok(runs["eval"])["ranking"] == "full"
    assert doc["hr@10"] == 100.0 and doc["users"] == 10  # 4 candidates: every target in the top 10
    assert _ok(farzictl(*args, "--seed", "3", home=runs["home"])) == doc  # same seed, same negatives


@pytest.mark.parametrize("name", list(BAD_INPUT))
def test_bad_input_fails_cleanly(runs: dict, name: str) -> None:
    args, expected = BAD_INPUT[name]
    if name == AS_SUBPROCESS:  # a real process: what a shell sees, byte for byte
        proc = runs[name]
        assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stdout + proc.stderr
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
        line = lines[0]
    else:
        line = farzictl(*[a.format(**runs["fill"]) for a in args], home=runs["home"]).one_error_line()
    assert line[len("error: ") :].strip(), line
    for text in expected:
        assert text in line, line


def test_failed_commands_leave_nothing_behind(runs: dict) -> None:
    home: Path = runs["home"]
    for name in ("unknown-model", "sample-too-large"):
        farzictl(*BAD_INPUT[name][0], home=home).one_error_line()
    assert [p for p in home.rglob("*") if ".tmp-" in p.name or ".old-" in p.name] == []
    assert [p.name for p in (home / "models" / DATASET).iterdir()] == ["sasrec-random-10-s0"]
