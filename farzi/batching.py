"""Turning sequences into padded batches, and the training sets a loop consumes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from farzi.data.sequences import Sequences


def pad_right(seqs: list[np.ndarray], length: int | None = None) -> Tensor:
    """Stack sequences into [B, L] int64, padding with 0 on the right."""
    L = length if length is not None else max((len(s) for s in seqs), default=1)
    out = np.zeros((len(seqs), max(L, 1)), dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s[:L]
    return torch.from_numpy(out)


class TrainSet(Protocol):
    """Something a training loop can draw batches from, epoch after epoch."""

    num_sequences: int
    kind: str  # "ids" or "soft"

    def batches(self, batch_size: int, gen: torch.Generator, device: torch.device) -> Iterator[Tensor]: ...


class SequenceTrainSet:
    """Real sequences; each is cut to a window of ``max_len`` tokens.

    ``crop="random"`` draws a new window per sequence per epoch (more of a long
    history gets seen), ``"last"`` always keeps the most recent tokens.
    """

    kind = "ids"

    def __init__(self, seqs: Sequences, max_len: int, crop: str = "random") -> None:
        self.seqs = seqs
        self.max_len = max_len
        self.crop = crop
        self.num_sequences = len(seqs)

    def batches(self, batch_size: int, gen: torch.Generator, device: torch.device) -> Iterator[Tensor]:
        order = torch.randperm(self.num_sequences, generator=gen).numpy()
        lengths = self.seqs.lengths
        starts = np.zeros(self.num_sequences, dtype=np.int64)
        room = np.maximum(lengths - self.max_len, 0)
        if self.crop == "random":
            draws = torch.rand(self.num_sequences, generator=gen, dtype=torch.float64).numpy()
            starts = np.floor(draws * (room + 1)).astype(np.int64)
        else:
            starts = room
        for i in range(0, self.num_sequences, batch_size):
            idx = order[i : i + batch_size]
            chunk = [self.seqs[j][starts[j] : starts[j] + self.max_len] for j in idx]
            yield pad_right(chunk).to(device)


class DistributionTrainSet:
    """Farzi Data: batches of ``softmax(latent[idx] @ decoder / tau)`` (soft inputs and targets).

    Only the batch is materialized, never all [mu, xi, V] at once. With
    ``discrete=True`` each batch is instead a sample of token ids from those
    distributions (one draw per position).
    """

    def __init__(self, summary: object, discrete: bool = False) -> None:
        self.summary = summary
        self.discrete = discrete
        self.kind = "ids" if discrete else "soft"
        self.num_sequences = int(summary.latent.shape[0])  # type: ignore[attr-defined]

    def batches(self, batch_size: int, gen: torch.Generator, device: torch.device) -> Iterator[Tensor]:
        order = torch.randperm(self.num_sequences, generator=gen)
        for i in range(0, self.num_sequences, batch_size):
            idx = order[i : i + batch_size]
            with torch.no_grad():
                dist = self.summary.materialize(idx.to(self.summary.latent.device)).to(device)  # type: ignore[attr-defined]
            if not self.discrete:
                yield dist
                continue
            B, L, V = dist.shape
            flat = dist.reshape(B * L, V).double().cpu()
            draws = torch.multinomial(flat, 1, generator=gen).view(B, L)
            yield draws.to(device)
