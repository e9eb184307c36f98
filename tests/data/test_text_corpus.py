"""Text corpora: reading sentences, encoding `<eos> w.. <eos>`, held-out splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from farzi.data.text import encode_sentences, lm_splits, read_sentences
from farzi.data.vocab import build_lm_vocab
from farzi.errors import DataError

# counts: a=3, b=2, c=2, d=1; the literal <unk> is the special, not a word
CORPUS = [["b", "a", "c"], ["a", "b"], ["c", "a", "<unk>", "d"]]


def write(path: Path, data: bytes | str) -> Path:
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------- read_sentences


def test_read_sentences_skips_blank_lines_and_splits_on_whitespace(tmp_path: Path) -> None:
    path = write(tmp_path / "c.txt", "a  b\n\n   \n\tc d \r\ne\n")
    assert read_sentences(path) == [["a", "b"], ["c", "d"], ["e"]]


def test_read_sentences_without_final_newline(tmp_path: Path) -> None:
    assert read_sentences(write(tmp_path / "c.txt", "x y\nz")) == [["x", "y"], ["z"]]


def test_nul_byte_is_an_error_naming_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "c.txt", b"ok line\nfine\nbad\x00line\nmore\n")
    with pytest.raises(DataError, match=r"line 3 holds a NUL byte"):
        read_sentences(path)


def test_invalid_utf8_is_an_error_naming_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "c.txt", b"ok\nfine\nstill fine\ncaf\xe9 latin-1\n")
    with pytest.raises(DataError, match=r"line 4 is not valid UTF-8"):
        read_sentences(path)


@pytest.mark.parametrize("content", [b"", b"\n\n  \n\t\n"], ids=["empty", "blank-lines-only"])
def test_empty_corpus_is_an_error(tmp_path: Path, content: bytes) -> None:
    with pytest.raises(DataError, match="is empty"):
        read_sentences(write(tmp_path / "c.txt", content))


def test_missing_file_and_directory_are_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_sentences(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="is not a file"):
        read_sentences(tmp_path)


# ---------------------------------------------------------------- encoding


def test_encoding_layout_is_eos_words_eos() -> None:
    vocab, _ = build_lm_vocab(CORPUS, size=3)  # a=3, b=4, c=5 (d is out of vocabulary)
    seqs = encode_sentences(CORPUS, vocab, prefix="train-")
    assert seqs.ids == ["train-0", "train-1", "train-2"]
    assert [s.tolist() for s in seqs] == [
        [2, 4, 3, 5, 2],
        [2, 3, 4, 2],
        [2, 5, 3, 1, 1, 2],  # the literal "<unk>" and the rare "d" both become <unk> = 1
    ]
    assert seqs.offsets.tolist() == [0, 5, 9, 15]
    assert seqs.tokens.dtype == np.int32


def test_literal_pad_in_the_corpus_is_unknown_not_padding() -> None:
    vocab, _ = build_lm_vocab([["a", "<pad>"]], size=10)
    assert "<pad>" not in vocab.tokens[3:]
    seqs = encode_sentences([["a", "<pad>"]], vocab, prefix="s")
    assert seqs[0].tolist() == [2, 3, 1, 2]
    assert 0 not in seqs.tokens


# ---------------------------------------------------------------- lm_splits


def test_given_splits_are_encoded_with_the_training_vocabulary() -> None:
    vocab, splits, info = lm_splits(CORPUS, [["d", "a"]], [["b"]], vocab_size=3, seed=0)
    assert vocab.tokens == ["<pad>", "<unk>", "<eos>", "a", "b", "c"]
    assert splits["train"][0].tolist() == [2, 4, 3, 5, 2]
    assert splits["valid"][0].tolist() == [2, 1, 3, 2]
    assert splits["test"][0].tolist() == [2, 4, 2]
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [3, 1, 1]
    assert info["distinct_train_words"] == 4  # a, b, c, d (the literal <unk> is not a word)
    assert info["vocab_words"] == 3
    assert info["train_unk_rate"] == round(2 / 9, 6)  # 2 <unk> among 9 words
    assert info["valid_unk_rate"] == 0.5
    assert info["test_unk_rate"] == 0.0
    assert "valid_from_train" not in info and "test_from_train" not in info


def _sentences(n: int) -> list[list[str]]:
    """Sentence i is i + 1 times "x" then "s{i}": its length tells which one it is."""
    return [["x"] * (i + 1) + [f"s{i}"] for i in range(n)]


def _which(seqs) -> list[int]:
    return [len(s) - 4 for s in seqs]  # i + 1 "x", one "s{i}", two <eos>


def test_missing_valid_and_test_hold_out_ten_percent_each() -> None:
    train = _sentences(20)
    vocab, splits, info = lm_splits(train, None, None, vocab_size=100, seed=0)
    sizes = {s: len(splits[s]) for s in ("train", "valid", "test")}
    assert sizes == {"train": 16, "valid": 2, "test": 2}
    assert info["valid_from_train"] is True and info["test_from_train"] is True
    parts = {s: set(_which(splits[s])) for s in splits}
    assert parts["train"] | parts["valid"] | parts["test"] == set(range(20))
    assert not parts["train"] & parts["valid"]
    assert not parts["train"] & parts["test"]
    assert not parts["valid"] & parts["test"]
    # the vocabulary is built on the remaining training sentences only
    assert set(vocab.tokens[3:]) == {f"s{i}" for i in parts["train"]} | {"x"}


def test_held_out_split_is_seeded() -> None:
    train = _sentences(50)

    def held(seed: int) -> tuple[list[int], list[int]]:
        _, splits, _ = lm_splits(train, None, None, vocab_size=100, seed=seed)
        return _which(splits["valid"]), _which(splits["test"])

    assert held(7) == held(7)
    assert held(7) != held(8)


def test_only_test_missing_holds_out_only_test() -> None:
    vocab, splits, info = lm_splits(_sentences(30), [["v"]], None, vocab_size=100, seed=0)
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [27, 1, 3]
    assert info.get("test_from_train") is True and "valid_from_train" not in info


def test_too_few_sentences_to_hold_out_is_an_error() -> None:
    with pytest.raises(DataError, match="too few"):
        lm_splits(_sentences(2), None, None, vocab_size=10, seed=0)


# ---------------------------------------------------------------- line breaks


@pytest.mark.parametrize(
    "char",
    ["\u2028", "\u2029", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85"],
    ids=["U+2028", "U+2029", "VT", "FF", "FS", "GS", "RS", "NEL"],
)
def test_only_newline_ends_a_line(tmp_path: Path, char: str) -> None:
    # str.splitlines() ends a line at each of these: one sentence became two
    path = write(tmp_path / "c.txt", f"one{char}sentence here\nsecond line\n")
    assert read_sentences(path) == [["one", "sentence", "here"], ["second", "line"]]


def test_crlf_line_endings(tmp_path: Path) -> None:
    assert read_sentences(write(tmp_path / "c.txt", "a b\r\nc\r\n\r\nd\r\n")) == [["a", "b"], ["c"], ["d"]]


def test_a_corpus_line_with_u2028_stays_one_sequence_through_prepare(tmp_path: Path) -> None:
    from farzi.data.prepare import PrepareOptions, prepare

    train = write(tmp_path / "train.txt", "a\u2028b c\n" * 5)
    held = write(tmp_path / "held.txt", "a b\n")
    ds = prepare("text", PrepareOptions(train=train, valid=held, test=held), home=tmp_path / "home")
    assert len(ds.train) == 5
    assert ds.train[0].tolist() == [2, 3, 4, 5, 2]  # <eos> a b c <eos>


def test_carriage_return_only_line_endings_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "c.txt", "first line\rsecond line\rthird\r")
    with pytest.raises(DataError, match=r"ends its lines with \\r only .* convert the line endings to \\n"):
        read_sentences(path)
    # a lone trailing \r on a one-line file is just whitespace
    assert read_sentences(write(tmp_path / "d.txt", "only line\r")) == [["only", "line"]]


def test_line_numbers_in_errors_count_newlines_only(tmp_path: Path) -> None:
    path = write(tmp_path / "c.txt", "a\u2028b\nc\x85d\nbad\x00\n".encode())
    with pytest.raises(DataError, match="line 3 holds a NUL byte"):
        read_sentences(path)


def test_cli_carriage_return_only_corpus_is_one_error_line(tmp_path: Path) -> None:
    from cli_runner import farzictl

    path = write(tmp_path / "c.txt", "first line\rsecond line\r")
    home = tmp_path / "home"
    line = farzictl("prepare", "text", "--train", path, home=home).one_error_line()
    assert "ends its lines with \\r only" in line and not home.exists()
