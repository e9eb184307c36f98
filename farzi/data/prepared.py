"""Prepared datasets, format v1 (specified in ``formats/prepared-dataset-v1.md``).

A prepared dataset is a directory::

    manifest.json      format, version, task, source checksums, parameters, statistics
    vocab.json         tokens (index = id), special tokens, optional item titles
    train.parquet      columns: id (utf8), tokens (list[int32])
    valid.parquet
    test.parquet

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from farzi._io import atomic_dir, claim_output, read_json, write_json
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
                h.update(np.ascontiguousarray(seqs.offsets, dtype="<i8").tobytes())
                h.update(np.ascontiguousarray(seqs.tokens, dtype="<i4").tobytes())
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
            for split in SPLITS:
                seqs = self.splits[split]
                frame = pl.DataFrame(
                    {
                        "id": pl.Series("id", seqs.ids, dtype=pl.Utf8),
                        "tokens": pl.Series(
                            "tokens",
                            [seqs[i].tolist() for i in range(len(seqs))],
                            dtype=pl.List(pl.Int32),
                        ),
                    }
                )
                frame.write_parquet(tmp / f"{split}.parquet", compression="zstd", statistics=False)
            self.vocab.save(tmp / "vocab.json")
            write_json(tmp / "manifest.json", self.manifest())
        self.path = target
        return target


def _read_split(path: Path) -> Sequences:
    frame = pl.read_parquet(path, columns=["id", "tokens"])
    lengths = frame["tokens"].list.len().to_numpy().astype(np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = frame["tokens"].explode().drop_nulls().to_numpy().astype(np.int32)
    if len(tokens) != offsets[-1]:
        raise DataError(f"{path} holds null tokens", "prepare the dataset again")
    return Sequences(ids=frame["id"].to_list(), offsets=offsets, tokens=tokens)


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
                splits[split] = _read_split(file)
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
