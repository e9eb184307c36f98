"""The scale-out benchmark's rank: its row is out and its status its own, whatever teardown does."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from bench.common import REPO
from bench.experiments.scale_out import WORKER
from farzi.data.prepare import PrepareOptions, prepare


def test_a_worker_leaves_without_the_interpreters_teardown(tmp_path: Path) -> None:
    ds = prepare("synthetic-rec", PrepareOptions(synthetic_vocab=20, synthetic_sequences=30), home=tmp_path)
    # an atexit abort stands in for a process group's thread aborting the rank at teardown (seen in CI)
    run_worker = (
        "import atexit, os, runpy, sys; atexit.register(os.abort); "
        f"sys.argv = [{str(WORKER)!r}, 'memory', '--dataset', {str(ds.path)!r}]; "
        f"runpy.run_path({str(WORKER)!r}, run_name='__main__')"
    )
    res = subprocess.run([sys.executable, "-c", run_worker], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert res.returncode == 0, res.stderr
    row = json.loads(res.stdout.strip().splitlines()[-1])
    assert row["rank"] == 0 and row["ranks"] == 1 and row["train_tokens"] > 0
    # without leaving early the same abort ends the process (what the worker's exit avoids)
    plain = "import atexit, os; atexit.register(os.abort)"
    assert subprocess.run([sys.executable, "-c", plain], timeout=60).returncode == -signal.SIGABRT
