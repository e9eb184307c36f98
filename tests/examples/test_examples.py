"""Every script in examples/ runs end to end on tiny inputs (each is a real farzictl pipeline)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from shared_data import REPO, SHARED, needs_shared

TINY_MODEL = "--max-len 16 --d-model 8 --n-layers 1"
TINY = {
    "RUNS": "1",
    "TRAJ_STEPS": "4",
    "OUTER_STEPS": "2",
    "INNER_STEPS": "2",
    "STUDENT_STEPS": "3",
    "MODEL_ARGS": TINY_MODEL,
}


def _run(script: str, args: list[str], home: Path, **env: str) -> subprocess.CompletedProcess:
    full_env = {
        **os.environ,
        **TINY,
        **env,
        "FARZI_HOME": str(home),
        "OMP_NUM_THREADS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    proc = subprocess.run(
        ["bash", str(REPO / "examples" / script), *args], env=full_env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return proc


def test_byo_interactions(tmp_path: Path) -> None:
    rng = random.Random(0)
    lines = ["uid,movie,ts"]
    for user in range(40):
        for t in range(rng.randint(3, 12)):
            lines.append(f"u{user},m{rng.randint(0, 25)},{1000 * user + t}")
    log = tmp_path / "log.csv"
    log.write_text("\n".join(lines) + "\n")
    proc = _run("byo-interactions.sh", [str(log), "uid", "movie", "ts"], tmp_path / "home", BUDGET="3x4")
    assert "HR@10" in proc.stdout
    assert (tmp_path / "home" / "datasets" / "my-interactions" / "manifest.json").is_file()


def test_byo_text(tmp_path: Path) -> None:
    rng = random.Random(1)
    words = [f"w{i}" for i in range(30)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choices(words, k=rng.randint(3, 9))) for _ in range(80)) + "\n")
    proc = _run("byo-text.sh", [str(corpus)], tmp_path / "home", BUDGET="3x6", VOCAB_SIZE="20")
    assert proc.stdout.count("ppl_corpus") == 2


@needs_shared
def test_ml100k_example(tmp_path: Path) -> None:
    proc = _run("ml100k.sh", [], tmp_path / "home", ML100K_SOURCE=str(SHARED / "ml-100k"), BUDGET="3x8")
    rows = [line.split() for line in proc.stdout.splitlines() if line.strip()]
    assert rows[-5][0] == "data" and [r[0] for r in rows[-3:]] == ["random:3", "head:3", "full"]


@needs_shared
def test_ptb_offline_example(tmp_path: Path) -> None:
    proc = _run("ptb.sh", [], tmp_path / "home", DATASET="ptb-offline", PTB_SOURCE=str(SHARED / "ptb"), BUDGET="3x8")
    rows = [line.split() for line in proc.stdout.splitlines() if line.strip()]
    assert rows[0][0] == "data" and [r[0] for r in rows[-3:]] == ["random:3", "head:3", "full"]


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "examples").glob("*.sh")))
def test_every_example_is_tested(script: str) -> None:
    tested = {"byo-interactions.sh", "byo-text.sh", "ml100k.sh", "ptb.sh"}
    assert script in tested, f"examples/{script} has no test"
