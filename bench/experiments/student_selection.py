"""Which validation signal should a student stop on? (issue 9: measured, not assumed)

HR@10 over ML-100k's ~94 validation users moves in steps of ~1.1 points; a student that early-stops on it picks a state
by noise. The candidates: ``hr@10`` (the validation users' last item), ``nll`` (its cross-entropy), ``xent`` and
``hr_all@10`` (over every position of each user's most recent items). Students train without early stopping on the full
data, head:50 and a Farzi Data bundle (a variant table, :mod:`bench.table`), recording every candidate and the test
HR@10 at each validation; early stopping is then replayed per candidate, paired by run against the default signal.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import settings
from bench.report import ci, fmt, md_table
from bench.table import Table, Variant, run_table
from farzi.evaluate import default_metric, evaluate, metric_is_higher_better
from farzi.models import build_model, make_config
from farzi.student import parse_spec, training_set
from farzi.train import TrainConfig, train_model

CANDIDATES = ("hr@10", "nll", "xent", "hr_all@10")


def curve(t: Table, ds, s: dict[str, Any], v: Variant, spec: str, seed: int, out: Path) -> dict[str, Any]:
    """One student's validation candidates and test HR@10 at every validation (no early stopping)."""
    model_cfg, st = make_config(s["model"], ds.vocab_size, **s["model_overrides"]), s["student"]
    train_set, _ = training_set(ds, parse_spec(spec), model_cfg.max_len, seed)
    torch.manual_seed(seed)
    model, points = build_model(s["model"], model_cfg), []

    def record(step: int, m, validation, _opt) -> None:
        if validation is not None:
            test = evaluate(m, ds, "test")
            m.train()
            valid = {f"valid {c}": validation[c] for c in CANDIDATES}
            points.append({"step": step, **valid, "test hr@10": test["hr@10"]})

    cfg = TrainConfig(lr=st["lr"], batch_size=st["batch_size"], max_steps=st["max_steps"], seed=seed)
    cfg.eval_every, cfg.patience, cfg.metric = st["eval_every"], 0, "xent"
    train_model(model, train_set, ds, cfg, on_step=record)
    return {"points": points}


def run(protocol: str, work: Path, seeds: int, smoke: bool = False, experiment: str = "") -> dict[str, Any]:
    s = settings("rec", smoke=smoke, runs=2)
    patience = 2 if smoke else s["student"]["patience"]
    s["student"] |= {"max_steps": 6, "eval_every": 2} if smoke else {"max_steps": 400, "eval_every": 10}
    mu = 4 if smoke else 50
    variants = {"full": Variant(distill=None), f"head:{mu}": Variant(distill=None, data=f"head:{mu}")}
    t = Table({**variants, f"farzi {mu}x{s['xi']}": Variant()}, mu=(4, 50), student=curve)
    return {**run_table(t, s, work, seeds, smoke), "patience": patience}


def replay(points: list[dict[str, float]], metric: str, patience: int) -> dict[str, float]:
    """Early stopping on ``metric`` replayed over a recorded run: the state it keeps."""
    higher, best_i, bad = metric_is_higher_better(metric), 0, 0
    for i, p in enumerate(points):
        v, b = p[f"valid {metric}"], points[best_i][f"valid {metric}"]
        if i == 0 or (v > b if higher else v < b):
            best_i, bad = i, 0
        else:
            bad += 1
            if patience and bad >= patience:
                break
    return {"step": points[best_i]["step"], "test hr@10": points[best_i]["test hr@10"]}


def shortfalls(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Per candidate and kind of data: the test HR@10 it keeps, its shortfall from the run's best test state
    (an oracle), and the steps kept."""
    out = []
    for metric in CANDIDATES:
        for label in dict.fromkeys(x["data"] for x in r["runs"]):
            group = [x for x in r["runs"] if x["data"] == label]
            picked = [replay(x["points"], metric, r["patience"]) for x in group]
            hr = [p["test hr@10"] for p in picked]
            oracle = [max(p["test hr@10"] for p in x["points"]) for x in group]
            gap = statistics.fmean(o - h for o, h in zip(oracle, hr, strict=True))
            std = statistics.stdev(hr) if len(hr) > 1 else 0.0
            out.append({"metric": metric, "data": label, "hr": statistics.fmean(hr), "std": std, "gap": gap})
            out[-1]["steps"] = [p["step"] for p in picked]
    return out


def shortfall_table(r: dict[str, Any]) -> str:
    rows = [
        [x["metric"], x["data"], f"{fmt(x['hr'])} ± {fmt(x['std'])}", fmt(x["gap"]), ", ".join(map(str, x["steps"]))]
        for x in shortfalls(r)
    ]
    return md_table(["validation signal", "data", "test HR@10 kept", "shortfall", "steps kept"], rows)


def best(r: dict[str, Any]) -> str:
    """The candidate with the smallest mean shortfall over the kinds of data."""
    by: dict[str, list[float]] = {}
    for x in shortfalls(r):
        by.setdefault(x["metric"], []).append(x["gap"])
    return min(by, key=lambda m: statistics.fmean(by[m]))


def versus_default(r: dict[str, Any], n_boot: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """Each candidate against the default signal: the test HR@10 of the states they keep, paired by run
    (the same data and student seed), with a 95 % bootstrap interval over the runs."""
    default, runs = default_metric("rec"), r["runs"]
    kept = {m: np.array([replay(x["points"], m, r["patience"])["test hr@10"] for x in runs]) for m in CANDIDATES}
    picks = np.random.default_rng(seed).integers(len(runs), size=(n_boot, len(runs)))
    out = []
    for m in (m for m in CANDIDATES if m != default):
        d = kept[m] - kept[default]  # [runs]
        lo, hi = np.quantile(d[picks].mean(1), [0.025, 0.975])
        out.append({"metric": m, "diff": float(d.mean()), "lo": float(lo), "hi": float(hi), "runs": len(d)})
    return out


def versus_table(r: dict[str, Any]) -> str:
    rows = [[v["metric"], ci(v), str(v["runs"])] for v in versus_default(r)]
    return md_table(["validation signal", f"test HR@10 kept: signal - {default_metric('rec')}", "runs"], rows)
