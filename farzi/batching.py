"""Turning sequences into padded batches, and the training sets a loop consumes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from farzi.data.sequences import Sequences
from farzi.models.sparse import SparseDist


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


def batching_record(train_set: object) -> dict[str, Any]:
    """What a run's metadata says about how its batches were formed."""
    describe = getattr(train_set, "describe", None)
    if callable(describe):
        return {"kind": getattr(train_set, "kind", None), **describe()}
    return {"kind": getattr(train_set, "kind", None), "bucketing": None}


@dataclass(frozen=True)
class Bucketing:
    """Length bucketing of a SequenceTrainSet's batches (recorded in a run's metadata).

    Each epoch, the shuffled sequences are cut into buckets of ``batches``
    batches; within a bucket they are sorted by window length times a random
    factor in [1 - noise, 1 + noise] (so equal lengths mix differently every
    epoch), cut into batches, and the batches of all buckets are shuffled. Each
    batch is padded to its own longest window, so little padding is computed.
    ``batches=0`` turns it off (batches in shuffled order, as drawn).
    """

    batches: int = 50
    noise: float = 0.1

    def __post_init__(self) -> None:
        if self.batches < 0 or not 0.0 <= self.noise < 1.0:
            raise ValueError(f"bucketing needs batches >= 0 and 0 <= noise < 1, not {self}")

    @property
    def enabled(self) -> bool:
        return self.batches > 0


NO_BUCKETING = Bucketing(batches=0, noise=0.0)


class SequenceTrainSet:
    """Real sequences; each is cut to a window of ``max_len`` tokens.

    ``crop="random"`` draws a new window per sequence per epoch (more of a long
    history gets seen), ``"last"`` always keeps the most recent tokens.
    Batches are bucketed by length (``bucketing``, on by default). Everything is
    drawn from the generator passed to ``batches``: same seed, same batches.
    """

    kind = "ids"

    def __init__(self, seqs: Sequences, max_len: int, crop: str = "random", bucketing: Bucketing | None = None) -> None:
        self.seqs = seqs
        self.max_len = max_len
        self.crop = crop
        self.bucketing = Bucketing() if bucketing is None else bucketing
        self.num_sequences = len(seqs)

    def describe(self) -> dict[str, Any]:
        """How batches are formed, for a run's metadata."""
        return {
            "max_len": self.max_len,
            "crop": self.crop,
            "bucketing": asdict(self.bucketing) if self.bucketing.enabled else None,
        }

    def batches(self, batch_size: int, gen: torch.Generator, device: torch.device) -> Iterator[Tensor]:
        n = self.num_sequences
        order = torch.randperm(n, generator=gen).numpy()
        lengths = self.seqs.lengths
        room = np.maximum(lengths - self.max_len, 0)
        if self.crop == "random":
            draws = torch.rand(n, generator=gen, dtype=torch.float64).numpy()
            starts = np.floor(draws * (room + 1)).astype(np.int64)
        else:
            starts = room
        for idx in self._batch_order(order, np.minimum(lengths, self.max_len), batch_size, gen):
            chunk = [self.seqs[j][starts[j] : starts[j] + self.max_len] for j in idx]
            yield pad_right(chunk).to(device)  # [b, longest window of the batch]

    def _batch_order(
        self, order: np.ndarray, windows: np.ndarray, batch_size: int, gen: torch.Generator
    ) -> list[np.ndarray]:
        """The epoch's batches as index arrays: ``order`` cut in turn, or bucketed by window length."""
        n = len(order)
        if not self.bucketing.enabled:
            return [order[i : i + batch_size] for i in range(0, n, batch_size)]
        jitter = torch.rand(n, generator=gen, dtype=torch.float64).numpy()
        key = windows[order] * (1.0 + self.bucketing.noise * (2.0 * jitter - 1.0))  # [n], in shuffled order
        span = self.bucketing.batches * batch_size
        out: list[np.ndarray] = []
        for lo in range(0, n, span):
            bucket = order[lo : lo + span][np.argsort(key[lo : lo + span], kind="stable")]
            out += [bucket[i : i + batch_size] for i in range(0, len(bucket), batch_size)]
        shuffle = torch.randperm(len(out), generator=gen).numpy()
        return [out[i] for i in shuffle]


# float32 distributions a student materializes at once (Netflix at xi 200, --batch-size 128: 1.82 GB)
MAX_BATCH_BYTES = 2 * 1024**3


class DistributionTrainSet:
    """Farzi Data: batches of ``softmax(latent[idx] @ decoder / tau)`` (soft inputs and targets).

    Only the batch is materialized, never all [mu, xi, V] at once, and never more
    than ``max_batch_bytes`` of float32 distributions: soft batches hold at most
    ``max_batch_bytes // (xi * V * 4)`` sequences (at least one), smaller than
    ``batch_size`` only where a batch would exceed it. With ``discrete=True`` each
    batch is instead a sample of token ids from those distributions (one draw per
    position), drawn chunk by chunk within the same bound (counting the float64
    copy the sampler uses), so the batch keeps ``batch_size`` sequences.
    """

    def __init__(self, summary: object, discrete: bool = False, max_batch_bytes: int = MAX_BATCH_BYTES) -> None:
        self.summary = summary
        self.discrete = discrete
        self.kind = "ids" if discrete else "soft"
        latent = summary.latent  # type: ignore[attr-defined]
        self.num_sequences = int(latent.shape[0])
        xi = int(latent.shape[1]) if latent.ndim == 3 else 1
        support = getattr(summary, "support", None)  # a sparse bundle: K candidates a position (id and p)
        width = 3 * int(support.shape[-1]) if support is not None else int(summary.vocab_size)  # type: ignore[attr-defined]
        self.sequence_bytes = 4 * xi * width
        per_sequence = self.sequence_bytes * (3 if discrete else 1)  # discrete: float32 + its float64 copy
        self.chunk = max(1, max_batch_bytes // per_sequence)  # sequences materialized at once

    def batches(self, batch_size: int, gen: torch.Generator, device: torch.device) -> Iterator[Tensor]:
        order = torch.randperm(self.num_sequences, generator=gen)
        step = batch_size if self.discrete else min(batch_size, self.chunk)
        for i in range(0, self.num_sequences, step):
            idx = order[i : i + step]
            if not self.discrete:
                yield self._materialize(idx).to(device)
                continue
            draws = [self._sample(idx[j : j + self.chunk], gen) for j in range(0, len(idx), self.chunk)]
            yield (draws[0] if len(draws) == 1 else torch.cat(draws)).to(device)

    def _materialize(self, idx: Tensor) -> Tensor:
        with torch.no_grad():
            # a sparse bundle's batches stay sparse (FarziData.batch); anything else with materialize() is dense
            make = getattr(self.summary, "batch", None) or self.summary.materialize  # type: ignore[attr-defined]
            return make(idx.to(self.summary.latent.device))  # type: ignore[attr-defined]

    def _sample(self, idx: Tensor, gen: torch.Generator) -> Tensor:
        dist = self._materialize(idx)  # [B, L, V], or sparse [B, L, K]
        if isinstance(dist, SparseDist):  # a draw among each position's candidates
            B, L, K = dist.shape
            pick = torch.multinomial(dist.p.reshape(B * L, K).double().cpu(), 1, generator=gen)  # [B * L, 1]
            return dist.idx.reshape(B * L, K).cpu().gather(1, pick).view(B, L)
        B, L, V = dist.shape
        flat = dist.reshape(B * L, V).double().cpu()
        del dist
        return torch.multinomial(flat, 1, generator=gen).view(B, L)  # [B, L]
