"""Inner-loop cost vs T per meta-gradient strategy (paper Figure 5), with TorchOpt and higher on the same problem in the
same run (issue 11.5).

Each (strategy, T) runs in its own process (bench/metagrad_worker.py), so that the RSS high-water mark is that
configuration's alone; unrolled runs are skipped where their memory, extrapolated linearly from the smaller T, would
pass the budget. Every meta-gradient is compared with a float64 reference at the same T (farzi's ``checkpointed`` in
float64; at the smallest T checked against plain float64 autograd). One process per cell: ``--seeds`` is not used, so
the timings carry no interval (memory and errors are deterministic).
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from bench.common import load_average, run_json
from bench.metagrad_worker import BETAS, EPS, EPS_ROOTS, LIBRARY, LR, PEERS, rel_error
from bench.report import fmt, md_table
from farzi.plots import line_panels

STRATEGIES = ("reverse", "checkpointed", "unroll", "paper", *PEERS)
UNROLLED = ("unroll", *PEERS)  # memory grows linearly in T: skipped past the budget
# float32 strategies that compute the exact meta-gradient of the same inner loop (paper drops a term;
# TorchOpt's eps_root 0 is NaN and 1e-16 changes the inner optimizer)
FLOAT32_SAME = ("reverse", "checkpointed", "unroll", "higher", "torchopt-eps-root-tiny")
CPU_STEPS = [25, 50, 100, 200]  # 400 went when the peers and the float64 reference joined (~25 min budget)
DEFAULT = "reverse"  # farzi.distill.config.DistillConfig.meta_grad


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def run(protocol: str, work: Path, seeds: int, smoke: bool = False, experiment: str = "", budget_mib=14_000) -> dict:
    steps = [2, 4] if smoke else CPU_STEPS
    shape = "--vocab 2000 --xi 50 --mu 400 --syn-batch 32 --d-model 16"
    shape = ("--vocab 50 --xi 8 --mu 8 --syn-batch 4 --d-model 8 --real-batch 4" if smoke else shape).split()
    threads, grads, load_start = torch.get_num_threads(), work / "grads", load_average()
    grads.mkdir(parents=True, exist_ok=True)

    def one(strategy: str, T: int) -> dict[str, Any]:
        out = grads / f"{strategy}-T{T}.safetensors"
        cmd = [sys.executable, "-m", "bench.metagrad_worker", "--strategy", strategy, "--steps", str(T), *shape]
        try:
            row = run_json([*cmd, "--threads", str(threads), "--save-grads", str(out)], timeout=3600)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            row = {"strategy": strategy, "steps": T, "failed": str(exc)[-500:]}
        return row | ({"grads_file": str(out)} if "seconds" in row else {})

    references = {T: one("reference", T) for T in steps}
    rows = [*references.values(), one("unroll-f64", steps[0])]  # the reference against plain float64 autograd
    for strategy in STRATEGIES:
        seen: list[dict[str, Any]] = []
        for T in steps:
            if strategy in UNROLLED and len(seen) >= 2:
                a, b = seen[-2], seen[-1]
                slope = (b["peak_rss_mib"] - a["peak_rss_mib"]) / max(b["steps"] - a["steps"], 1)
                if (projected := b["peak_rss_mib"] + slope * (T - b["steps"])) > budget_mib:
                    rows.append({"strategy": strategy, "steps": T, "skipped": True})
                    rows[-1]["projected_peak_rss_mib"] = projected
                    continue
            rows.append(one(strategy, T))
            seen += [rows[-1]] if "peak_rss_mib" in rows[-1] else []
    for row in rows:  # relative error of every meta-gradient against the float64 reference at the same T
        ref = references.get(row["steps"], {})
        if "grads_file" in row and "grads_file" in ref and row["strategy"] != "reference":
            g, r = load_file(row["grads_file"]), load_file(ref["grads_file"])
            err = rel_error([g["latent"], g["decoder"]], [r["latent"], r["decoder"]])
            row["rel_error"] = err if math.isfinite(err) else str(err)
            nonfinite = sum(int((~torch.isfinite(g[k])).sum()) for k in ("latent", "decoder"))
            row["nonfinite_fraction"] = nonfinite / (g["latent"].numel() + g["decoder"].numel())
    for row in rows:
        row.pop("grads_file", None)
    s = dict(shape=shape, steps=steps, inner_optimizer=f"adam lr {LR}, betas {BETAS}, eps {EPS}, weight decay 0")
    reference = "farzi checkpointed in float64 (model, summary and inner state)"
    s |= dict(model="1-layer Transformer LM", reference=reference)
    s |= dict(peers={"torchopt": _version("torchopt"), "higher": _version("higher")}, threads=threads)
    return {"settings": s | dict(load_average_start=load_start, cpu_count=os.cpu_count()), "rows": rows}


# ------------------------------------------------------------------------------------ report
def row(r: dict[str, Any], strategy: str, T: int) -> dict[str, Any] | None:
    return next((x for x in r["rows"] if x["strategy"] == strategy and x["steps"] == T and "seconds" in x), None)


def _first(r: dict[str, Any], strategy: str) -> list[dict[str, Any]]:
    """A strategy's measured rows of the first run (not the 'second run' rows)."""
    return [x for T in r["settings"]["steps"] if (x := row(r, strategy, T)) and not x.get("second_run")]


def _err(x: dict[str, Any]) -> str:
    e = x.get("rel_error")
    if isinstance(e, str):
        return f"{e} ({x.get('nonfinite_fraction', 0) * 100:.0f} % of entries not finite)"
    return "—" if e is None else f"{e:.1e}"


def label(r: dict[str, Any], strategy: str) -> str:
    """A peer's label with the version that ran: 'torchopt 0.7.3, eps_root 1e-16'."""
    if strategy not in PEERS:
        return strategy
    version = r["settings"].get("peers", {}).get(LIBRARY[strategy])
    root = EPS_ROOTS.get(strategy)
    return LIBRARY[strategy] + (f" {version}" if version else "") + (f", eps_root {root:g}" if root else "")


def cost_table(r: dict[str, Any]) -> str:
    """Every (strategy, T): seconds, peak RSS, its growth over the meta-gradient, the error vs float64."""
    table = []
    for strategy in (*STRATEGIES, "unroll-f64"):
        for T in r["settings"]["steps"]:
            if (x := next((x for x in r["rows"] if x["strategy"] == strategy and x["steps"] == T), None)) is None:
                continue
            cells = [label(r, strategy) + (" (second run)" if x.get("second_run") else ""), T]
            if "seconds" in x:
                growth = x["peak_rss_mib"] - x["rss_before_mib"]
                cells += [fmt(x["seconds"], 2), fmt(x["peak_rss_mib"], 0), fmt(growth, 0), _err(x)]
            elif x.get("skipped"):
                cells += ["—", f"not run (projected {x['projected_peak_rss_mib']:.0f})", "—", "—"]
            else:
                cells += ["not installed" if x.get("not_installed") else "failed", "—", "—", "—"]
            table.append(cells)
    return md_table(["strategy", "T", "seconds", "peak RSS MiB", "growth MiB", "rel. error vs float64"], table)


def ref_seconds(r: dict[str, Any]) -> str:
    return ", ".join(f"{x['seconds']:.0f}" for x in r["rows"] if x["strategy"] == "reference" and "seconds" in x)


def goals_table(r: dict[str, Any]) -> str:
    """The issue's three goals for the default strategy, from the measured rows."""
    steps, out = r["settings"]["steps"], []
    lo, hi, mid = row(r, DEFAULT, steps[0]), row(r, DEFAULT, steps[-1]), 200 if 200 in steps else steps[-1]
    if lo and hi:
        growth = hi["peak_rss_mib"] / lo["peak_rss_mib"] - 1
        measured = f"{growth * 100:+.1f} % ({lo['peak_rss_mib']:.0f} -> {hi['peak_rss_mib']:.0f} MiB)"
        out.append([f"{DEFAULT}: peak RSS grows < 10 % from T={steps[0]} to T={steps[-1]}", measured, growth < 0.10])
    if (d := row(r, DEFAULT, mid)) and (u := row(r, "unroll", mid)):
        ratio = u["peak_rss_mib"] / d["peak_rss_mib"]
        measured = f"unroll / {DEFAULT} = {ratio:.1f}x ({u['peak_rss_mib']:.0f} vs {d['peak_rss_mib']:.0f} MiB)"
        out.append([f"{DEFAULT}: peak RSS < 1/20 of unroll's at T={mid}", measured, ratio > 20])
    both = [(T, d, u) for T in steps if (d := row(r, DEFAULT, T)) and (u := row(r, "unroll", T))]
    ratios = [(T, d["seconds"] / u["seconds"]) for T, d, u in both]
    if ratios:
        measured = ", ".join(f"T={T}: {x:.2f}x" for T, x in ratios)
        out.append([f"{DEFAULT}: time per outer step <= 2.5x unroll's", measured, max(x for _, x in ratios) <= 2.5])
    return md_table(["goal", "measured", "holds"], [[g, m, "yes" if ok else "**no**"] for g, m, ok in out])


def peers_table(r: dict[str, Any]) -> str:
    """Each peer's time and peak RSS as ratios to farzi's reverse and unroll at the same T (same run)."""
    table = []
    for peer in PEERS:
        for T in r["settings"]["steps"]:
            if not (p := row(r, peer, T)):
                continue
            d, u, second = row(r, DEFAULT, T), row(r, "unroll", T), p.get("second_run")
            table.append(
                [label(r, peer) + (" (second run)" if second else ""), T]
                + [fmt(p["seconds"] / x["seconds"], 2) + "x" if x and not second else "—" for x in (d, u)]
                + [fmt(p["peak_rss_mib"] / d["peak_rss_mib"], 1) + "x" if d else "—"]
                + [fmt(p["peak_rss_mib"] / u["peak_rss_mib"], 2) + "x" if u else "—"]
            )
    cols = ["peer", "T", f"seconds / {DEFAULT}", "seconds / unroll", f"peak RSS / {DEFAULT}", "peak RSS / unroll"]
    return md_table(cols, table)


def floor_table(r: dict[str, Any]) -> str:
    """Per T, the spread of the relative errors of the float32 strategies that solve the same problem."""
    rows = []
    for T in r["settings"]["steps"]:
        errs = [x["rel_error"] for k in FLOAT32_SAME if (x := row(r, k, T)) and isinstance(x.get("rel_error"), float)]
        if len(errs) >= 2:
            rows.append([T, len(errs), f"{min(errs):.1e}", f"{max(errs):.1e}", f"{max(errs) / min(errs):.2f}x"])
    return md_table(["T", "strategies", "smallest rel. error", "largest", "largest / smallest"], rows)


def floor_spread(r: dict[str, Any]) -> str:
    """The largest ratio of the largest to the smallest error of :func:`floor_table` over T."""
    spread = []
    for T in r["settings"]["steps"]:
        errs = [x["rel_error"] for k in FLOAT32_SAME if (x := row(r, k, T)) and isinstance(x.get("rel_error"), float)]
        spread += [max(errs) / min(errs)] if len(errs) >= 2 else []
    return f"{max(spread):.2f}x"


def mib(r: dict[str, Any], strategy: str, T: int) -> str:
    return f"{row(r, strategy, T)['peak_rss_mib']:.0f}"


def time_range(r: dict[str, Any], peer: str) -> str:
    """The peer's seconds / farzi unroll's, smallest-largest over T (first run)."""
    x = [p["seconds"] / u["seconds"] for p in _first(r, peer) if (u := row(r, "unroll", p["steps"]))]
    return f"{min(x):.2f}-{max(x):.2f}x"


def worst(r: dict[str, Any], strategy: str) -> str:
    """The largest relative error of a strategy's rows (every run)."""
    return f"{max(x['rel_error'] for T in r['settings']['steps'] if (x := row(r, strategy, T))):.1e}"


def moved(r: dict[str, Any], strategy: str) -> str:
    x = [p["rel_error"] for p in _first(r, strategy)]
    return f"{min(x) * 100:.0f}-{max(x) * 100:.0f} %"


def plot(r: dict[str, Any], plots: Path) -> str:
    panels = []
    for key, name in (("seconds", "seconds per meta-gradient"), ("peak_rss_mib", "peak RSS (MiB)")):
        series = {}
        for strategy in STRATEGIES:
            if pts := [(T, x[key]) for T in r["settings"]["steps"] if (x := row(r, strategy, T))]:
                series[strategy] = ([p[0] for p in pts], [p[1] for p in pts])
        panels.append({"title": name + " vs T", "series": series, "xlabel": "inner steps T", "ylabel": name})
    line_panels(plots / "metagrad-cost.png", panels, "Meta-gradient cost vs inner steps")
    return "![metagrad-cost](plots/metagrad-cost.png)"
