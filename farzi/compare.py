"""Train students on several kinds of data and evaluate them side by side.

Shared by ``farzictl demo`` and the benchmark harness: the question every
experiment asks is how a model trained on Farzi Data compares with the same
model trained on ``random:N``, ``head:N`` and the full data.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any

from farzi.data.prepared import PreparedDataset
from farzi.evaluate import evaluate
from farzi.progress import ProgressFn
from farzi.student import train_student
from farzi.train import TrainConfig


def student_run(
    ds: PreparedDataset,
    model: str,
    spec: str,
    config: TrainConfig,
    out: Path,
    overrides: dict[str, Any] | None = None,
    label: str | None = None,
    progress: ProgressFn | None = None,
    ks: tuple[int, ...] = (10, 100),
    stratify: str | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Train one student and evaluate it on the test split; one result row."""
    start = time.perf_counter()
    result, info = train_student(ds, model, spec, config, out, overrides, device=device, progress=progress)
    train_seconds = time.perf_counter() - start
    metrics = evaluate(result.model, ds, "test", ks=ks, stratify=stratify, device=device)
    return {
        "data": label or spec,
        "spec": spec,
        "model": model,
        "seed": config.seed,
        "sequences": info["data"].get("n", info["data"].get("mu")),
        "tokens": info["data"].get("tokens"),
        "train_seconds": round(train_seconds, 2),
        "best_step": result.best_step,
        "steps": result.steps,
        "sequences_seen": result.sequences_seen,
        "valid": result.best_metric,
        "test": metrics,
        "curve": result.curve,
        "path": str(out),
    }


def aggregate(rows: list[dict[str, Any]], metrics: list[str]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds, per data label (order of first appearance)."""
    out: list[dict[str, Any]] = []
    labels = list(dict.fromkeys(r["data"] for r in rows))
    for label in labels:
        group = [r for r in rows if r["data"] == label]
        row: dict[str, Any] = {
            "data": label,
            "seeds": len(group),
            "sequences": group[0]["sequences"],
            "tokens": group[0]["tokens"],
        }
        for m in metrics:
            vals = [float(r["test"][m]) for r in group if not math.isnan(float(r["test"][m]))]
            row[m] = statistics.fmean(vals) if vals else math.nan
            row[f"{m}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        row["train_seconds"] = statistics.fmean(r["train_seconds"] for r in group)
        out.append(row)
    return out
