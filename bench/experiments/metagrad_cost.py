"""Inner-loop cost vs T per meta-gradient strategy (paper Figure 5; issue: memory-flat reverse mode).

Each (strategy, T) runs in its own process so that the RSS high-water mark
belongs to that configuration alone. ``unroll`` is skipped where its memory,
extrapolated linearly from the smaller T, would exceed the budget.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from bench.common import python, run_json

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
            "threads": 2,
        },
        "rows": rows,
    }
