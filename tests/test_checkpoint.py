"""farzi.checkpoint: the farzi-model v1 format (formats/model-checkpoint-v1.md)."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

import farzi
from farzi._safetensors import save_tensors
from farzi.checkpoint import (
    FORMAT_NAME,
    check_dataset,
    dataset_record,
    load_checkpoint,
    read_checkpoint_info,
    save_checkpoint,
)
from farzi.data.prepared import PreparedDataset
from farzi.errors import CheckpointError
from farzi.models import SequenceModel, build_model, make_config

REPO = Path(__file__).resolve().parents[1]


def tiny_sasrec(ds: PreparedDataset, seed: int = 0, **overrides: Any) -> SequenceModel:
    torch.manual_seed(seed)
    cfg = {"d_model": 8, "n_layers": 1, "n_heads": 1, "max_len": 12, **overrides}
    return build_model("sasrec", make_config("sasrec", ds.vocab_size, **cfg)).eval()


@pytest.fixture
def saved(tmp_path: Path, tiny_rec: PreparedDataset) -> Path:
    path = tmp_path / "m" / "model.safetensors"
    return save_checkpoint(path, tiny_sasrec(tiny_rec), dataset_record(tiny_rec), note=7)


def _parts(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def rewrite(path: Path, *, meta: dict[str, str | None] | None = None, tensors: dict | None = None) -> Path:
    """Write ``path`` again with some metadata keys replaced (None = removed) or other tensors."""
    old_tensors, old_meta = _parts(path)
    new_meta = {**old_meta, **(meta or {})}
    save_tensors(path, tensors if tensors is not None else old_tensors, {k: v for k, v in new_meta.items() if v})
    return path


def rewrite_doc(path: Path, **changes: Any) -> Path:
    _, meta = _parts(path)
    doc = json.loads(meta["farzi"])
    doc.update(changes)
    return rewrite(path, meta={"farzi": json.dumps(doc)})


# ------------------------------------------------------------------ round trip


def test_round_trip(saved: Path, tiny_rec: PreparedDataset) -> None:
    model = tiny_sasrec(tiny_rec)
    ckpt = load_checkpoint(saved)
    assert type(ckpt.model) is type(model) and ckpt.model.config == model.config
    x = torch.tensor([[1, 2, 3, 0], [4, 5, 6, 7]])
    ckpt.model.eval()
    assert torch.equal(ckpt.model(x), model(x))
    for key, value in model.state_dict().items():
        assert torch.equal(ckpt.model.state_dict()[key], value)
    assert ckpt.model_name == "sasrec" and ckpt.path == saved
    assert ckpt.dataset == dataset_record(tiny_rec)
    assert ckpt.info["note"] == 7 and ckpt.info["task"] == "rec"
    assert ckpt.info["package"] == {"name": "farzi", "version": farzi.__version__}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", ckpt.info["created"])
    # a directory holding model.safetensors loads the same
    assert load_checkpoint(saved.parent).path == saved


def test_file_layout(saved: Path, tiny_rec: PreparedDataset) -> None:
    tensors, meta = _parts(saved)
    assert set(meta) == {"format", "version", "farzi"}
    assert meta["format"] == FORMAT_NAME == "farzi-model" and meta["version"] == "1"
    doc = json.loads(meta["farzi"])
    assert {"model", "task", "config", "dataset", "package", "created"} <= set(doc)
    assert doc["config"] == tiny_sasrec(tiny_rec).config.to_dict()
    assert set(doc["dataset"]) == {"name", "task", "fingerprint", "vocab_size", "vocab_sha256"}
    assert tensors.keys() == tiny_sasrec(tiny_rec).state_dict().keys()
    assert all(t.dtype == torch.float32 for t in tensors.values())


def test_float64_model_is_stored_as_float32(tmp_path: Path, tiny_rec: PreparedDataset) -> None:
    model = tiny_sasrec(tiny_rec).double()
    path = save_checkpoint(tmp_path / "m.safetensors", model, dataset_record(tiny_rec))
    ckpt = load_checkpoint(path)
    assert all(p.dtype == torch.float32 for p in ckpt.model.parameters())
    torch.testing.assert_close(ckpt.model.item_emb, model.item_emb.float())


def test_save_is_atomic(tmp_path: Path, saved: Path, tiny_rec: PreparedDataset, monkeypatch) -> None:
    before = saved.read_bytes()

    def broken(*args: Any, **kwargs: Any) -> None:
        Path(args[0]).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr("farzi.checkpoint.save_tensors", broken)
    with pytest.raises(OSError):
        save_checkpoint(saved, tiny_sasrec(tiny_rec, seed=1), dataset_record(tiny_rec))
    assert saved.read_bytes() == before
    assert sorted(p.name for p in saved.parent.iterdir()) == ["model.safetensors"]


# ------------------------------------------------------------------ which dataset


def test_check_dataset(saved: Path, tiny_rec: PreparedDataset, tiny_lm: PreparedDataset) -> None:
    record = load_checkpoint(saved).dataset
    check_dataset(record, tiny_rec, "model")  # its own dataset: fine
    with pytest.raises(CheckpointError, match="vocabulary of 41"):
        check_dataset(record, tiny_lm, "model")
    with pytest.raises(CheckpointError, match="fingerprint"):
        check_dataset({**record, "fingerprint": "0" * 64}, tiny_rec, "model")
    with pytest.raises(CheckpointError, match="vocabulary"):
        check_dataset({**record, "vocab_size": 40}, tiny_rec, "model")
    with pytest.raises(CheckpointError):
        check_dataset({}, tiny_rec, "model")


# ------------------------------------------------------------------ bad files


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _header_only(header: dict) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw


CORRUPT = {
    "empty": lambda p: _write(p, b""),
    "short": lambda p: _write(p, b"\x01\x02\x03"),
    "truncated": lambda p: _write(p, p.read_bytes()[:-10]),
    "truncated-header": lambda p: _write(p, p.read_bytes()[:100]),
    "text": lambda p: _write(p, b'{"this is": "json, not safetensors"}\n' * 4),
    "huge-header-length": lambda p: _write(p, struct.pack("<Q", 1 << 60) + b"x" * 64),
    "header-not-json": lambda p: _write(p, struct.pack("<Q", 4) + b"\xff\xfe{[" + b"\0" * 8),
    "stray-bytes": lambda p: _write(p, p.read_bytes() + b"\0" * 16),
    "bad-offsets": lambda p: _write(
        p, _header_only({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}) + b"\0" * 8
    ),
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_corrupt_files_raise_checkpoint_error(saved: Path, case: str) -> None:
    CORRUPT[case](saved)
    with pytest.raises(CheckpointError):
        load_checkpoint(saved)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing.safetensors")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path)  # a directory without model.safetensors


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"format": None}, "not a farzi model checkpoint"),
        ({"format": "farzi-data"}, "not a farzi model checkpoint"),
        ({"version": "2"}, "v2; this farzi reads up to v1; upgrade farzi"),
        ({"version": "one"}, "invalid format version"),
        ({"version": None}, "invalid format version"),
        ({"version": "0"}, "invalid format version"),
        ({"version": "-1"}, "invalid format version"),
        ({"version": " 1"}, "invalid format version"),
        ({"version": "1" * 5000}, "invalid format version"),
        ({"farzi": None}, "missing or corrupt model metadata (no 'farzi' entry)"),
        ({"farzi": "{not json"}, "missing or corrupt model metadata ('farzi' is not valid JSON)"),
        ({"farzi": "[" * 100_000}, "('farzi' is not valid JSON)"),
        ({"farzi": "[1, 2]"}, "missing or corrupt model metadata ('farzi' is not a JSON object)"),
        ({"farzi": '{"config": {}, "dataset": {}}'}, "(no 'model')"),
        ({"farzi": '{"model": "sasrec", "dataset": {}}'}, "(no 'config')"),
        ({"farzi": '{"model": "sasrec", "config": {}}'}, "(no 'dataset')"),
        ({"farzi": '{"model": 7, "config": {}, "dataset": {}}'}, "('model' is not a JSON string)"),
        ({"farzi": '{"model": "sasrec", "config": [], "dataset": {}}'}, "('config' is not a JSON object)"),
        ({"farzi": '{"model": "sasrec", "config": {}, "dataset": null}'}, "('dataset' is not a JSON object)"),
    ],
)
def test_bad_metadata(saved: Path, meta: dict, message: str) -> None:
    rewrite(saved, meta=meta)
    with pytest.raises(CheckpointError, match=re.escape(message)):
        read_checkpoint_info(saved)
    with pytest.raises(CheckpointError):
        load_checkpoint(saved)


@pytest.mark.parametrize(
    "changes",
    [
        {"model": "nosuch"},
        {"model": ["sasrec"]},
        {"config": "d_model=8"},
        {"dataset": None},
        {"config": {"vocab_size": 41, "colour": "red"}},
        {"config": {"vocab_size": 41, "d_model": 8, "n_heads": 3}},
        {"config": {"vocab_size": -41}},
        {"config": {"vocab_size": 41, "d_model": 16, "n_layers": 1, "n_heads": 1, "max_len": 12}},
    ],
)
def test_metadata_that_does_not_fit(saved: Path, changes: dict) -> None:
    rewrite_doc(saved, **changes)
    with pytest.raises(CheckpointError):
        load_checkpoint(saved)


def test_tensors_that_do_not_fit(saved: Path) -> None:
    tensors, _ = _parts(saved)
    rewrite(saved, tensors={k: v for k, v in tensors.items() if "pos_emb" not in k})
    with pytest.raises(CheckpointError, match=r"do not fit the model \(1 missing \(e.g. 'pos_emb'\)\)"):
        load_checkpoint(saved)
    rewrite(saved, tensors={**tensors, "extra": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"do not fit the model \(1 unexpected \(e.g. 'extra'\)\)"):
        load_checkpoint(saved)
    rewrite(saved, tensors={**tensors, "pos_emb": torch.zeros(3, 8)})
    with pytest.raises(CheckpointError, match=re.escape("'pos_emb' is [3, 8], the model needs [12, 8]")):
        load_checkpoint(saved)


def test_a_config_bigger_than_the_file_is_refused_before_it_is_built(saved: Path) -> None:
    """vocab_size 10**9 x d_model 10**4 is 40 TB of embeddings: compared on the meta device, never allocated."""
    _, meta = _parts(saved)
    doc = json.loads(meta["farzi"])
    rewrite_doc(saved, config={**doc["config"], "vocab_size": 10**9, "d_model": 10**4, "n_heads": 1})
    expected = "tensors do not fit the model ('blocks.0.attn.proj.bias' is [8], the model needs [10000])"
    with pytest.raises(CheckpointError, match=re.escape(expected)):
        load_checkpoint(saved)


def test_checks_hold_under_python_O(saved: Path) -> None:
    """No assert validates a file: with asserts stripped the same metadata is refused the same way."""
    import subprocess
    import sys

    rewrite(saved, meta={"farzi": '{"model": 7, "config": {}, "dataset": {}}'})
    code = (
        "import sys; from farzi.checkpoint import read_checkpoint_info; from farzi.errors import CheckpointError\n"
        "try:\n    read_checkpoint_info(sys.argv[1])\nexcept CheckpointError as e:\n    print(e)"
    )
    out = subprocess.run([sys.executable, "-O", "-c", code, str(saved)], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and "('model' is not a JSON string)" in out.stdout, out.stderr
    assert not re.search(r"^\s*assert\b", (REPO / "farzi" / "checkpoint.py").read_text(), re.MULTILINE)


def test_non_finite_tensors(saved: Path) -> None:
    tensors, _ = _parts(saved)
    tensors["item_emb"][3, 2] = float("nan")
    rewrite(saved, tensors=tensors)
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        load_checkpoint(saved)


# ------------------------------------------------------------------ nothing is unpickled


def test_loading_never_unpickles(saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("torch.load must not be used")

    monkeypatch.setattr(torch, "load", forbidden)
    load_checkpoint(saved)


def test_no_torch_load_or_pickle_in_the_source() -> None:
    offenders = []
    for path in sorted((REPO / "farzi").rglob("*.py")) + sorted((REPO / "farzictl").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for pattern in (r"torch\.load\(", r"\bimport pickle\b", r"\bpickle\.loads?\(", r"weights_only\s*=\s*False"):
            if re.search(pattern, text):
                offenders.append(f"{path.relative_to(REPO)}: {pattern}")
    assert offenders == []
