"""Sample efficiency: Farzi Data vs random:N vs head:N vs the full data (paper Table 6, Figures 3-4).

ML-100k (SASRec) and the offline PTB protocol (Transformer LM). Per dataset:
train Omega, distill one bundle per budget (seed 0), then train students on
every kind of data with several seeds and evaluate them on the test split.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import SHARED
from bench.report import fmt, md_table, mean_std
from farzi.compare import aggregate, student_run
from farzi.data.prepare import PrepareOptions, prepare
from farzi.distill.engine import DistillConfig, distill
from farzi.plots import line_panels
from farzi.train import TrainConfig
from farzi.trajectories import train_trajectories

# The paper's figures quoted beside ours (only those the paper states plainly).
PAPER = {
    "sample-efficiency-ml100k": {
        "full": {"hr@10": 18.2, "hr@100": 60.6},
        "farzi 50x150": {"hr@10": 19.61, "hr@100": 61.50},
    },
    "sample-efficiency-ptb": {
        "note": "paper PTB (full 42k-sentence training split): Transformer PPL 72.1 on full data, "
        "91.9 on Farzi Data of 1 % (the paper's sentence-mean perplexity)"
    },
}

# toy size for the smoke tests: synthetic data, seconds per experiment
_SMOKE: dict[str, Any] = {
    "prepare": {"synthetic_vocab": 30, "synthetic_sequences": 60},
    "trajectories": {"runs": 1, "every": 3, "train": {"lr": 2e-3, "batch_size": 16, "max_steps": 6}},
    "budgets": [4],
    "xi": 8,
    "claim_budget": 4,
    "distill": {
        "latent_dim": 4,
        "inner_steps": 2,
        "outer_steps": 2,
        "syn_batch": 0,
        "real_batch": 8,
        "init": "teacher",
    },
    "student": {"lr": 2e-3, "batch_size": 16, "max_steps": 6, "patience": 0, "eval_every": 3},
}

SETTINGS: dict[str, dict[str, Any]] = {
    "ml100k-cpu": {
        "source": "ml-100k",
        "source_dir": "ml-100k",
        "model": "sasrec",
        "model_overrides": {"max_len": 50, "d_model": 64, "n_layers": 2, "dropout": 0.2},
        "trajectories": {"runs": 3, "every": 20, "train": {"lr": 2e-3, "batch_size": 128, "max_steps": 240}},
        "budgets": [10, 25, 50],
        "xi": 50,
        "claim_budget": 50,
        "distill": {
            "latent_dim": 8,
            "tau": 1.0,
            "inner_steps": 10,
            "inner_lr": 0.01,
            "outer_steps": 100,
            "outer_lr": 0.003,
            "syn_batch": 16,
            "real_batch": 128,
            "init": "teacher",
            "init_mix": 0.2,
        },
        "student": {"lr": 2e-3, "batch_size": 128, "max_steps": 600, "patience": 15, "eval_every": 10},
        "metrics": ["hr@10", "hr@100", "ndcg@10", "ndcg@100", "auc"],
    },
    "ptb-cpu": {
        "source": "ptb-offline",
        "source_dir": "ptb",
        "model": "transformer",
        "model_overrides": {"max_len": 64, "d_model": 64, "n_layers": 2, "n_heads": 2, "d_ff": 256, "dropout": 0.2},
        "trajectories": {"runs": 3, "every": 40, "train": {"lr": 2e-3, "batch_size": 64, "max_steps": 480}},
        "budgets": [40],
        "xi": 50,
        "claim_budget": 40,
        "distill": {
            "latent_dim": 8,
            "tau": 1.0,
            "inner_steps": 10,
            "inner_lr": 0.01,
            "outer_steps": 150,
            "outer_lr": 0.01,
            "syn_batch": 16,
            "real_batch": 128,
            "init": "teacher",
        },
        "student": {"lr": 2e-3, "batch_size": 64, "max_steps": 1000, "patience": 10, "eval_every": 40},
        "metrics": ["ppl_corpus", "ppl_sentence", "accuracy"],
    },
    # the paper's ML-100k setting (its Table 4 as summarized in ../shared/DESIGN.md): a GPU run
    "ml100k-paper": {
        "source": "ml-100k",
        "source_dir": "ml-100k",
        "model": "sasrec",
        "device": "cuda",
        "model_overrides": {"max_len": 150, "d_model": 64, "n_layers": 2, "dropout": 0.2},
        "trajectories": {"runs": 5, "every": 50, "train": {"lr": 1e-3, "batch_size": 128, "max_steps": 1000}},
        "budgets": [50],
        "xi": 150,
        "claim_budget": 50,
        "distill": {
            "latent_dim": 8,
            "tau": 1.0,
            "inner_steps": 100,
            "inner_lr": 0.01,
            "outer_steps": 4000,
            "outer_lr": 0.01,
            "syn_batch": 0,
            "real_batch": 256,
            "init": "teacher",
        },
        "student": {"lr": 1e-3, "batch_size": 128, "max_steps": 3000, "patience": 20, "eval_every": 20},
        "metrics": ["hr@10", "hr@100", "ndcg@10", "ndcg@100", "auc"],
    },
    "smoke-rec": {
        **_SMOKE,
        "source": "synthetic-rec",
        "model": "sasrec",
        "model_overrides": {"max_len": 16, "d_model": 8, "n_layers": 1, "dropout": 0.1},
        "metrics": ["hr@10", "hr@100", "ndcg@10", "ndcg@100", "auc"],
    },
    "smoke-lm": {
        **_SMOKE,
        "source": "synthetic-lm",
        "model": "transformer",
        "model_overrides": {"max_len": 32, "d_model": 8, "n_layers": 1, "n_heads": 2, "d_ff": 16, "dropout": 0.1},
        "metrics": ["ppl_corpus", "ppl_sentence", "accuracy"],
    },
}


def settings_for(experiment: str, protocol: str, smoke: bool) -> dict[str, Any]:
    lm = experiment.endswith("ptb")
    if smoke:
        return SETTINGS["smoke-lm" if lm else "smoke-rec"]
    if protocol == "paper":
        if lm:
            raise ValueError("the paper protocol is defined for ML-100k only (the full PTB is not available offline)")
        return SETTINGS["ml100k-paper"]
    return SETTINGS["ptb-cpu" if lm else "ml100k-cpu"]


def prepare_dataset(s: dict[str, Any], work: Path):
    if "source_dir" in s:
        src = SHARED / s["source_dir"]
        if not src.is_dir():
            return None
        return prepare(s["source"], PrepareOptions(source=src), home=work)
    return prepare(s["source"], PrepareOptions(**s.get("prepare", {})), home=work)


def pipeline(s: dict[str, Any], work: Path, seeds: int, extra_specs: bool = True) -> dict[str, Any]:
    """Omega, one bundle per budget, students over seeds; returns rows and stage timings."""
    timings: dict[str, float] = {}
    device = s.get("device", "cpu")
    t0 = time.perf_counter()
    ds = prepare_dataset(s, work)
    if ds is None:
        return {"skipped": f"dataset {s['source']} not found under {SHARED}"}
    timings["prepare"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    traj = work / "trajectories"
    tr = s["trajectories"]
    train_trajectories(
        ds,
        s["model"],
        tr["runs"],
        tr["every"],
        TrainConfig(patience=0, seed=100, **tr["train"]),
        traj,
        s["model_overrides"],
    )
    timings["trajectories"] = time.perf_counter() - t0
    bundles: dict[int, dict[str, Any]] = {}
    t0 = time.perf_counter()
    for mu in s["budgets"]:
        steps = s.get("outer_steps_by_budget", {}).get(str(mu), s["distill"]["outer_steps"])
        params = {**s["distill"], "outer_steps": steps}
        cfg = DistillConfig(mu=mu, xi=s["xi"], model=s["model"], seed=0, device=device, **params)
        out = work / "bundles" / f"farzi-{mu}x{s['xi']}.safetensors"
        res = distill(ds, cfg, out, trajectories=traj)
        bundles[mu] = {"path": str(out), "summary": res.summary}
    timings["distill"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows = []
    for seed in range(seeds):
        specs = [("full", "full")]
        for mu in s["budgets"]:
            specs.append((bundles[mu]["path"], f"farzi {mu}x{s['xi']}"))
            if extra_specs:
                specs += [(f"random:{mu}", f"random:{mu}"), (f"head:{mu}", f"head:{mu}")]
        for spec, label in specs:
            out = work / "students" / f"{label.replace(' ', '-').replace(':', '-')}-s{seed}"
            rows.append(
                student_run(
                    ds, s["model"], spec, TrainConfig(seed=seed, **s["student"]), out, s["model_overrides"], label=label
                )
            )
    timings["students"] = time.perf_counter() - t0
    return {
        "dataset": ds.name,
        "train_sequences": len(ds.train),
        "train_tokens": int(ds.train.num_tokens),
        "bundles": bundles,
        "runs": rows,
        "table": aggregate(rows, s["metrics"]),
        "timings": {k: round(v, 1) for k, v in timings.items()},
        "extra": ds.extra,
    }


def claims(experiment: str, s: dict[str, Any], table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by = {r["data"]: r for r in table}
    mu, xi = s["claim_budget"], s["xi"]
    farzi, full = by.get(f"farzi {mu}x{xi}"), by.get("full")
    rnd, head = by.get(f"random:{mu}"), by.get(f"head:{mu}")
    if not (farzi and full and rnd):
        return []
    if s["metrics"][0] == "hr@10":
        out = [
            {
                "claim": f"Farzi {mu}x{xi} HR@10 >= 95 % of full data",
                "value": farzi["hr@10"] / full["hr@10"],
                "target": 0.95,
                "holds": farzi["hr@10"] >= 0.95 * full["hr@10"],
            },
            {
                "claim": f"Farzi {mu}x{xi} HR@10 >= 1.3x random:{mu}",
                "value": farzi["hr@10"] / rnd["hr@10"] if rnd["hr@10"] else math.inf,
                "target": 1.3,
                "holds": farzi["hr@10"] >= 1.3 * rnd["hr@10"],
            },
        ]
    else:
        out = [
            {
                "claim": f"Farzi {mu}x{xi} corpus perplexity <= 1.3x full data",
                "value": farzi["ppl_corpus"] / full["ppl_corpus"],
                "target": 1.3,
                "holds": farzi["ppl_corpus"] <= 1.3 * full["ppl_corpus"],
            },
            {
                "claim": f"Farzi {mu}x{xi} corpus perplexity < random:{mu}",
                "value": farzi["ppl_corpus"],
                "target": rnd["ppl_corpus"],
                "holds": farzi["ppl_corpus"] < rnd["ppl_corpus"],
            },
        ]
        if head:
            out.append(
                {
                    "claim": f"Farzi {mu}x{xi} corpus perplexity < head:{mu}",
                    "value": farzi["ppl_corpus"],
                    "target": head["ppl_corpus"],
                    "holds": farzi["ppl_corpus"] < head["ppl_corpus"],
                }
            )
    return out


def run(protocol: str, work: Path, seeds: int, smoke: bool = False, experiment: str = "") -> dict[str, Any]:
    name = experiment or "sample-efficiency-ml100k"
    s = settings_for(name, protocol, smoke)
    if s.get("device", "cpu").startswith("cuda") and not torch.cuda.is_available():
        return {"skipped": "not run (no GPU)", "settings": s}
    out = pipeline(s, work, seeds)
    out["settings"] = s
    if "table" in out:
        out["claims"] = claims(name, s, out["table"])
    return out


def render_paper(name: str, result: dict[str, Any] | None) -> str:
    """The paper-protocol row, beside the paper's figure."""
    if not name.endswith("ml100k"):
        return ""
    head = "### Paper protocol (GPU): ML-100k, Farzi Data [50x150]\n\n"
    paper = PAPER[name]["farzi 50x150"]
    if result is None or "skipped" in result:
        why = (result or {}).get("skipped", "not run (no GPU)")
        ours = [why, why]
    else:
        row = next((r for r in result["table"] if r["data"].startswith("farzi")), None)
        ours = (
            [mean_std(row["hr@10"], row["hr@10_std"]), mean_std(row["hr@100"], row["hr@100_std"])]
            if row
            else ["—", "—"]
        )
    return head + md_table(
        ["", "HR@10", "HR@100"],
        [["paper", fmt(paper["hr@10"]), fmt(paper["hr@100"])], ["ours (`--protocol paper`)", *ours]],
    )


def render(name: str, result: dict[str, Any], plots: Path) -> str:
    if "skipped" in result:
        return f"Not run: {result['skipped']}."
    s = result["settings"]
    metrics = s["metrics"]
    lines = []
    if name.endswith("ptb"):
        lines.append(
            "Offline PTB protocol (`../shared/datasets/README.md`): trained on `ptb.valid.txt`, validated on "
            "the first half of `ptb.test.txt`, tested on the second half. **It is smaller than the paper's "
            "PTB and its numbers are not the paper's.**"
        )
        lines.append("")
    cols = ["data", "sequences", "tokens", *metrics, "train s"]
    rows = [
        [
            r["data"],
            r["sequences"],
            r["tokens"],
            *[mean_std(r[m], r[f"{m}_std"]) for m in metrics],
            fmt(r["train_seconds"], 1),
        ]
        for r in result["table"]
    ]
    lines.append(
        f"Test split, mean ± std over {result['seeds']} student seeds (one distillation per budget, "
        f"seed 0); {result['train_sequences']} training sequences."
    )
    lines.append("")
    lines.append(md_table(cols, rows))
    lines.append("")
    paper = PAPER.get(name, {})
    if "note" in paper:
        lines.append(f"Paper, for scale: {paper['note']}.")
    elif paper:
        lines.append(
            "Paper (ML-100k, SASRec): "
            + "; ".join(f"{k}: " + ", ".join(f"{m.upper()} {v}" for m, v in vals.items()) for k, vals in paper.items())
            + "."
        )
    lines.append("")
    t = result["timings"]
    lines.append(
        "Stage wall times: "
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in t.items())
        + f"; total {sum(t.values()) / 60:.1f} min."
    )
    lines.append("")
    if result.get("claims"):
        lines.append(
            md_table(
                ["claim", "measured", "target", "holds"],
                [
                    [c["claim"], fmt(c["value"], 3), fmt(c["target"], 3), "yes" if c["holds"] else "**no**"]
                    for c in result["claims"]
                ],
            )
        )
    # plot: metric vs budget for farzi / random / head, full as a line
    key = metrics[0]
    series: dict[str, tuple[list[float], list[float]]] = {}
    for kind in ("farzi", "random", "head"):
        xs, ys = [], []
        for mu in s["budgets"]:
            label = f"farzi {mu}x{s['xi']}" if kind == "farzi" else f"{kind}:{mu}"
            row = next((r for r in result["table"] if r["data"] == label), None)
            if row:
                xs.append(mu)
                ys.append(row[key])
        if xs:
            series[kind] = (xs, ys)
    full = next((r for r in result["table"] if r["data"] == "full"), None)
    if full and series:
        budgets = s["budgets"]
        series["full data"] = ([min(budgets), max(budgets)], [full[key], full[key]])
        png = plots / f"{name}.png"
        line_panels(
            png,
            [
                {
                    "title": f"{result['dataset']}: test {key} vs budget",
                    "series": series,
                    "xlabel": "synthetic / sampled sequences",
                    "ylabel": key,
                }
            ],
            name,
        )
        lines.append("")
        lines.append(f"![{name}](plots/{png.name})")
    return "\n".join(lines)
