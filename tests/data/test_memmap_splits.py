"""Prepared splits as memory-mapped arrays: what every rank of a job reads without loading the dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from farzi.data.prepare import PrepareOptions, prepare
from farzi.data.prepared import SPLITS, load_prepared
from farzi.errors import DataError


@pytest.fixture
def saved(tmp_path: Path):
    return prepare("synthetic-rec", PrepareOptions(synthetic_vocab=30, synthetic_sequences=60, seed=2), home=tmp_path)


def test_splits_are_read_memory_mapped_and_equal_the_parquet_copy(saved, tmp_path: Path) -> None:
    again = load_prepared(saved.path)
    for split in SPLITS:
        seqs = again.splits[split]
        assert isinstance(seqs.tokens, np.memmap) and not seqs.tokens.flags.writeable
        assert seqs.tokens.dtype == np.int32
        np.testing.assert_array_equal(seqs.tokens, saved.splits[split].tokens)
        np.testing.assert_array_equal(seqs.offsets, saved.splits[split].offsets)
        assert seqs.ids == saved.splits[split].ids
    assert again.fingerprint() == saved.fingerprint()
    manifest = json.loads((saved.path / "manifest.json").read_text())
    assert set(manifest["arrays"]) == set(SPLITS)


def test_a_dataset_without_arrays_is_read_from_parquet(saved) -> None:
    for split in SPLITS:
        (saved.path / f"{split}.tokens.npy").unlink()
    again = load_prepared(saved.path)
    assert not isinstance(again.train.tokens, np.memmap)
    assert again.fingerprint() == saved.fingerprint()


def test_changed_arrays_fail_the_fingerprint(saved) -> None:
    path = saved.path / "train.tokens.npy"
    tokens = np.load(path)
    tokens[0] = (tokens[0] + 1) % saved.vocab_size
    np.save(path, tokens)
    with pytest.raises(DataError, match="does not match the fingerprint"):
        load_prepared(saved.path)


def test_arrays_of_the_wrong_type_are_refused(saved) -> None:
    np.save(saved.path / "valid.offsets.npy", np.zeros(3, dtype=np.float32))
    with pytest.raises(DataError, match="not 1-d int32 / int64"):
        load_prepared(saved.path)
