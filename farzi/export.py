"""Export Farzi Data as discrete sequences that any tool can train from (formats/export-v1.md).

A bundle stores each synthetic sequence as a distribution per position. ``export`` decodes
every sequence to tokens -- by argmax, or by ``samples`` seeded draws per sequence -- and
writes them as words (``task`` lm: sentences split at ``<eos>``) or as (user, item, position)
rows (``task`` rec, items named by their original ids). Formats: ``jsonl``, ``txt``, ``csv``,
``parquet``. Beside the file goes a JSON sidecar ``PATH.json`` with its provenance (bundle
path and sha256, decoding, samples, seed, package version). Both are written atomically.

``farzictl prepare text --train FILE.txt`` and ``farzictl prepare interactions --path
FILE.csv --user-col user --item-col item --time-col position`` read the export back.
"""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import polars as pl
import torch
from torch import Tensor

from farzi._io import atomic_file, sha256_file, write_json
from farzi._version import __version__
from farzi.data.prepared import PreparedDataset
from farzi.data.vocab import EOS, PAD, UNK
from farzi.distill.bundle import FarziData, created_now, load_bundle
from farzi.errors import BundleError, ConfigError
from farzi.progress import ProgressFn, report

EXPORT_FORMAT = "farzi-export"
EXPORT_VERSION = 1
FORMATS = ("jsonl", "txt", "csv", "parquet")
DECODINGS = ("argmax", "sample")
SUFFIX = {"jsonl": ".jsonl", "txt": ".txt", "csv": ".csv", "parquet": ".parquet"}
COLUMNS = {"rec": ("user", "item", "position"), "lm": ("sequence", "position", "token")}
MAX_SAMPLES = 100_000
CHUNK_ELEMENTS = 1 << 22  # distributions materialized at once: at most ~16 MiB of float32


@dataclass
class ExportConfig:
    """What to write: format ``to``, decoding, ``samples`` per sequence, the sampling seed."""

    to: str = "jsonl"
    decode: str = "argmax"
    samples: int = 1
    seed: int = 0
    overwrite: bool = False

    def validate(self) -> None:
        if self.to not in FORMATS:
            raise ConfigError(f"unknown export format {self.to!r}", f"use --to {', '.join(FORMATS)}")
        if self.decode not in DECODINGS:
            raise ConfigError(f"unknown decoding {self.decode!r}", "use --decode argmax or --decode sample")
        if not 1 <= self.samples <= MAX_SAMPLES:
            raise ConfigError(
                f"--samples {self.samples} is out of range", f"pass a number of samples from 1 to {MAX_SAMPLES}"
            )
        if self.decode == "argmax" and self.samples > 1:
            raise ConfigError(
                f"--samples {self.samples} with --decode argmax would write {self.samples} identical copies",
                "add --decode sample, or drop --samples",
            )


@dataclass
class Decoded:
    """One decoded synthetic sequence: sequence ``index``, ``sample`` number, token ``ids`` [xi]
    and the bundle's probability ``p`` [xi] of each chosen token."""

    index: int
    sample: int
    ids: list[int]
    p: list[float]

    @property
    def name(self) -> str:
        """The name a row carries: ``syn{index}-{sample}`` (the user, for recommendation)."""
        return f"syn{self.index}-{self.sample}"


@dataclass
class ExportResult:
    path: Path
    sidecar: Path
    provenance: dict[str, Any]  # what the sidecar holds


def excluded_tokens(data: FarziData) -> Tensor:
    """Tokens decoding never picks [V] (bool): the bundle's masked tokens and ``<pad>``."""
    mask = data.banned.clone()
    pad = data.meta["specials"].get(PAD)
    if pad is not None:
        mask[pad] = True
    if bool(mask.all()):
        raise BundleError(
            f"{data.path}: every token is masked or padding, nothing can be decoded",
            "re-create the bundle with farzictl distill",
        )
    return mask


def decode_sequences(data: FarziData, decode: str = "argmax", samples: int = 1, seed: int = 0) -> Iterator[Decoded]:
    """Decode every synthetic sequence, in order, ``samples`` times each.

    Distributions are materialized a few sequences at a time (never all [mu, xi, V] at once).
    ``sample`` draws each position independently from its distribution with one generator
    seeded by ``seed``, sequence after sequence: the draws do not depend on the chunking.
    ``argmax`` takes the most probable token (the lowest id among ties).
    """
    if decode not in DECODINGS:
        raise ConfigError(f"unknown decoding {decode!r}", "use argmax or sample")
    excluded = excluded_tokens(data)  # [V]
    gen = torch.Generator().manual_seed(seed)
    chunk = max(1, min(data.mu, CHUNK_ELEMENTS // (data.xi * data.vocab_size)))
    for start in range(0, data.mu, chunk):
        idx = torch.arange(start, min(start + chunk, data.mu))
        with torch.no_grad():
            probs = data.materialize(idx).cpu()  # [b, xi, V]
        for row in range(len(idx)):
            p = probs[row]  # [xi, V]
            if decode == "argmax":
                # -1 below every probability: an excluded token is never picked, even where an
                # unmasked <pad> took all the mass (then the lowest allowed id wins the tie at 0)
                draws = p.masked_fill(excluded, -1.0).argmax(-1, keepdim=True)  # [xi, 1]
            else:
                weights = p.masked_fill(excluded, 0.0).double()  # [xi, V]
                empty = weights.sum(-1) <= 0  # [xi]
                if bool(empty.any()):  # an unmasked <pad> took all the mass: uniform over the rest
                    weights[empty] = (~excluded).double()
                draws = torch.multinomial(weights, samples, replacement=True, generator=gen)  # [xi, K]
            chosen = p.gather(-1, draws)  # [xi, K]
            for k in range(draws.shape[1]):
                yield Decoded(
                    index=int(idx[row]),
                    sample=k,
                    ids=[int(t) for t in draws[:, k]],
                    p=[round(float(x), 6) for x in chosen[:, k]],
                )


def split_sentences(ids: list[int], eos: int | None) -> list[list[int]]:
    """Split a token sequence at ``<eos>``; empty pieces (consecutive or edge ``<eos>``) are dropped."""
    if eos is None:
        return [ids] if ids else []
    out: list[list[int]] = []
    current: list[int] = []
    for t in ids:
        if t == eos:
            if current:
                out.append(current)
            current = []
        else:
            current.append(t)
    if current:
        out.append(current)
    return out


def default_output(bundle: Path, to: str) -> Path:
    """``farzi-50x50-s0.safetensors`` -> ``farzi-50x50-s0.csv`` (beside the bundle)."""
    return Path(bundle).with_suffix(SUFFIX[to])


def sidecar_path(out: Path) -> Path:
    return out.with_name(out.name + ".json")


def _previous_export(out: Path) -> dict[str, Any] | None:
    """The sidecar of an earlier export at ``out``, or None when there is none (or not ours)."""
    side = sidecar_path(out)
    try:
        obj = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(obj, dict) or obj.get("format") != EXPORT_FORMAT or not isinstance(obj.get("export"), dict):
        return None
    return obj


def check_output(out: Path, bundle: Path, to: str, overwrite: bool) -> None:
    """Refuse an output that would destroy something: the bundle itself, a directory, another
    format's suffix, or an existing file that is not a previous export in this format."""
    if out.exists() and out.resolve() == Path(bundle).resolve():
        raise ConfigError(f"--out {out} is the bundle itself", "pass another path with --out")
    for path in (out, sidecar_path(out)):
        if path.is_dir():
            raise ConfigError(
                f"--out {path} is a directory", f"pass a file path, e.g. {path / ('export' + SUFFIX[to])}"
            )
    suffix = out.suffix.lower()
    other = [f for f, s in SUFFIX.items() if s == suffix and f != to]
    if other:
        raise ConfigError(
            f"--out {out} has the suffix of the {other[0]} format but --to is {to}",
            f"name it {out.with_suffix(SUFFIX[to]).name}, or pass --to {other[0]}",
        )
    if overwrite:
        return
    prev = _previous_export(out)
    same = prev is not None and prev["export"].get("to") == to
    if out.exists() and not same:
        what = "a previous export in another format" if prev is not None else "not a previous farzi export"
        raise ConfigError(f"{out} exists and is {what}", "pass --overwrite to replace it, or --out another path")
    side = sidecar_path(out)
    if side.exists() and prev is None:
        raise ConfigError(
            f"{side} exists and is not an export sidecar", "pass --overwrite to replace it, or --out another path"
        )


class _Counts:
    def __init__(self) -> None:
        self.sequences = 0
        self.rows = 0
        self.tokens = 0
        self.sentences = 0
        self.unk = 0
        self.distinct: set[int] = set()


def _write(
    data: FarziData,
    vocab: list[str],
    cfg: ExportConfig,
    tmp: Path,
    progress: ProgressFn | None,
) -> _Counts:
    task = data.task
    specials = data.meta["specials"]
    eos, unk = specials.get(EOS), specials.get(UNK)
    if cfg.to == "txt":
        spaced = [t for i, t in enumerate(vocab) if any(c.isspace() for c in t) and i != specials.get(PAD)]
        if spaced:
            what = "item id" if task == "rec" else "word"
            raise ConfigError(
                f"{what} {spaced[0]!r} holds whitespace, which the txt format separates tokens with",
                "use --to csv, jsonl or parquet",
            )
    counts = _Counts()
    total = data.mu * cfg.samples
    columns: dict[str, list] = {c: [] for c in COLUMNS[task]}
    with contextlib.ExitStack() as stack:
        f = None
        writer = None
        if cfg.to != "parquet":
            f = stack.enter_context(open(tmp, "w", encoding="utf-8", newline=""))
            if cfg.to == "csv":
                writer = csv.writer(f, lineterminator="\n")
                writer.writerow(COLUMNS[task])
        for n, seq in enumerate(decode_sequences(data, cfg.decode, cfg.samples, cfg.seed), start=1):
            tokens = [vocab[t] for t in seq.ids]
            counts.sequences += 1
            counts.tokens += len(seq.ids)
            counts.distinct.update(seq.ids)
            if unk is not None:
                counts.unk += sum(1 for t in seq.ids if t == unk)
            sentences = split_sentences(seq.ids, eos) if task == "lm" else []
            counts.sentences += len(sentences)
            if cfg.to == "jsonl":
                obj: dict[str, Any] = {
                    "name": seq.name,
                    "sequence": seq.index,
                    "sample": seq.sample,
                    "ids": seq.ids,
                    "tokens": tokens,
                    "p": seq.p,
                }
                if task == "lm":
                    obj["sentences"] = [[vocab[t] for t in s] for s in sentences]
                f.write(json.dumps(obj, ensure_ascii=False) + "\n")
                counts.rows += 1
            elif cfg.to == "txt":
                lines = [" ".join(vocab[t] for t in s) for s in sentences] if task == "lm" else [" ".join(tokens)]
                for line in lines:
                    f.write(line + "\n")
                counts.rows += len(lines)
            else:
                for pos, tok in enumerate(tokens):
                    row = (seq.name, tok, pos) if task == "rec" else (seq.name, pos, tok)
                    if writer is not None:
                        writer.writerow(row)
                    else:
                        for c, v in zip(COLUMNS[task], row, strict=True):
                            columns[c].append(v)
                counts.rows += len(tokens)
            if n % 64 == 0 or n == total:
                report(progress, "export", n, total, done=n == total)
        if cfg.to == "parquet":
            frame = pl.DataFrame(
                {c: pl.Series(c, v, dtype=pl.Int32 if c == "position" else pl.Utf8) for c, v in columns.items()}
            )
            frame.write_parquet(tmp)
    return counts


def export_bundle(
    bundle: str | Path,
    cfg: ExportConfig,
    out: str | Path | None = None,
    dataset: PreparedDataset | None = None,
    progress: ProgressFn | None = None,
) -> ExportResult:
    """Decode the bundle at ``bundle`` and write it to ``out`` (default: beside the bundle, with
    the format's suffix) plus the provenance sidecar ``out + ".json"``.

    The vocabulary comes from the bundle's metadata; a bundle written without one needs
    ``dataset``, the prepared dataset it was distilled from (checked by vocabulary hash).
    """
    cfg.validate()
    bundle = Path(bundle)
    data = load_bundle(bundle)
    vocab = data.vocab
    vocab_source = "bundle"
    if dataset is not None:
        data.check_vocabulary(dataset.vocab_size, dataset.vocab.sha256(), dataset.name)
        if vocab is None:
            vocab, vocab_source = list(dataset.vocab.tokens), f"dataset {dataset.name}"
    if vocab is None:
        raise BundleError(
            f"bundle {bundle} holds no vocabulary, so its token ids cannot be named",
            "pass --dataset with the dataset it was distilled from",
        )
    target = Path(out) if out is not None else default_output(bundle, cfg.to)
    check_output(target, bundle, cfg.to, cfg.overwrite)
    side = sidecar_path(target)
    with atomic_file(target) as tmp, atomic_file(side) as tmp_side:
        counts = _write(data, vocab, cfg, tmp, progress)
        provenance = {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "task": data.task,
            "file": {"name": target.name, "sha256": sha256_file(tmp), "bytes": tmp.stat().st_size},
            "export": {
                **{k: v for k, v in asdict(cfg).items() if k != "overwrite"},
                "columns": list(COLUMNS[data.task]) if cfg.to in ("csv", "parquet") else None,
            },
            "counts": {
                "sequences": counts.sequences,
                "rows": counts.rows,
                "tokens": counts.tokens,
                "distinct_tokens": len(counts.distinct),
                **({"sentences": counts.sentences, "unk_tokens": counts.unk} if data.task == "lm" else {}),
            },
            "bundle": {
                "path": str(bundle.resolve()),
                "sha256": sha256_file(bundle),
                "budget": f"{data.mu}x{data.xi}",
                "tau": data.tau,
                "dataset": data.meta["dataset"],
                "created": data.meta["created"],
                "package": data.meta["package"],
            },
            "vocabulary": {"source": vocab_source, "size": data.vocab_size, "sha256": data.meta["vocab_sha256"]},
            "package": {"name": "farzi", "version": __version__},
            "created": created_now(),
        }
        write_json(tmp_side, provenance)
    return ExportResult(path=target, sidecar=side, provenance=provenance)
