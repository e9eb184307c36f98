"""``inspect``: what a bundle holds, and whether it is valid.

Memory: the distributions are built ``chunk_bytes`` (default :data:`CHUNK_BYTES`, 4 MiB of
float32) at a time, whole positions in order, at least one -- at most
``MATERIALIZE_CHUNK_BYTES`` (64 MiB; the reader bounds a position's ``V`` by ``xi * V <=
MAX_SEQUENCE_ELEMENTS``) -- never all ``mu * xi * V`` of them at once; the entropy's
temporaries are a few chunks. Small chunks also keep the time down: a bundle at the size
limit (256 x 4096 x 4096) took 77 s (147 s of CPU) on 2 cores with 64 MiB chunks, 17 s with 4 MiB.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from farzi.data.prepared import PreparedDataset
from farzi.distill.bundle import POSITION_CHUNK_ELEMENTS, FarziData, load_bundle
from farzi.distill.summary import materialize
from farzi.errors import BundleError

MATERIALIZE_CHUNK_BYTES = 64 * 1024**2  # = 4 bytes x MAX_SEQUENCE_ELEMENTS: a position always fits
CHUNK_BYTES = 4 * POSITION_CHUNK_ELEMENTS  # what inspect builds at once by default: 4 MiB


def _chunks(data: FarziData, rows: Tensor, chunk_bytes: int) -> Iterator[Tensor]:
    """Distributions of the latent rows ``rows`` [n, d], a chunk [c, V] at a time (c * V * 4 <= chunk_bytes, c >= 1)."""
    step = max(1, chunk_bytes // (4 * data.vocab_size))
    for start in range(0, rows.shape[0], step):
        yield materialize(rows[start : start + step], data.decoder, data.tau, data.banned)  # [c, V]


def _entropy(p: Tensor) -> Tensor:
    """Entropy in nats of each distribution of ``p`` [c, V] -> [c] (masked tokens, p = 0, add 0)."""
    q = p.clamp_min(1e-30).log_()  # [c, V]
    return -q.mul_(p).sum(-1)


def inspect_bundle(
    path: str | Path,
    dataset: PreparedDataset | None = None,
    top_k: int = 3,
    sequences: int = 3,
    positions: int = 12,
    chunk_bytes: int = CHUNK_BYTES,
) -> dict[str, Any]:
    """A report on the bundle at ``path``; ``report["valid"]`` is False with a verdict
    when the file cannot be used (the reader's error, in one line).

    Distributions are built at most ``chunk_bytes`` of float32 at a time (whole positions, at least one).
    """
    try:
        data = load_bundle(path)
    except BundleError as exc:
        return {"path": str(path), "valid": False, "verdict": f"invalid: {exc.one_line()}"}
    meta = data.meta
    report: dict[str, Any] = {
        "path": str(path),
        "valid": True,
        "verdict": f"valid farzi-data v{meta['version']} bundle",
        "format": f"{meta['format']} v{meta['version']}",
        "task": data.task,
        "shapes": {"latent": list(data.latent.shape), "decoder": list(data.decoder.shape)},
        "support": int(data.support.shape[-1]) if data.support is not None else None,  # K candidates, or dense
        "budget": f"{data.mu}x{data.xi}",
        "tau": data.tau,
        "dataset": meta["dataset"],
        "teacher": {"model": meta["teacher"].get("model"), "checkpoints": meta["teacher"].get("checkpoints")},
        "distill": meta["distill"],
        "package": meta["package"],
        "created": meta["created"],
        "recipe": meta.get("recipe"),
        "history": meta.get("history"),
    }
    src = meta["dataset"]
    n_seq, n_tok = src.get("train_sequences"), src.get("train_tokens")
    if all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in (n_seq, n_tok)):
        # the dataset record is free-form JSON: only counts distill wrote give a share
        report["share"] = {"sequences": data.mu / n_seq, "tokens": data.mu * data.xi / n_tok}
    if dataset is not None:
        try:
            data.check_vocabulary(dataset.vocab_size, dataset.vocab.sha256(), dataset.name)
            report["dataset_match"] = True
        except BundleError as exc:
            report["dataset_match"] = False
            report["verdict"] = f"valid bundle, but not for dataset {dataset.name!r}: {exc.problem}"
            dataset = None
    # entropy (nats), chunk by chunk over the mu * xi positions: never all [mu, xi, V] at once
    h = torch.empty(data.mu * data.xi)  # [mu * xi]
    for start, p in data.positions(chunk_bytes // 4):
        h[start : start + len(p)] = _entropy(p)
    h = h.view(data.mu, data.xi)  # [mu, xi]
    ent_seq = h.mean(1)  # [mu]
    ent_pos = (h / data.mu).sum(0)  # [xi]
    unmasked = data.vocab_size - len(set(meta["masked_tokens"]))  # the reader ensures >= 1
    report["entropy"] = {
        "per_position": [round(float(x), 4) for x in ent_pos],
        "per_sequence": [round(float(x), 4) for x in ent_seq],
        "mean": round(float(ent_seq.mean()), 4),
        "max_possible": round(float(torch.tensor(float(unmasked)).log()), 4),
    }
    vocab = meta.get("vocab")
    titles = dataset.vocab.titles if dataset is not None else None

    def label(tok: int) -> str:
        if titles is not None and titles[tok]:
            return titles[tok]
        return vocab[tok] if vocab else str(tok)

    examples = []
    k = min(top_k, data.vocab_size)
    for i in range(min(sequences, data.mu)):
        rows = data.latent[i, : min(positions, data.xi)]  # [n, d]
        seq = []
        for p in _chunks(data, rows, chunk_bytes):
            top = p.topk(k, dim=-1)  # [c, k]
            for vals, ids in zip(top.values, top.indices, strict=True):
                seq.append(
                    [
                        {"token": label(int(t)), "id": int(t), "p": round(float(q), 4)}
                        for q, t in zip(vals, ids, strict=True)
                    ]
                )
        examples.append(seq)
    report["examples"] = examples
    return report
