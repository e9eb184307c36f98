"""A distillation SIGKILLed at random points and resumed each time ends bitwise where an uninterrupted run ends.

The runs are child processes forked from a clean fork server that has imported farzi (a fork of the
test process itself can deadlock in torch's thread pools), killed with SIGKILL at a random point; every
restart passes ``resume=True`` once a state file exists. Nothing in the child can
clean up after a SIGKILL, so this exercises the atomic writes of the state, the log and the bundle.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch

from farzi.data.prepared import load_prepared
from farzi.distill.engine import DistillConfig, distill, run_paths

TIMING = ("step_seconds", "seconds")


def _cfg() -> DistillConfig:
    return DistillConfig(
        mu=4,
        xi=8,
        latent_dim=4,
        inner_steps=2,
        outer_steps=30,
        real_batch=8,
        syn_batch=2,
        model="transformer",
        model_overrides={"d_model": 8, "n_layers": 1, "n_heads": 2, "max_len": 16},
        seed=11,
    )


def _child(ds_path: str, out: str, resume: bool) -> None:
    torch.set_num_threads(1)
    os.environ["SOURCE_DATE_EPOCH"] = "1700000000"
    distill(load_prepared(ds_path), _cfg(), Path(out), checkpoint_every=1, resume=resume)


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def _log(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING} for x in path.read_text().splitlines()]


needs_forkserver = pytest.mark.skipif(
    "forkserver" not in mp.get_all_start_methods(), reason="needs the forkserver start method"
)


@needs_forkserver
def test_sigkill_at_5_random_points_then_resume_is_bitwise_equal(tiny_lm, tmp_path) -> None:
    _kill_and_resume(tiny_lm, tmp_path, kills=5, seed=0)


@needs_forkserver
@pytest.mark.slow
def test_sigkill_at_20_random_points_then_resume_is_bitwise_equal(tiny_lm, tmp_path) -> None:
    _kill_and_resume(tiny_lm, tmp_path, kills=20, seed=1)


def _kill_and_resume(tiny_lm, tmp_path: Path, kills: int, seed: int) -> None:
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__, "farzi.distill.engine"])
    whole = tmp_path / "whole.safetensors"
    t0 = time.perf_counter()
    p = ctx.Process(target=_child, args=(str(tiny_lm.path), str(whole), False))
    p.start()
    p.join()
    assert p.exitcode == 0
    duration = time.perf_counter() - t0

    out = tmp_path / "killed.safetensors"
    log_path, state = run_paths(out)
    steps = _cfg().outer_steps
    rng = random.Random(seed)
    # kill points: after a random number of logged steps (so they spread over the run), plus a random
    # fraction of a step (so they fall inside steps, state saves and the final write too)
    targets = sorted(rng.sample(range(steps + 1), kills))
    per_step = duration / steps
    steps_at_kill = []
    for target in targets:
        p = ctx.Process(target=_child, args=(str(tiny_lm.path), str(out), state.is_file() or out.is_file()))
        before = _inode(log_path)
        p.start()
        # target 0: a kill during start-up; else wait for this run's own log (a resumed run renames a
        # rewritten log into place first), then for the target's step
        while target and p.is_alive() and (_inode(log_path) == before or _lines(log_path) < target):
            time.sleep(0.002)
        time.sleep(rng.uniform(0, per_step))
        if p.is_alive():
            os.kill(p.pid, signal.SIGKILL)
        p.join()
        steps_at_kill.append(_lines(log_path))
    p = ctx.Process(target=_child, args=(str(tiny_lm.path), str(out), state.is_file() or out.is_file()))
    p.start()
    p.join()
    assert p.exitcode == 0
    assert out.read_bytes() == whole.read_bytes()
    assert _log(run_paths(out)[0]) == _log(run_paths(whole)[0])
    assert not state.exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left behind"
    # the kills fell at many points of the run, from its start to its end
    assert len(set(steps_at_kill)) > kills // 2, steps_at_kill
    assert min(steps_at_kill) < steps // 2 < max(steps_at_kill), steps_at_kill
