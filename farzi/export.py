"""Export Farzi Data as discrete sequences that any tool can train from (formats/export-v1.md).

A bundle stores each synthetic sequence as a distribution per position. ``export`` decodes
every sequence to tokens -- by argmax, or by ``samples`` seeded draws per sequence -- and
writes them as words (``task`` lm: sentences split at ``<eos>``) or as (user, item, position)
rows (``task`` rec, items named by their original ids). Formats: ``jsonl``, ``txt``, ``csv``,
``parquet``. Beside the file goes a JSON sidecar ``PATH.json`` with its provenance (bundle
path and sha256, decoding, samples, seed, package version). The output is claimed before any
work (:func:`farzi._io.claim_output`, kind ``export``: a second export to the same path fails at
once, temporaries of killed exports are removed, a file that is not a previous export -- its
sidecar says so -- is refused unless ``overwrite``, and so is a file at the sidecar's path that
is not an export sidecar); both are written atomically.

``farzictl prepare text --train FILE.txt`` and ``farzictl prepare interactions --path
FILE.csv --user-col user --item-col item --time-col position`` read the export back.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import polars as pl
import torch
from torch import Tensor

from farzi._io import atomic_file, claim_output, sha256_file, write_json
from farzi._version import __version__
from farzi.data.prepared import PreparedDataset
from farzi.data.vocab import EOS, PAD, UNK
from farzi.distill.bundle import POSITION_CHUNK_ELEMENTS, FarziData, created_now, load_bundle, read_bundle_meta
from farzi.errors import BundleError, ConfigError
from farzi.progress import ProgressFn, report
from farzi.settings import setting

EXPORT_FORMAT = "farzi-export"
EXPORT_VERSION = 1
FORMATS = ("jsonl", "txt", "csv", "parquet")
DECODINGS = ("argmax", "sample")
SUFFIX = {"jsonl": ".jsonl", "txt": ".txt", "csv": ".csv", "parquet": ".parquet"}
COLUMNS = {"rec": ("user", "item", "position"), "lm": ("sequence", "position", "token")}
MAX_SAMPLES = 100_000
CHUNK_ELEMENTS = POSITION_CHUNK_ELEMENTS  # distributions materialized at once: 4 MiB of float32


@dataclass
class ExportConfig:
    """What to write: format ``to``, decoding, ``samples`` per sequence, the sampling seed."""

    to: str = setting("jsonl", f"Format: {', '.join(FORMATS)}.")
    decode: str = setting("argmax", f"{' or '.join(DECODINGS)}: most probable or sampled tokens.")
    samples: int = setting(1, "Decoded sequences per synthetic sequence (--decode sample).")
    seed: int = setting(0, "Random seed (0 to 2**63-1); same seed, same result on CPU.")
    overwrite: bool = setting(False, "Replace an existing file that is not a previous export.")

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

    Distributions are materialized ``CHUNK_ELEMENTS`` at a time, whole positions in order
    (:meth:`FarziData.positions`; never one whole sequence, nor all [mu, xi, V], at once), and
    drawn from at most ``CHUNK_ELEMENTS`` draws at a time. ``sample`` draws each position
    independently from its distribution with one generator seeded by ``seed``, position after
    position (``samples`` draws each): the draws do not depend on the chunking. ``argmax``
    takes the most probable token (the lowest id among ties).
    """
    if decode not in DECODINGS:
        raise ConfigError(f"unknown decoding {decode!r}", "use argmax or sample")
    excluded = excluded_tokens(data)  # [V]
    excluded_ids = torch.nonzero(excluded).flatten()  # [e]
    allowed = (~excluded).double()  # [V]
    gen = torch.Generator().manual_seed(seed)
    xi, k = data.xi, samples if decode == "sample" else 1
    ids = torch.empty(xi, k, dtype=torch.long)  # the sequence being decoded: the tokens drawn ...
    chosen = torch.empty(xi, k)  # ... and their probabilities
    rows = max(1, CHUNK_ELEMENTS // k)  # positions drawn from at once
    for start, probs in data.positions(CHUNK_ELEMENTS):  # [c, V]
        for first in range(0, len(probs), rows):
            p = probs[first : first + rows]  # [r, V]
            if decode == "argmax":
                # -1 below every probability: an excluded token is never picked, even where an
                # unmasked <pad> took all the mass (then the lowest allowed id wins the tie at 0);
                # in place: p at the tokens picked is unchanged
                draws = p.index_fill_(-1, excluded_ids, -1.0).argmax(-1, keepdim=True)  # [r, 1]
            else:
                weights = p.double().index_fill_(-1, excluded_ids, 0.0)  # [r, V]
                empty = weights.sum(-1) <= 0  # [r]
                if bool(empty.any()):  # an unmasked <pad> took all the mass: uniform over the rest
                    weights[empty] = allowed
                draws = torch.multinomial(weights, k, replacement=True, generator=gen)  # [r, K]
            got = p.gather(-1, draws)  # [r, K]
            done = 0
            while done < len(p):  # the rows may end one sequence and start the next
                seq, pos = divmod(start + first + done, xi)
                n = min(len(p) - done, xi - pos)
                ids[pos : pos + n] = draws[done : done + n]
                chosen[pos : pos + n] = got[done : done + n]
                done += n
                if pos + n == xi:
                    for sample, (tokens, probs_k) in enumerate(zip(ids.t().tolist(), chosen.t().tolist(), strict=True)):
                        yield Decoded(index=seq, sample=sample, ids=tokens, p=[round(x, 6) for x in probs_k])


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
        if side.is_symlink():
            return None
        obj = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(obj, dict) or obj.get("format") != EXPORT_FORMAT or not isinstance(obj.get("export"), dict):
        return None
    return obj


def check_sidecar(out: Path, overwrite: bool) -> None:
    """Refuse (unless ``overwrite``) to replace a file at the sidecar's path that is not an export sidecar."""
    side = sidecar_path(out)
    if not overwrite and os.path.lexists(side) and _previous_export(out) is None:
        raise ConfigError(
            f"{side} exists and is not an export sidecar", "pass --overwrite to replace it, or --out another path"
        )


def check_output(out: Path, bundle: Path, to: str, overwrite: bool) -> None:
    """Refuse an output that would destroy something: the bundle itself, a directory, another
    format's suffix, an existing file that is not a previous export in this format, or a file at
    the sidecar's path that is not an export sidecar."""
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
    check_sidecar(out, overwrite)


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

    ``out`` is claimed (:func:`farzi._io.claim_output`) before the bundle is loaded: another
    export writing it is a ``ConfigError`` at once; see :func:`check_output` for what is refused.
    """
    cfg.validate()
    bundle = Path(bundle)
    read_bundle_meta(bundle)  # a bad bundle is the first error, before anything is written
    target = Path(out) if out is not None else default_output(bundle, cfg.to)
    check_output(target, bundle, cfg.to, cfg.overwrite)
    side = sidecar_path(target)
    # before any work: a second export to ``target`` fails at once; what killed ones left is removed
    reads = (bundle, dataset.path if dataset is not None else None)  # never replaced, even with overwrite
    with claim_output(target, "export", cfg.overwrite, companions=(side,), inputs=reads) as claim:
        check_output(target, bundle, cfg.to, cfg.overwrite)  # again, now that no other export can change it
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
        # the file is renamed first, its sidecar (which says the file is an export) after it
        with atomic_file(side) as tmp_side, atomic_file(target) as tmp:
            counts = _write(data, vocab, cfg, tmp, progress)
            provenance = _provenance(data, bundle, target, tmp, cfg, counts, vocab_source)
            write_json(tmp_side, provenance)
            # just before the renames: something may have appeared at either path during the export
            claim.check()
            check_sidecar(target, cfg.overwrite)
    return ExportResult(path=target, sidecar=side, provenance=provenance)


def _provenance(
    data: FarziData, bundle: Path, target: Path, tmp: Path, cfg: ExportConfig, counts: _Counts, vocab_source: str
) -> dict[str, Any]:
    """What the sidecar holds (formats/export-v1.md)."""
    return {
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
