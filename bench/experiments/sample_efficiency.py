"""Sample efficiency: Farzi Data vs random:N vs head:N vs the full data (paper Table 6, Figures 3-4).

ML-100k (SASRec) and the offline PTB protocol (Transformer LM). Per dataset:
train Omega, distill a bundle and its "init only" twin per budget and
distillation seed, then train students on every kind of data with several seeds
and evaluate them on the test split.

Every bundle and student is a job kept under ``WORK/jobs/``: two processes
started with the same ``--work`` (``--threads 1`` each) share them, and a rerun
after a kill redoes only the jobs that had not finished.
"""

from __future__ import annotations

import copy
import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.common import SHARED, exclusive, held_elsewhere, keyed_config, shared_jobs
from bench.report import fmt, md_table, mean_std
from farzi.compare import aggregate, metric_interval, paired_difference, student_run, units_to_resolve
from farzi.data.prepare import PrepareOptions, prepare
from farzi.distill.engine import DistillConfig, distill
from farzi.errors import ConfigError
from farzi.plots import line_panels
from farzi.presets import PROTOCOLS, RECIPE_OVER_PRESET
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
    "distill_seeds": 2,
    "n_boot": 100,
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
    # the protocols live in farzi.presets (one source for the bench and farzictl --preset)
    **{name: copy.deepcopy(PROTOCOLS[name]) for name in ("ml100k-cpu", "ptb-cpu", "ml100k-paper")},
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
            raise ConfigError(
                "the paper protocol is defined for ML-100k only (the full PTB is not available offline)",
                "run it with --protocol cpu",
            )
        return SETTINGS["ml100k-paper"]
    return SETTINGS["ptb-cpu" if lm else "ml100k-cpu"]


def prepare_dataset(s: dict[str, Any], work: Path):
    if "source_dir" in s:
        src = SHARED / s["source_dir"]
        if not src.is_dir():
            return None
        return prepare(s["source"], PrepareOptions(source=src), home=work)
    return prepare(s["source"], PrepareOptions(**s.get("prepare", {})), home=work)


def _bundle_job(ds, cfg: DistillConfig, out: Path, traj: Path, meta: dict[str, Any]) -> dict[str, Any]:
    return {**meta, "summary": distill(ds, cfg, out, trajectories=traj).summary}


def _student_job(ds, s: dict[str, Any], spec: str, label: str, dseed: int | None, seed: int, out: Path) -> dict:
    cfg = TrainConfig(seed=seed, **s["student"])
    # on a bundle the learning rate comes from its recipe, as under `farzictl train-student --preset`
    row = student_run(ds, s["model"], spec, cfg, out, s["model_overrides"], label, recipe_fills=RECIPE_OVER_PRESET)
    return {**row, "distill_seed": dseed}


def _student_jobs(ds, s: dict[str, Any], work: Path, seeds: int, specs: list[tuple[str, str, int | None]]):
    """One job per (spec, student seed): ``specs`` are (data spec, label, distillation seed or None)."""
    jobs = []
    for seed in range(seeds):
        for spec, label, dseed in specs:
            name = label.replace(" ", "-").replace(":", "-") + ("" if dseed is None else f"-d{dseed}") + f"-s{seed}"
            job = functools.partial(_student_job, ds, s, spec, label, dseed, seed, work / "students" / name)
            jobs.append((f"student-{name}", job))
    return jobs


def pipeline(s: dict[str, Any], work: Path, seeds: int, extra_specs: bool = True) -> dict[str, Any]:
    """Omega; per budget and distillation seed a Farzi bundle and its 'init only' twin (the same
    initialization after 0 outer steps); students on every kind of data over the same student seeds.
    Returns the runs (with per-test-unit figures for paired comparisons) and the stage timings.

    A process that finds another one training Omega trains the students that do not need it (full,
    random, head) meanwhile, so two processes on one ``work`` keep both cores busy."""
    timings: dict[str, float] = {"students": 0.0}
    device = s.get("device", "cpu")
    t0 = time.perf_counter()
    ds = prepare_dataset(s, work)
    if ds is None:
        return {"skipped": f"dataset {s['source']} not found under {SHARED}"}
    timings["prepare"] = time.perf_counter() - t0
    distill_seeds = s.get("distill_seeds", 1)
    bundle_jobs = []
    configs: list[DistillConfig] = []
    traj = work / "trajectories"
    for mu in s["budgets"]:
        for dseed in range(distill_seeds):
            for kind, changes in (("farzi", {}), ("init only", {"outer_steps": 0})):
                cfg = DistillConfig(
                    mu=mu, xi=s["xi"], model=s["model"], seed=dseed, device=device, **{**s["distill"], **changes}
                )
                tag = "farzi" if kind == "farzi" else "init"
                out = work / "bundles" / f"{tag}-{mu}x{s['xi']}-d{dseed}.safetensors"
                meta = {"label": f"{kind} {mu}x{s['xi']}", "mu": mu, "distill_seed": dseed, "path": str(out)}
                configs.append(cfg)
                bundle_jobs.append((out.stem, functools.partial(_bundle_job, ds, cfg, out, traj, meta)))
    kept_for = {  # what the jobs' results depend on, defaults included (a changed default is other settings)
        "settings": {k: s.get(k) for k in ("source", "model", "model_overrides", "trajectories", "xi")},
        "distill": [keyed_config(cfg) for cfg in configs],
        "student": TrainConfig(**s["student"]).to_dict(),
        "bundle students take from the recipe": list(RECIPE_OVER_PRESET),
    }
    sampled: dict[int, list[tuple[str, str, int | None]]] = {  # per budget, the data that needs no Omega
        mu: [(f"{kind}:{mu}", f"{kind}:{mu}", None) for kind in ("random", "head")] if extra_specs else []
        for mu in s["budgets"]
    }
    lock = work / ".setup.lock"
    if not (traj / "manifest.json").is_file() and held_elsewhere(lock):
        t0 = time.perf_counter()
        early = _student_jobs(ds, s, work, seeds, [("full", "full", None), *(x for v in sampled.values() for x in v)])
        shared_jobs(work / "jobs", early, settings=kept_for)
        timings["students"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    tr = s["trajectories"]
    with exclusive(lock):  # Omega is shared: one process trains it, others wait (or train students first)
        if not (traj / "manifest.json").is_file():
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
    t0 = time.perf_counter()
    bundles = list(shared_jobs(work / "jobs", bundle_jobs, settings=kept_for).values())
    timings["distill"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    specs: list[tuple[str, str, int | None]] = [("full", "full", None)]
    for mu in s["budgets"]:
        specs += [(b["path"], b["label"], b["distill_seed"]) for b in bundles if b["mu"] == mu]
        specs += sampled[mu]
    rows = list(shared_jobs(work / "jobs", _student_jobs(ds, s, work, seeds, specs), settings=kept_for).values())
    timings["students"] += time.perf_counter() - t0
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


def pairs(runs: list[dict[str, Any]], a: str, b: str) -> tuple[list[dict], list[dict]]:
    """Per-unit test figures of runs ``a`` and ``b`` paired by student seed (and by distillation seed
    when both sides have one: a Farzi bundle and its own initialization)."""
    side_a = [r for r in runs if r["data"] == a]
    side_b = [r for r in runs if r["data"] == b]
    out_a, out_b = [], []
    for ra in side_a:
        for rb in side_b:
            same_d = ra.get("distill_seed") is None or rb.get("distill_seed") is None
            if ra["seed"] == rb["seed"] and (same_d or ra["distill_seed"] == rb["distill_seed"]):
                out_a.append(ra["units"])
                out_b.append(rb["units"])
    return out_a, out_b


def pair_results(
    a: dict[str, Any], b: dict[str, Any], label: str, metrics: list[str], n_boot: int = 2000
) -> list[dict[str, Any]]:
    """The ``label`` runs of two results of one experiment (run with different settings) paired by
    student and distillation seed: per metric, a - b with its 95 % bootstrap interval."""
    runs = [{**r, "data": side} for side, res in (("a", a), ("b", b)) for r in res["runs"] if r["data"] == label]
    side_a, side_b = pairs(runs, "a", "b")
    if not side_a:
        raise ValueError(f"no {label!r} runs with the same seeds in both results; name a label both have")
    return [paired_difference(side_a, side_b, m, n_boot=n_boot) for m in metrics]


def has_position_metrics(runs: list[dict[str, Any]]) -> bool:
    """Whether the runs carry the every-position figures (recommendation since they were added)."""
    return bool(runs) and all(m in runs[0].get("test", {}) for m in POSITION_METRICS)


# recommendation: figures over every position of the test users' most recent items (farzi.evaluate)
POSITION_METRICS = ("xent", "hr_all@10")


def comparisons(s: dict[str, Any], runs: list[dict[str, Any]], metric: str | None = None) -> list[dict[str, Any]]:
    """Every paired comparison the report shows, with its bootstrap 95 % interval (on ``metric``,
    default the protocol's first)."""
    mu, xi = s["claim_budget"], s["xi"]
    metric = metric or s["metrics"][0]
    farzi, init = f"farzi {mu}x{xi}", f"init only {mu}x{xi}"
    wanted = [(farzi, "full"), (farzi, init), (farzi, f"head:{mu}"), (farzi, f"random:{mu}"), (init, f"head:{mu}")]
    out = []
    for a, b in wanted:
        ua, ub = pairs(runs, a, b)
        if ua:
            diff = paired_difference(ua, ub, metric, n_boot=s.get("n_boot", 2000))
            out.append({**diff, "a": a, "b": b, "mean_a": diff["a"], "mean_b": diff["b"]})  # labels win
    return out


@dataclass(frozen=True)
class Claim:
    """One of the issue's claims: a comparison of ``a`` with ``b`` on the protocol's first metric, read
    as their ratio or difference (``flip``: printed as b - a, where lower is better), that holds when
    its 95 % interval lies above ``bar`` (below it when not ``above``); a ratio may touch its bar."""

    text: str
    a: str
    b: str
    statistic: str  # "ratio" or "diff"
    bar: float
    above: bool = True
    flip: bool = False

    def read(self, c: dict[str, Any]) -> tuple[float, float, float]:
        """(value, low, high) of this claim in a paired comparison (:func:`paired_difference`)."""
        if self.statistic == "ratio":
            return c["ratio"], c["ratio_lo"], c["ratio_hi"]
        return (-c["diff"], -c["hi"], -c["lo"]) if self.flip else (c["diff"], c["lo"], c["hi"])

    def holds(self, lo: float, hi: float) -> bool:
        near = lo if self.above else hi
        beyond = near > self.bar if self.above else near < self.bar
        return beyond or (self.statistic == "ratio" and near == self.bar)


def claim_specs(s: dict[str, Any]) -> list[Claim]:
    """The issue's claims for a protocol: Farzi Data against the full data, head:N and its own init."""
    mu, xi = s["claim_budget"], s["xi"]
    farzi, init, head = f"farzi {mu}x{xi}", f"init only {mu}x{xi}", f"head:{mu}"
    if s["metrics"][0] == "hr@10":
        return [
            Claim(f"Farzi {mu}x{xi} HR@10 >= 95 % of full data (ratio)", farzi, "full", "ratio", 0.95),
            *(Claim(f"HR@10: Farzi {mu}x{xi} - {other} > 0", farzi, other, "diff", 0.0) for other in (head, init)),
        ]
    return [
        Claim(f"Farzi {mu}x{xi} corpus perplexity <= 1.4x full data (ratio)", farzi, "full", "ratio", 1.4, False),
        *(
            Claim(f"corpus perplexity: {other} - Farzi {mu}x{xi} > 0", farzi, other, "diff", 0.0, flip=True)
            for other in (head, init)
        ),
    ]


def claims(experiment: str, s: dict[str, Any], comps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's claims, each decided by its paired 95 % interval (a claim holds only when it says so)."""
    by = {(c["a"], c["b"]): c for c in comps}
    out = []
    for claim in claim_specs(s):
        c = by.get((claim.a, claim.b))
        if c is not None:
            value, lo, hi = claim.read(c)
            out.append({"claim": claim.text, "value": value, "lo": lo, "hi": hi, "holds": claim.holds(lo, hi)})
    return out


def resolution(s: dict[str, Any], runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the test split itself can resolve of each claim: its interval with the student runs held
    as they are and only the test units resampled (the part of the spread no number of seeds takes
    away), and how many test units the claim would need at its measured value (None: none would do)."""
    out = []
    for claim in claim_specs(s):
        ua, ub = pairs(runs, claim.a, claim.b)
        if not ua:
            continue
        c = paired_difference(ua, ub, s["metrics"][0], n_boot=s.get("n_boot", 2000), resample_runs=False)
        value, lo, hi = claim.read(c)
        needed = units_to_resolve(value, lo if claim.above else hi, claim.bar, c["units"], claim.above)
        row = {"claim": claim.text, "value": value, "lo": lo, "hi": hi, "above": claim.above, "units": c["units"]}
        out.append({**row, "needed": needed})
    return out


def run(protocol: str, work: Path, seeds: int, smoke: bool = False, experiment: str = "") -> dict[str, Any]:
    name = experiment or "sample-efficiency-ml100k"
    s = settings_for(name, protocol, smoke)
    if s.get("device", "cpu").startswith("cuda") and not torch.cuda.is_available():
        return {"skipped": "not run (no GPU)", "settings": s}
    out = pipeline(s, work, seeds)
    out["settings"] = s
    if "table" in out:
        out["comparisons"] = comparisons(s, out["runs"])
        out["intervals"] = intervals(s, out["runs"])
        out["claims"] = claims(name, s, out["comparisons"])
    return out


def render_resolution(rows: list[dict[str, Any]], metric: str) -> list[str]:
    """The lines saying what the test split alone can resolve of each claim (:func:`resolution`)."""
    if not rows:
        return []
    unit = "users" if metric.startswith("hr") else "sentences"
    n = rows[0]["units"]

    def needed(r: dict[str, Any]) -> str:
        if r["needed"] is None:
            return "none: the measured value is not past the bar"
        return f"about {r['needed']:,.0f}" + (" (this split has enough)" if r["needed"] <= n else "")

    return [
        "",
        f"What the test split alone resolves: each claim's interval with the student runs held as they are "
        f"and only the {n} test {unit} resampled. No number of student or distillation seeds narrows an interval "
        f"below this one, only more test {unit} do (its width shrinks about as one over their square root). "
        f"'Smallest margin' is that interval's half-width on the bar's side: the distance from the bar a measured "
        f"value needs before these {n} test {unit} can show it; the last column is how many test {unit} the claim "
        "would need to hold if its measured value stayed as it is.",
        "",
        md_table(
            ["claim", "measured", f"interval, test {unit} alone", "smallest margin", f"test {unit} needed"],
            [
                [
                    r["claim"],
                    fmt(r["value"], 3),
                    f"[{r['lo']:.3f}, {r['hi']:.3f}]",
                    fmt(r["value"] - r["lo"] if r["above"] else r["hi"] - r["value"], 3),
                    needed(r),
                ]
                for r in rows
            ],
        ),
    ]


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


def ci(mean: float, lo: float, hi: float, digits: int = 2) -> str:
    return f"{fmt(mean, digits)} [{fmt(lo, digits)}, {fmt(hi, digits)}]"


def intervals(s: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """Per kind of data and metric: mean over runs and its 95 % bootstrap interval."""
    out: dict[str, dict[str, list[float]]] = {}
    for label in dict.fromkeys(r["data"] for r in runs):
        units = [r["units"] for r in runs if r["data"] == label]
        out[label] = {m: list(metric_interval(units, m, n_boot=s.get("n_boot", 2000))) for m in s["metrics"]}
    return out


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
    iv = result.get("intervals", {})
    runs_of = {r["data"]: r["seeds"] for r in result["table"]}
    cols = ["data", "runs", "sequences", "tokens", *metrics, "train s"]
    rows = [
        [
            r["data"],
            runs_of[r["data"]],
            r["sequences"],
            r["tokens"],
            *[ci(*iv[r["data"]][m]) if r["data"] in iv else mean_std(r[m], r[f"{m}_std"]) for m in metrics],
            fmt(r["train_seconds"], 1),
        ]
        for r in result["table"]
    ]
    dseeds = s.get("distill_seeds", 1)
    sel = sorted({r.get("selection_metric", "?") for r in result["runs"]})
    lrs = {r["data"]: r["lr"] for r in result["runs"] if "lr" in r}
    recipe = [r["data"] for r in result["runs"] if r.get("from_recipe")]
    lr_note = (
        " Learning rate: "
        + ", ".join(f"{d} {lrs[d]:g}" for d in dict.fromkeys(lrs))
        + (f" ({', '.join(dict.fromkeys(recipe))} from the recipe their bundles record)." if recipe else ".")
        if len(set(lrs.values())) > 1
        else ""
    )
    if "intervals" not in result:  # a result from before the paired intervals and the init-only rows
        lines.append(
            f"Test split, mean ± std over {result['seeds']} student seeds (one distillation, seed 0; students "
            f"kept their best validation state by the default metric then); {result['train_sequences']} training "
            "sequences."
        )
    else:
        lines.append(
            f"Test split; mean and 95 % bootstrap interval (student runs and test "
            f"{'users' if metrics[0].startswith('hr') else 'sentences'} resampled) over {result['seeds']} student "
            f"seeds, and for Farzi Data and its 'init only' twin (the same initialization, 0 outer steps) over "
            f"{dseeds} distillation seeds each; students keep their best validation state by {', '.join(sel)}; "
            f"{result['train_sequences']} training sequences.{lr_note}"
        )
    lines.append("")
    lines.append(md_table(cols, rows))
    lines.append("")
    comps = result.get("comparisons", [])
    if comps:
        key = metrics[0]
        lines.append(
            f"Paired comparisons ({key}): the same test units and student seeds on both sides (and the same "
            "distillation seed for Farzi vs its initialization); difference and ratio with 95 % bootstrap intervals."
        )
        lines.append("")
        lines.append(
            md_table(
                ["a", "b", "a - b", "a / b", "pairs"],
                [
                    [
                        c["a"],
                        c["b"],
                        ci(c["diff"], c["lo"], c["hi"]),
                        ci(c["ratio"], c["ratio_lo"], c["ratio_hi"], 3),
                        c["pairs"],
                    ]
                    for c in comps
                ],
            )
        )
        lines.append("")
    runs = result.get("runs", [])
    if comps and has_position_metrics(runs):
        by_metric = {m: comparisons(result["settings"], runs, m) for m in POSITION_METRICS}
        lines.append(
            "The same pairs over every position of the test users' most recent items (cross-entropy, lower is "
            "better, and hit rate at 10), from the stored per-user figures:"
        )
        lines.append("")
        lines.append(
            md_table(
                ["a", "b", *(f"{m}: a - b" for m in POSITION_METRICS)],
                [
                    [c["a"], c["b"], *(ci(d["diff"], d["lo"], d["hi"], 3) for d in row)]
                    for c, *row in zip(comps, *by_metric.values(), strict=True)
                ],
            )
        )
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
    if result.get("claims") and "lo" not in result["claims"][0]:  # a result from before the paired intervals
        lines.append(
            "These figures come from a run before claims were decided by paired intervals (one distillation "
            "seed, no init-only row); re-run the experiment for intervals."
        )
        lines.append("")
        lines.append(
            md_table(
                ["claim", "measured", "target", "holds"],
                [
                    [c["claim"], fmt(c["value"], 3), fmt(c["target"], 3), "yes" if c["holds"] else "**no**"]
                    for c in result["claims"]
                ],
            )
        )
    elif result.get("claims"):
        lines.append(
            md_table(
                ["claim", "measured [95 % interval]", "holds"],
                [
                    [c["claim"], ci(c["value"], c["lo"], c["hi"], 3), "yes" if c["holds"] else "**no**"]
                    for c in result["claims"]
                ],
            )
        )
        lines += render_resolution(resolution(s, result.get("runs", [])), metrics[0])
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
