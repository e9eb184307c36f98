"""Which validation signal should a student stop on? (issue 9: measured, not assumed)

HR@10 over ML-100k's ~94 validation users moves in steps of ~1.1 points and has a standard error
of ~4; a student that early-stops on it picks a state by noise. The candidates here:

* ``hr@10``: hit rate of the validation users' last item (the old default);
* ``nll``: cross-entropy of that last item;
* ``xent``: cross-entropy over every position of each validation user's most recent items;
* ``hr_all@10``: hit rate at 10 over those same positions.

Students train without early stopping on the full data, on head:50 and on a Farzi Data bundle,
validating every 10 steps and recording every candidate and the test metrics at each validation.
Early stopping with the students' patience is then replayed offline for each candidate: the test
HR@10 of the state it would have kept, its spread over seeds, and its shortfall from the best test
state of the run (an oracle no criterion can have).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.experiments import _ml
from bench.report import fmt, md_table
from farzi.evaluate import default_metric, evaluate, metric_is_higher_better
from farzi.models import build_model, make_config
from farzi.student import parse_spec, training_set
from farzi.train import TrainConfig, train_model

CANDIDATES = ("hr@10", "nll", "xent", "hr_all@10")


def curve(ds, s: dict[str, Any], spec: str, seed: int, steps: int, every: int) -> list[dict[str, float]]:
    """One student's validation candidates and test figures at every validation."""
    cfg = make_config(s["model"], ds.vocab_size, **s["model_overrides"])
    train_set, _ = training_set(ds, parse_spec(spec), cfg.max_len, seed)
    torch.manual_seed(seed)
    model = build_model(s["model"], cfg)
    points: list[dict[str, float]] = []

    def record(step: int, m, validation, _opt) -> None:
        if validation is None:
            return
        test = evaluate(m, ds, "test")
        m.train()
        points.append({"step": step, **{f"valid {c}": validation[c] for c in CANDIDATES}, "test hr@10": test["hr@10"]})

    st = s["student"]
    config = TrainConfig(
        lr=st["lr"],
        batch_size=st["batch_size"],
        max_steps=steps,
        eval_every=every,
        patience=0,
        metric="xent",
        seed=seed,
    )
    train_model(model, train_set, ds, config, on_step=record)
    return points


def replay(points: list[dict[str, float]], metric: str, patience: int) -> dict[str, float]:
    """Early stopping on ``metric`` replayed over a recorded run: the state it keeps."""
    higher = metric_is_higher_better(metric)
    best_i, bad = 0, 0
    for i, p in enumerate(points):
        v, b = p[f"valid {metric}"], points[best_i][f"valid {metric}"]
        if i == 0 or (v > b if higher else v < b):
            best_i, bad = i, 0
        else:
            bad += 1
            if patience and bad >= patience:
                break
    return {"step": points[best_i]["step"], "test hr@10": points[best_i]["test hr@10"]}


def run(protocol: str, work: Path, seeds: int, smoke: bool = False, experiment: str = "") -> dict[str, Any]:
    s = _ml.base_settings(smoke)
    ds = _ml.dataset(s, work)
    if ds is None:
        return {"skipped": "ML-100k not found under ../shared/datasets"}
    mu = 4 if smoke else 50
    traj = _ml.omega(ds, s, work, s["model"], s["model_overrides"])
    bundle, _ = _ml.bundle(ds, s, work, traj, mu, "farzi-sasrec")
    steps, every = (6, 2) if smoke else (400, 10)
    runs = []
    for label, spec in (("full", "full"), (f"head:{mu}", f"head:{mu}"), (f"farzi {mu}x{s['xi']}", str(bundle))):
        for seed in range(seeds):
            runs.append({"data": label, "seed": seed, "points": curve(ds, s, spec, seed, steps, every)})
    patience = 2 if smoke else s["student"]["patience"]
    table = []
    for metric in CANDIDATES:
        for label in dict.fromkeys(r["data"] for r in runs):
            group = [r for r in runs if r["data"] == label]
            picked = [replay(r["points"], metric, patience) for r in group]
            oracle = [max(p["test hr@10"] for p in r["points"]) for r in group]
            hr = [p["test hr@10"] for p in picked]
            table.append(
                {
                    "metric": metric,
                    "data": label,
                    "test hr@10": statistics.fmean(hr),
                    "std": statistics.stdev(hr) if len(hr) > 1 else 0.0,
                    "shortfall": statistics.fmean(o - h for o, h in zip(oracle, hr, strict=True)),
                    "steps": [p["step"] for p in picked],
                }
            )
    return {"runs": runs, "table": table, "patience": patience, "settings": s, "reused": list(_ml.REUSED)}


def versus_default(result: dict[str, Any], n_boot: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """Each candidate against the default signal: the test HR@10 of the states they keep, paired by
    run (the same data and student seed), with a 95 % bootstrap interval over the runs."""
    default = default_metric("rec")
    patience = result["patience"]
    kept = {m: np.array([replay(r["points"], m, patience)["test hr@10"] for r in result["runs"]]) for m in CANDIDATES}
    rng = np.random.default_rng(seed)
    picks = rng.integers(len(result["runs"]), size=(n_boot, len(result["runs"])))
    out = []
    for m in CANDIDATES:
        if m == default:
            continue
        d = kept[m] - kept[default]  # [runs]
        lo, hi = np.quantile(d[picks].mean(1), [0.025, 0.975])
        out.append({"metric": m, "diff": float(d.mean()), "lo": float(lo), "hi": float(hi), "runs": len(d)})
    return out


def render(name: str, result: dict[str, Any], plots: Path) -> str:
    if "skipped" in result:
        return f"Not run: {result['skipped']}."
    seeds = len({r["seed"] for r in result["runs"]})
    rows = [
        [
            t["metric"],
            t["data"],
            f"{fmt(t['test hr@10'])} ± {fmt(t['std'])}",
            fmt(t["shortfall"]),
            ", ".join(str(x) for x in t["steps"]),
        ]
        for t in result["table"]
    ]
    by_metric: dict[str, list[float]] = {}
    for t in result["table"]:
        by_metric.setdefault(t["metric"], []).append(t["shortfall"])
    best = min(by_metric, key=lambda m: statistics.fmean(by_metric[m]))
    default = default_metric("rec")
    vs = versus_default(result)
    better = [v["metric"] for v in vs if v["lo"] > 0]
    worse = [v["metric"] for v in vs if v["hi"] < 0]
    vs_rows = [[v["metric"], f"{fmt(v['diff'])} [{fmt(v['lo'])}, {fmt(v['hi'])}]", str(v["runs"])] for v in vs]
    return "\n".join(
        [
            f"ML-100k, SASRec; {seeds} student seeds per kind of data, validated every 10 steps without early "
            f"stopping; early stopping (patience {result['patience']} validations) replayed per candidate signal. "
            "'Shortfall' is the mean gap to the run's best test HR@10 (an oracle).",
            "",
            md_table(["validation signal", "data", "test HR@10 kept", "shortfall", "steps kept"], rows),
            "",
            f"Each signal against the default ({default}): test HR@10 of the kept states, paired by run "
            "(same data and student seed), 95 % bootstrap interval over the runs.",
            "",
            md_table(["validation signal", f"test HR@10 kept: signal - {default}", "runs"], vs_rows),
            "",
            f"Smallest mean shortfall over the three kinds of data: **{best}**. "
            + (
                f"Better than {default} (interval above 0): {', '.join(better)}; the default should change. "
                if better
                else f"No signal keeps a better test state than {default} by that interval"
                + (f" (worse: {', '.join(worse)})" if worse else "")
                + f", so students (train-student, the benchmarks, summary selection) keep stopping on {default} "
                "for recommendation."
            ),
        ]
    )
