"""The variant-table runner: every comparison in bench is a table of variants, each a set of settings (a distillation's
changes, the students' changes, or a kind of data), run over student seeds and paired with the table's reference
variants. Each variant is one job kept under ``WORK/jobs/`` (its bundles and its students over every seed): processes on
one ``--work`` split them, a rerun measures only what is missing, and ``--carry`` takes over an earlier result's rows.
Pairs are by student seed (and distillation seed where both sides have one); their interval is a bootstrap over seeds
and test units (:func:`farzi.compare.paired_difference`) where the runs keep per-unit figures, else a Student t interval
over the per-seed differences (:func:`t_interval`).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bench import common
from farzi.compare import metric_interval, paired_difference
from farzi.distill.bundle import read_bundle_meta
from farzi.evaluate import evaluate
from farzi.student import train_student
from farzi.train import TrainConfig


@dataclass(frozen=True)
class Variant:
    """One row. ``distill``: changes to the table's distillation (None: no bundle; the students train on
    ``data``: full, head:N, random:N); ``student``: changes to the students' TrainConfig (under "model",
    to their model's settings); ``omega``: changes to the trajectories (:func:`bench.common.trajectories`;
    None: distill from none); ``model``: the students' model; ``mu``: the budget, where not the table's."""

    what: str = ""
    distill: dict[str, Any] | None = field(default_factory=dict)
    student: dict[str, Any] = field(default_factory=dict)
    data: str = "full"
    omega: dict[str, Any] | None = field(default_factory=dict)
    model: str | None = None
    mu: int | None = None
    distill_seeds: int = 1


@dataclass(frozen=True)
class Table:
    """Variants by name; the references every row is paired with; the metrics (the first decides; per
    unit, on ``split``); ``base``: the distillation settings every variant's changes apply to; the budget
    (smoke, full); the variants a smoke run measures (default all); ``keep_units``: the result keeps every
    student run as measured (else only the rows: intervals and paired differences, computed when run)."""

    variants: dict[str, Variant]
    references: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    split: str = "test"
    base: dict[str, Any] = field(default_factory=dict)
    mu: tuple[int, int] = (4, 50)
    smoke: tuple[str, ...] = ()
    keep_units: bool = True
    recipe_fills: tuple[str, ...] = ()
    stratify: str | None = None
    student: Callable[..., dict[str, Any]] | None = None  # (table, ds, s, variant, spec, seed, out) -> run


def student(t: Table, ds, s: dict[str, Any], v: Variant, spec: str, seed: int, out: Path) -> dict[str, Any]:
    """One student on ``spec`` with the settings' recipe and the variant's changes, evaluated per unit."""
    changes = dict(v.student)
    overrides = {**s["model_overrides"], **changes.pop("model", {})}
    cfg, device = TrainConfig(seed=seed, **{**s["student"], **changes}), s.get("device", "cpu")
    start = time.perf_counter()
    model, fills = v.model or s["model"], t.recipe_fills
    res, info = train_student(ds, model, spec, cfg, out, overrides, device=device, recipe_fills=fills)
    seconds = time.perf_counter() - start
    ev = evaluate(res.model, ds, t.split, stratify=t.stratify, device=device, per_unit=True)
    data, train = info["data"], info["train"]
    run = dict(sequences=data.get("n", data.get("mu")), tokens=data.get("tokens"), train_seconds=round(seconds, 2))
    run |= dict(best_step=res.best_step, steps=res.steps, sequences_seen=res.sequences_seen, valid=res.best_metric)
    run |= dict(selection_metric=res.metric, curve=res.curve, lr=train["lr"], from_recipe=train["from_recipe"])
    return run | {"units": ev.pop("per_unit")} | ({"test": ev} if t.split == "test" else {})


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in ".-" else "-" for c in name)


def _measure(t: Table, ds, s: dict[str, Any], work: Path, mu: int, seeds: int, timings: dict, name: str) -> dict:
    v, bundles = t.variants[name], []
    specs: list[tuple[str, int | None]] = [(v.data, None)]
    if v.distill is not None:
        start = time.perf_counter()
        traj = None if v.omega is None else common.trajectories(ds, s, work, v.omega)
        timings["trajectories"] += time.perf_counter() - start
        specs = []
        for d in range(v.distill_seeds):
            start = time.perf_counter()
            changes = {**t.base, **v.distill}
            if traj is None:  # no trajectories: the settings' model, untrained, is the teacher
                changes.setdefault("model_overrides", s["model_overrides"])
            path, summary = common.bundle(ds, s, work, traj, common.distill_config(s, v.mu or mu, d, **changes))
            seconds = time.perf_counter() - start
            timings["distill"] += seconds
            selection = read_bundle_meta(path)[0].get("history", {}).get("selection") or {}
            kept = {"seconds_per_step": summary.get("seconds_per_step"), "kept_step": selection.get("selected_step")}
            bundles.append({"distill_seed": d, "path": str(path), "seconds": round(seconds, 1), **kept})
            specs.append((str(path), d))
    start, runs = time.perf_counter(), []
    for seed in range(seeds):
        for spec, d in specs:
            out = work / "students" / f"{_slug(name)}-d{d}-s{seed}"
            run = (t.student or student)(t, ds, s, v, spec, seed, out)
            runs.append({"data": name, "seed": seed, "distill_seed": d, **run})
    timings["students"] += time.perf_counter() - start
    return {"variant": name, "bundles": bundles, "runs": runs}


def run_table(
    t: Table, s: dict[str, Any], work: Path, seeds: int, smoke: bool = False, earlier: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Measure every variant of ``t`` with the settings ``s`` over ``seeds`` student seeds; the result.

    ``earlier`` (``--carry``): a previous result of the table, whose rows are taken over for the variants this work
    directory has not measured (paired with that run's references, as they were), if it ran the same settings and seeds;
    the references are measured again, and the result says whether they reproduce it."""
    timings = dict.fromkeys(("prepare", "trajectories", "distill", "students"), 0.0)
    start = time.perf_counter()
    with common.exclusive(work / ".data.lock"):
        ds = common.prepare_dataset(s, work)
    if ds is None:
        return {"skipped": f"{s['source']} not found under {common.SHARED}", "settings": s}
    timings["prepare"] = time.perf_counter() - start
    mu, n_boot = (t.mu[0] if smoke else t.mu[1]), s.get("n_boot", 2000)
    names = list(t.smoke if smoke and t.smoke else t.variants)
    mine: list[str] = []

    def key(n: str) -> str:
        v = {k: x for k, x in dataclasses.asdict(t.variants[n]).items() if k != "what"}
        return f"{_slug(n)}-{seeds}-{common._key(mu, v)[:6]}"

    def done_here(_key: str, result: dict[str, Any]) -> None:
        mine.append(result["variant"])

    store = work / "jobs"
    carry = {n: r for n, r in carried(t, earlier, s, seeds).items() if not (store / f"{key(n)}.json").is_file()}
    todo = [n for n in names if n not in carry]
    jobs = {n: (key(n), partial(_measure, t, ds, s, work, mu, seeds, timings, n)) for n in todo}
    # what the kept jobs depend on beyond their keys, defaults included (a changed default is other settings)
    kept = {"settings": s, "table": common.as_json([t.base, t.split, t.recipe_fills, t.stratify])}
    kept |= {"distill": common.distill_config(s, mu, **t.base).to_dict()}
    kept["student"] = TrainConfig(**s["student"]).to_dict()
    if common.held_elsewhere(work / ".setup.lock"):  # another process trains Omega: first the students that need none
        common.shared_jobs(store, [jobs[n] for n in todo if t.variants[n].distill is None], done_here, settings=kept)
    results = common.shared_jobs(store, list(jobs.values()), done_here, settings=kept)
    done = {r["variant"]: r for r in results.values()}
    runs = [x for n in names if n in done for x in done[n]["runs"]]
    out = dict(settings=s, mu=mu, seeds=seeds, dataset=ds.name, train_sequences=len(ds.train), measured_here=mine)
    out |= dict(train_tokens=int(ds.train.num_tokens), timings={k: round(x, 1) for k, x in timings.items()})
    out |= dict(reused=list(common.REUSED), bundles={n: done[n]["bundles"] for n in done if done[n]["bundles"]})
    if t.keep_units:
        return {**out, "runs": runs}
    by = rows(runs, list(done), t.references, t.metrics, n_boot)
    for n, row in by.items():
        b, v = done[n]["bundles"], t.variants[n]
        row |= {"what": v.what, "distill": v.distill, "student": v.student, "omega": v.omega}
        row |= {"distill_seconds": sum(x["seconds"] for x in b), "kept_step": b[0]["kept_step"] if b else None}
        row["best_steps"] = [x["best_step"] for x in runs if x["data"] == n]
    then = {name_of(r): r for r in (earlier or {}).get("rows", []) if name_of(r) in t.references} if carry else {}
    moved = reproduced(t, earlier or {}, by) if carry else []
    by |= {n: {**r, "carried_from": r.get("carried_from", earlier.get("finished"))} for n, r in carry.items()}
    first = runs[0]["units"] if runs else {}
    out |= dict(rows=[by[n] for n in names if n in by], units=len(first.get("rank", first.get("tokens", []))))
    out |= dict(carried=sorted(carry), references_then={n: {m: then[n][m] for m in t.metrics} for n in then})
    machine = ((earlier or {}).get("machine") or {}).get("cpu") if carry else None
    return out | dict(references_moved=moved, carried_machine=machine, metric=t.metrics[0])


def name_of(row: dict[str, Any]) -> str:
    """A row's variant (results before the shared runner call it lever or recipe)."""
    return row.get("variant") or row.get("lever") or row["recipe"]


def carried(t: Table, earlier: dict[str, Any] | None, s: dict[str, Any], seeds: int) -> dict[str, dict]:
    """The rows of an earlier result that a run may take over unmeasured, by variant: only from a full
    (not smoke) run with the same settings and seeds, and never a reference (those are measured again)."""
    same = earlier and not earlier.get("smoke") and earlier.get("seeds") == seeds
    if not same or common.as_json(earlier.get("settings")) != common.as_json(s):
        return {}
    rows = {name_of(r): r for r in earlier.get("rows", [])}
    return {n: r for n, r in rows.items() if n in t.variants and n not in t.references}


def reproduced(t: Table, earlier: dict[str, Any], rows: dict[str, dict]) -> list[str]:
    """The references whose re-measured figures (every metric's mean and interval) differ from the
    earlier result's, or that it lacks (empty: all agree)."""
    before = {name_of(r): r for r in earlier.get("rows", [])}

    def figures(row: dict[str, Any]) -> list[float]:
        return [round(float(row[m][k]), 9) for m in t.metrics for k in ("mean", "low", "high")]

    return [n for n in t.references if n in rows and (n not in before or figures(before[n]) != figures(rows[n]))]


# ------------------------------------------------------------------------------------ statistics

_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281)


def t_interval(xs: list[float]) -> tuple[float, float | None, float | None]:
    """Mean of ``xs`` and its 95 % Student t interval (None, None from fewer than 2 values)."""
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return mean, None, None
    df, z = len(xs) - 1, 1.959964  # past 10 degrees of freedom: the quantile's expansion (Abramowitz-Stegun 26.7.5)
    q = _T975[df - 1] if df <= 10 else z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
    q += 0 if df <= 10 else (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    half = q * statistics.stdev(xs) / math.sqrt(len(xs))
    return mean, mean - half, mean + half


def t_diff(xs: list[float]) -> dict[str, Any]:
    """:func:`t_interval` as a difference, ``{diff, lo, hi}`` (what :func:`bench.report.ci` prints)."""
    return dict(zip(("diff", "lo", "hi"), t_interval(xs), strict=True))


def pairs(runs: list[dict[str, Any]], a: str, b: str) -> tuple[list[dict], list[dict]]:
    """The runs of ``a`` and ``b`` paired by student seed (and by distillation seed where both have one)."""
    out_a, out_b = [], []
    for ra in (r for r in runs if r["data"] == a):
        for rb in (r for r in runs if r["data"] == b):
            free = ra.get("distill_seed") is None or rb.get("distill_seed") is None
            if ra["seed"] == rb["seed"] and (free or ra["distill_seed"] == rb["distill_seed"]):
                out_a.append(ra)
                out_b.append(rb)
    return out_a, out_b


def value(run: dict[str, Any], metric: str) -> float:
    return float(run["test"][metric])


def interval(runs: list[dict[str, Any]], metric: str, n_boot: int = 2000) -> dict[str, Any]:
    """Mean of ``metric`` over ``runs`` and its 95 % interval: bootstrap over runs and units where the
    runs keep per-unit figures, else a t interval over the runs."""
    if all("units" in r for r in runs):
        mean, lo, hi = metric_interval([r["units"] for r in runs], metric, n_boot=n_boot)
        return {"mean": mean, "low": lo, "high": hi, "method": "bootstrap"}
    mean, lo, hi = t_interval([value(r, metric) for r in runs])
    return {"mean": mean, "low": lo, "high": hi, "method": "t"}


def compare(
    runs: list[dict[str, Any]], a: str, b: str, metric: str, n_boot: int = 2000, resample_runs: bool = True
) -> dict[str, Any] | None:
    """``a`` - ``b`` on ``metric``, paired (:func:`pairs`), with its 95 % interval (None: no pairs)."""
    ra, rb = pairs(runs, a, b)
    if not ra:
        return None
    if all("units" in r for r in ra + rb):
        units = ([r["units"] for r in ra], [r["units"] for r in rb])
        return {**paired_difference(*units, metric, n_boot=n_boot, resample_runs=resample_runs), "method": "bootstrap"}
    va, vb = [value(r, metric) for r in ra], [value(r, metric) for r in rb]
    diff, lo, hi = t_interval([x - y for x, y in zip(va, vb, strict=True)])
    out = {"metric": metric, "a": statistics.fmean(va), "b": statistics.fmean(vb), "diff": diff, "lo": lo, "hi": hi}
    return out | {"pairs": len(va), "method": "t"}


def rows(
    runs: list[dict[str, Any]], names: list[str], references: tuple[str, ...], metrics: tuple[str, ...], n_boot: int
) -> dict[str, dict[str, Any]]:
    """Per variant: every metric's interval, and its paired difference with every reference."""
    out = {}
    for n in names:
        mine = [r for r in runs if r["data"] == n]
        if mine:
            out[n] = {"variant": n}
            for m in metrics:
                out[n][m] = interval(mine, m, n_boot)
                for ref in references:
                    if ref != n and (c := compare(runs, n, ref, m, n_boot)):
                        out[n][f"{m} - {ref}"] = c
    return out
