"""Running one command as several ranks: ``--nproc N`` on this machine, or under ``torchrun``.

``--nproc N`` starts N copies of the same command line (without ``--nproc``) as child
processes that meet through a ``file://`` store in a temporary directory (no network
port to choose). Rank 0's output is this command's output; the other ranks' is kept
aside. A watchdog here ends the job when one rank fails: the ranks left see the lost
peer at their next collective (or after ``--rank-timeout`` seconds), stop without a
word, and this process prints the one line that says which rank stopped and why.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import typer

from farzi import limits
from farzi.device import resolve_device
from farzi.distill.parallel import LOCAL, Collective
from farzi.distributed import DEFAULT_TIMEOUT, INIT_METHOD_ENV, RESUME_FIX, RankLost, launched, ranks
from farzi.errors import ConfigError
from farzictl import ui

LAUNCHER_ENV = "FARZI_LAUNCHER"  # set in the ranks --nproc starts
REFUSED_GRACE = 2.0  # seconds the other ranks get to end by themselves once rank 0 stopped with an error
RANK_LOST_EXIT = 75  # a rank of --nproc that lost its peers: the launcher reports the cause
ARGV: list[str] = []  # the command line farzictl.app.main was given


def check_nproc(nproc: int, device: str = "cpu", oversubscribe: bool = False) -> None:
    """Refuse, before any rank starts, a rank count this machine cannot hold: below 1, under torchrun,
    more ranks than cores (unless ``oversubscribe``, as ``mpirun --oversubscribe``) or, with a CUDA
    ``device``, than GPUs (each rank takes one; CUDA asked for where there is none is one line too)."""
    if nproc < 1:
        raise ConfigError(f"--nproc {nproc} must be at least 1", "pass e.g. --nproc 2")
    if nproc == 1:
        return
    if launched():
        raise ConfigError("--nproc was given to a rank of a job already launched (torchrun)", "drop --nproc")
    dev = resolve_device(device)
    if dev.type == "cuda":
        import torch

        gpus = torch.cuda.device_count()
        if nproc > gpus:
            raise ConfigError(
                f"--nproc {nproc} is more ranks than the {gpus} GPU(s) of this machine (each rank takes one)",
                f"pass --nproc {gpus} or fewer, or --device cpu",
            )
        return
    cores = limits.usable_cores()
    if nproc > cores and not oversubscribe:
        raise ConfigError(
            f"--nproc {nproc} is more ranks than the {cores} core(s) this process may use",
            f"pass --nproc {cores} or fewer, or add --oversubscribe to run more ranks than cores",
        )
    limit = oversubscribed_limit()
    if nproc > limit:
        raise ConfigError(
            f"--nproc {nproc} ranks would need about {nproc * RANK_MEMORY / 2**30:.1f} GiB before any work "
            f"({RANK_MEMORY / 2**20:.0f} MiB per rank for the interpreter and torch), more than this machine has free",
            f"pass --nproc {limit} or fewer",
        )


RANK_MEMORY = 400 << 20  # one rank before any work: interpreter, torch, gloo (the imports alone: 260 MiB RSS)


def oversubscribed_limit() -> int:
    """The most ranks the memory this process may use can start at all (each a Python with torch)."""
    return max(int(limits.available_memory() // RANK_MEMORY), 1)


def output_claim(plan_only: bool, claim: Callable[[], contextlib.AbstractContextManager[Any]]):
    """The claim on a command's output, taken before its cost probe so that a second writer or a bad
    ``--out`` is refused at once: by rank 0 of a job, or the one process (``--plan`` alone writes nothing
    and claims nothing; the library joins a claim its caller holds)."""
    if plan_only or os.environ.get("RANK", "0") not in ("", "0"):
        return contextlib.nullcontext()
    return claim()


@contextlib.contextmanager
def rank_scope(device: str, timeout: float) -> Iterator[Collective]:
    """This process's collective for one command; under ``--nproc`` a lost peer ends it quietly
    (exit status :data:`RANK_LOST_EXIT`): the launcher prints the cause."""
    try:
        with ranks("cuda" if str(device).startswith("cuda") else "cpu", timeout) as collective:
            yield collective
    except RankLost:
        if os.environ.get(LAUNCHER_ENV):
            raise typer.Exit(RANK_LOST_EXIT) from None
        raise


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def _pump(src: IO[bytes], dst: IO[str]) -> None:
    """Copy a child's output to ours as it comes (text streams of this process, which tests capture)."""
    for chunk in iter(lambda: src.read1(65536), b""):  # type: ignore[attr-defined]
        dst.write(chunk.decode("utf-8", "replace"))
        dst.flush()


def spawn(nproc: int, timeout: float, argv: list[str] | None = None) -> int:
    """Run ``python -m farzictl ARGV`` (default: this command line without ``--nproc``) as ``nproc``
    ranks here; return the exit status for the whole job, having printed at most one error line."""
    args = _without_nproc(argv if argv is not None else (ARGV or sys.argv[1:]))
    store = Path(tempfile.mkdtemp(prefix="farzi-ranks-"))
    root = str(Path(__file__).resolve().parents[1])  # the ranks run this very farzictl
    base = dict(os.environ)
    base["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [base.get("PYTHONPATH")])])
    base.setdefault("OMP_NUM_THREADS", "1")  # as torchrun does: N ranks share the cores
    base.update({INIT_METHOD_ENV: f"file://{store / 'rendezvous'}", "WORLD_SIZE": str(nproc), LAUNCHER_ENV: "1"})
    base["LOCAL_WORLD_SIZE"] = str(nproc)
    procs: list[subprocess.Popen] = []
    logs: list[IO[bytes]] = []
    pumps: list[threading.Thread] = []
    exits: list[tuple[float, int, int]] = []  # (time, rank, status) in the order they ended
    try:
        for r in range(nproc):
            env = {**base, "RANK": str(r), "LOCAL_RANK": str(r)}
            cmd = [sys.executable, "-m", "farzictl", *args]
            if r == 0:
                err = None if _is_tty(sys.stderr) else subprocess.PIPE
                p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err)
                pumps.append(threading.Thread(target=_pump, args=(p.stdout, sys.stdout), daemon=True))
                if err is not None:
                    pumps.append(threading.Thread(target=_pump, args=(p.stderr, sys.stderr), daemon=True))
            else:
                log = open(store / f"rank{r}.err", "wb")  # noqa: SIM115 - closed below
                logs.append(log)
                p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
            procs.append(p)
        for t in pumps:
            t.start()
        deadline = None
        while len(exits) < nproc:
            for r, p in enumerate(procs):
                if p.returncode is None and p.poll() is not None:
                    exits.append((time.monotonic(), r, p.returncode))
                    if r == 0 and p.returncode not in (0, RANK_LOST_EXIT):
                        # rank 0 refused the job with its own error line (before the ranks met, maybe):
                        # the others cannot go on without it, nor add to its verdict
                        deadline = min(deadline or math.inf, time.monotonic() + REFUSED_GRACE)
                    elif (p.returncode != 0 or r == 0) and deadline is None:
                        deadline = time.monotonic() + timeout + 10  # the rest stop at their next collective
            if deadline is not None and time.monotonic() > deadline:
                for r, p in enumerate(procs):
                    if p.poll() is None:
                        p.kill()
                        p.wait()
                        exits.append((time.monotonic(), r, -9))
            time.sleep(0.05)
        for t in pumps:
            t.join(timeout=5)
    except KeyboardInterrupt:
        for p in procs:
            with contextlib.suppress(OSError):
                p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        raise
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()
        errors = {r: _error_line(store / f"rank{r}.err") for r in range(1, nproc)}
        shutil.rmtree(store, ignore_errors=True)
    return _verdict(exits, nproc, errors, timeout)


def _is_tty(stream: IO[str]) -> bool:
    try:
        return stream.isatty() and stream.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


def _error_line(path: Path) -> str | None:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    found = [x for x in lines if x.startswith("error: ")]
    return found[-1].removeprefix("error: ") if found else None


def _verdict(exits: list[tuple[float, int, int]], nproc: int, errors: dict[int, str | None], timeout: float) -> int:
    status = {r: code for _, r, code in exits}
    if all(code == 0 for code in status.values()):
        return 0
    if status.get(0) not in (0, RANK_LOST_EXIT, None) and status[0] > 0:
        return status[0]  # rank 0 printed its own error line
    failed = [(r, code) for _, r, code in exits if code not in (0, RANK_LOST_EXIT)]
    if not failed:  # every rank lost the others: one of them stopped answering
        print(
            f"error: the ranks of this job lost each other (no answer within {timeout:g} s); {RESUME_FIX}",
            file=sys.stderr,
        )
        return 2
    r, code = failed[0]
    if code > 0 and errors.get(r):
        print(f"error: rank {r} of {nproc}: {errors[r]}", file=sys.stderr)
        return 2
    how = f"exit status {code}"
    if code < 0:
        with contextlib.suppress(ValueError):
            how = f"killed by {signal.Signals(-code).name}"
    print(f"error: rank {r} of {nproc} died ({how}); the other ranks were stopped; {RESUME_FIX}", file=sys.stderr)
    return 2


# ------------------------------------------------------------------ running a command's job
@dataclass
class Job:
    """What a command runs, for :func:`run_job`: ``run(progress, collective)`` does the work; ``plan()``
    projects its cost (``--plan``), ``claim()`` claims its output before the cost probe, and a job with
    ``ranks`` may run as several ranks (``--nproc``, torchrun) on ``device``."""

    run: Callable[[Any, Collective], Any]
    device: str = "cpu"
    plan: Callable[[], Any] | None = None
    claim: Callable[[], contextlib.AbstractContextManager[Any]] | None = None
    ranks: bool = False


def run_job(
    job: Job,
    plan_only: bool = False,
    json_out: bool = False,
    nproc: int = 1,
    oversubscribe: bool = False,
    rank_timeout: float = DEFAULT_TIMEOUT,
) -> tuple[Any, Any] | None:
    """Run ``job`` as every command runs its work: ``--nproc`` ranks (checked, then started), ``--plan``
    alone (printed, exit 0), else the output claimed, the cost probed and announced, the work under
    progress bars. Returns (result, plan) on the process that reports, None on the other ranks."""
    if job.ranks:
        check_nproc(nproc, job.device, oversubscribe)
        if nproc > 1:
            raise typer.Exit(spawn(nproc, rank_timeout))
    if plan_only and job.plan is not None:  # the projection alone, before any rank is started
        ui.announce_plan(job.plan(), True, json_out)
    claim = output_claim(False, job.claim) if job.claim is not None else contextlib.nullcontext()
    scope = rank_scope(job.device, rank_timeout) if job.ranks else contextlib.nullcontext(LOCAL)
    with claim, scope as collective:
        cost = job.plan() if job.plan is not None else None
        first = collective.rank == 0
        preface = ui.announce_plan(cost, False, json_out) if cost is not None and first else None
        with ui.progress_bars(not json_out and first, preface=preface) as progress:
            result = job.run(progress, collective)
    return (result, cost) if collective.rank == 0 else None


def report(json_out: bool, info: dict[str, Any], show: Callable[[], None]) -> None:
    """The command's result: ``info`` as JSON with ``--json``, else ``show()`` (rich tables)."""
    if json_out:
        ui.print_json(info)
    else:
        show()
