"""Helpers shared by the experiments: machine facts, timing, results files."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

import farzi

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
REPO = BENCH.parent
SHARED = REPO.parent / "shared" / "datasets"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": mem,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "farzi": farzi.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        "load_average": load_average(),
    }


def load_average() -> list[float] | None:
    """The machine's 1, 5 and 15 minute load averages (other people's work included), where the OS has them."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def peak_rss_mib() -> float:
    """This process's resident-set high-water mark (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def stopwatch(into: dict[str, float], key: str):
    start = time.perf_counter()
    yield
    into[key] = round(time.perf_counter() - start, 3)


def write_result(name: str, payload: dict[str, Any], results: Path = RESULTS) -> Path:
    results.mkdir(parents=True, exist_ok=True)
    payload = {
        "experiment": name,
        "machine": machine(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **payload,
    }
    path = results / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def run_json(cmd: list[str], timeout: float | None = None) -> dict[str, Any]:
    """Run a command that prints one JSON document on stdout; return it."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout)


def python() -> str:
    return sys.executable


# ----------------------------------------------------- work that several processes share


@contextmanager
def exclusive(path: Path):
    """Hold an exclusive lock on ``path`` (created if missing) for the block: other processes wait."""
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def held_elsewhere(path: Path) -> bool:
    """Whether another process holds :func:`exclusive`'s lock on ``path`` now (without waiting)."""
    with open(path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock, fcntl.LOCK_UN)
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _claim(path: Path) -> bool:
    """Take a job for this process: False when another live process holds it."""
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = int(path.read_text() or "0")
            except (OSError, ValueError):
                holder = 0
            if holder and _alive(holder):
                return False
            path.unlink(missing_ok=True)  # left by a killed run: take it over
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        return True
    return False


def as_json(x: Any) -> Any:
    """``x`` as it reads back from JSON (keys sorted, tuples as lists, other objects as strings): what
    two sets of settings are compared as."""
    return json.loads(json.dumps(x, sort_keys=True, default=str))


# DistillConfig fields added after work directories began to hold bundles and results: left out of what
# those are keyed on while at these values (what ran before the field existed), so that a work directory
# stays valid; a new default that runs something else (init_windows' auto) is keyed, as it should be
ADDED_LATER: dict[str, Any] = {"omega_max_step": 0, "init_windows": "within"}


def keyed_config(cfg: Any) -> dict[str, Any]:
    """A config dataclass as work directories key on it: every field but those of ``ADDED_LATER`` at
    their earlier behaviour."""
    d = dataclasses.asdict(cfg)
    return {k: v for k, v in d.items() if not (k in ADDED_LATER and v == ADDED_LATER[k])}


def shared_jobs(
    store: Path,
    jobs: list[tuple[str, Callable[[], dict[str, Any]]]],
    on_done: Callable[[str, dict[str, Any]], None] | None = None,
    poll: float = 5.0,
    settings: Any = None,
) -> dict[str, dict[str, Any]]:
    """Run ``jobs`` (key, function returning a JSON-able dict), sharing them with other processes.

    Each finished job is kept as ``STORE/KEY.json``; a job that another live process holds
    (``STORE/KEY.claim`` with its pid) is left to it and waited for, and one whose holder died
    is taken over. So ``python -m bench run X --work DIR`` started twice on one ``DIR`` splits
    the jobs between the two (one core each with ``--threads 1``), and a rerun after a kill
    redoes only what is missing. ``settings`` (JSON-able) is what the jobs' results depend on beyond
    their keys: it is kept as ``STORE/settings.json``, and a store kept for other settings is
    refused (its results would be taken for these). Returns every job's result, all finished.
    """
    store.mkdir(parents=True, exist_ok=True)
    if settings is not None:
        wanted = as_json(settings)
        kept = store / "settings.json"
        if not kept.is_file():
            tmp = store / f".settings.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(wanted, sort_keys=True))
            try:
                os.link(tmp, kept)  # the first process's settings win; a second one compares with them
            except FileExistsError:
                pass
            tmp.unlink()
        if json.loads(kept.read_text()) != wanted:
            raise ValueError(
                f"{store} holds jobs of other settings than these; pass another --work (or remove {store})"
            )
    done: dict[str, dict[str, Any]] = {}

    def attempt(key: str, fn: Callable[[], dict[str, Any]]) -> None:
        result_file, claim_file = store / f"{key}.json", store / f"{key}.claim"
        if result_file.is_file():
            done[key] = json.loads(result_file.read_text())
            return
        if not _claim(claim_file):
            return
        result = fn()
        text = json.dumps(result, default=str)
        tmp = store / f".{key}.json.tmp"
        tmp.write_text(text)
        tmp.replace(result_file)
        claim_file.unlink(missing_ok=True)
        done[key] = json.loads(text)  # as a kept job reads back (JSON types)
        if on_done is not None:
            on_done(key, done[key])

    while True:
        for key, fn in jobs:
            if key not in done:
                attempt(key, fn)
        if len(done) == len(jobs):
            return {key: done[key] for key, _ in jobs}
        time.sleep(poll)
