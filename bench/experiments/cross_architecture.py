"""Cross-architecture generalization: teachers SASRec and GRU4Rec, students SASRec, GRU4Rec, FMLP-Rec (Table 1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.experiments import _ml
from bench.report import md_table, mean_std
from farzi.compare import aggregate, student_run
from farzi.train import TrainConfig

TEACHERS = ("sasrec", "gru4rec")
STUDENTS = ("sasrec", "gru4rec", "fmlp")


def _overrides(s: dict[str, Any], model: str) -> dict[str, Any]:
    base = dict(s["model_overrides"])
    if model == "gru4rec":
        base.pop("n_layers", None)
        base["n_layers"] = 1
    return base


def run(protocol: str, work: Path, seeds: int, smoke: bool = False, experiment: str = "") -> dict[str, Any]:
    s = _ml.base_settings(smoke)
    ds = _ml.dataset(s, work)
    if ds is None:
        return {"skipped": "ML-100k not found under ../shared/datasets"}
    mu = 4 if smoke else 50
    bundles = {}
    for teacher in TEACHERS:
        traj = _ml.omega(ds, s, work, teacher, _overrides(s, teacher))
        bundles[teacher], _ = _ml.bundle(ds, s, work, traj, mu, f"farzi-{teacher}", model=teacher)
    rows = []
    n_seeds = min(seeds, 2)
    for student in STUDENTS:
        data = [("full", "full")] + [(str(bundles[t]), f"farzi (teacher {t})") for t in TEACHERS]
        for spec, label in data:
            for seed in range(n_seeds):
                row = student_run(
                    ds,
                    student,
                    spec,
                    TrainConfig(seed=seed, **s["student"]),
                    work / "students" / f"{student}-{label.split()[0]}-{label[-7:].strip(')')}-s{seed}",
                    _overrides(s, student),
                    label=f"{student} | {label}",
                )
                rows.append(row)
    return {
        "budget": f"{mu}x{s['xi']}",
        "runs": rows,
        "table": aggregate(rows, ["hr@10", "hr@100"]),
        "settings": s,
        "reused": list(_ml.REUSED),
    }


def render(name: str, result: dict[str, Any], plots: Path) -> str:
    if "skipped" in result:
        return f"Not run: {result['skipped']}."
    by = {r["data"]: r for r in result["table"]}
    rows = []
    for student in STUDENTS:
        row = [student]
        for label in ["full", *[f"farzi (teacher {t})" for t in TEACHERS]]:
            r = by.get(f"{student} | {label}")
            row.append(mean_std(r["hr@10"], r["hr@10_std"]) if r else "—")
        rows.append(row)
    seeds = result["table"][0]["seeds"] if result["table"] else 0
    return "\n".join(
        [
            f"ML-100k, Farzi Data {result['budget']}; HR@10 on the test split, mean ± std over {seeds} student seeds. "
            "Rows: the student trained; columns: its training data.",
            "",
            md_table(["student", "full data", *[f"Farzi, teacher {t}" for t in TEACHERS]], rows),
            "",
            "FMLP-Rec here uses a causal filter (the original's circular FFT filter leaks future items in "
            "next-item training); see farzi/models/fmlp.py.",
        ]
    )
