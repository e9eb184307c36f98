"""Inner-loop cost vs T per meta-gradient strategy (paper Figure 5; issue: memory-flat reverse mode).

Each (strategy, T) runs in its own process so that the RSS high-water mark
belongs to that configuration alone. ``unroll`` is skipped where its memory,
extrapolated linearly from the smaller T, would exceed the budget.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import torch

from bench.common import python, run_json
from bench.report import fmt, md_table
from farzi.plots import line_panels

STRATEGIES = ("reverse", "checkpointed", "unroll", "paper")


def run(
    protocol: str, work: Path, seeds: int, smoke: bool = False, experiment: str = "", memory_budget_mib: float = 14_000
) -> dict[str, Any]:
    if smoke:
        steps = [2, 4]
        shape = ["--vocab", "50", "--xi", "8", "--mu", "8", "--syn-batch", "4", "--d-model", "8", "--real-batch", "4"]
    else:
        steps = [25, 50, 100, 200, 400]
        shape = ["--vocab", "2000", "--xi", "50", "--mu", "400", "--syn-batch", "32", "--d-model", "16"]
    threads = torch.get_num_threads()  # as set by `python -m bench run --threads N`
    rows: list[dict[str, Any]] = []
    for strategy in STRATEGIES:
        seen: list[dict[str, Any]] = []
        for T in steps:
            if strategy == "unroll" and len(seen) >= 2:
                a, b = seen[-2], seen[-1]
                slope = (b["peak_rss_mib"] - a["peak_rss_mib"]) / max(b["steps"] - a["steps"], 1)
                projected = b["peak_rss_mib"] + slope * (T - b["steps"])
                if projected > memory_budget_mib:
                    rows.append(
                        {
                            "strategy": strategy,
                            "steps": T,
                            "skipped": True,
                            "projected_peak_rss_mib": round(projected, 1),
                        }
                    )
                    continue
            cmd = [python(), "-m", "bench.metagrad_worker", "--strategy", strategy, "--steps", str(T), *shape]
            cmd += ["--threads", str(threads)]
            try:
                row = run_json(cmd, timeout=3600)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                row = {"strategy": strategy, "steps": T, "failed": str(exc)[-500:]}
            rows.append(row)
            if "peak_rss_mib" in row:
                seen.append(row)
    return {
        "protocol": protocol,
        "settings": {
            "shape": shape,
            "steps": steps,
            "inner_optimizer": "adam lr 0.01",
            "model": "1-layer Transformer LM",
            "threads": threads,
        },
        "rows": rows,
    }


DEFAULT = "reverse"  # farzi.distill.engine.DistillConfig.meta_grad


def _row(rows: list[dict[str, Any]], strategy: str, steps: int) -> dict[str, Any] | None:
    return next((r for r in rows if r["strategy"] == strategy and r["steps"] == steps and "seconds" in r), None)


def goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's three goals for the default strategy, from the measured rows."""
    rows, steps = result["rows"], result["settings"]["steps"]
    lo, hi = _row(rows, DEFAULT, steps[0]), _row(rows, DEFAULT, steps[-1])
    mid = 200 if 200 in steps else steps[len(steps) // 2]
    out = []
    if lo and hi:
        growth = hi["peak_rss_mib"] / lo["peak_rss_mib"] - 1
        out.append(
            {
                "goal": f"{DEFAULT}: peak RSS grows < 10 % from T={steps[0]} to T={steps[-1]}",
                "measured": f"{growth * 100:+.1f} % ({lo['peak_rss_mib']:.0f} -> {hi['peak_rss_mib']:.0f} MiB)",
                "holds": growth < 0.10,
            }
        )
    d, u = _row(rows, DEFAULT, mid), _row(rows, "unroll", mid)
    if d and u:
        ratio = u["peak_rss_mib"] / d["peak_rss_mib"]
        out.append(
            {
                "goal": f"{DEFAULT}: peak RSS < 1/20 of unroll's at T={mid}",
                "measured": f"unroll / {DEFAULT} = {ratio:.1f}x "
                f"({u['peak_rss_mib']:.0f} vs {d['peak_rss_mib']:.0f} MiB)",
                "holds": ratio > 20,
            }
        )
    elif d:
        skipped = next((r for r in rows if r["strategy"] == "unroll" and r["steps"] == mid and r.get("skipped")), None)
        if skipped:
            ratio = skipped["projected_peak_rss_mib"] / d["peak_rss_mib"]
            out.append(
                {
                    "goal": f"{DEFAULT}: peak RSS < 1/20 of unroll's at T={mid}",
                    "measured": f"unroll not run (projected {skipped['projected_peak_rss_mib']:.0f} MiB, "
                    f"{ratio:.1f}x {DEFAULT}'s)",
                    "holds": ratio > 20,
                }
            )
    pairs = [(T, _row(rows, DEFAULT, T), _row(rows, "unroll", T)) for T in steps]
    ratios = [(T, d["seconds"] / u["seconds"]) for T, d, u in pairs if d and u]
    if ratios:
        worst = max(r for _, r in ratios)
        out.append(
            {
                "goal": f"{DEFAULT}: time per outer step <= 2.5x unroll's",
                "measured": ", ".join(f"T={T}: {r:.2f}x" for T, r in ratios),
                "holds": worst <= 2.5,
            }
        )
    return out


def render(name: str, result: dict[str, Any], plots: Path) -> str:
    rows, steps = result["rows"], result["settings"]["steps"]
    table = []
    for strategy in STRATEGIES:
        for T in steps:
            r = next((r for r in rows if r["strategy"] == strategy and r["steps"] == T), None)
            if r is None:
                continue
            if "seconds" in r:
                table.append(
                    [
                        strategy,
                        T,
                        fmt(r["seconds"], 2),
                        fmt(r["peak_rss_mib"], 0),
                        fmt(r["peak_rss_mib"] - r["rss_before_mib"], 0),
                    ]
                )
            elif r.get("skipped"):
                projected = f"not run (projected {r['projected_peak_rss_mib']:.0f})"
                table.append([strategy, T, "—", projected, "—"])
            else:
                table.append([strategy, T, "failed", "—", "—"])
    panels = []
    for key, label in (("seconds", "seconds per meta-gradient"), ("peak_rss_mib", "peak RSS (MiB)")):
        series = {}
        for strategy in STRATEGIES:
            pts = [(T, r[key]) for T in steps if (r := _row(rows, strategy, T))]
            if pts:
                series[strategy] = ([p[0] for p in pts], [p[1] for p in pts])
        panels.append({"title": label + " vs T", "series": series, "xlabel": "inner steps T", "ylabel": label})
    png = plots / f"{name}.png"
    line_panels(png, panels, "Meta-gradient cost vs inner steps")
    shape = " ".join(result["settings"]["shape"])
    lines = [
        f"One outer step's meta-gradient, each (strategy, T) in its own process ({shape}; "
        f"{result['settings']['model']}, inner {result['settings']['inner_optimizer']}). Peak RSS is the process's "
        "high-water mark, including the Python/torch baseline; 'growth' subtracts the RSS before the meta-gradient.",
        "",
        md_table(["strategy", "T", "seconds", "peak RSS MiB", "growth MiB"], table),
        "",
    ]
    g = goals(result)
    if g:
        lines += [
            md_table(
                ["goal", "measured", "holds"],
                [[x["goal"], x["measured"], "yes" if x["holds"] else "**no**"] for x in g],
            ),
            "",
        ]
    lines += [
        "Paper (Figure 5): reverse-mode memory is flat in T while unrolled autograd grows linearly; time grows "
        "linearly for both.",
        "",
        f"![{name}](plots/{png.name})",
    ]
    return "\n".join(lines)
