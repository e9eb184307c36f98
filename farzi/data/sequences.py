"""A compact container for many variable-length token sequences (CSR layout)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Sequences:
    """``n`` sequences stored as one token array and ``n + 1`` offsets.

    Sequence ``i`` is ``tokens[offsets[i]:offsets[i + 1]]``; ``ids[i]`` names it
    (a user id, or a sentence number).
    """

    ids: list[str]
    offsets: np.ndarray  # [n + 1] int64
    tokens: np.ndarray  # [sum of lengths] int32

    @classmethod
    def from_lists(cls, ids: Sequence[str], seqs: Sequence[Sequence[int]]) -> Sequences:
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        tokens = np.fromiter((t for s in seqs for t in s), dtype=np.int32, count=int(offsets[-1]))
        return cls(ids=list(ids), offsets=offsets, tokens=tokens)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> np.ndarray:
        seq = self.tokens[self.offsets[i] : self.offsets[i + 1]]
        # a memory-mapped split is read-only: hand out a copy (torch warns on read-only arrays)
        return seq if seq.flags.writeable else np.array(seq)

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self[i]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def subset(self, index: Sequence[int] | np.ndarray) -> Sequences:
        index = np.asarray(index, dtype=np.int64)
        return Sequences.from_lists([self.ids[i] for i in index], [self[i] for i in index])

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])
