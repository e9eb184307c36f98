"""Vocabularies: top-k with alphabetical ties, special ids, item vocabularies, JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from farzi.data.vocab import Vocabulary, build_item_vocab, build_lm_vocab
from farzi.errors import DataError

# counts: the=4, cat=2, sat=2, a=2, mat=1, on=1 (plus literal specials, never words)
SENTENCES = [
    ["the", "cat", "sat"],
    ["the", "mat", "<unk>"],
    ["a", "cat", "the", "<eos>"],
    ["sat", "on", "a", "the", "<pad>"],
]


def test_specials_have_fixed_ids() -> None:
    vocab, _ = build_lm_vocab(SENTENCES, size=10)
    assert vocab.tokens[:3] == ["<pad>", "<unk>", "<eos>"]
    assert vocab.specials == {"<pad>": 0, "<unk>": 1, "<eos>": 2}
    assert (vocab.pad_id, vocab.unk_id, vocab.eos_id) == (0, 1, 2)
    assert vocab.num_specials == 3


def test_top_k_with_ties_broken_alphabetically() -> None:
    vocab, counts = build_lm_vocab(SENTENCES, size=3)
    # "the" (4) first, then the three words counted twice in alphabetical order: a, cat, sat
    assert vocab.tokens == ["<pad>", "<unk>", "<eos>", "the", "a", "cat"]
    assert counts == {"the": 4, "cat": 2, "sat": 2, "a": 2, "mat": 1, "on": 1}
    full, _ = build_lm_vocab(SENTENCES, size=100)
    assert full.tokens[3:] == ["the", "a", "cat", "sat", "mat", "on"]


def test_literal_unk_maps_to_the_special_and_unknown_words_to_unk() -> None:
    vocab, _ = build_lm_vocab(SENTENCES, size=3)
    assert vocab.id("<unk>") == 1
    assert vocab.id("mat") == 1  # cut by top-k
    assert vocab.id("never-seen") == 1
    assert vocab.encode(["the", "<unk>", "cat"]) == [3, 1, 5]
    assert vocab.tokens.count("<unk>") == 1


def test_item_vocabulary_puts_items_at_one_to_n() -> None:
    vocab = build_item_vocab(["10", "2", "x"], titles={"2": "Two", "x": "Ex"})
    assert vocab.tokens == ["<pad>", "10", "2", "x"]
    assert vocab.specials == {"<pad>": 0}
    assert vocab.unk_id is None and vocab.eos_id is None
    assert vocab.titles == ["", "", "Two", "Ex"]
    assert vocab.label(2) == "Two" and vocab.label(1) == "10"
    with pytest.raises(KeyError):
        vocab.id("unknown-item")


def test_json_round_trip_and_hash(tmp_path: Path) -> None:
    vocab = build_item_vocab(["i1", "i2"], titles={"i1": "Ünïcode title"})
    vocab.save(tmp_path / "vocab.json")
    raw = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    assert raw == {
        "tokens": ["<pad>", "i1", "i2"],
        "specials": {"<pad>": 0},
        "titles": ["", "Ünïcode title", ""],
    }
    again = Vocabulary.load(tmp_path / "vocab.json")
    assert again == vocab
    assert again.sha256() == vocab.sha256()
    # titles do not enter the hash, tokens do
    assert Vocabulary(tokens=vocab.tokens, specials={"<pad>": 0}).sha256() == vocab.sha256()
    assert Vocabulary(tokens=["<pad>", "i2", "i1"], specials={"<pad>": 0}).sha256() != vocab.sha256()


def test_invalid_vocabularies_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="duplicate"):
        Vocabulary(tokens=["<pad>", "a", "a"], specials={"<pad>": 0})
    with pytest.raises(DataError, match="<pad>"):
        Vocabulary(tokens=["a", "<pad>"], specials={"<pad>": 1})
    (tmp_path / "bad.json").write_text('{"tokens": ["<pad>"]}', encoding="utf-8")
    with pytest.raises(DataError, match="cannot read the vocabulary"):
        Vocabulary.load(tmp_path / "bad.json")
    with pytest.raises(DataError, match="the vocabulary .*missing.json is missing; prepare the dataset again"):
        Vocabulary.load(tmp_path / "missing.json")
