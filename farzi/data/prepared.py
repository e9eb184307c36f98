"""Prepared datasets, format v1 (specified in ``formats/prepared-dataset-v1.md``).

A prepared dataset is a directory::

    manifest.json      format, version, task, source checksums, parameters, statistics
    vocab.json         tokens (index = id), special tokens, optional item titles
    train.parquet      columns: id (utf8), tokens (list[int32])
    valid.parquet
    test.parquet
    SPLIT.tokens.npy   the split's tokens, one flat little-endian int32 array
    SPLIT.offsets.npy  its n + 1 int64 offsets (sequence i = tokens[offsets[i]:offsets[i+1]])

The ``.npy`` arrays are read memory-mapped (``numpy.load(mmap_mode="r")``, never
unpickled): processes on one machine (the ranks of a job) share the pages of one
copy instead of each holding the dataset. A dataset without them (written by an
earlier farzi) is read from its parquet files.

Language modeling (``task = "lm"``): every split holds sentences stored as
``<eos> w1 ... wn <eos>``; the leading ``<eos>`` is the boundary that conditions
the first word, the model predicts the n words and the final ``<eos>``.

Sequential recommendation (``task = "rec"``): every split holds users' items in
time order. Train users are trained on whole; for a validation or test user the
last item is the target and all earlier items are the context (strong
generalization: the three splits hold disjoint users).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from farzi._io import atomic_dir, claim_output, read_json, sha256_file, write_json
from farzi._version import __version__
from farzi.data._read import reading
from farzi.data.interactions import polars_problem
from farzi.data.sequences import Sequences
from farzi.data.vocab import Vocabulary
from farzi.errors import DataError

FORMAT_NAME = "farzi-prepared"
FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test")
TASKS = ("lm", "rec")
_AGAIN = "remove it and prepare the dataset again"


@dataclass
class PreparedDataset:
    name: str
    task: str  # "lm" or "rec"
    vocab: Vocabulary
    splits: dict[str, Sequences]
    params: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the synthetic source's entropy
    path: Path | None = None
    _fingerprint: str | None = field(default=None, repr=False)

    @property
    def train(self) -> Sequences:
        return self.splits["train"]

    @property
    def valid(self) -> Sequences:
        return self.splits["valid"]

    @property
    def test(self) -> Sequences:
        return self.splits["test"]

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def fingerprint(self) -> str:
        """sha256 over the vocabulary and every split's tokens and lengths.

        Computed from content, not file bytes, so it does not change with the
        parquet writer's version.
        """
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(FORMAT_NAME.encode())
            h.update(self.task.encode())
            h.update(self.vocab.sha256().encode())
            for split in SPLITS:
                seqs = self.splits[split]
                h.update(split.encode())
                # hashed in place (no copy of a memory-mapped split): the same bytes as .tobytes()
                h.update(memoryview(np.ascontiguousarray(seqs.offsets, dtype="<i8")).cast("B"))
                h.update(memoryview(np.ascontiguousarray(seqs.tokens, dtype="<i4")).cast("B"))
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def statistics(self) -> dict[str, Any]:
        """The figures of the paper's Table 3, plus per-split counts.

        ``length`` counts what a model predicts per sequence: for LM the words
        plus the final ``<eos>`` (the stored leading boundary is not counted),
        for recommendation every item.
        """
        offset = 1 if self.task == "lm" else 0
        all_lengths = np.concatenate([self.splits[s].lengths for s in SPLITS]) - offset
        per_split = {
            s: {
                "sequences": len(self.splits[s]),
                "tokens": int((self.splits[s].lengths - offset).sum()),
            }
            for s in SPLITS
        }
        n_items = self.vocab_size - self.vocab.num_specials
        stats: dict[str, Any] = {
            "sequences": int(len(all_lengths)),
            "vocabulary": int(n_items),
            "specials": int(self.vocab.num_specials),
            "tokens": int(all_lengths.sum()),
            "length_mean": round(float(all_lengths.mean()), 4) if len(all_lengths) else 0.0,
            "length_median": float(np.median(all_lengths)) if len(all_lengths) else 0.0,
            "length_min": int(all_lengths.min()) if len(all_lengths) else 0,
            "length_max": int(all_lengths.max()) if len(all_lengths) else 0,
            "splits": per_split,
        }
        if self.task == "rec":
            stats["users"] = stats["sequences"]
            stats["items"] = stats["vocabulary"]
            stats["interactions"] = stats["tokens"]
        else:
            stats["sentences"] = stats["sequences"]
        return stats

    def manifest(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "name": self.name,
            "task": self.task,
            "created_by": {"package": "farzi", "version": __version__},
            "source": self.source,
            "params": self.params,
            "fingerprint": self.fingerprint(),
            "vocab": {
                "file": "vocab.json",
                "size": self.vocab_size,
                "specials": self.vocab.specials,
                "sha256": self.vocab.sha256(),
            },
            "splits": {s: f"{s}.parquet" for s in SPLITS},
            "statistics": self.statistics(),
            "extra": self.extra,
        }

    def save(self, target: Path, overwrite: bool = False) -> Path:
        """Write the dataset to ``target`` atomically (temp directory + rename).

        ``target`` may be absent, an empty directory or an earlier prepared dataset;
        anything else is a ``ConfigError`` unless ``overwrite``. Saving holds
        :func:`farzi._io.claim_output` on ``target`` (or joins the caller's).
        """
        target = Path(target)
        with claim_output(target, "prepared", overwrite), atomic_dir(target) as tmp:
            arrays = {}
            for split in SPLITS:
                seqs = self.splits[split]
                frame = pl.DataFrame(
                    {
                        "id": pl.Series("id", list(seqs.ids), dtype=pl.Utf8),
                        "tokens": pl.Series(
                            "tokens",
                            [seqs[i].tolist() for i in range(len(seqs))],
                            dtype=pl.List(pl.Int32),
                        ),
                    }
                )
                frame.write_parquet(tmp / f"{split}.parquet", compression="zstd", statistics=False)
                np.save(tmp / f"{split}.tokens.npy", np.ascontiguousarray(seqs.tokens, dtype="<i4"))
                np.save(tmp / f"{split}.offsets.npy", np.ascontiguousarray(seqs.offsets, dtype="<i8"))
                arrays[split] = {
                    "tokens": f"{split}.tokens.npy",
                    "offsets": f"{split}.offsets.npy",
                    "parquet_sha256": sha256_file(tmp / f"{split}.parquet"),
                }
            self.vocab.save(tmp / "vocab.json")
            write_json(tmp / "manifest.json", {**self.manifest(), "arrays": arrays})
        self.path = target
        return target


ARRAY_FILES = tuple(f"{split}.{part}.npy" for split in SPLITS for part in ("tokens", "offsets"))


def _read_split(path: Path, arrays: Any = None) -> Sequences:
    """A split: memory-mapped from its ``.npy`` arrays where the manifest lists them, else from parquet."""
    if isinstance(arrays, dict):
        tokens_path = path.with_name(path.name.replace(".parquet", ".tokens.npy"))
        offsets_path = path.with_name(path.name.replace(".parquet", ".offsets.npy"))
        # the arrays are a copy of the parquet file as prepare wrote it: a changed parquet file is read itself
        if tokens_path.is_file() and offsets_path.is_file() and sha256_file(path) == arrays.get("parquet_sha256"):
            return _map_split(path, tokens_path, offsets_path)
    frame = pl.read_parquet(path, columns=["id", "tokens"])
    lengths = frame["tokens"].list.len().to_numpy().astype(np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = frame["tokens"].explode().drop_nulls().to_numpy().astype(np.int32)
    if len(tokens) != offsets[-1]:
        raise DataError(f"{path} holds null tokens", "prepare the dataset again")
    return Sequences(ids=frame["id"].to_list(), offsets=offsets, tokens=tokens)


def _map_split(path: Path, tokens_path: Path, offsets_path: Path) -> Sequences:
    """A split from its memory-mapped arrays (the ids from the parquet file's id column)."""
    try:
        tokens = np.load(tokens_path, mmap_mode="r", allow_pickle=False)
        offsets = np.load(offsets_path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise DataError(f"cannot read {tokens_path.name} / {offsets_path.name} ({exc})", _AGAIN) from None
    if tokens.dtype != np.dtype("<i4") or tokens.ndim != 1 or offsets.dtype != np.dtype("<i8") or offsets.ndim != 1:
        raise DataError(f"{tokens_path} / {offsets_path} are not 1-d int32 / int64 arrays", _AGAIN)
    offsets = np.array(offsets)  # n + 1 numbers: small next to the tokens, and checked in full
    if len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(tokens) or np.any(np.diff(offsets) < 0):
        raise DataError(f"{offsets_path} does not index {tokens_path.name}", _AGAIN)
    rows = pl.scan_parquet(path).select(pl.len()).collect().item()  # from the file's metadata
    if rows != len(offsets) - 1:
        raise DataError(f"{path} and {offsets_path.name} hold different numbers of sequences", _AGAIN)
    return Sequences(ids=_ParquetIds(path, rows), offsets=offsets, tokens=tokens)  # type: ignore[arg-type]


class _ParquetIds(Sequence[str]):
    """The ids of a memory-mapped split, read from its parquet file when first used: a rank that only
    trains never holds them (hundreds of thousands of Python strings for a large log)."""

    def __init__(self, path: Path, n: int) -> None:
        self._path, self._n = path, n
        self._ids: list[str] | None = None

    def _load(self) -> list[str]:
        if self._ids is None:
            with reading(self._path, directory_fix=_AGAIN):
                ids = pl.read_parquet(self._path, columns=["id"])["id"].to_list()
            if len(ids) != self._n:
                raise DataError(f"{self._path} changed while it was read", _AGAIN)
            self._ids = ids
        return self._ids

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):  # type: ignore[override]
        return self._load()[i]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str):
            return len(other) == self._n and list(self) == list(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"<{self._n} ids of {self._path.name}>"


def load_prepared(path: str | Path) -> PreparedDataset:
    """Read and check a prepared dataset directory.

    A file the operating system will not open (permission denied, a directory where
    a file belongs, an I/O error) is reported as such: only content that is wrong
    asks for the dataset to be prepared again.
    """
    path = Path(path)
    with reading(path):
        return _load_prepared(path)


def _load_prepared(path: Path) -> PreparedDataset:
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise DataError(
            f"no prepared dataset at {path} (manifest.json missing)",
            "run farzictl prepare first, or pass the directory farzictl prepare wrote",
        )
    try:
        with reading(manifest_path, directory_fix=_AGAIN):
            manifest = read_json(manifest_path)
    except ValueError as exc:
        raise DataError(f"{manifest_path} is not valid JSON", "prepare the dataset again") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise DataError(f"{path} is not a farzi prepared dataset", "prepare the dataset again")
    version = manifest.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise DataError(
            f"{path} is prepared-dataset format v{version}, this farzi reads up to v{FORMAT_VERSION}",
            "upgrade farzi or prepare the dataset again with this version",
        )
    task = manifest.get("task")
    if task not in TASKS:
        raise DataError(f"{path} has unknown task {task!r}", "prepare the dataset again")
    vocab = Vocabulary.load(path / "vocab.json")  # reports a file it cannot open as such, not as corrupt
    splits: dict[str, Sequences] = {}
    for split in SPLITS:
        file = path / f"{split}.parquet"
        if not file.is_file():
            raise DataError(f"{file} is missing", "prepare the dataset again")
        try:
            with reading(file, directory_fix=_AGAIN):
                splits[split] = _read_split(file, (manifest.get("arrays") or {}).get(split))
        except pl.exceptions.PolarsError as exc:
            raise DataError(
                f"cannot read {file} as a split ({polars_problem(exc)})", "prepare the dataset again"
            ) from exc
        seqs = splits[split]
        if len(seqs.tokens) and (seqs.tokens.min() < 0 or seqs.tokens.max() >= len(vocab)):
            raise DataError(f"{file} holds token ids outside the vocabulary", "prepare the dataset again")
    ds = PreparedDataset(
        name=str(manifest.get("name", path.name)),
        task=task,
        vocab=vocab,
        splits=splits,
        params=manifest.get("params", {}),
        source=manifest.get("source", {}),
        extra=manifest.get("extra", {}),
        path=path,
    )
    recorded = manifest.get("fingerprint")
    if recorded != ds.fingerprint():
        raise DataError(
            f"{path} does not match the fingerprint in its manifest (files changed after prepare)",
            "prepare the dataset again",
        )
    return ds
