"""farzi.trajectories: training Omega and reading it back (formats/trajectories-v1.md)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

import farzi
from farzi.checkpoint import dataset_record, load_checkpoint
from farzi.data.prepared import PreparedDataset
from farzi.errors import CheckpointError, ConfigError
from farzi.train import TrainConfig
from farzi.trajectories import Omega, load_trajectories, train_trajectories

OVERRIDES = {"d_model": 8, "n_layers": 1, "n_heads": 1, "d_ff": 16, "max_len": 16, "dropout": 0.0}


def _train(ds: PreparedDataset, out: Path, runs: int, every: int, max_steps: int, **train: Any) -> dict:
    cfg = TrainConfig(**{"max_steps": max_steps, "batch_size": 32, "patience": 0, "seed": 0, **train})
    return train_trajectories(ds, "transformer", runs, every, cfg, out, OVERRIDES)


@pytest.fixture(scope="module")
def omega(tiny_lm: PreparedDataset, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("omega") / "transformer"
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # module scope: set up before conftest's per-test thread limit
    try:
        return out, _train(tiny_lm, out, runs=2, every=5, max_steps=12)
    finally:
        torch.set_num_threads(before)


def test_checkpoints_at_init_every_k_steps_and_at_the_end(omega: tuple[Path, dict]) -> None:
    path, manifest = omega
    points = [(p["run"], p["step"], p["file"]) for p in manifest["checkpoints"]]
    assert points == [(run, step, f"run{run}-step{step}.safetensors") for run in (0, 1) for step in (0, 5, 10, 12)]
    files = sorted(p.name for p in path.iterdir())
    moments = [f"run{run}-step{step}.adam.safetensors" for run, step, _ in points if step]  # after step 0 only
    assert files == sorted(["manifest.json", *[f for _, _, f in points], *moments])
    assert [p.name for p in path.parent.iterdir()] == ["transformer"]  # no temporary directory left


def test_manifest(omega: tuple[Path, dict], tiny_lm: PreparedDataset) -> None:
    path, manifest = omega
    assert json.loads((path / "manifest.json").read_text()) == manifest
    assert manifest["format"] == "farzi-trajectories" and manifest["version"] == 1
    assert manifest["model"] == "transformer" and manifest["runs"] == 2 and manifest["every"] == 5
    assert manifest["dataset"] == dataset_record(tiny_lm)
    assert manifest["config"]["d_model"] == 8 and manifest["config"]["vocab_size"] == tiny_lm.vocab_size
    assert manifest["train"]["max_steps"] == 12 and manifest["train"]["seed"] == 0
    assert manifest["package"] == {"name": "farzi", "version": farzi.__version__}
    assert [s["run"] for s in manifest["summaries"]] == [0, 1]
    assert all(s["steps"] == 12 and s["metric"] == "ppl_corpus" for s in manifest["summaries"])
    # the first validation comes at step 10 (every epoch, at least every 10 steps)
    by_step = {p["step"]: p["validation"] for p in manifest["checkpoints"] if p["run"] == 0}
    assert by_step[5] == {}
    assert set(by_step[10]) >= {"ppl_corpus", "ppl_sentence", "accuracy", "tokens"}
    assert by_step[12]["ppl_corpus"] != by_step[10]["ppl_corpus"]
    assert isinstance(manifest["wall_seconds"], float)


def test_checkpoints_are_farzi_models(omega: tuple[Path, dict], tiny_lm: PreparedDataset) -> None:
    path, manifest = omega
    ckpts = {(p["run"], p["step"]): load_checkpoint(path / p["file"]) for p in manifest["checkpoints"]}
    for (run, step), ckpt in ckpts.items():
        assert ckpt.model_name == "transformer" and ckpt.info["config"] == manifest["config"]
        assert (ckpt.info["run"], ckpt.info["step"]) == (run, step)
        assert ckpt.dataset == dataset_record(tiny_lm)
    emb = {key: c.model.tok_emb for key, c in ckpts.items()}
    assert not torch.equal(emb[0, 5], emb[0, 10]) and not torch.equal(emb[0, 10], emb[0, 12])
    assert not torch.equal(emb[0, 5], emb[1, 5])  # independent initializations


def test_load_trajectories(omega: tuple[Path, dict], tiny_lm: PreparedDataset) -> None:
    path, manifest = omega
    om = load_trajectories(path, tiny_lm, "transformer")
    assert isinstance(om, Omega) and len(om) == 8 and om.model_name == "transformer"
    assert om.config == manifest["config"]
    assert om.entry(4) == manifest["checkpoints"][4]
    assert om.later(0, 1) == 1 and om.later(0, 2) == 2 and om.later(2, 2) is None and om.later(4, 2) == 6
    params = om.params(2)
    assert set(params) == {k for k, _ in load_checkpoint(path / "run0-step12.safetensors").model.named_parameters()}
    assert om.params(2) is params  # cached
    assert 0 <= om.sample(random.Random(0)) < 8


def test_end_of_run_on_a_save_step_is_saved_once(tiny_lm: PreparedDataset, tmp_path: Path) -> None:
    manifest = _train(tiny_lm, tmp_path / "o", runs=1, every=5, max_steps=10)
    assert [p["step"] for p in manifest["checkpoints"]] == [0, 5, 10]


def test_bad_arguments(tiny_lm: PreparedDataset, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--runs 0"):
        _train(tiny_lm, tmp_path / "o", runs=0, every=5, max_steps=10)
    with pytest.raises(ConfigError, match="--every 0"):
        _train(tiny_lm, tmp_path / "o", runs=1, every=0, max_steps=10)
    with pytest.raises(ConfigError, match="is for rec"):
        train_trajectories(tiny_lm, "sasrec", 1, 5, TrainConfig(max_steps=2), tmp_path / "o")
    with pytest.raises(ConfigError, match="--max-len 0 must be at least 2"):
        train_trajectories(tiny_lm, "rnn", 1, 5, TrainConfig(max_steps=2), tmp_path / "o", {"max_len": 0})
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ rejected sets


@pytest.fixture
def copy_of(omega: tuple[Path, dict], tmp_path: Path) -> Path:
    return Path(shutil.copytree(omega[0], tmp_path / "copy"))


def _edit_manifest(path: Path, **changes: Any) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.update(changes)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_missing_manifest(copy_of: Path, tiny_lm: PreparedDataset) -> None:
    (copy_of / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="manifest.json missing"):
        load_trajectories(copy_of, tiny_lm)
    with pytest.raises(CheckpointError, match="manifest.json missing"):
        load_trajectories(copy_of.parent / "nowhere")


def test_another_dataset(copy_of: Path, tiny_lm: PreparedDataset, tiny_rec: PreparedDataset) -> None:
    with pytest.raises(CheckpointError, match="vocabulary"):
        load_trajectories(copy_of, tiny_rec)
    record = json.loads((copy_of / "manifest.json").read_text())["dataset"]
    _edit_manifest(copy_of, dataset={**record, "fingerprint": "f" * 64})
    with pytest.raises(CheckpointError, match="fingerprint ffffffffffff"):
        load_trajectories(copy_of, tiny_lm)
    load_trajectories(copy_of)  # without a dataset to check against, it loads


def test_another_model(copy_of: Path, tiny_lm: PreparedDataset) -> None:
    with pytest.raises(CheckpointError, match="of model 'transformer', not 'rnn'"):
        load_trajectories(copy_of, tiny_lm, "rnn")


def test_missing_checkpoint(copy_of: Path, tiny_lm: PreparedDataset) -> None:
    (copy_of / "run1-step10.safetensors").unlink()
    with pytest.raises(CheckpointError, match="run1-step10.safetensors listed in the manifest is missing"):
        load_trajectories(copy_of, tiny_lm)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"version": 2}, "trajectories v2, newer than this farzi reads; upgrade farzi"),
        ({"version": "1"}, "invalid format version '1'"),
        ({"version": True}, "invalid format version True"),
        ({"version": 0}, "invalid format version 0"),
        ({"checkpoints": ["run0-step5.safetensors"]}, "malformed checkpoint entry"),
        ({"checkpoints": [{"run": 0, "step": 5, "file": "../copy/run0-step5.safetensors"}]}, "malformed"),
        ({"checkpoints": [{"run": "0", "step": 5, "file": "run0-step5.safetensors"}]}, "malformed"),
        ({"dataset": "synthetic-lm"}, "dataset record is not an object"),
        ({"format": "farzi-model"}, "not a farzi trajectory set"),
        ({"checkpoints": []}, "lists no checkpoints"),
        ({"config": {"d_model": 16}}, "do not match the manifest's model config"),
    ],
)
def test_bad_manifest(copy_of: Path, tiny_lm: PreparedDataset, changes: dict, message: str) -> None:
    _edit_manifest(copy_of, **changes)
    with pytest.raises(CheckpointError, match=message):
        load_trajectories(copy_of, tiny_lm)


def test_manifest_not_json(copy_of: Path) -> None:
    (copy_of / "manifest.json").write_text("{ nope")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_trajectories(copy_of)


def test_corrupt_first_checkpoint(copy_of: Path) -> None:
    f = copy_of / "run0-step0.safetensors"
    f.write_bytes(f.read_bytes()[:50])
    with pytest.raises(CheckpointError):
        load_trajectories(copy_of)


def test_checkpoints_carry_the_runs_adam_moments(tiny_rec, tmp_path) -> None:
    """Each saved point after step 0 has its Adam state beside it; Omega reads it back."""
    from farzi.trajectories import load_trajectories

    out = tmp_path / "omega"
    cfg = TrainConfig(max_steps=5, batch_size=16, patience=0, eval_every=2)
    manifest = train_trajectories(tiny_rec, "sasrec", 1, 2, cfg, out, {"d_model": 8, "n_layers": 1, "max_len": 16})
    points = manifest["checkpoints"]
    assert [p["step"] for p in points] == [0, 2, 4, 5]
    assert "optimizer" not in points[0]  # the initialization has taken no step
    assert [p["optimizer"] for p in points[1:]] == [f"run0-step{s}.adam.safetensors" for s in (2, 4, 5)]
    omega = load_trajectories(out, tiny_rec)
    assert omega.moments(0) is None
    m = omega.moments(3)
    assert m.step == 5 and m.hyper["lr"] == cfg.lr and m.hyper["betas"] == [0.9, 0.999]
    assert set(m.exp_avg) == set(omega.params(3)) and all((v >= 0).all() for v in m.exp_avg_sq.values())
    assert any(float(v.abs().sum()) > 0 for v in m.exp_avg.values())
