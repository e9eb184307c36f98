"""farzi.student: data specs, sequence selection, and the student's saved model."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from farzi.checkpoint import dataset_record, load_checkpoint
from farzi.data.prepared import PreparedDataset
from farzi.data.sequences import Sequences
from farzi.errors import ConfigError
from farzi.student import DataSpec, parse_spec, select_sequences, train_student
from farzi.train import TrainConfig

# ------------------------------------------------------------------ parse_spec


@pytest.mark.parametrize(
    ("text", "spec", "label"),
    [
        ("full", DataSpec("full"), "full"),
        ("random:10", DataSpec("random", n=10), "random:10"),
        ("random:1", DataSpec("random", n=1), "random:1"),
        ("head:250", DataSpec("head", n=250), "head:250"),
        (
            "bundles/x/farzi-50x50-s0.safetensors",
            DataSpec("bundle", path=Path("bundles/x/farzi-50x50-s0.safetensors")),
            "",
        ),
    ],
)
def test_parse_spec(text: str, spec: DataSpec, label: str) -> None:
    assert parse_spec(text) == spec
    assert parse_spec(text).label() == (label or "farzi:farzi-50x50-s0.safetensors")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("random:0", "empty sample"),
        ("head:000", "empty sample"),
        ("random:x", "needs a count"),
        ("random:", "needs a count"),
        ("random", "needs a count"),
        ("head:-3", "needs a count"),
        ("head:2.5", "needs a count"),
        ("random:²", "needs a count"),  # a digit to str.isdigit, not to int()
        ("bogus", "not a data spec"),
        ("sample:10", "not a data spec"),
        ("", "not a data spec"),
        ("Full", "not a data spec"),
    ],
)
def test_parse_spec_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_spec(text)


# ------------------------------------------------------------------ select_sequences


def toy(lengths: list[int]) -> Any:
    """Just what select_sequences reads: a name and a training split."""
    seqs = [list(range(1, n + 1)) for n in lengths]
    return SimpleNamespace(name="toy", train=Sequences.from_lists([str(i) for i in range(len(lengths))], seqs))


def test_full_selects_everything(tiny_rec: PreparedDataset) -> None:
    assert select_sequences(tiny_rec, DataSpec("full"), 0).tolist() == list(range(len(tiny_rec.train)))


def test_random_is_seeded_and_without_replacement(tiny_rec: PreparedDataset) -> None:
    n = len(tiny_rec.train)
    a = select_sequences(tiny_rec, DataSpec("random", n=30), seed=1)
    assert len(a) == len(set(a.tolist())) == 30
    assert a.min() >= 0 and a.max() < n and (np.diff(a) > 0).all()  # distinct, sorted
    assert np.array_equal(a, select_sequences(tiny_rec, DataSpec("random", n=30), seed=1))
    assert not np.array_equal(a, select_sequences(tiny_rec, DataSpec("random", n=30), seed=2))
    everyone = select_sequences(tiny_rec, DataSpec("random", n=n), seed=5)
    assert everyone.tolist() == list(range(n))


def test_head_picks_the_longest_ties_in_dataset_order() -> None:
    ds = toy([3, 5, 5, 2, 5, 4, 1])
    assert select_sequences(ds, DataSpec("head", n=1), 0).tolist() == [1]
    assert select_sequences(ds, DataSpec("head", n=2), 0).tolist() == [1, 2]
    assert select_sequences(ds, DataSpec("head", n=4), 0).tolist() == [1, 2, 4, 5]
    assert select_sequences(ds, DataSpec("head", n=7), 0).tolist() == list(range(7))
    # the seed plays no part
    assert select_sequences(ds, DataSpec("head", n=3), 9).tolist() == [1, 2, 4]


def test_head_on_real_lengths(tiny_rec: PreparedDataset) -> None:
    idx = select_sequences(tiny_rec, DataSpec("head", n=10), 0)
    lengths = tiny_rec.train.lengths
    assert lengths[idx].min() >= np.delete(lengths, idx).max()


@pytest.mark.parametrize("kind", ["random", "head"])
def test_more_than_the_dataset_is_refused(kind: str) -> None:
    with pytest.raises(ConfigError, match="more sequences than the 7 training sequences"):
        select_sequences(toy([1] * 7), DataSpec(kind, n=8), 0)


# ------------------------------------------------------------------ train_student


def _student(ds: PreparedDataset, out: Path, spec: str = "random:20", **kw: Any):
    overrides = {"d_model": 8, "n_layers": 1, "n_heads": 1, "max_len": 20}
    cfg = TrainConfig(max_steps=4, batch_size=8, eval_every=2, patience=0, seed=0)
    return train_student(ds, "sasrec", spec, cfg, out, overrides, **kw)


def test_train_student_writes_model_and_json(tmp_path: Path, tiny_rec: PreparedDataset) -> None:
    out = tmp_path / "models" / "student"
    result, info = _student(tiny_rec, out)
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.safetensors"]
    assert [p.name for p in out.parent.iterdir()] == ["student"]  # no temporary directory left
    ckpt = load_checkpoint(out)
    assert ckpt.model_name == "sasrec" and ckpt.dataset == dataset_record(tiny_rec)
    assert ckpt.info["data"] == {"kind": "random", "n": 20, "tokens": info["data"]["tokens"]}
    assert ckpt.info["result"] == result.summary() and ckpt.info["train"]["max_steps"] == 4
    for key, value in result.model.state_dict().items():
        assert torch.equal(ckpt.model.state_dict()[key], value.float())
    doc = json.loads((out / "model.json").read_text())
    assert doc["model"] == "sasrec" and doc["config"] == ckpt.info["config"]
    assert doc["dataset"] == dataset_record(tiny_rec) and doc["data"] == info["data"]
    assert [p["step"] for p in doc["curve"]] == [2, 4]


def test_train_student_failure_leaves_nothing(tmp_path: Path, tiny_rec: PreparedDataset, monkeypatch) -> None:
    out = tmp_path / "models" / "student"

    def broken(path: Path, *args: Any, **kwargs: Any) -> None:
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr("farzi.student.save_checkpoint", broken)
    with pytest.raises(OSError, match="disk full"):
        _student(tiny_rec, out)
    assert list(tmp_path.iterdir()) == []  # not even the parent directory the run created


def test_train_student_failure_keeps_the_previous_model(tmp_path: Path, tiny_rec: PreparedDataset, monkeypatch) -> None:
    out = tmp_path / "student"
    _student(tiny_rec, out)
    before = (out / "model.safetensors").read_bytes()
    monkeypatch.setattr("farzi.student.write_json", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        _student(tiny_rec, out, spec="head:10")
    assert (out / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]


@pytest.mark.parametrize(
    ("spec", "model", "message"),
    [
        ("random:1000", "sasrec", "more sequences than"),
        ("random:0", "sasrec", "empty sample"),
        ("full", "transformer", "is for lm"),
        ("full", "sasrec:max_len=1", "--max-len 1 must be at least 2"),
        ("full", "sasrec:d_model=0", "--d-model 0 must be at least 1"),
        ("full", "sasrec:n_layers=-1", "--n-layers -1 must be at least 1"),
    ],
)
def test_train_student_bad_requests(tmp_path: Path, tiny_rec: PreparedDataset, spec: str, model: str, message) -> None:
    name, _, setting = model.partition(":")
    key, _, value = setting.partition("=")
    overrides = {key: int(value)} if key else None
    with pytest.raises(ConfigError, match=message):
        train_student(tiny_rec, name, spec, TrainConfig(max_steps=2), tmp_path / "out", overrides)
    assert list(tmp_path.iterdir()) == []
