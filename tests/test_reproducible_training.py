"""Same seed, same trajectories and the same student on CPU (bucketed batches, fast loss), and the
bucketing settings in each run's metadata."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from farzi.data.prepared import PreparedDataset
from farzi.student import train_student
from farzi.train import TrainConfig
from farzi.trajectories import train_trajectories

REC = {"d_model": 8, "n_layers": 1, "n_heads": 1, "max_len": 20}  # dropout on: the seed drives it too
BUCKETED = {"kind": "ids", "max_len": 20, "crop": "random", "bucketing": {"batches": 50, "noise": 0.1}}


def _tensors(directory: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {p.name: load_file(str(p)) for p in sorted(directory.glob("*.safetensors"))}


def _same(a: dict[str, dict[str, torch.Tensor]], b: dict[str, dict[str, torch.Tensor]]) -> bool:
    return a.keys() == b.keys() and all(
        a[f].keys() == b[f].keys() and all(torch.equal(a[f][k], b[f][k]) for k in a[f]) for f in a
    )


def _trajectories(ds: PreparedDataset, out: Path, seed: int) -> dict:
    cfg = TrainConfig(max_steps=8, batch_size=16, patience=0, seed=seed)
    return train_trajectories(ds, "sasrec", runs=2, every=4, config=cfg, out=out, model_overrides=REC)


def test_same_seed_same_trajectories(tiny_rec: PreparedDataset, tmp_path: Path) -> None:
    first = _trajectories(tiny_rec, tmp_path / "a", seed=2)
    second = _trajectories(tiny_rec, tmp_path / "b", seed=2)
    _trajectories(tiny_rec, tmp_path / "c", seed=3)
    a, b, c = _tensors(tmp_path / "a"), _tensors(tmp_path / "b"), _tensors(tmp_path / "c")
    assert len(a) == 2 * 3 + 2 * 2  # steps 0, 4, 8 of two runs, and Adam's moments at steps 4 and 8
    assert _same(a, b)
    assert not _same(a, c)
    strip = ("wall_seconds", "sequences_per_second")
    assert [{k: v for k, v in s.items() if k not in strip} for s in first["summaries"]] == [
        {k: v for k, v in s.items() if k not in strip} for s in second["summaries"]
    ]
    assert first["train"]["batching"] == BUCKETED
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["train"]["batching"] == BUCKETED


@pytest.mark.parametrize("spec", ["full", "random:30"])
def test_same_seed_same_student(tiny_rec: PreparedDataset, tmp_path: Path, spec: str) -> None:
    cfg = TrainConfig(max_steps=6, batch_size=16, eval_every=3, patience=0, seed=4)
    results = []
    for name in ("a", "b"):
        result, info = train_student(tiny_rec, "sasrec", spec, cfg, tmp_path / name, REC)
        results.append((result, info))
    assert _same(_tensors(tmp_path / "a"), _tensors(tmp_path / "b"))
    (ra, ia), (rb, ib) = results
    assert [{k: v for k, v in p.items() if k != "elapsed"} for p in ra.curve] == [
        {k: v for k, v in p.items() if k != "elapsed"} for p in rb.curve
    ]
    assert ia["train"]["batching"] == ib["train"]["batching"] == BUCKETED
    assert json.loads((tmp_path / "a" / "model.json").read_text())["train"]["batching"] == BUCKETED
