"""Which levers make the outer loop earn its keep? (issue 9: every lever tried is a row, losers too)

Two variant tables (:mod:`bench.table`): ``fidelity-levers`` (ML-100k, SASRec, 50x50) and
``fidelity-levers-ptb`` (the offline PTB protocol, Transformer, 40x50), each with two trajectory runs. A
lever is one change to the distillation or to the students' recipe; its bundle (distillation seed 0)
trains students over the same seeds, and every figure is on the **validation** split (the test split is
left to sample-efficiency), paired by student seed and validation user / sentence with the references.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.common import settings
from bench.report import ci, fmt, md_table, verdict
from bench.table import Table, Variant, name_of, run_table

V = Variant
# "base" pins the defaults when the ML levers were measured; --inner-state omega and --start-weighting
# normalize (today's defaults, the "omega + normalize" lever) came from this table
DEFAULTS: dict[str, Any] = {"inner_state": "omega", "start_weighting": "normalize"}
ML = Table(
    {
        "init only": V("the initialization after 0 outer steps", {"outer_steps": 0}),
        "base": V("T 10, inner lr 0.01, outer lr 0.01, 100 outer steps, inner Adam fresh"),
        "outer lr 0.003": V("the earlier default outer learning rate", {"outer_lr": 0.003}),
        "meta-batch 4, 25 steps": V(
            "4 start points (checkpoint + real batch) averaged per outer step, at base's 100 inner loops",
            {"meta_batch": 4, "outer_steps": 25},
        ),
        "normalize starts": V("each start's meta-gradient scaled to unit norm", {"start_weighting": "normalize"}),
        "omega min step 40": V("start only from checkpoints trained >= 40 steps", {"omega_min_step": 40}),
        "inner state omega": V("the inner Adam continues the run's moments", {"inner_state": "omega"}),
        "learn inner lr": V("inner learning rate learned as an outer parameter", {"learn_inner_lr": True}),
        "learn tau": V("temperature learned as an outer parameter", {"learn_tau": True}),
        "T 20, 50 steps": V("more inner steps at the same wall time", {"inner_steps": 20, "outer_steps": 50}),
        "select every 25": V(
            "summary selection: best of the candidates at steps 25, 50, 75, 100", {"select_every": 25}
        ),
        "recipe lr 5e-4": V("base bundle, students at half the learning rate", {}, {"lr": 5e-4}),
        # the winner (now the default) with each of the next best
        "omega + min step 40": V(
            "inner state omega, and starts only from checkpoints trained >= 40 steps",
            {"inner_state": "omega", "omega_min_step": 40},
        ),
        "omega + normalize": V("inner state omega, and each start's meta-gradient scaled to unit norm", DEFAULTS),
        "omega + learn tau": V(
            "inner state omega, and the temperature learned", {"inner_state": "omega", "learn_tau": True}
        ),
        # today's defaults with one more change each
        "defaults + min step 40": V(
            "inner state omega, starts normalized, and only from checkpoints trained >= 40 steps",
            {**DEFAULTS, "omega_min_step": 40},
        ),
        "defaults, 300 steps": V(
            "inner state omega, starts normalized, 300 outer steps (3x)", {**DEFAULTS, "outer_steps": 300}
        ),
        "defaults + init mix 0": V(
            "inner state omega, starts normalized, teacher init with the teacher's prediction alone",
            {**DEFAULTS, "init_mix": 0.0},
        ),
        "defaults + init mix 0.5": V(
            "inner state omega, starts normalized, teacher init weighting real token and prediction equally",
            {**DEFAULTS, "init_mix": 0.5},
        ),
        # the students' recipe on today's defaults' bundle (on PTB, weight decay 1e-3 and dropout 0.35 helped)
        "defaults, students wd 1e-3": V(
            "today's defaults' bundle, students with Adam weight decay 1e-3", DEFAULTS, {"weight_decay": 1e-3}
        ),
        "defaults, students wd 1e-4": V(
            "today's defaults' bundle, students with Adam weight decay 1e-4", DEFAULTS, {"weight_decay": 1e-4}
        ),
        "defaults, students dropout 0.35": V(
            "today's defaults' bundle, students with dropout 0.35 (not 0.2)", DEFAULTS, {"model": {"dropout": 0.35}}
        ),
        # issue 29 (TD3's changes 1 and 3) on today's defaults, not yet run; 0.1: the hidden-state MSE is O(0.1-1)
        "decoder tied": V("decoder = the teacher's item embedding^T, then trained", {**DEFAULTS, "decoder": "tied"}),
        "decoder tied-frozen": V(
            "decoder = the teacher's item embedding^T, frozen", {**DEFAULTS, "decoder": "tied-frozen"}
        ),
        "feature align 0.1": V(
            "+ 0.1 x hidden-state MSE to the run's last checkpoint", {**DEFAULTS, "feature_align": 0.1}
        ),
    },
    references=("base", "init only", "omega + normalize"),
    metrics=("xent", "hr_all@10", "hr@10"),
    split="valid",
    base={"inner_state": "fresh", "start_weighting": "none"},
    mu=(4, 50),
    smoke=("init only", "base", "meta-batch 4, 25 steps", "recipe lr 5e-4"),
    keep_units=False,
)

LR3 = {"lr": 1e-3}
JOINED = {"init_windows": "joined"}
PTB = Table(
    {
        "init only": V("the initialization after 0 outer steps", {"outer_steps": 0}),
        "base": V("the defaults: latent dim 8, tau 1, inner Adam omega, starts normalized"),
        "latent 4": V("latent dimension 4", {"latent_dim": 4}),
        "latent 16": V("latent dimension 16", {"latent_dim": 16}),
        "latent 32": V("latent dimension 32", {"latent_dim": 32}),
        "tau 0.5": V("temperature 0.5 (sharper token distributions)", {"tau": 0.5}),
        "tau 2": V("temperature 2 (flatter token distributions)", {"tau": 2.0}),
        "learn tau": V("temperature learned as an outer parameter", {"learn_tau": True}),
        "450 steps": V("450 outer steps (3x)", {"outer_steps": 450}),
        "T 20, 75 steps": V("more inner steps at the same wall time", {"inner_steps": 20, "outer_steps": 75}),
        "student lr 1e-3": V("base bundle, students at half the learning rate", {}, LR3),
        "student lr 4e-3": V("base bundle, students at twice the learning rate", {}, {"lr": 4e-3}),
        "student lr 5e-4": V("base bundle, students at a quarter of the learning rate", {}, {"lr": 5e-4}),
        "init mix 0": V("teacher init: the teacher's prediction alone (no real token)", {"init_mix": 0.0}),
        "init mix 0.5": V("teacher init: real token and the teacher's prediction weighted equally", {"init_mix": 0.5}),
        "inner lr 3e-3": V("inner Adam at 3e-3 (nearer the trajectories' and students' 2e-3)", {"inner_lr": 3e-3}),
        "omega min step 120": V("start only from checkpoints trained >= 120 steps", {"omega_min_step": 120}),
        "omega max step 120": V("start only from checkpoints trained <= 120 steps", {"omega_max_step": 120}),
        "outer lr 0.03": V("outer Adam at 3x the learning rate", {"outer_lr": 0.03}),
        "inner lr 0.03": V("inner Adam at 3x the learning rate (3e-3 was worse)", {"inner_lr": 0.03}),
        "learn inner lr": V("inner learning rate learned as an outer parameter", {"learn_inner_lr": True}),
        "real batch 512": V("512 real sequences in the meta-objective (4x: a less noisy signal)", {"real_batch": 512}),
        "T 5, 300 steps": V(
            "fewer inner steps, more outer steps, at the same wall time", {"inner_steps": 5, "outer_steps": 300}
        ),
        "meta-batch 2": V(
            "2 start points (checkpoint + real batch) averaged per outer step (2x the time)", {"meta_batch": 2}
        ),
        "syn batch all": V("inner steps on all 40 sequences (students take all 40 per step)", {"syn_batch": 0}),
        "decoder tied": V("decoder = the teacher's token embedding^T, then trained (issue 29)", {"decoder": "tied"}),
        "decoder tied-frozen": V("decoder = the teacher's token embedding^T, frozen", {"decoder": "tied-frozen"}),
        "feature align 0.1": V("+ 0.1 x hidden-state MSE to the run's last checkpoint", {"feature_align": 0.1}),
        # a better teacher: Omega trained 2.5x longer (at 1000 steps full-data students were still improving)
        "omega 1200 steps": V(
            "trajectories of 1200 steps (not 480): a better teacher and later checkpoints",
            omega={"train": {"max_steps": 1200}},
        ),
        "omega 1200 steps, init only": V(
            "the 1200-step trajectories' initialization after 0 outer steps",
            {"outer_steps": 0},
            omega={"train": {"max_steps": 1200}},
        ),
        "inner wd 1e-3": V(
            "inner Adam with L2 weight decay 1e-3; students at lr 1e-3, weight decay 1e-3 (the protocol's recipe)",
            {"inner_weight_decay": 1e-3},
            {"lr": 1e-3, "weight_decay": 1e-3},
        ),
        "protocol": V(
            "the ptb-cpu distillation: teacher init from the prediction alone; students at lr 1e-3",
            {"init_mix": 0.0},
            LR3,
        ),
        # the students' recipe on the base bundle, from lr 1e-3 (the protocol's)
        "lr 1e-3 + wd 1e-3": V("students at lr 1e-3 with Adam weight decay 1e-3", {}, {**LR3, "weight_decay": 1e-3}),
        "lr 1e-3 + wd 1e-2": V("students at lr 1e-3 with Adam weight decay 1e-2", {}, {**LR3, "weight_decay": 1e-2}),
        "lr 1e-3 + dropout 0.35": V("students at lr 1e-3, dropout 0.35", {}, {**LR3, "model": {"dropout": 0.35}}),
        "lr 1e-3 + batch 16": V("students at lr 1e-3, 16 of the 40 sequences per step", {}, {**LR3, "batch_size": 16}),
        "lr 1e-3 + wd 1e-3 + dropout 0.35": V(
            "students at lr 1e-3, weight decay 1e-3, dropout 0.35",
            {},
            {**LR3, "weight_decay": 1e-3, "model": {"dropout": 0.35}},
        ),
        "lr 1e-3 + wd 1e-3 + batch 16": V(
            "students at lr 1e-3, weight decay 1e-3, batches of 16", {}, {**LR3, "weight_decay": 1e-3, "batch_size": 16}
        ),
        "lr 1e-3 + wd 1e-3 + dropout 0.35 + batch 16": V(
            "students at lr 1e-3, weight decay 1e-3, dropout 0.35, batches of 16",
            {},
            {**LR3, "weight_decay": 1e-3, "batch_size": 16, "model": {"dropout": 0.35}},
        ),
        # the teacher init's windows: every row above takes them within the 33 training sentences of 50+ tokens
        "joined windows, init only": V(
            "teacher init from random sentences joined end to end (not windows inside the 33 of 50+ tokens), "
            "after 0 outer steps",
            {**JOINED, "outer_steps": 0},
        ),
        "joined windows": V("teacher init from random sentences joined end to end, then base's outer loop", JOINED),
        "joined windows, 300 steps": V(
            "joined windows and 300 outer steps (2x base's)", {**JOINED, "outer_steps": 300}
        ),
        "joined windows, student lr 1e-3": V(
            "the joined-windows bundle, students at lr 1e-3 (against 'student lr 1e-3')", JOINED, LR3
        ),
        "protocol, joined windows": V(
            "the ptb-cpu distillation (init mix 0) from joined windows; students at lr 1e-3",
            {"init_mix": 0.0, **JOINED},
            LR3,
        ),
    },
    references=("base", "init only", "student lr 1e-3"),
    metrics=("ppl_corpus",),
    split="valid",
    base={"init_windows": "within"},  # what every row before 'joined windows' ran (the default was auto later)
    mu=(4, 40),
    smoke=("init only", "base", "latent 16"),
    keep_units=False,
)
CARRY = ("fidelity-levers", "fidelity-levers-ptb")  # `python -m bench run --carry` takes over their rows
SHORT = {"omega + normalize": "defaults", "student lr 1e-3": "lr 1e-3", "ppl_corpus": "ppl"}
LOWER_BETTER = ("xent", "ppl_corpus")


def ptb_settings(smoke: bool) -> dict[str, Any]:
    """The PTB cpu setting with 2 trajectory runs, and the recipe, init mix and student steps the levers were
    measured with (the protocol took lr 1e-3, weight decay 1e-3, mix 0 and 3000 steps from them later)."""
    s = settings("lm", smoke=smoke, runs=2)
    if not smoke:
        s["distill"]["recipe_lr"] = 2e-3
        del s["distill"]["recipe_weight_decay"], s["distill"]["init_mix"]
        s["student"]["max_steps"] = 1000
    return s


def table_for(experiment: str) -> tuple[Table, Any]:
    return (PTB, ptb_settings) if "ptb" in experiment else (ML, lambda smoke: settings("rec", smoke=smoke, runs=2))


def run(protocol: str, work: Path, seeds: int, smoke: bool = False, experiment: str = "", earlier=None) -> dict:
    t, s = table_for(experiment or "fidelity-levers")
    return run_table(t, s(smoke), work, seeds, smoke, earlier)


# ------------------------------------------------------------------------------------ report
def _rows(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name_of(x): x for x in r["rows"]}


def lever_table(r: dict[str, Any]) -> str:
    """Every lever: its validation figures, and its paired differences with the references."""
    t = table_for(r["experiment"])[0]
    m0, defaults, lower = t.metrics[0], t.references[2], t.metrics[0] in LOWER_BETTER
    here, kept = set(r.get("measured_here") or []), any(x.get("kept_step") is not None for x in r["rows"])
    head = ["lever", "what", *(f"valid {SHORT.get(m, m)} [95 % CI]" for m in t.metrics)]
    for ref in ("init only", "base", defaults):
        short = SHORT.get(ref, ref)
        head += [f"{SHORT.get(m0, m0)} - {short}"] + ([f"vs {short}"] if ref != "init only" else [])
    head += [f"{SHORT.get(m, m)} - {SHORT[defaults]}" for m in t.metrics[1:2]]
    head += (["kept step"] if kept else []) + ["distill min", "measured"]
    out = []
    for x in r["rows"]:
        n = name_of(x)
        line = [n, t.variants[n].what if n in t.variants else x["what"]]
        line += [ci(x[m], {"ppl_corpus": 1, "xent": 3}.get(m, 2)) for m in t.metrics]
        for ref in ("init only", "base", defaults):
            d = x.get(f"{m0} - {ref}")
            line += [ci(d, 3)] + ([verdict(d, lower)] if ref != "init only" else [])
        line += [ci(x.get(f"{m} - {defaults}"), 3) for m in t.metrics[1:2]]
        line += [str(x["kept_step"]) if x.get("kept_step") is not None else "—"] if kept else []
        line.append(fmt(x["distill_seconds"] / 60, 1) if x["distill_seconds"] >= 1 else "reused")
        line.append(x.get("carried_from") or ("this process" if n in here else "work dir"))
        out.append(line)
    return md_table(head, out)


def references_table(r: dict[str, Any]) -> str:
    """The references as an earlier run measured them (whose rows were carried over) and as this one did."""
    now, m, moved, refs = _rows(r), r["metric"], r["references_moved"], r["references_then"]
    rows = [[n, ci(then[m], 3), ci(now[n][m], 3), "no" if n in moved else "yes"] for n, then in refs.items()]
    return md_table(["reference", f"{SHORT.get(m, m)} then", f"{SHORT.get(m, m)} now", "reproduced"], rows)


def names(r: dict[str, Any], key: str, want: str, skip: tuple[str, ...] = (), prefix: str = "") -> str:
    """The levers (named ``prefix``...) whose ``key`` difference is ``want`` (better / worse / not resolved)."""
    lower, rows = key.split(" - ")[0] in LOWER_BETTER, [x for x in r["rows"] if name_of(x).startswith(prefix)]
    found = [name_of(x) for x in rows if verdict(x.get(key), lower) == want and name_of(x) not in skip]
    return "; ".join(found) or "none"


def diff(r: dict[str, Any], lever: str, key: str) -> str:
    """One lever's paired difference, with its verdict."""
    d = _rows(r)[lever].get(key)
    return f"{ci(d, 3)} ({verdict(d, key.split(' - ')[0] in LOWER_BETTER)})"


def gain(r: dict[str, Any], a: str, b: str) -> str:
    """Mean of lever ``a`` minus that of ``b`` (not paired: rows kept without their per-unit figures)."""
    by, m = _rows(r), r["metric"]
    return fmt(by[a][m]["mean"] - by[b][m]["mean"], 1)
