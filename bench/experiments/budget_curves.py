"""Budget curves (paper Figures 3-4): Farzi Data, its initialization, random:N and head:N at several budgets against
the full data (ML-100k, Amazon Beauty, offline PTB), and the smallest budget measured to reach 90 % and 95 % of it.

The sample-efficiency table (:func:`bench.experiments.sample_efficiency.table`) at the protocol's ``curve_budgets``,
one distillation seed per budget. "Reaches p of full": a ratio to the full data of at least p on a higher-is-better
metric (HR@10, NDCG@10), a perplexity of at most full / p; read on the paired ratio's point estimate, printed with
its 95 % interval.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.common import settings
from bench.experiments.sample_efficiency import label, plot, table  # noqa: F401 - plot: the report's
from bench.report import ci, md_table
from bench.table import compare, run_table
from farzi.evaluate import metric_is_higher_better

DATASETS = {
    "budget-curves-ml100k": ("rec", ""),
    "budget-curves-beauty": ("rec", "beauty"),
    "budget-curves-ptb": ("lm", ""),
}
KINDS, MARKS = ("farzi", "init only", "random", "head"), (0.9, 0.95)


def run(protocol: str, work: Path, seeds: int, smoke: bool = False, experiment: str = "") -> dict[str, Any]:
    task, dataset = DATASETS[experiment]
    s = settings(task, protocol, smoke, dataset=dataset)
    s |= {"budgets": [2, 4] if smoke else s["curve_budgets"], "distill_seeds": 1}
    return run_table(table(s), s, work, seeds, smoke)


def ratios(r: dict[str, Any], metric: str | None = None) -> dict[str, list[tuple[int, dict[str, Any]]]]:
    """Per kind of data, (budget, its paired comparison with the full data) at every budget measured."""
    s = r["settings"]
    metric, out = metric or s["metrics"][0], {}
    for kind in KINDS:
        found = [
            (mu, compare(r["runs"], label(kind, mu, s["xi"]), "full", metric, s.get("n_boot", 2000)))
            for mu in s["budgets"]
        ]
        out[kind] = [(mu, c) for mu, c in found if c]
    return out


def _ratio(c: dict[str, Any]) -> dict[str, float]:
    return {"value": c["ratio"], "lo": c["ratio_lo"], "hi": c["ratio_hi"]}


def reaches(c: dict[str, Any], mark: float) -> bool:
    ratio = round(c["ratio"], 3)  # as printed
    return ratio >= mark if metric_is_higher_better(c["metric"]) else ratio <= round(1 / mark, 3)


def budget_to(r: dict[str, Any], metric: str | None = None) -> dict[str, dict[float, tuple[int, dict] | None]]:
    """Per kind and mark: the smallest budget measured whose ratio to full reaches the mark, with its comparison."""
    return {
        kind: {m: next(((mu, c) for mu, c in curve if reaches(c, m)), None) for m in MARKS}
        for kind, curve in ratios(r, metric).items()
    }


def curve_table(r: dict[str, Any]) -> str:
    """The ratio to the full data (95 % interval) of every kind of data at every budget."""
    by = {kind: dict(curve) for kind, curve in ratios(r).items()}
    rows = [[mu, *(ci(_ratio(by[k][mu]), 3) if mu in by[k] else "" for k in KINDS)] for mu in r["settings"]["budgets"]]
    return md_table(["budget", *(f"{k} / full" for k in KINDS)], rows)


def reach_table(r: dict[str, Any]) -> str:
    top = max(r["settings"]["budgets"])

    def cell(x: tuple[int, dict] | None) -> str:
        return f"{x[0]} ({ci(_ratio(x[1]), 3)})" if x else f"not reached up to {top}"

    rows = [[kind, *(cell(found[m]) for m in MARKS)] for kind, found in budget_to(r).items()]
    return md_table(["data", *(f"budget to {m:.0%} of full (ratio [95 % interval])" for m in MARKS)], rows)


def half_of_random(r: dict[str, Any]) -> str:
    """The issue's claim: Farzi Data reaches 90 % of full at a budget at most half of what random sampling needs."""
    found, top = budget_to(r), max(r["settings"]["budgets"])
    farzi, rand = found["farzi"][0.9], found["random"][0.9]
    if farzi is None:
        return f"does **not** hold: Farzi Data does not reach 90 % of full up to {top}"
    need = rand[0] if rand else f"more than {top}"
    holds = farzi[0] * 2 <= (rand[0] if rand else top)
    return f"{'holds' if holds else 'does **not** hold'}: Farzi Data at {farzi[0]}, random sampling at {need}"
