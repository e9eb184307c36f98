"""Training speed-up: time and sequences seen to reach the full-data model's validation quality,
training on Farzi Data vs on the full data (thesis Table 4.7)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.experiments import _ml
from bench.report import fmt, md_table
from farzi.compare import student_run
from farzi.train import TrainConfig


def _reach(curve: list[dict[str, Any]], metric: str, target: float) -> dict[str, Any] | None:
    for point in curve:
        if point[metric] >= target:
            return point
    return None


def run(protocol: str, work: Path, seeds: int, smoke: bool = False, experiment: str = "") -> dict[str, Any]:
    s = _ml.base_settings(smoke)
    ds = _ml.dataset(s, work)
    if ds is None:
        return {"skipped": "ML-100k not found under ../shared/datasets"}
    mu = 4 if smoke else 50
    traj = _ml.omega(ds, s, work, s["model"], s["model_overrides"])
    path, _ = _ml.bundle(ds, s, work, traj, mu, "farzi-sasrec")
    # full curves (no early stopping) of the figure the speed-up is read on
    student = {**s["student"], "patience": 0, "metric": "hr@10"}
    out = []
    for seed in range(min(seeds, 2)):
        full = student_run(
            ds,
            s["model"],
            "full",
            TrainConfig(seed=seed, **student),
            work / f"full-s{seed}",
            s["model_overrides"],
            label="full",
        )
        farzi = student_run(
            ds,
            s["model"],
            str(path),
            TrainConfig(seed=seed, **student),
            work / f"farzi-s{seed}",
            s["model_overrides"],
            label=f"farzi {mu}x{s['xi']}",
        )
        out.append({"seed": seed, "full": full, "farzi": farzi})
    return {"budget": f"{mu}x{s['xi']}", "pairs": out, "settings": s, "reused": list(_ml.REUSED)}


def render(name: str, result: dict[str, Any], plots: Path) -> str:
    if "skipped" in result:
        return f"Not run: {result['skipped']}."
    rows = []
    for pair in result["pairs"]:
        full, farzi = pair["full"], pair["farzi"]
        best = full["valid"]
        for frac in (0.75, 0.9, 1.0):
            target = frac * best
            a = _reach(full["curve"], "hr@10", target)
            b = _reach(farzi["curve"], "hr@10", target)
            rows.append(
                [
                    pair["seed"],
                    f"{int(frac * 100)} % of full's best valid HR@10 ({fmt(target)})",
                    fmt(a["elapsed"], 1) if a else "never",
                    a.get("sequences_seen", "—") if a else "—",
                    fmt(b["elapsed"], 1) if b else "never",
                    b.get("sequences_seen", "—") if b else "—",
                    fmt(a["elapsed"] / b["elapsed"], 1) if a and b and b["elapsed"] else "—",
                ]
            )
    return "\n".join(
        [
            f"ML-100k, SASRec; full data vs Farzi Data {result['budget']} (batches of up to 128 sequences, so one "
            "step on Farzi Data sees all its sequences). Wall seconds (training and the validation passes) and "
            "sequences seen until the validation HR@10 first reaches the target (validation every 10 steps); "
            "no early stopping.",
            "",
            md_table(
                [
                    "seed",
                    "target",
                    "full: seconds",
                    "full: sequences seen",
                    "Farzi: seconds",
                    "Farzi: sequences seen",
                    "speed-up (time)",
                ],
                rows,
            ),
            "",
            "Best validation HR@10 per run: "
            + "; ".join(
                f"seed {p['seed']}: full {fmt(p['full']['valid'])}, Farzi {fmt(p['farzi']['valid'])}"
                for p in result["pairs"]
            )
            + ".",
            "",
            "Thesis Table 4.7 reports about 20x less training time on Netflix; ML-100k is a much smaller dataset, so "
            "the full data's epochs are short here too.",
        ]
    )
