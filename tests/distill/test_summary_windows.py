"""The real windows the teacher and real inits start from (``--init-windows``)."""

from __future__ import annotations

import pytest
import torch

from farzi.data.sequences import Sequences
from farzi.distill.summary import real_windows, windows_kind

EOS = 1


def _seqs(lengths: list[int]) -> Sequences:
    """Sentences ``<eos> w... <eos>``; sequence i's words are 100 * (i + 1) + position."""
    seqs = [[EOS, *(100 * (i + 1) + p for p in range(n - 2)), EOS] for i, n in enumerate(lengths)]
    return Sequences.from_lists([f"s{i}" for i in range(len(seqs))], seqs)


@pytest.mark.parametrize(
    ("lengths", "kind", "expected"),
    [
        ([50, 10, 10], "auto", "within"),  # 50 of 70 tokens in sequences >= 50 long
        ([50, 25, 25], "auto", "within"),  # exactly half
        ([50, 26, 25], "auto", "joined"),  # 50 of 101: less than half
        ([50, 26, 25], "within", "within"),
        ([50, 10, 10], "joined", "joined"),
        ([49, 10, 10], "within", "joined"),  # nothing long enough: within falls back to joined
    ],
)
def test_windows_kind_by_the_share_of_tokens_in_long_sequences(lengths: list[int], kind: str, expected: str) -> None:
    assert windows_kind(_seqs(lengths), 50, kind) == expected


def test_within_windows_lie_inside_one_long_sequence() -> None:
    train = _seqs([8, 4, 3])  # only sequence 0 holds 6 tokens
    out = real_windows(train, 5, 6, torch.Generator().manual_seed(0), "within")
    assert out.shape == (5, 6)
    seq0 = train[0].tolist()
    slices = [seq0[s : s + 6] for s in range(len(seq0) - 5)]
    assert all(row in slices for row in out.tolist())


def test_joined_windows_start_at_a_sentence_and_keep_one_boundary_between_sentences() -> None:
    train = _seqs([8, 4, 3, 5])
    out = real_windows(train, 20, 6, torch.Generator().manual_seed(1), "joined")
    sentences = {tuple(train[i].tolist()) for i in range(len(train))}
    for row in out.tolist():
        assert row[0] == EOS
        assert all(not (a == b == EOS) for a, b in zip(row, row[1:], strict=False))  # never <eos> <eos>
        pieces, cur = [], [EOS]
        for tok in row[1:]:
            cur.append(tok)
            if tok == EOS:
                pieces.append(tuple(cur))
                cur = [EOS]
        assert all(p in sentences for p in pieces)  # whole sentences, then a prefix of one
        tail = tuple(cur)
        assert len(tail) == 1 or any(s[: len(tail)] == tail for s in sentences)


def test_auto_joins_sentences_when_long_ones_are_rare() -> None:
    """PTB's shape: 1 sentence in 40 holds xi tokens, so windows inside it would all repeat it."""
    train = _seqs([12] + [5] * 39)
    gen = torch.Generator().manual_seed(2)
    out = real_windows(train, 10, 12, gen)  # auto
    long_words = set(train[0].tolist()) - {EOS}
    assert windows_kind(train, 12) == "joined"
    assert not all(set(row) - {EOS} <= long_words for row in out.tolist())
    assert (out == EOS).sum(dim=1).min() >= 2  # every window crosses a sentence boundary
