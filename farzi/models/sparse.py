"""Sparse distributions: the inputs and targets of a sparse summary (``--support K``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class SparseDist:
    """Distributions that put their mass on K candidate tokens per position (a sparse summary's
    sequences): ``idx`` [B, L, K] token ids (never ``<pad>``), ``p`` [B, L, K] their probabilities
    (summing to 1 at a position, or 0 at a position without mass). Models embed it in O(K d) per
    position instead of O(V d); ``shape`` is ``p``'s, so ``x.shape[1]`` is the length as for the
    other inputs."""

    __slots__ = ("idx", "p")

    def __init__(self, idx: Tensor, p: Tensor) -> None:
        self.idx, self.p = idx, p

    @property
    def shape(self) -> torch.Size:
        return self.p.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.p.dtype

    @property
    def device(self) -> torch.device:
        return self.p.device

    def to(self, *args: Any, **kwargs: Any) -> SparseDist:
        """``p`` converted as ``Tensor.to`` would; ``idx`` follows its device."""
        p = self.p.to(*args, **kwargs)
        return SparseDist(self.idx.to(p.device), p)

    def __getitem__(self, key: Any) -> SparseDist:
        return SparseDist(self.idx[key], self.p[key])

    def dense(self, vocab_size: int) -> Tensor:
        """The same distributions as a dense [B, L, V] tensor (differentiable in ``p``)."""
        out = self.p.new_zeros((*self.p.shape[:-1], vocab_size))
        return out.scatter_add(-1, self.idx, self.p)
