"""Trajectories run by run: each run written atomically on its own, --resume, and --nproc ranks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_runner import farzictl

from farzi.data.prepared import PreparedDataset
from farzi.errors import ConfigError
from farzi.progress import ProgressEvent
from farzi.train import TrainConfig
from farzi.trajectories import load_trajectories, train_trajectories

TINY = {"d_model": 8, "n_layers": 1, "n_heads": 2, "max_len": 16}
CFG = TrainConfig(max_steps=4, batch_size=16, patience=0, seed=5)


class Stop(Exception):
    pass


def _stopper(at_task: str, seen: list[str]):
    def on_event(event: ProgressEvent) -> None:
        if event.task not in seen:
            seen.append(event.task)
        if event.task == at_task:
            raise Stop

    return on_event


def _tensors(path: Path) -> dict:
    omega = load_trajectories(path)
    return {e["file"]: omega.params(i) for i, e in enumerate(omega.manifest["checkpoints"])}


def _same(a: Path, b: Path) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    for name in ta:
        for k in ta[name]:
            assert ta[name][k].equal(tb[name][k]), (name, k)
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir())
    assert any(f.endswith(".adam.safetensors") for f in files)  # the runs' Adam moments travel too


def test_an_interrupted_job_keeps_its_finished_runs_and_resume_trains_the_rest(
    tiny_lm: PreparedDataset, tmp_path: Path
) -> None:
    whole = tmp_path / "whole"
    train_trajectories(tiny_lm, "transformer", 3, 2, CFG, whole, TINY)
    out = tmp_path / "omega"
    seen: list[str] = []
    with pytest.raises(Stop):
        train_trajectories(tiny_lm, "transformer", 3, 2, CFG, out, TINY, progress=_stopper("trajectory run 3/3", seen))
    assert not out.exists()
    parts = tmp_path / ".omega.runs"
    assert sorted(p.name for p in parts.iterdir() if not p.name.startswith(".")) == ["run0", "run1"]
    seen.clear()
    train_trajectories(tiny_lm, "transformer", 3, 2, CFG, out, TINY, resume=True, progress=_stopper("none", seen))
    assert seen == ["trajectory run 3/3"]  # only the missing run was trained
    _same(out, whole)
    assert not parts.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_resume_refuses_finished_runs_of_other_settings_and_a_fresh_start_drops_them(
    tiny_lm: PreparedDataset, tmp_path: Path
) -> None:
    out = tmp_path / "omega"
    with pytest.raises(Stop):
        train_trajectories(tiny_lm, "transformer", 2, 2, CFG, out, TINY, progress=_stopper("trajectory run 2/2", []))
    other = TrainConfig(**{**CFG.to_dict(), "lr": 5e-3})
    with pytest.raises(ConfigError, match=r"made with other settings: --lr 0.001 \(now 0.005\);"):
        train_trajectories(tiny_lm, "transformer", 2, 2, other, out, TINY, resume=True)
    seen: list[str] = []
    train_trajectories(tiny_lm, "transformer", 2, 2, other, out, TINY, progress=_stopper("none", seen))
    assert seen == ["trajectory run 1/2", "trajectory run 2/2"]
    assert json.loads((out / "manifest.json").read_text())["train"]["lr"] == 5e-3


@pytest.mark.parametrize("nproc", [2])
def test_nproc_ranks_share_the_runs_and_write_the_same_set(tiny_lm: PreparedDataset, tmp_path: Path, nproc: int):
    plain = tmp_path / "plain"
    train_trajectories(tiny_lm, "transformer", 3, 2, CFG, plain, TINY)
    out = tmp_path / "ranks"
    args = ["--runs", "3", "--every", "2", "--max-steps", "4", "--batch-size", "16", "--seed", "5"]
    args += ["--model", "transformer", "--d-model", "8", "--n-layers", "1", "--n-heads", "2", "--max-len", "16"]
    res = farzictl("trajectories", tiny_lm.path, *args, "--out", out, "--nproc", str(nproc), "--json").ok()
    info = json.loads(res.stdout)
    assert info["runs"] == 3 and info["checkpoints"] == 9
    _same(out, plain)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _traj_rank(rank: int, world: int, tmp: str, ds_path: str, delay: float, timeout: float) -> None:
    """One rank of a trajectories job whose runs take ``delay`` seconds longer than they would."""
    import os
    import time

    import torch

    import farzi.trajectories as traj
    from farzi.data.prepared import load_prepared
    from farzi.distributed import INIT_METHOD_ENV, ranks

    torch.set_num_threads(1)
    os.environ.update({INIT_METHOD_ENV: f"file://{tmp}/store", "RANK": str(rank), "WORLD_SIZE": str(world)})
    real = traj._train_run

    def slow(*args, **kwargs):
        time.sleep(delay)
        return real(*args, **kwargs)

    traj._train_run = slow
    with ranks("cpu", timeout) as collective:
        traj.train_trajectories(
            load_prepared(ds_path), "transformer", 1, 2, CFG, Path(tmp) / "omega", TINY, collective=collective
        )


def test_a_rank_without_runs_waits_for_the_others_past_the_rank_timeout(tiny_lm: PreparedDataset, tmp_path: Path):
    """1 run, 2 ranks: rank 1 has nothing to train and waits for rank 0's run, longer than the timeout."""
    import multiprocessing as mp

    if "forkserver" not in mp.get_all_start_methods():
        pytest.skip("needs the forkserver start method")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__, "farzi.trajectories", "farzi.distributed"])
    procs = [ctx.Process(target=_traj_rank, args=(r, 2, str(tmp_path), str(tiny_lm.path), 6.0, 3.0)) for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert load_trajectories(tmp_path / "omega").manifest["runs"] == 1
