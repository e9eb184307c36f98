"""Number of pretrained trajectories |Omega| (paper Figure 6b: 0, 1, 5, 20; the cpu protocol: 0, 1, 2, 5).

|Omega| = 0 means no trained model at all: random inner initializations (the mm
objective) and a summary initialized from real sequences with untrained
embeddings. With |Omega| >= 1 the summary starts from the teacher initialization
of the most trained checkpoint among those runs, and every outer step starts
its inner loop at a checkpoint of those runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.experiments import _ml
from bench.report import md_table, mean_std
from farzi.compare import aggregate, student_run
from farzi.plots import line_panels
from farzi.train import TrainConfig

SIZES = (0, 1, 5, 20)  # paper Figure 6b
CPU_SIZES = (0, 1, 2, 5)


def run(protocol: str, work: Path, seeds: int, smoke: bool = False, experiment: str = "") -> dict[str, Any]:
    s = _ml.base_settings(smoke)
    if not smoke:  # 20 training runs on 2 cores: short runs of a narrower model
        s = {
            **s,
            "model_overrides": {**s["model_overrides"], "d_model": 32, "n_layers": 1},
            "trajectories": {
                "runs": max(CPU_SIZES),
                "every": 30,
                "train": {"lr": 3e-3, "batch_size": 128, "max_steps": 120},
            },
        }
    # the paper's sizes need 20 training runs; the cpu protocol stops at 5 to fit its time budget
    sizes = (0, 1, 2) if smoke else CPU_SIZES
    ds = _ml.dataset(s, work)
    if ds is None:
        return {"skipped": "ML-100k not found under ../shared/datasets"}
    traj = _ml.omega(ds, s, work, s["model"], s["model_overrides"], runs=max(sizes))
    mu = 4 if smoke else 50
    outer = 2 if smoke else 60
    rows = []
    for n in sizes:
        if n == 0:
            path, _ = _ml.bundle(
                ds,
                s,
                work,
                None,
                mu,
                "omega-0",
                objective="mm",
                init="real",
                outer_steps=outer,
                model_overrides=s["model_overrides"],
            )
        else:
            path, _ = _ml.bundle(ds, s, work, traj, mu, f"omega-{n}", omega_runs=n, outer_steps=outer)
        for seed in range(min(seeds, 2)):
            rows.append(
                student_run(
                    ds,
                    s["model"],
                    str(path),
                    TrainConfig(seed=seed, **s["student"]),
                    work / "students" / f"omega{n}-s{seed}",
                    s["model_overrides"],
                    label=f"|Omega| = {n}",
                )
            )
    return {
        "budget": f"{mu}x{s['xi']}",
        "sizes": list(sizes),
        "runs": rows,
        "table": aggregate(rows, ["hr@10", "hr@100"]),
        "settings": s,
        "reused": list(_ml.REUSED),
    }


def render(name: str, result: dict[str, Any], plots: Path) -> str:
    if "skipped" in result:
        return f"Not run: {result['skipped']}."
    rows = [
        [r["data"], mean_std(r["hr@10"], r["hr@10_std"]), mean_std(r["hr@100"], r["hr@100_std"])]
        for r in result["table"]
    ]
    png = plots / f"{name}.png"
    line_panels(
        png,
        [
            {
                "title": "ML-100k: test HR@10 vs |Omega| (training runs)",
                "series": {
                    "HR@10": (result["sizes"], [r["hr@10"] for r in result["table"]]),
                    "HR@100": (result["sizes"], [r["hr@100"] for r in result["table"]]),
                },
                "xlabel": "|Omega| (trajectories)",
                "ylabel": "%",
            }
        ],
        name,
    )
    return "\n".join(
        [
            f"ML-100k, Farzi Data {result['budget']}, SASRec (narrow: 32 wide, 1 layer, so the runs fit on 2 cores; "
            "sizes 0, 1, 2, 5 instead of the paper's 0, 1, 5, 20); "
            f"test split, mean ± std over {result['table'][0]['seeds']} student seeds.",
            "",
            md_table(["trajectories", "HR@10", "HR@100"], rows),
            "",
            "Paper (Figure 6b): more trajectories help, with most of the gain from the first few.",
            "",
            f"![{name}](plots/{png.name})",
        ]
    )
