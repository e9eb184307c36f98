"""``inspect``: what a bundle holds, and whether it is valid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from farzi.data.prepared import PreparedDataset
from farzi.distill.bundle import load_bundle
from farzi.errors import BundleError


def inspect_bundle(
    path: str | Path,
    dataset: PreparedDataset | None = None,
    top_k: int = 3,
    sequences: int = 3,
    positions: int = 12,
) -> dict[str, Any]:
    """A report on the bundle at ``path``; ``report["valid"]`` is False with a verdict
    when the file cannot be used (the reader's error, in one line)."""
    try:
        data = load_bundle(path)
    except BundleError as exc:
        return {"path": str(path), "valid": False, "verdict": f"invalid: {exc.one_line()}"}
    meta = data.meta
    report: dict[str, Any] = {
        "path": str(path),
        "valid": True,
        "verdict": "valid farzi-data v1 bundle",
        "format": f"{meta['format']} v{meta['version']}",
        "task": data.task,
        "shapes": {"latent": list(data.latent.shape), "decoder": list(data.decoder.shape)},
        "budget": f"{data.mu}x{data.xi}",
        "tau": data.tau,
        "dataset": meta["dataset"],
        "teacher": {"model": meta["teacher"].get("model"), "checkpoints": meta["teacher"].get("checkpoints")},
        "distill": meta["distill"],
        "package": meta["package"],
        "created": meta["created"],
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
    # entropy (nats), one sequence at a time: never all [mu, xi, V] at once
    ent_seq = torch.zeros(data.mu)
    ent_pos = torch.zeros(data.xi)
    for i in range(data.mu):
        p = data.materialize(torch.tensor([i]))[0]  # [xi, V]
        h = -(p * torch.log(p.clamp_min(1e-30))).sum(-1)  # [xi]
        ent_seq[i] = h.mean()
        ent_pos += h / data.mu
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
    for i in range(min(sequences, data.mu)):
        p = data.materialize(torch.tensor([i]))[0]  # [xi, V]
        top = p.topk(min(top_k, data.vocab_size), dim=-1)
        examples.append(
            [
                [
                    {"token": label(int(t)), "id": int(t), "p": round(float(q), 4)}
                    for q, t in zip(vals, ids, strict=True)
                ]
                for vals, ids in zip(top.values[:positions], top.indices[:positions], strict=True)
            ]
        )
    report["examples"] = examples
    return report
