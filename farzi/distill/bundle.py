"""The Farzi Data bundle, format ``farzi-data`` v1 (formats/farzi-data-v1.md).

A safetensors file with exactly two tensors, ``latent`` [mu, xi, d] and
``decoder`` [d, V], and string metadata (schema in
formats/farzi-data-v1.schema.json). Writing is atomic. Reading validates the
byte layout, the metadata, shapes, dtypes, sizes and values before anything is
used, and raises :class:`farzi.errors.BundleError` — and only that — for any
file it cannot accept.

Size limits (formats/farzi-data-v1.md, "Size limits"): a bundle describes
``mu * xi * V`` probabilities although it stores only ``mu * xi * d + d * V``
numbers, so the reader also bounds what its users build from it, from the header
alone, before any tensor is read: one sequence's distributions ``xi * V`` at most
:data:`MAX_SEQUENCE_ELEMENTS`, all of them ``mu * xi * V`` at most
:data:`MAX_TOTAL_ELEMENTS`.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import Tensor

from farzi._io import atomic_file
from farzi._safetensors import load_tensors, read_header, save_tensors
from farzi._version import __version__
from farzi.device import resolve_device
from farzi.distill.summary import banned_mask, materialize, materialize_sparse
from farzi.errors import BundleError
from farzi.models.sparse import SparseDist

FORMAT_NAME = "farzi-data"
FORMAT_VERSION = 2  # the newest this farzi reads and writes; a dense bundle is still written as v1
SPARSE_VERSION = 2  # v2 adds the optional tensor `support` (a sparse summary's candidates)
INT_DTYPES = {"I32", "I64"}
MAX_FILE_BYTES = 8 * 1024**3
MAX_ELEMENTS = 2**31 - 1
# xi * V: one sequence's distributions, 2**24 values = 64 MiB in float32 (Netflix, |V| 17,770 at
# xi 200: 3.6M; PTB 50 x 2,001: 0.1M). A student batch holds at least one sequence.
MAX_SEQUENCE_ELEMENTS = 2**24
# mu * xi * V: all distributions, 2**32 values = 16 GiB in float32, never built at once (Netflix
# 500 x 200 x 17,770: 1.8e9; PTB 400 x 50 x 2,001: 4.0e7); it bounds one student epoch's work.
MAX_TOTAL_ELEMENTS = 2**32
# distributions FarziData.positions builds at once: 4 MiB of float32, near the cache (a bundle at
# MAX_TOTAL_ELEMENTS, 256 x 4096 x 4096, on 2 cores: inspect 77 s, export 92 s with 64 MiB at a
# time, most of it page faults of fresh 64 MiB buffers; 17 s and 16 s so)
POSITION_CHUNK_ELEMENTS = 1 << 20
# materialize divides float32 logits by tau: it must be a normal float32 (no 0, no infinity)
MIN_TAU = 1.1754943508222875e-38  # torch.finfo(torch.float32).tiny
MAX_TAU = 3.4028234663852886e38  # torch.finfo(torch.float32).max
FLOAT_DTYPES = {"F32", "F64", "F16", "BF16"}
REQUIRED_KEYS = (
    "format",
    "version",
    "task",
    "tau",
    "vocab_size",
    "vocab_sha256",
    "specials",
    "masked_tokens",
    "dataset",
    "teacher",
    "distill",
    "package",
    "created",
)
JSON_KEYS = {
    "specials": dict,
    "masked_tokens": list,
    "dataset": dict,
    "teacher": dict,
    "distill": dict,
    "package": dict,
    "vocab": list,
    "recipe": dict,
    "history": dict,
}
_FIX = "re-create it with farzictl distill"
_DIGITS = re.compile(r"[0-9]{1,12}")
MAX_EPOCH = 253402300799  # 9999-12-31T23:59:59Z: `created` keeps a 4-digit year
MAX_LOGIT = 1e38  # float32 overflows at ~3.4e38


def position_spans(n: int, rows: int) -> list[tuple[int, int]]:
    """``range(n)`` cut into ``ceil(n / rows)`` consecutive spans ``(start, end)`` of near-equal
    length, each at most ``rows`` (>= 1) long: no sliver of a few rows at the end."""
    count = -(-n // max(1, rows))
    return [(n * i // count, n * (i + 1) // count) for i in range(count)]


def created_now() -> str:
    """UTC time of creation; honours SOURCE_DATE_EPOCH for reproducible builds.

    A value that is not ASCII decimal digits in 0..MAX_EPOCH is ignored (the
    current time is used): a bad variable must not cost a finished distillation.
    """
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    ok = re.fullmatch(r"[0-9]{1,12}", epoch) is not None and int(epoch) <= MAX_EPOCH
    t = time.gmtime(int(epoch)) if ok else time.gmtime()
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", t)


@dataclass
class FarziData:
    """A loaded bundle: the factorized summary and its metadata."""

    latent: Tensor  # [mu, xi, d]
    decoder: Tensor  # [d, V]
    tau: float
    meta: dict[str, Any]
    path: Path | None = None
    support: Tensor | None = None  # [mu, xi, K] candidate token ids of a sparse summary (None: dense)
    _banned: Tensor | None = field(default=None, repr=False)

    @property
    def mu(self) -> int:
        return int(self.latent.shape[0])

    @property
    def xi(self) -> int:
        return int(self.latent.shape[1])

    @property
    def latent_dim(self) -> int:
        return int(self.latent.shape[2])

    @property
    def vocab_size(self) -> int:
        return int(self.decoder.shape[1])

    @property
    def task(self) -> str:
        return str(self.meta["task"])

    @property
    def recipe(self) -> dict[str, Any] | None:
        """How a student should train on this data (what it was distilled and selected for), if recorded."""
        return self.meta.get("recipe")

    @property
    def vocab(self) -> list[str] | None:
        return self.meta.get("vocab")

    @property
    def banned(self) -> Tensor:
        if self._banned is None or self._banned.device != self.latent.device:
            self._banned = banned_mask(self.vocab_size, list(self.meta.get("masked_tokens", [])), self.latent.device)
        return self._banned

    @property
    def sparse(self) -> bool:
        """Whether each position's distribution is over its K candidates (``support``) alone."""
        return self.support is not None

    def materialize(self, idx: Tensor | None = None, dtype: torch.dtype | None = None) -> Tensor:
        """Distributions softmax(latent[idx] @ decoder / tau): [len(idx) or mu, xi, V] (a sparse
        bundle's: over each position's candidates, 0 elsewhere)."""
        latent, decoder = self.latent, self.decoder
        if dtype is not None:
            latent, decoder = latent.to(dtype), decoder.to(dtype)
        if self.support is not None:
            return materialize_sparse(latent, decoder, self.tau, self.support, idx).dense(self.vocab_size)
        return materialize(latent, decoder, self.tau, self.banned, idx)

    def batch(self, idx: Tensor | None = None) -> Tensor | SparseDist:
        """What a student trains on: :meth:`materialize`'s distributions, or for a sparse bundle the
        same as a :class:`~farzi.models.sparse.SparseDist` [b, xi, K] (never [b, xi, V])."""
        if self.support is not None:
            return materialize_sparse(self.latent, self.decoder, self.tau, self.support, idx)
        return self.materialize(idx)

    def positions(self, chunk_elements: int = POSITION_CHUNK_ELEMENTS) -> Iterator[tuple[int, Tensor]]:
        """Every position's distribution, sequence after sequence, a chunk at a time.

        Yields ``(start, probs)``: ``probs`` [c, V] are the distributions of the positions
        ``start .. start + c - 1`` of ``latent`` flattened to [mu * xi, d] (position ``j`` of
        sequence ``i`` is ``i * xi + j``; a chunk may span sequences), a new tensor the caller
        may change. ``c * V <= chunk_elements`` (at least one position), chunks of near-equal
        size (:func:`position_spans`): a matrix product of a few rows takes other kernels, which
        round differently than whole blocks. The operations are those of :meth:`materialize`,
        in place where it copies (the values are the same).
        """
        flat = self.latent.reshape(-1, self.latent_dim)  # [mu * xi, d]
        banned = torch.nonzero(self.banned).flatten()  # [b] token ids
        for start, end in position_spans(flat.shape[0], chunk_elements // self.vocab_size):
            if self.support is not None:
                with torch.no_grad():
                    cand = self.support.reshape(-1, self.support.shape[-1])[start:end]  # [c, K]
                    dist = materialize_sparse(flat[start:end].unsqueeze(0), self.decoder, self.tau, cand.unsqueeze(0))
                    yield start, dist.dense(self.vocab_size)[0]
                continue
            with torch.no_grad():
                logits = flat[start:end] @ self.decoder  # [c, V]
                logits.div_(self.tau)
                if len(banned):
                    logits.index_fill_(-1, banned, float("-inf"))
                probs = torch.softmax(logits, dim=-1)
            yield start, probs

    def to(self, device: str | torch.device) -> FarziData:
        support = self.support.to(device) if self.support is not None else None
        return FarziData(self.latent.to(device), self.decoder.to(device), self.tau, self.meta, self.path, support)

    def check_vocabulary(self, vocab_size: int, vocab_sha256: str, dataset_name: str) -> None:
        """Refuse use with a dataset whose vocabulary differs (ids would mean other tokens)."""
        if self.vocab_size != vocab_size or self.meta.get("vocab_sha256") != vocab_sha256:
            raise BundleError(
                f"bundle {self.path} was distilled over a different vocabulary "
                f"({self.vocab_size} tokens, from dataset {self.meta['dataset'].get('name')!r}) "
                f"than dataset {dataset_name!r} ({vocab_size} tokens)",
                f"use a bundle distilled from {dataset_name!r}, or the dataset it was distilled from",
            )


def save_bundle(
    path: Path,
    latent: Tensor,
    decoder: Tensor,
    tau: float,
    task: str,
    vocab: list[str],
    vocab_sha256: str,
    specials: dict[str, int],
    masked_tokens: list[int],
    dataset: dict[str, Any],
    teacher: dict[str, Any],
    distill: dict[str, Any],
    recipe: dict[str, Any] | None = None,
    history: dict[str, Any] | None = None,
    support: Tensor | None = None,
) -> Path:
    """Write a farzi-data bundle atomically (temporary file + rename): v1 for a dense summary, v2
    with the tensor ``support`` [mu, xi, K] for a sparse one.

    ``recipe`` (how a student should train on it) and ``history`` (what the distillation log
    says, and which summary was selected) are optional metadata (formats/farzi-data-v1.md).
    """
    meta = {
        "format": FORMAT_NAME,
        "version": str(1 if support is None else SPARSE_VERSION),
        "task": task,
        "tau": repr(float(tau)),
        "vocab_size": str(int(decoder.shape[1])),
        "vocab_sha256": vocab_sha256,
        "vocab": json.dumps(vocab, ensure_ascii=False),
        "specials": json.dumps(specials, sort_keys=True),
        "masked_tokens": json.dumps(masked_tokens),
        "dataset": json.dumps(dataset, sort_keys=True),
        "teacher": json.dumps(teacher, sort_keys=True),
        "distill": json.dumps(distill, sort_keys=True),
        "package": json.dumps({"name": "farzi", "version": __version__}),
        "created": created_now(),
    }
    if recipe is not None:
        meta["recipe"] = json.dumps(recipe, sort_keys=True)
    if history is not None:
        meta["history"] = json.dumps(history, sort_keys=True)
    with atomic_file(Path(path)) as tmp:
        tensors = {"latent": latent.float(), "decoder": decoder.float()}
        if support is not None:
            tensors["support"] = support.to(torch.int32 if decoder.shape[1] <= 2**31 - 1 else torch.int64)
        save_tensors(tmp, tensors, meta)
    return Path(path)


def _parse_meta(path: Path, raw: dict[str, str]) -> dict[str, Any]:
    def bad(problem: str, fix: str = _FIX) -> BundleError:
        return BundleError(f"{path}: {problem}", fix)

    if raw.get("format") != FORMAT_NAME:
        raise BundleError(
            f"{path} is not a Farzi Data bundle (format {raw.get('format')!r}, expected {FORMAT_NAME!r})",
            "pass a bundle written by farzictl distill",
        )
    version_s = raw.get("version", "")
    if not _DIGITS.fullmatch(version_s):
        raise bad(f"invalid format version {version_s!r}")
    version = int(version_s)
    if version > FORMAT_VERSION:
        raise BundleError(
            f"{path} is farzi-data v{version}, newer than this farzi (reads up to v{FORMAT_VERSION})",
            "upgrade farzi to read it",
        )
    if version < 1:
        raise bad(f"invalid format version {version}")
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise bad(f"metadata lacks {', '.join(missing)}")
    meta: dict[str, Any] = {"format": FORMAT_NAME, "version": version, "created": raw["created"]}
    if raw["task"] not in ("lm", "rec"):
        raise bad(f"unknown task {raw['task']!r}")
    meta["task"] = raw["task"]
    try:
        tau = float(raw["tau"])
    except ValueError:
        raise bad(f"tau {raw['tau']!r} is not a number") from None
    if not math.isfinite(tau) or tau <= 0:
        raise bad(f"tau {tau} must be a positive finite number")
    if not MIN_TAU <= tau <= MAX_TAU:
        raise bad(
            f"tau {tau:g} is outside float32's range [{MIN_TAU:.3g}, {MAX_TAU:.3g}]: "
            f"latent @ decoder / tau would divide by {'infinity' if tau > MAX_TAU else 'zero'}",
            "re-create it with farzictl distill and a temperature such as --tau 1.0",
        )
    meta["tau"] = tau
    if not _DIGITS.fullmatch(raw["vocab_size"]):
        raise bad(f"vocab_size {raw['vocab_size']!r} is not a positive integer")
    meta["vocab_size"] = int(raw["vocab_size"])
    meta["vocab_sha256"] = raw["vocab_sha256"]
    for key, kind in JSON_KEYS.items():
        if key not in raw:
            continue
        try:
            value = json.loads(raw[key])
        except ValueError:
            raise bad(f"metadata {key!r} is not valid JSON") from None
        if not isinstance(value, kind):
            raise bad(f"metadata {key!r} is not a JSON {kind.__name__}")
        meta[key] = value
    V = meta["vocab_size"]
    if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < V for t in meta["masked_tokens"]):
        raise bad("masked_tokens holds ids outside the vocabulary")
    if len(set(meta["masked_tokens"])) >= V:
        raise bad("masked_tokens masks the whole vocabulary (every distribution would be undefined)")
    if "vocab" in meta:
        if len(meta["vocab"]) != V or not all(isinstance(t, str) for t in meta["vocab"]):
            raise bad(f"the vocabulary lists {len(meta['vocab'])} tokens, not vocab_size {V}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < V for v in meta["specials"].values()):
        raise bad("special token ids lie outside the vocabulary")
    return meta


def read_bundle_meta(path: Path, max_bytes: int = MAX_FILE_BYTES) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Validate layout and metadata without loading tensors; return (meta, tensor entries)."""
    path = Path(path)
    header, raw = read_header(path, BundleError, _FIX, max_file_bytes=max_bytes)
    meta = _parse_meta(path, raw)
    expected = {"latent", "decoder"} | (
        {"support"} if "support" in header and meta["version"] >= SPARSE_VERSION else set()
    )
    if set(header) != expected:
        raise BundleError(f"{path}: expected tensors 'latent' and 'decoder', found {sorted(header)}", _FIX)
    lat, dec = header["latent"], header["decoder"]
    if "support" in header:
        sup = header["support"]
        if sup["dtype"] not in INT_DTYPES:
            raise BundleError(f"{path}: tensor 'support' has dtype {sup['dtype']}, expected I32 or I64", _FIX)
        shape = sup["shape"]
        if len(shape) != 3 or shape[:2] != lat["shape"][:2] or not 1 <= shape[2] <= dec["shape"][1]:
            raise BundleError(
                f"{path}: tensor 'support' has shape {shape}, expected [mu, xi, K] = "
                f"[{lat['shape'][0]}, {lat['shape'][1]}, K] with 1 <= K <= {dec['shape'][1]}",
                _FIX,
            )
    for name, entry, rank in (("latent", lat, 3), ("decoder", dec, 2)):
        if entry["dtype"] not in FLOAT_DTYPES:
            raise BundleError(f"{path}: tensor {name!r} has dtype {entry['dtype']}, expected a float type", _FIX)
        if len(entry["shape"]) != rank or min(entry["shape"], default=0) < 1:
            raise BundleError(
                f"{path}: tensor {name!r} has shape {entry['shape']}, expected {rank} positive dims", _FIX
            )
        if math.prod(entry["shape"]) > MAX_ELEMENTS:
            raise BundleError(f"{path}: tensor {name!r} has more than {MAX_ELEMENTS} elements", _FIX)
    if lat["shape"][-1] != dec["shape"][0]:
        raise BundleError(f"{path}: latent dim {lat['shape'][-1]} does not match the decoder's {dec['shape'][0]}", _FIX)
    if dec["shape"][1] != meta["vocab_size"]:
        raise BundleError(f"{path}: decoder has {dec['shape'][1]} columns but vocab_size is {meta['vocab_size']}", _FIX)
    check_size(path, lat["shape"][0], lat["shape"][1], dec["shape"][1])
    return meta, header


def check_size(path: Path, mu: int, xi: int, vocab_size: int) -> None:
    """Refuse a summary whose distributions (mu x xi x V) exceed the size limits."""
    per_sequence, total = xi * vocab_size, mu * xi * vocab_size
    fix = (
        "distill a shorter budget (the XI of --budget MUxXI), fewer sequences (its MU), "
        "or over a smaller vocabulary (e.g. prepare --vocab-size)"
    )
    if per_sequence > MAX_SEQUENCE_ELEMENTS:
        raise BundleError(
            f"{path}: one sequence's distributions are xi x |V| = {xi} x {vocab_size} = {per_sequence} "
            f"values, over the limit of {MAX_SEQUENCE_ELEMENTS} (MAX_SEQUENCE_ELEMENTS)",
            fix,
        )
    if total > MAX_TOTAL_ELEMENTS:
        raise BundleError(
            f"{path}: the summary's distributions are mu x xi x |V| = {mu} x {xi} x {vocab_size} = {total} "
            f"values, over the limit of {MAX_TOTAL_ELEMENTS} (MAX_TOTAL_ELEMENTS)",
            fix,
        )


def load_bundle(path: str | Path, device: str | torch.device = "cpu", max_bytes: int = MAX_FILE_BYTES) -> FarziData:
    """Read, validate and load a Farzi Data bundle onto ``device``.

    Raises :class:`BundleError` for a file it cannot accept, and
    :class:`farzi.errors.ConfigError` (from :func:`farzi.device.resolve_device`)
    for a device this machine lacks.

    >>> data = load_bundle("ptb-400x50.safetensors", device="cuda")
    >>> batch = data.materialize(torch.arange(32))   # [32, xi, V] distributions
    """
    path = Path(path)
    meta, header = read_bundle_meta(path, max_bytes)
    dev = resolve_device(device)  # ConfigError: the caller's request, not the file, is wrong
    try:
        tensors = load_tensors(path, dev)
    except (SafetensorError, OSError, ValueError) as exc:
        # what the loader raises for a file it cannot parse or read (one that changed after the header
        # was checked, say); memory errors and interrupts are not a bad file and go through
        raise BundleError(f"{path}: cannot read tensors ({exc.__class__.__name__})", _FIX) from None
    if {k: list(t.shape) for k, t in tensors.items()} != {k: e["shape"] for k, e in header.items()}:
        raise BundleError(f"{path}: the file changed while it was read", "read it again once it is complete")
    latent, decoder = tensors["latent"].float(), tensors["decoder"].float()
    for name, t in (("latent", latent), ("decoder", decoder)):
        if not torch.isfinite(t).all():
            raise BundleError(f"{path}: tensor {name!r} holds NaN or infinite values", _FIX)
    support = tensors["support"].long() if "support" in tensors else None
    if support is not None:
        masked = torch.tensor(meta["masked_tokens"], dtype=torch.long, device=support.device)
        if bool((support < 0).any() or (support >= meta["vocab_size"]).any() or torch.isin(support, masked).any()):
            raise BundleError(f"{path}: tensor 'support' holds ids outside the vocabulary or masked tokens", _FIX)
    # |latent[i, j] @ decoder[:, v]| <= |row| * |column| (Cauchy-Schwarz): bounded, materialize
    # never meets an infinite logit, so never returns NaN (in float32 and wider)
    tau = float(meta["tau"])
    prod = float(latent.double().norm(dim=-1).max()) * float(decoder.double().norm(dim=0).max())
    if not max(prod, prod / tau) < MAX_LOGIT:
        raise BundleError(
            f"{path}: latent @ decoder / tau would overflow float32 (tau {tau}, largest |row| * |column| {prod:.3g})",
            _FIX,
        )
    return FarziData(latent=latent, decoder=decoder, tau=tau, meta=meta, path=path, support=support)
