"""Distillation over several ranks (torch.distributed, gloo, 2 processes on CPU, a file:// store).

The ranks are child processes of a fork server that has imported farzi (a fork of the test
process can deadlock in torch's thread pools); they meet through a file in the test's temporary
directory, so no network port is chosen.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
from cli_runner import farzictl, farzictl_start
from safetensors.torch import load_file, save_file

from farzi.data.prepared import load_prepared
from farzi.distill.engine import Distillation, DistillConfig, average_meta_gradients, distill, run_paths
from farzi.distill.init import initial_summary
from farzi.distill.objectives import make_objective, step_draws
from farzi.distill.summary import Summary
from farzi.distill.teacher import load_teacher

needs_forkserver = pytest.mark.skipif(
    "forkserver" not in mp.get_all_start_methods(), reason="needs the forkserver start method"
)
pytestmark = needs_forkserver

TINY = {"d_model": 8, "n_layers": 1, "n_heads": 2, "max_len": 16}
TIMEOUT = 30.0


def _cfg(**kw) -> DistillConfig:
    base = dict(
        mu=4,
        xi=8,
        latent_dim=4,
        inner_steps=3,
        outer_steps=4,
        real_batch=8,
        model="transformer",
        model_overrides=TINY,
        seed=3,
    )
    base.update(kw)
    return DistillConfig.from_dict(base)


# ------------------------------------------------------------------ the ranks


def _rank(job: str, rank: int, world: int, tmp: str, ds_path: str, kw: dict) -> None:
    """One rank: join the job through tmp/store, do ``job``, write what it saw to tmp/rankR.*."""
    from farzi.distributed import INIT_METHOD_ENV, ranks

    torch.set_num_threads(1)
    os.environ.update(
        {INIT_METHOD_ENV: f"file://{tmp}/store", "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)}
    )
    os.environ["SOURCE_DATE_EPOCH"] = "1700000000"
    out = Path(tmp)
    try:
        ds = load_prepared(ds_path)
        with ranks("cpu", TIMEOUT) as collective:
            assert (collective.rank, collective.world) == (rank, world)
            if job == "grad":
                cfg = _cfg()
                torch.manual_seed(cfg.seed)  # as distill() does: the teacher and the summary
                teacher = load_teacher(ds, cfg, None)
                summary = Summary.create(*initial_summary(cfg, ds, teacher), cfg.tau, [0], teacher.device)
                part = make_objective(cfg, ds, teacher)(summary, step_draws(cfg.seed, 1, rank))
                grads, used = average_meta_gradients([part], collective)
                mean = {f"g{k}": g.contiguous() for k, g in enumerate(grads)}
                save_file(mean, str(out / f"rank{rank}.safetensors"), {"used": str(used)})
            else:
                cfg = _cfg(**kw.get("cfg", {}))
                if rank > 0:
                    cfg = _cfg(**{**kw.get("cfg", {}), **kw.get("rank_cfg", {})})
                run = dict(kw.get("run", {}))
                until = run.pop("until", None)
                result = Distillation(ds, cfg, out / "b.safetensors", collective=collective, **run).run(until)
                tensors = {"latent": result.bundle.latent.contiguous(), "decoder": result.bundle.decoder.contiguous()}
                save_file(tensors, str(out / f"rank{rank}.safetensors"), {"steps": str(result.steps)})
    except BaseException as exc:  # noqa: BLE001 - the parent reads it
        (out / f"rank{rank}.err").write_text(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        raise SystemExit(1) from None


def _run_ranks(tmp: Path, ds, job: str, world: int = 2, **kw) -> list[int]:
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__, "farzi.distill.engine", "farzi.distributed"])
    procs = [ctx.Process(target=_rank, args=(job, r, world, str(tmp), str(ds.path), kw)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
    return codes


def _err(tmp: Path, rank: int) -> str:
    path = tmp / f"rank{rank}.err"
    return path.read_text().splitlines()[0] if path.is_file() else ""


# ------------------------------------------------------------------ (a) the averaged meta-gradient


def test_two_ranks_average_the_meta_gradients_of_their_start_points(tiny_lm, tmp_path) -> None:
    """Rank r computes start point r of the step; all_reduce gives both ranks the float64 mean."""
    codes = _run_ranks(tmp_path, tiny_lm, "grad")
    assert codes == [0, 0], (_err(tmp_path, 0), _err(tmp_path, 1))
    cfg = _cfg()
    torch.manual_seed(cfg.seed)
    teacher = load_teacher(tiny_lm, cfg, None)
    summary = Summary.create(*initial_summary(cfg, tiny_lm, teacher), cfg.tau, [0], teacher.device)
    objective = make_objective(cfg, tiny_lm, teacher)
    parts = [objective(summary, step_draws(cfg.seed, 1, r)) for r in (0, 1)]
    assert not torch.equal(parts[0].grads[0], parts[1].grads[0])  # two different start points
    got = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1)]
    for k in range(len(parts[0].grads)):
        want = (parts[0].grads[k].double() + parts[1].grads[k].double()) / 2
        for r in (0, 1):
            rel = (got[r][f"g{k}"].double() - want).norm() / want.norm()
            assert rel <= 1e-6, (r, k, float(rel))
        assert torch.equal(got[0][f"g{k}"], got[1][f"g{k}"])


# ------------------------------------------------------------------ (b) the summaries stay identical


def test_two_ranks_keep_identical_summaries_and_equal_a_meta_batch_of_two(tiny_lm, tmp_path) -> None:
    codes = _run_ranks(tmp_path, tiny_lm, "distill")
    assert codes == [0, 0], (_err(tmp_path, 0), _err(tmp_path, 1))
    a, b = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    assert torch.equal(a["latent"], b["latent"]) and torch.equal(a["decoder"], b["decoder"])
    # N ranks act like one process with a meta-batch N times larger
    one = distill(tiny_lm, _cfg(meta_batch=2), tmp_path / "one" / "b.safetensors")
    assert torch.equal(one.bundle.latent, a["latent"]) and torch.equal(one.bundle.decoder, a["decoder"])
    log = [json.loads(x) for x in (tmp_path / "b.log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and all(r["ranks"] == 2 and len(r["starts"]) == 2 for r in log)
    # rank 0 alone wrote: one bundle, one log, nothing else of the run beside them
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("b.")) == ["b.log.jsonl", "b.safetensors"]


# ------------------------------------------------------------------ (c) one rank is the plain run


def test_world_size_one_writes_the_plain_runs_bundle_bitwise(tiny_lm, tmp_path, monkeypatch) -> None:
    codes = _run_ranks(tmp_path, tiny_lm, "distill", world=1, cfg={"meta_batch": 2})
    assert codes == [0], _err(tmp_path, 0)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    plain = tmp_path / "plain" / "b.safetensors"
    distill(tiny_lm, _cfg(meta_batch=2), plain)
    assert (tmp_path / "b.safetensors").read_bytes() == plain.read_bytes()
    drop = ("step_seconds",)
    logs = [
        [{k: v for k, v in json.loads(x).items() if k not in drop} for x in run_paths(p)[0].read_text().splitlines()]
        for p in (tmp_path / "b.safetensors", plain)
    ]
    assert logs[0] == logs[1]


# ------------------------------------------------------------------ (d) ranks that disagree do not run


def test_ranks_with_other_settings_refuse_to_run(tiny_lm, tmp_path) -> None:
    codes = _run_ranks(tmp_path, tiny_lm, "distill", rank_cfg={"inner_lr": 0.02})
    assert codes == [1, 1]
    for r in (0, 1):
        line = _err(tmp_path, r)
        assert line.startswith("ConfigError: rank 1 of 2 has other settings or data than rank 0"), line
    assert not (tmp_path / "b.safetensors").exists() and not (tmp_path / "b.log.jsonl").exists()


def test_an_error_on_one_rank_stops_every_rank_with_its_message(tiny_lm, tmp_path) -> None:
    """Rank 0 has nothing to resume: rank 1 (which never reads the files) stops with rank 0's reason."""
    codes = _run_ranks(tmp_path, tiny_lm, "distill", run={"resume": True})
    assert codes == [1, 1]
    assert _err(tmp_path, 0).startswith("ConfigError: nothing to resume")
    assert _err(tmp_path, 1).startswith("ConfigError: rank 0 of 2 stopped: nothing to resume")


# ------------------------------------------------------------------ resuming with another number of ranks


def test_a_two_rank_run_resumes_on_one_rank(tiny_lm, tmp_path) -> None:
    run = {"checkpoint_every": 1, "until": 2}
    assert _run_ranks(tmp_path, tiny_lm, "distill", cfg={"outer_steps": 4}, run=run) == [0, 0]
    out = tmp_path / "b.safetensors"
    assert run_paths(out)[1].is_file() and not out.exists()
    result = distill(tiny_lm, _cfg(outer_steps=4), out, checkpoint_every=1, resume=True)
    log = [json.loads(x) for x in result.log_path.read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert [r.get("ranks", 1) for r in log] == [2, 2, 1, 1]  # the meta-batch followed the number of ranks
    assert result.summary["complete"] and not run_paths(out)[1].exists()


# ------------------------------------------------------------------ the CLI: --nproc, a rank killed, --resume

CLI_RUN = (
    "--budget 4x8 --latent-dim 4 --inner-steps 3 --real-batch 8 --model transformer "
    "--d-model 8 --n-layers 1 --n-heads 2 --max-len 16 --seed 3 --checkpoint-every 1 --quiet"
).split()


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def _rank_pid(launcher: int, rank: int) -> int | None:
    for pid in _children(launcher):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return pid
    return None


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the ranks through /proc")
def test_a_killed_rank_stops_the_job_with_one_line_then_resume_finishes_it(tiny_lm, tmp_path, monkeypatch) -> None:
    out = tmp_path / "b.safetensors"
    log_path, state_path = run_paths(out)
    steps = "12"
    args = ("distill", tiny_lm.path, *CLI_RUN, "--outer-steps", steps, "--out", out, "--nproc", "2")
    job = farzictl_start(*args, "--rank-timeout", "20", env={"SOURCE_DATE_EPOCH": "1700000000"})
    deadline = time.monotonic() + 120
    while job.poll() is None and time.monotonic() < deadline:
        if log_path.is_file() and len(log_path.read_text().splitlines()) >= 2:
            break
        time.sleep(0.01)
    victim = _rank_pid(job.pid, 1)
    assert victim is not None and job.poll() is None, "the job ended before a rank could be killed"
    os.kill(victim, signal.SIGKILL)
    t0 = time.monotonic()
    _, err = job.communicate(timeout=60)
    assert time.monotonic() - t0 < 20  # the peers see the lost rank at once, not after the timeout
    # the cost projection comes first on stderr; then the job's one error line, no traceback
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert job.returncode == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: rank 1 of 2 died (killed by SIGKILL)") and "--resume" in lines[0], lines[0]
    assert state_path.is_file() and not out.exists()
    done = len(log_path.read_text().splitlines())
    assert 2 <= done < int(steps)

    resumed = farzictl(*args[:-2], "--nproc", "2", "--resume", "--json", env={"SOURCE_DATE_EPOCH": "1700000000"})
    info = json.loads(resumed.ok().stdout)
    assert info["complete"] and info["steps"] == int(steps) and info["ranks"] == 2
    log = [json.loads(x) for x in log_path.read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, int(steps) + 1))
    # nothing lost: the resumed job ends bitwise where one process with a meta-batch of 2 ends
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    cfg = _cfg(outer_steps=int(steps), meta_batch=2)
    whole = distill(tiny_lm, cfg, tmp_path / "whole" / "b.safetensors")
    assert torch.equal(whole.bundle.latent, load_file(str(out))["latent"])
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_nproc_reports_a_ranks_error_in_one_line(tiny_lm, tmp_path) -> None:
    out = tmp_path / "b.safetensors"
    res = farzictl("distill", tiny_lm.path, *CLI_RUN, "--outer-steps", "2", "--out", out, "--nproc", "2", "--resume")
    assert res.one_error_line().startswith("error: nothing to resume")
    assert list(tmp_path.iterdir()) == []


def test_a_rank_leaves_without_the_interpreters_teardown(tmp_path) -> None:
    # a process group's threads can abort a rank at interpreter teardown, after its one error line
    # (seen in CI: SIGABRT, "terminate called without an active exception"); an atexit abort stands
    # in for that: a rank's exit status is still the command's own
    code = "import atexit, os; atexit.register(os.abort); from farzictl.app import entry; entry()"
    argv = [sys.executable, "-c", code, "distill", "no-such-data", "--home", str(tmp_path)]
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0"}
    res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "no-such-data" in lines[0]
    alone = subprocess.run(argv, env={**os.environ, "WORLD_SIZE": "1"}, capture_output=True, timeout=120)
    assert alone.returncode == -signal.SIGABRT  # one process keeps the interpreter's teardown (atexit)


def test_nproc_must_be_positive(tiny_lm, tmp_path) -> None:
    line = farzictl("distill", tiny_lm.path, "--nproc", "0", "--out", tmp_path / "b.safetensors").one_error_line()
    assert "--nproc 0 must be at least 1" in line
