"""Text corpora: one sequence per line, whitespace tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from farzi.data._read import read_bytes, reading
from farzi.data.sequences import Sequences
from farzi.data.vocab import EOS, PAD, Vocabulary, build_lm_vocab
from farzi.errors import DataError


def split_lines(text: str) -> list[str]:
    """Lines of a corpus: they end at ``\n`` (or ``\r\n``) only.

    ``str.splitlines`` would also end a line at ``\x0b``, ``\x0c``, ``\x1c``-``\x1e``, ``\x85``,
    U+2028 and U+2029, splitting one sequence in two; inside a line those characters are
    whitespace between tokens, like a space.
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def decode_text(path: Path, noun: str, kind: str, nul_fix: str) -> str:
    """The file at ``path`` as UTF-8 text; a NUL byte or an invalid byte is refused naming its line
    (``kind``: what the file should be, e.g. "a text corpus"; ``noun``: what to convert, e.g. "corpus")."""
    raw = read_bytes(path)
    if b"\x00" in raw:
        line_no = raw[: raw.index(b"\x00")].count(b"\n") + 1
        raise DataError(f"{path} line {line_no} holds a NUL byte: this is not {kind}", nul_fix)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_no = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path} line {line_no} is not valid UTF-8", f"convert the {noun} to UTF-8 (e.g. iconv -t utf-8)"
        ) from exc


def read_sentences(path: Path) -> list[list[str]]:
    """Read a corpus file: one sentence per non-blank line, tokens split on whitespace."""
    path = Path(path)
    with reading(path):
        exists, is_file = path.exists(), path.is_file()
    if not exists:
        raise DataError(f"corpus file {path} does not exist", "check the path")
    if not is_file:
        raise DataError(f"corpus path {path} is not a file", "pass a text file, one sentence per line")
    text = decode_text(path, "corpus", "a text corpus", "pass a UTF-8 text file, one sentence per line")
    body = text.rstrip()
    if "\r" in body and "\n" not in body:
        raise DataError(
            f"{path} ends its lines with \\r only (classic Mac line endings): it would be read as one sentence",
            "convert the line endings to \\n (e.g. tr '\\r' '\\n' < old > new)",
        )
    sentences = [line.split() for line in split_lines(text)]
    sentences = [s for s in sentences if s]
    if not sentences:
        raise DataError(f"corpus file {path} is empty", "pass a file with at least one non-blank line")
    return sentences


def encode_sentences(sentences: list[list[str]], vocab: Vocabulary, prefix: str) -> Sequences:
    """Encode as ``<eos> w1 ... wn <eos>`` (leading boundary + words + end of sentence)."""
    eos = vocab.id(EOS)
    unk = vocab.unk_id
    # a literal "<pad>" in the corpus is a word, not padding: id 0 never appears in a sequence
    seqs = [[eos, *(unk if w == PAD else vocab.id(w) for w in words), eos] for words in sentences]
    ids = [f"{prefix}{i}" for i in range(len(seqs))]
    return Sequences.from_lists(ids, seqs)


def lm_splits(
    train: list[list[str]],
    valid: list[list[str]] | None,
    test: list[list[str]] | None,
    vocab_size: int,
    seed: int,
) -> tuple[Vocabulary, dict[str, Sequences], dict]:
    """Build the vocabulary on ``train`` and encode the splits.

    When ``valid``/``test`` are not given, 10 % of the training sentences each
    (chosen with ``seed``) are held out for them.
    """
    info: dict = {}
    if valid is None or test is None:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(train))
        n = len(train)
        n_hold = max(1, round(0.1 * n))
        if n < 3:
            raise DataError(
                f"the corpus has {n} sentence(s), too few to hold out validation and test",
                "pass at least 3 sentences, or give --valid and --test files",
            )
        pool = [train[i] for i in order]
        if valid is None:
            valid, pool = pool[:n_hold], pool[n_hold:]
            info["valid_from_train"] = True
        if test is None:
            test, pool = pool[:n_hold], pool[n_hold:]
            info["test_from_train"] = True
        train = pool
    if vocab_size < 1:
        raise DataError(f"--vocab-size {vocab_size} is too small", "pass a positive vocabulary size")
    vocab, counts = build_lm_vocab(train, vocab_size)
    n_words = len(vocab) - vocab.num_specials
    info["distinct_train_words"] = len(counts)
    info["vocab_words"] = n_words
    splits = {
        "train": encode_sentences(train, vocab, "train-"),
        "valid": encode_sentences(valid, vocab, "valid-"),
        "test": encode_sentences(test, vocab, "test-"),
    }
    unk = vocab.unk_id
    for name, seqs in splits.items():
        body = seqs.num_tokens - 2 * len(seqs)
        info[f"{name}_unk_rate"] = round(float((seqs.tokens == unk).sum()) / max(body, 1), 6)
    return vocab, splits, info
