"""bench.common.shared_jobs: jobs kept as JSON, shared with other processes on one work directory."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

from bench.common import shared_jobs


def _counting(calls: list[str], key: str, value: int):
    def fn() -> dict:
        calls.append(key)
        return {"value": value}

    return fn


def test_finished_jobs_are_kept_and_not_run_again(tmp_path: Path) -> None:
    calls: list[str] = []
    jobs = [("a", _counting(calls, "a", 1)), ("b", _counting(calls, "b", 2))]
    assert shared_jobs(tmp_path, jobs) == {"a": {"value": 1}, "b": {"value": 2}}
    assert calls == ["a", "b"]
    assert shared_jobs(tmp_path, jobs) == {"a": {"value": 1}, "b": {"value": 2}}
    assert calls == ["a", "b"]  # both came from the store
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]


def test_a_claim_left_by_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "a.claim").write_text(dead.stdout.strip())
    calls: list[str] = []
    assert shared_jobs(tmp_path, [("a", _counting(calls, "a", 7))]) == {"a": {"value": 7}}
    assert calls == ["a"] and not (tmp_path / "a.claim").exists()


def test_a_job_another_live_process_holds_is_waited_for_not_run(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / "b.claim").write_text(str(holder.pid))
        calls: list[str] = []

        def the_other_process_finishes() -> None:
            (tmp_path / "b.json").write_text(json.dumps({"value": "theirs"}))

        timer = threading.Timer(0.3, the_other_process_finishes)
        timer.start()
        got = shared_jobs(tmp_path, [("a", _counting(calls, "a", 1)), ("b", _counting(calls, "b", 2))], poll=0.05)
        timer.join()
        assert got == {"a": {"value": 1}, "b": {"value": "theirs"}}
        assert calls == ["a"]  # its own job first, then it waited for the held one
    finally:
        holder.kill()
        holder.wait()


def test_a_store_kept_for_other_settings_is_refused(tmp_path: Path) -> None:
    import pytest

    calls: list[str] = []
    shared_jobs(tmp_path, [("a", _counting(calls, "a", 1))], settings={"lr": 1e-3})
    assert shared_jobs(tmp_path, [("a", _counting(calls, "a", 1))], settings={"lr": 1e-3}) == {"a": {"value": 1}}
    with pytest.raises(ValueError, match="holds jobs of other settings"):
        shared_jobs(tmp_path, [("a", _counting(calls, "a", 2))], settings={"lr": 5e-4})
    assert calls == ["a"]


def test_held_elsewhere_sees_another_holder_of_the_lock(tmp_path: Path) -> None:
    import fcntl

    from bench.common import held_elsewhere

    lock = tmp_path / ".setup.lock"
    assert not held_elsewhere(lock)  # created, free
    with open(lock, "w") as other:  # another open file holds it, as another process would
        fcntl.flock(other, fcntl.LOCK_EX)
        assert held_elsewhere(lock)
    assert not held_elsewhere(lock)


def test_while_another_process_trains_omega_the_students_that_need_none_run_first(tmp_path: Path) -> None:
    import fcntl

    from bench.common import settings
    from bench.experiments.sample_efficiency import table
    from bench.table import run_table

    s = settings("rec", smoke=True)
    out: dict = {}
    with open(tmp_path / ".setup.lock", "w") as other:
        fcntl.flock(other, fcntl.LOCK_EX)  # "another process" is training Omega
        worker = threading.Thread(target=lambda: out.update(run_table(table(s), s, tmp_path, 1, smoke=True)))
        worker.start()
        for _ in range(600):
            early = [n for n in ("full", "random-4", "head-4") if list((tmp_path / "jobs").glob(f"{n}-1-*.json"))]
            if len(early) == 3 or not worker.is_alive():
                break
            worker.join(0.2)
        assert len(early) == 3, sorted(p.name for p in (tmp_path / "jobs").glob("*"))
        assert not (tmp_path / "trajectories").exists()  # ... and nothing that needs Omega ran meanwhile
        assert not list((tmp_path / "jobs").glob("farzi-*.json")) and not (tmp_path / "bundles").exists()
    worker.join(300)
    assert not worker.is_alive()
    data = {r["data"] for r in out["runs"]}
    assert {"full", "random:4", "head:4"} <= data and any(d.startswith("farzi") for d in data)
