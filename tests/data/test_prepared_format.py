"""The Sequences container and prepared-dataset format v1: save, load, fingerprint, rejects."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from farzi.data import prepared as prepared_mod
from farzi.data.prepared import FORMAT_NAME, FORMAT_VERSION, PreparedDataset, load_prepared
from farzi.data.sequences import Sequences
from farzi.data.vocab import Vocabulary, build_item_vocab
from farzi.errors import DataError

# ---------------------------------------------------------------- Sequences


def test_sequences_from_lists() -> None:
    seqs = Sequences.from_lists(["a", "b", "c"], [[5, 6, 7], [], [8]])
    assert len(seqs) == 3
    assert seqs.offsets.tolist() == [0, 3, 3, 4]
    assert seqs.offsets.dtype == np.int64 and seqs.tokens.dtype == np.int32
    assert seqs.tokens.tolist() == [5, 6, 7, 8]
    assert seqs.lengths.tolist() == [3, 0, 1]
    assert seqs.num_tokens == 4
    assert seqs[0].tolist() == [5, 6, 7] and seqs[1].tolist() == [] and seqs[2].tolist() == [8]
    assert [s.tolist() for s in seqs] == [[5, 6, 7], [], [8]]


def test_sequences_subset_keeps_the_given_order() -> None:
    seqs = Sequences.from_lists(["a", "b", "c"], [[1], [2, 2], [3, 3, 3]])
    sub = seqs.subset([2, 0])
    assert sub.ids == ["c", "a"]
    assert [s.tolist() for s in sub] == [[3, 3, 3], [1]]
    assert sub.offsets.tolist() == [0, 3, 4]


def test_empty_sequences() -> None:
    seqs = Sequences.from_lists([], [])
    assert len(seqs) == 0 and seqs.num_tokens == 0 and seqs.offsets.tolist() == [0]


# ---------------------------------------------------------------- fixtures


def lm_dataset() -> PreparedDataset:
    vocab = Vocabulary(tokens=["<pad>", "<unk>", "<eos>", "a", "b"], specials={"<pad>": 0, "<unk>": 1, "<eos>": 2})
    splits = {
        "train": Sequences.from_lists(["train-0", "train-1"], [[2, 3, 4, 2], [2, 4, 2]]),
        "valid": Sequences.from_lists(["valid-0"], [[2, 3, 2]]),
        "test": Sequences.from_lists(["test-0"], [[2, 1, 3, 4, 2]]),
    }
    return PreparedDataset(
        name="tiny-lm",
        task="lm",
        vocab=vocab,
        splits=splits,
        params={"seed": 0},
        source={"kind": "test"},
        extra={"note": "x"},
    )


def rec_dataset() -> PreparedDataset:
    vocab = build_item_vocab(["i1", "i2", "i3"], titles={"i1": "One"})
    splits = {
        "train": Sequences.from_lists(["u1", "u2"], [[1, 2, 3], [2, 3]]),
        "valid": Sequences.from_lists(["u3"], [[1, 3]]),
        "test": Sequences.from_lists(["u4"], [[3, 2, 1, 2]]),
    }
    return PreparedDataset(name="tiny-rec", task="rec", vocab=vocab, splits=splits)


def reference_fingerprint(task: str, vocab_tokens: list[str], splits: dict) -> str:
    """The algorithm of formats/prepared-dataset-v1.md, written out independently."""
    h = hashlib.sha256()
    h.update(b"farzi-prepared")
    h.update(task.encode())
    h.update(hashlib.sha256(json.dumps(vocab_tokens).encode("utf-8")).hexdigest().encode())
    for name in ("train", "valid", "test"):
        h.update(name.encode())
        h.update(np.asarray(splits[name].offsets, dtype="<i8").tobytes())
        h.update(np.asarray(splits[name].tokens, dtype="<i4").tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------- statistics


def test_lm_statistics_do_not_count_the_leading_boundary() -> None:
    stats = lm_dataset().statistics()
    # predicted lengths 3, 2, 2, 4
    assert stats == {
        "sequences": 4,
        "sentences": 4,
        "vocabulary": 2,
        "specials": 3,
        "tokens": 11,
        "length_mean": 2.75,
        "length_median": 2.5,
        "length_min": 2,
        "length_max": 4,
        "splits": {
            "train": {"sequences": 2, "tokens": 5},
            "valid": {"sequences": 1, "tokens": 2},
            "test": {"sequences": 1, "tokens": 4},
        },
    }


def test_rec_statistics_count_every_item() -> None:
    stats = rec_dataset().statistics()
    assert stats["users"] == stats["sequences"] == 4
    assert stats["items"] == stats["vocabulary"] == 3
    assert stats["interactions"] == stats["tokens"] == 11
    assert (stats["length_min"], stats["length_max"], stats["length_median"]) == (2, 4, 2.5)
    assert stats["specials"] == 1
    assert stats["splits"]["test"] == {"sequences": 1, "tokens": 4}


# ---------------------------------------------------------------- save / load


@pytest.mark.parametrize("make", [lm_dataset, rec_dataset], ids=["lm", "rec"])
def test_save_load_round_trip(tmp_path: Path, make) -> None:
    ds = make()
    target = ds.save(tmp_path / "ds")
    assert sorted(p.name for p in target.iterdir()) == [
        "manifest.json",
        "test.offsets.npy",
        "test.parquet",
        "test.tokens.npy",
        "train.offsets.npy",
        "train.parquet",
        "train.tokens.npy",
        "valid.offsets.npy",
        "valid.parquet",
        "valid.tokens.npy",
        "vocab.json",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no temp directory left beside it
    again = load_prepared(target)
    assert again.name == ds.name and again.task == ds.task and again.path == target
    assert again.vocab == ds.vocab
    assert again.params == ds.params and again.source == ds.source and again.extra == ds.extra
    for split in ("train", "valid", "test"):
        assert again.splits[split].ids == ds.splits[split].ids
        assert np.array_equal(again.splits[split].offsets, ds.splits[split].offsets)
        assert np.array_equal(again.splits[split].tokens, ds.splits[split].tokens)
        assert again.splits[split].tokens.dtype == np.int32
    assert again.fingerprint() == ds.fingerprint()
    assert again.statistics() == ds.statistics()


def test_files_follow_the_spec(tmp_path: Path) -> None:
    ds = lm_dataset()
    target = ds.save(tmp_path / "ds")
    for split in ("train", "valid", "test"):
        schema = pl.read_parquet_schema(target / f"{split}.parquet")
        assert dict(schema) == {"id": pl.String, "tokens": pl.List(pl.Int32)}
    frame = pl.read_parquet(target / "train.parquet")
    assert frame.to_dicts() == [
        {"id": "train-0", "tokens": [2, 3, 4, 2]},
        {"id": "train-1", "tokens": [2, 4, 2]},
    ]
    vocab = json.loads((target / "vocab.json").read_text(encoding="utf-8"))
    assert vocab == {
        "tokens": ["<pad>", "<unk>", "<eos>", "a", "b"],
        "specials": {"<pad>": 0, "<unk>": 1, "<eos>": 2},
    }
    manifest = json.loads((target / "manifest.json").read_text(encoding="utf-8"))
    assert set(manifest) == {
        "format",
        "version",
        "name",
        "task",
        "created_by",
        "source",
        "params",
        "fingerprint",
        "vocab",
        "splits",
        "statistics",
        "extra",
        "arrays",
    }
    assert manifest["format"] == FORMAT_NAME == "farzi-prepared"
    assert manifest["version"] == FORMAT_VERSION == 1
    assert manifest["task"] == "lm" and manifest["name"] == "tiny-lm"
    assert manifest["created_by"]["package"] == "farzi"
    assert manifest["splits"] == {
        "train": "train.parquet",
        "valid": "valid.parquet",
        "test": "test.parquet",
    }
    assert manifest["vocab"] == {
        "file": "vocab.json",
        "size": 5,
        "specials": vocab["specials"],
        "sha256": ds.vocab.sha256(),
    }
    assert manifest["statistics"] == ds.statistics()
    assert manifest["fingerprint"] == reference_fingerprint("lm", vocab["tokens"], ds.splits)


def test_saving_again_replaces_the_dataset(tmp_path: Path) -> None:
    lm_dataset().save(tmp_path / "ds")
    rec_dataset().save(tmp_path / "ds")
    assert load_prepared(tmp_path / "ds").task == "rec"
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_failed_save_leaves_the_old_dataset_and_no_temp_dir(tmp_path: Path, monkeypatch) -> None:
    lm_dataset().save(tmp_path / "ds")
    before = {p.name: p.read_bytes() for p in (tmp_path / "ds").iterdir()}

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(prepared_mod, "write_json", boom)
    with pytest.raises(OSError, match="disk full"):
        rec_dataset().save(tmp_path / "ds")
    assert {p.name: p.read_bytes() for p in (tmp_path / "ds").iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


# ---------------------------------------------------------------- fingerprint


def test_fingerprint_is_content_based_and_sensitive_to_tokens() -> None:
    a, b = lm_dataset(), lm_dataset()
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() == reference_fingerprint("lm", a.vocab.tokens, a.splits)
    changed = lm_dataset()
    changed.splits["test"].tokens[1] = 4  # one token of one sentence
    assert changed.fingerprint() != a.fingerprint()
    moved = lm_dataset()  # same tokens, another sentence boundary
    moved.splits["train"] = Sequences.from_lists(["train-0", "train-1"], [[2, 3, 4], [2, 2, 4, 2]])
    assert moved.fingerprint() != a.fingerprint()
    renamed = lm_dataset()
    renamed.vocab = Vocabulary(tokens=["<pad>", "<unk>", "<eos>", "a", "B"], specials=renamed.vocab.specials)
    assert renamed.fingerprint() != a.fingerprint()


# ---------------------------------------------------------------- load_prepared rejects


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    return lm_dataset().save(tmp_path / "ds")


def _edit_manifest(path: Path, **changes) -> None:
    manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    manifest.update(changes)
    (path / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def test_missing_manifest_is_rejected(saved: Path) -> None:
    (saved / "manifest.json").unlink()
    with pytest.raises(DataError, match="manifest.json missing"):
        load_prepared(saved)
    with pytest.raises(DataError, match="manifest.json missing"):
        load_prepared(saved.parent / "nowhere")


def test_newer_version_is_rejected(saved: Path) -> None:
    _edit_manifest(saved, version=FORMAT_VERSION + 1)
    with pytest.raises(DataError, match=r"format v2, this farzi reads up to v1"):
        load_prepared(saved)


def test_non_integer_version_is_rejected(saved: Path) -> None:
    _edit_manifest(saved, version="1")
    with pytest.raises(DataError, match="reads up to v1"):
        load_prepared(saved)


def test_wrong_format_name_is_rejected(saved: Path) -> None:
    _edit_manifest(saved, format="something-else")
    with pytest.raises(DataError, match="not a farzi prepared dataset"):
        load_prepared(saved)


def test_invalid_json_manifest_is_rejected(saved: Path) -> None:
    (saved / "manifest.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match="not valid JSON"):
        load_prepared(saved)


def test_unknown_task_is_rejected(saved: Path) -> None:
    _edit_manifest(saved, task="vision")
    with pytest.raises(DataError, match="unknown task 'vision'"):
        load_prepared(saved)


def test_tampered_parquet_fails_the_fingerprint(saved: Path) -> None:
    frame = pl.read_parquet(saved / "valid.parquet")
    frame = frame.with_columns(pl.Series("tokens", [[2, 4, 2]], dtype=pl.List(pl.Int32)))
    frame.write_parquet(saved / "valid.parquet")
    with pytest.raises(DataError, match="does not match the fingerprint"):
        load_prepared(saved)


def test_tampered_vocabulary_fails_the_fingerprint(saved: Path) -> None:
    vocab = json.loads((saved / "vocab.json").read_text(encoding="utf-8"))
    vocab["tokens"][3] = "z"
    (saved / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    with pytest.raises(DataError, match="does not match the fingerprint"):
        load_prepared(saved)


def test_missing_or_unreadable_split_is_rejected(saved: Path) -> None:
    pl.DataFrame({"id": ["t"]}).write_parquet(saved / "test.parquet")  # no tokens column
    with pytest.raises(DataError, match="cannot read .*test.parquet"):
        load_prepared(saved)
    (saved / "test.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="cannot read"):
        load_prepared(saved)
    os.unlink(saved / "test.parquet")
    with pytest.raises(DataError, match="test.parquet is missing"):
        load_prepared(saved)


def test_token_ids_outside_the_vocabulary_are_rejected(saved: Path) -> None:
    frame = pl.DataFrame({"id": ["t"], "tokens": pl.Series([[2, 99, 2]], dtype=pl.List(pl.Int32))})
    frame.write_parquet(saved / "test.parquet")
    with pytest.raises(DataError, match="outside the vocabulary"):
        load_prepared(saved)
