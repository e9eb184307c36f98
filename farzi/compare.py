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

import numpy as np

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
    recipe_fills: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Train one student and evaluate it on the test split; one result row. On a bundle, the fields
    of ``config`` named in ``recipe_fills`` come from the recipe it records (``train_student``)."""
    start = time.perf_counter()
    result, info = train_student(
        ds, model, spec, config, out, overrides, device=device, progress=progress, recipe_fills=recipe_fills
    )
    train_seconds = time.perf_counter() - start
    metrics = evaluate(result.model, ds, "test", ks=ks, stratify=stratify, device=device, per_unit=True)
    units = metrics.pop("per_unit")
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
        "units": units,  # per test user / sentence, for paired comparisons (paired_difference)
        "selection_metric": result.metric,
        "lr": info["train"]["lr"],
        "from_recipe": info["train"]["from_recipe"],
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


# ------------------------------------------------------------------ paired comparisons

RATIO_METRICS = {"xent", "ppl_corpus", "accuracy", "hr_all@10"}  # totals over units, not means of units


def unit_values(per_unit: dict[str, Any], metric: str) -> tuple[np.ndarray, np.ndarray | None]:
    """One run's figure for ``metric`` as per-unit parts: (numerators [U], denominators [U] or None).

    ``None`` denominators mean the metric is the mean of the numerators over units (users or
    sentences); otherwise it is sum(numerators) / sum(denominators) (then exponentiated for a
    perplexity). Users and sentences are in split order, so two runs on one dataset pair up.
    """
    if per_unit["unit"] == "user":
        rank = np.asarray(per_unit["rank"], dtype=np.float64)
        if metric.startswith("hr@"):
            return 100.0 * (rank < int(metric[3:])), None
        if metric.startswith("ndcg@"):
            k = int(metric[5:])
            return np.where(rank < k, 100.0 / np.log2(rank + 2.0), 0.0), None
        if metric in ("auc", "nll"):
            return np.asarray(per_unit[metric], dtype=np.float64), None
        if metric == "xent":
            return np.asarray(per_unit["xent_sum"], dtype=np.float64), np.asarray(per_unit["xent_count"], np.float64)
        if metric == "hr_all@10":
            top = np.asarray(per_unit["top10_all"], dtype=np.float64)
            return 100.0 * top, np.asarray(per_unit["xent_count"], np.float64)
    else:
        tokens = np.asarray(per_unit["tokens"], dtype=np.float64)
        if metric == "ppl_corpus":
            return np.asarray(per_unit["nll_sum"], dtype=np.float64), tokens
        if metric == "ppl_sentence":
            return np.exp(np.asarray(per_unit["nll_sum"], dtype=np.float64) / np.maximum(tokens, 1)), None
        if metric == "accuracy":
            return 100.0 * np.asarray(per_unit["correct"], dtype=np.float64), tokens
    raise ValueError(f"no per-unit form for metric {metric!r} on {per_unit['unit']}s")


def _statistic(num: np.ndarray, den: np.ndarray | None, metric: str) -> np.ndarray:
    """The metric per run: num [..., P, U], den [..., U] -> [..., P]."""
    if den is None:
        return num.mean(-1)
    value = num.sum(-1) / den.sum(-1)[..., None]
    return np.exp(value) if metric == "ppl_corpus" else value


def paired_difference(
    a: list[dict[str, Any]],
    b: list[dict[str, Any]],
    metric: str,
    n_boot: int = 2000,
    seed: int = 0,
    resample_runs: bool = True,
) -> dict[str, float]:
    """Paired comparison of two kinds of training data on one test split.

    ``a[i]`` and ``b[i]`` are the per-unit test figures (``evaluate(..., per_unit=True)["per_unit"]``)
    of two students that share everything but their data (the same student seed). The estimate is
    mean over pairs of metric(a) - metric(b) (and the ratio of the means); the 95 % interval is a
    percentile bootstrap that resamples the pairs and the test units (users or sentences) together,
    so both the seed-to-seed and the user-to-user spread enter it. With ``resample_runs=False`` the
    pairs stay as they are and only the units are resampled: the spread that the test split alone
    puts on the comparison, which no number of seeds takes away (:func:`units_to_resolve`).
    """
    if len(a) != len(b) or not a:
        raise ValueError("paired comparison needs the same number (>= 1) of runs on both sides")
    parts_a = [unit_values(u, metric) for u in a]
    parts_b = [unit_values(u, metric) for u in b]
    num_a, num_b = np.stack([p[0] for p in parts_a]), np.stack([p[0] for p in parts_b])  # [P, U]
    den = parts_a[0][1]
    if num_a.shape != num_b.shape:
        raise ValueError("the two sides were evaluated on different units")
    mean_a = float(_statistic(num_a, den, metric).mean())
    mean_b = float(_statistic(num_b, den, metric).mean())
    rng = np.random.default_rng(seed)
    P, U = num_a.shape
    diffs, ratios = np.empty(n_boot), np.empty(n_boot)
    for i in range(n_boot):
        r = rng.integers(P, size=P) if resample_runs else np.arange(P)
        u = rng.integers(U, size=U)
        d = None if den is None else den[u]
        sa = _statistic(num_a[np.ix_(r, u)], d, metric).mean()
        sb = _statistic(num_b[np.ix_(r, u)], d, metric).mean()
        diffs[i], ratios[i] = sa - sb, sa / sb if sb else math.nan
    lo, hi = np.quantile(diffs, [0.025, 0.975])
    rlo, rhi = np.nanquantile(ratios, [0.025, 0.975])
    return {
        "metric": metric,
        "a": mean_a,
        "b": mean_b,
        "diff": mean_a - mean_b,
        "lo": float(lo),
        "hi": float(hi),
        "ratio": mean_a / mean_b if mean_b else math.nan,
        "ratio_lo": float(rlo),
        "ratio_hi": float(rhi),
        "pairs": P,
        "units": U,
        "n_boot": n_boot,
    }


def units_to_resolve(value: float, near: float, bar: float, units: int, above: bool = True) -> float | None:
    """How many test units a claim "``value`` lies above ``bar``" (below it when not ``above``) needs
    before its 95 % interval clears the bar, from an interval measured on ``units`` units whose end
    facing the bar is ``near``.

    That half-width, ``|value - near|``, shrinks about as 1 / sqrt(units) when the units are what
    limit it (the units-only interval of :func:`paired_difference`), so the bar is cleared from
    ``units * (half-width / margin) ** 2`` units on, margin = ``|value - bar|``, if the measured value
    held. ``None`` when the value is not beyond the bar: no number of units makes the claim hold.
    """
    margin = value - bar if above else bar - value
    if margin <= 0:
        return None
    return units * (abs(value - near) / margin) ** 2


def metric_interval(
    units: list[dict[str, Any]], metric: str, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of ``metric`` over runs, and its 95 % bootstrap interval (runs and test units resampled)."""
    parts = [unit_values(u, metric) for u in units]
    num, den = np.stack([p[0] for p in parts]), parts[0][1]
    mean = float(_statistic(num, den, metric).mean())
    rng = np.random.default_rng(seed)
    P, U = num.shape
    stats = np.empty(n_boot)
    for i in range(n_boot):
        r, u = rng.integers(P, size=P), rng.integers(U, size=U)
        stats[i] = _statistic(num[np.ix_(r, u)], None if den is None else den[u], metric).mean()
    lo, hi = np.quantile(stats, [0.025, 0.975])
    return mean, float(lo), float(hi)
