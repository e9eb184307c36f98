"""How the start points of one outer step are spread over processes.

An outer step averages the meta-gradients of ``meta_batch`` start points per
process. A :class:`Collective` says which start points this process computes
(global indices ``rank * meta_batch ... rank * meta_batch + meta_batch - 1``, so
that N processes act like one process with a meta-batch N times larger) and
sums tensors and gathers log records across processes. :class:`Local` is the
one-process case; the torch.distributed implementation is
:class:`farzi.distributed.TorchCollective`.
"""

from __future__ import annotations

from typing import Any, Protocol

from torch import Tensor


class Collective(Protocol):
    rank: int
    world: int

    def sum(self, flat: Tensor) -> Tensor:
        """The elementwise sum of ``flat`` over all processes (every process gets it)."""
        ...

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` of every process, in rank order (every process gets the list)."""
        ...

    def broadcast(self, flat: Tensor, src: int = 0) -> Tensor:
        """``flat`` of process ``src`` (every process gets it; the others' input gives the shape only)."""
        ...

    def patient(self) -> Collective:
        """The same processes, waiting for each other as long as it takes (e.g. for unequal shares of work)."""
        ...


class Local:
    """One process: every start point is computed here, nothing is exchanged."""

    rank = 0
    world = 1

    def sum(self, flat: Tensor) -> Tensor:
        return flat

    def gather(self, obj: Any) -> list[Any]:
        return [obj]

    def broadcast(self, flat: Tensor, src: int = 0) -> Tensor:
        return flat

    def patient(self) -> Local:
        return self


LOCAL = Local()


def start_indices(collective: Collective, meta_batch: int) -> range:
    """The global indices of the start points this process computes in each outer step."""
    return range(collective.rank * meta_batch, (collective.rank + 1) * meta_batch)
