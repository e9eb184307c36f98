"""Several processes (ranks) working on one job, with torch.distributed.

:class:`TorchCollective` is the :class:`farzi.distill.parallel.Collective` over a
torch.distributed process group: tensors are summed with one ``all_reduce`` of a
flat buffer (gloo on CPU, NCCL on CUDA; never DDP, which has no double backward),
log records are gathered as JSON (never pickled).

:func:`join` finds this process's place in the job from the environment that
``torchrun`` sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``), or from ``FARZI_INIT_METHOD`` (a ``file://`` store, which
``farzictl ... --nproc N`` uses so that no network port must be chosen).

Every collective call waits at most ``timeout`` seconds; a peer that died or hung
turns into one :class:`RankLost` error on the ranks that are left, never a hang.
:func:`agree` is the start-of-job handshake: every rank's fingerprint of what it is
about to do, and any error it met while preparing, are compared on every rank.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from farzi.distill.parallel import LOCAL, Collective
from farzi.errors import ConfigError, FarziError

INIT_METHOD_ENV = "FARZI_INIT_METHOD"
DEFAULT_TIMEOUT = 300.0
RESUME_FIX = "the job stopped; run the same command again with --resume to continue from the last saved state"


class RankLost(FarziError):
    """Another process of the job died or stopped answering; this one stops too."""


class TorchCollective:
    """A :class:`Collective` over the default torch.distributed process group."""

    def __init__(self, device: torch.device, timeout: float = DEFAULT_TIMEOUT, group: Any = None) -> None:
        import torch.distributed as dist

        self._dist = dist
        self.group = group  # None: the default group
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.device = device  # where NCCL wants its buffers (CPU for gloo)
        self.timeout = timeout

    def patient(self) -> TorchCollective:
        """The same ranks over a gloo group that waits as long as the slowest rank needs (every rank
        must call this at the same point). A rank that dies is still seen at once (its connections
        close); only a rank that hangs without dying is waited for."""
        days = 30
        group = self._dist.new_group(backend="gloo", timeout=datetime.timedelta(days=days))
        return TorchCollective(torch.device("cpu"), days * 86400.0, group)

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RuntimeError as exc:  # DistBackendError, gloo's connection and timeout errors
            raise RankLost(
                f"rank {self.rank} of {self.world} lost the other ranks during {what} (a process of the job "
                f"stopped, or none answered within {self.timeout:g} s: {_first_line(exc)})",
                RESUME_FIX,
            ) from None

    def sum(self, flat: Tensor) -> Tensor:
        buf = flat.detach().to(self.device, copy=True)
        self._call("a sum", self._dist.all_reduce, buf, op=self._dist.ReduceOp.SUM, group=self.group)
        return buf.to(flat.device)

    def broadcast(self, flat: Tensor, src: int = 0) -> Tensor:
        buf = flat.detach().to(self.device, copy=True)
        self._call("a broadcast", self._dist.broadcast, buf, src, group=self.group)
        return buf.to(flat.device)

    def gather(self, obj: Any) -> list[Any]:
        data = torch.tensor(list(json.dumps(obj).encode("utf-8")), dtype=torch.uint8)
        size = torch.tensor([data.numel()], dtype=torch.int64, device=self.device)
        sizes = [torch.zeros_like(size) for _ in range(self.world)]
        self._call("a gather", self._dist.all_gather, sizes, size, group=self.group)
        longest = int(max(s.item() for s in sizes))
        buf = torch.zeros(longest, dtype=torch.uint8, device=self.device)
        buf[: data.numel()] = data.to(self.device)
        parts = [torch.zeros_like(buf) for _ in range(self.world)]
        self._call("a gather", self._dist.all_gather, parts, buf, group=self.group)
        return [
            json.loads(bytes(p[: int(s.item())].cpu().tolist()).decode("utf-8"))
            for p, s in zip(parts, sizes, strict=True)
        ]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    if not text:
        return type(exc).__name__
    line = re.sub(r"\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", text[0])  # gloo's source location
    return " ".join(line.split())[:160]


def _env_int(name: str, default: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None:
        if default is None:
            raise ConfigError(f"{name} is not set", "launch with torchrun, or set RANK and WORLD_SIZE")
        return default
    if not value.isdigit():
        raise ConfigError(f"{name}={value!r} is not a non-negative integer", "launch with torchrun")
    return int(value)


def launched() -> bool:
    """Whether this process is one rank of a job of several (torchrun, ``--nproc``)."""
    return _env_int("WORLD_SIZE", 1) > 1 or INIT_METHOD_ENV in os.environ


def join(device: torch.device | str = "cpu", timeout: float = DEFAULT_TIMEOUT) -> Collective:
    """This process's collective: :data:`~farzi.distill.parallel.LOCAL` when it runs alone, else a
    :class:`TorchCollective` over a process group it initializes (gloo on CPU, NCCL on CUDA).

    A CUDA device without an index becomes ``cuda:LOCAL_RANK``. Errors: :class:`ConfigError` for a
    malformed environment, :class:`RankLost` when the other ranks do not join within ``timeout``.
    """
    import torch.distributed as dist

    if timeout <= 0:
        raise ConfigError(f"--rank-timeout {timeout:g} must be positive", "pass e.g. --rank-timeout 300")
    dev = torch.device(device)
    if dist.is_available() and dist.is_initialized():
        return TorchCollective(dev, timeout)
    if not launched():
        return LOCAL
    if not dist.is_available():
        raise ConfigError("this PyTorch has no torch.distributed", "install a PyTorch build with distributed support")
    world = _env_int("WORLD_SIZE")
    rank = _env_int("RANK")
    if rank >= world:
        raise ConfigError(f"RANK={rank} is not below WORLD_SIZE={world}", "launch with torchrun")
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", _env_int("LOCAL_RANK", rank % max(torch.cuda.device_count(), 1)))
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    method = os.environ.get(INIT_METHOD_ENV, "env://")
    if method == "env://":
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if name not in os.environ:
                raise ConfigError(f"{name} is not set", "launch with torchrun, or use --nproc N on one machine")
    try:
        dist.init_process_group(
            backend,
            init_method=method,
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=timeout),
        )
    except (RuntimeError, ValueError) as exc:
        raise RankLost(
            f"rank {rank} of {world} could not join the job within {timeout:g} s ({_first_line(exc)})",
            "start every rank with the same launch settings",
        ) from None
    return TorchCollective(dev, timeout)


@contextlib.contextmanager
def ranks(device: torch.device | str = "cpu", timeout: float = DEFAULT_TIMEOUT) -> Iterator[Collective]:
    """:func:`join`, and leave the process group again at the end."""
    import torch.distributed as dist

    owned = launched() and not (dist.is_available() and dist.is_initialized())
    collective = join(device, timeout)
    try:
        yield collective
    finally:
        if owned and dist.is_initialized():
            with contextlib.suppress(RuntimeError):
                dist.destroy_process_group()


def agree(collective: Collective, fingerprint: str | None, error: FarziError | None, what: str) -> list[Any]:
    """The start-of-job handshake: raise on every rank when any rank met an error, or when the ranks'
    fingerprints (of their settings and data) differ. One process: ``error`` is raised as it is."""
    if collective.world == 1:
        if error is not None:
            raise error
        return [fingerprint]
    parts = collective.gather({"fingerprint": fingerprint, "error": error.one_line() if error else None})
    failed = [r for r, p in enumerate(parts) if p["error"]]
    if error is not None:
        raise error
    if failed:
        r = failed[0]
        raise ConfigError(f"rank {r} of {collective.world} stopped: {parts[r]['error']}")
    prints = [p["fingerprint"] for p in parts]
    odd = [r for r, fp in enumerate(prints) if fp != prints[0]]
    if odd:
        r = odd[0]
        raise ConfigError(
            f"rank {r} of {collective.world} has other {what} than rank 0 "
            f"(fingerprint {str(prints[r])[:12]} vs {str(prints[0])[:12]}); no rank ran",
            "launch every rank with the same options, dataset and trajectories",
        )
    return prints


def share_tensors(collective: Collective, tensors: dict[str, Tensor] | None, meta: Any = None) -> tuple:
    """Rank 0's ``tensors`` (names, shapes, dtypes and values) and JSON ``meta`` on every rank, exactly.

    The values travel as one float64 buffer: exact for float32, float64 and integers below 2**53.
    """
    if collective.world == 1:
        return tensors or {}, meta
    if collective.rank == 0:
        assert tensors is not None
        header = {
            "meta": meta,
            "tensors": [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in tensors.items()],
        }
    else:
        header = None
    header = collective.gather(header)[0]
    total = sum(_numel(shape) for _, shape, _ in header["tensors"])
    if collective.rank == 0:
        flat = torch.cat([v.detach().reshape(-1).cpu().double() for v in tensors.values()] or [torch.zeros(0)])
    else:
        flat = torch.zeros(total, dtype=torch.float64)
    flat = collective.broadcast(flat.double(), 0)  # type: ignore[attr-defined]
    out: dict[str, Tensor] = {}
    offset = 0
    for name, shape, dtype in header["tensors"]:
        n = _numel(shape)
        out[name] = flat[offset : offset + n].reshape(shape).to(getattr(torch, dtype))
        offset += n
    return out, header["meta"]


def _numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n
