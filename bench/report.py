"""Render bench/REPORT.md (and its plots) from bench/results/*.json.

REPORT.md is its own template: its prose is written there, once, around generated parts. A section of it opens with
``<!--@ NAME -->`` (NAME an experiment; ``r`` is then bench/results/NAME.json); a generated part is
``<!--= EXPR -->...<!--/-->``, whose contents are replaced by the Python expression EXPR evaluated with ``r``, the
helpers below and the public names of the experiment's module: inline where the marker is inside a line, as a block
(blank lines around it) where it ends its line. Whatever a generated part held before is thrown away, so
``python -m bench report`` regenerates REPORT.md byte for byte from the results (tests/benchmarks checks it). Nothing in
a generated part is typed in by hand; the paper's figures, quoted in the prose, are.
"""

from __future__ import annotations

import importlib
import json
import math
import re
from pathlib import Path
from typing import Any

from bench.common import BENCH, RESULTS

# name -> (module in bench.experiments, title)
EXPERIMENTS: dict[str, tuple[str, str]] = {
    "sample-efficiency-ml100k": ("sample_efficiency", "Sample efficiency on ML-100k (paper Table 6, Figures 3-4)"),
    "sample-efficiency-ptb": ("sample_efficiency", "Sample efficiency on PTB, offline protocol (paper Table 6)"),
    "sample-efficiency-beauty": ("sample_efficiency", "Sample efficiency on Amazon Beauty (issue 29)"),
    "budget-curves-ml100k": ("budget_curves", "Budget curves on ML-100k (paper Figures 3-4)"),
    "budget-curves-ptb": ("budget_curves", "Budget curves on PTB, offline protocol (paper Figures 3-4)"),
    "budget-curves-beauty": ("budget_curves", "Budget curves on Amazon Beauty (paper Figures 3-4)"),
    "student-selection": ("student_selection", "Which validation signal students stop on (issue 9)"),
    "fidelity-levers": ("levers", "Levers of the outer loop, losers included (issue 9)"),
    "fidelity-levers-ptb": ("levers", "Levers for language modeling (issue 9)"),
    "baseline-recipe-ptb": ("ablations", "Is the PTB full-data baseline at its best recipe? (issue 9)"),
    "meta-objectives": ("ablations", "Meta-objectives and the inner optimizer (paper Table 2)"),
    "cross-architecture": ("ablations", "Cross-architecture generalization (paper Table 1)"),
    "omega-size": ("ablations", "Number of pretrained trajectories |Omega| (paper Figure 6b)"),
    "cold-start": ("ablations", "Popularity-stratified metrics, Farzi vs full (paper Figure 6a)"),
    "speedup": ("ablations", "Training speed-up on Farzi Data (thesis Table 4.7)"),
    "metagrad-cost": ("metagrad_cost", "Inner-loop cost vs T per meta-gradient strategy (paper Figure 5)"),
    "scale-out": ("scale_out", "Distillation over 1 and 2 ranks, and dataset memory per rank (issue 10)"),
    "vocab-scaling": ("vocab_scaling", "Distillation and student cost against |V|, dense and sparse (issue 28)"),
    "privacy": ("privacy", "Privacy audit: copying and membership inference, next to utility (issue 30)"),
}
MARK = re.compile(r"<!--@ (\S+) -->|<!--= ([^\n]+?) -->(.*?)<!--/-->", re.S)
NOT_RENDERED = "**not rendered"


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def ci(x: dict[str, Any] | None, digits: int = 2) -> str:
    """An estimate and its 95 % interval: ``{mean, low, high}``, a difference ``{diff, lo, hi}`` or ``{value, ...}``."""
    if not x:
        return "—"
    m, lo, hi = x.get("mean", x.get("diff", x.get("value"))), x.get("low", x.get("lo")), x.get("high", x.get("hi"))
    if lo is None:
        return f"{fmt(m, digits)} (n=1)"
    return f"{fmt(m, digits)} [{fmt(lo, digits)}, {fmt(hi, digits)}]"


def verdict(d: dict[str, Any] | None, lower_better: bool = False) -> str:
    """A paired difference read by its interval: better, worse, or not resolved."""
    if not d or d.get("lo") is None:
        return "—"
    if (d["hi"] < 0) if lower_better else (d["lo"] > 0):
        return "better"
    if (d["lo"] > 0) if lower_better else (d["hi"] < 0):
        return "worse"
    return "not resolved"


def md_table(columns: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    cells = [[fmt(v) if not isinstance(v, str) else v.replace("|", "\\|") for v in row] for row in rows]
    return "\n".join(out + ["| " + " | ".join(row) + " |" for row in cells])


def machine_line(r: dict[str, Any]) -> str:
    m = r.get("machine", {})
    line = f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores ({m.get('torch_threads', '?')} torch threads), "
    line += f"{m.get('memory_gib', '?')} GiB, torch {m.get('torch', '?')}, farzi {m.get('farzi', '?')}"
    load = f", load average {'/'.join(f'{x:.2f}' for x in m.get('load_average') or [])} (1/5/15 min) at the end"
    return line + (f", GPU {m['cuda']}" if m.get("cuda") else ", no GPU") + (load if m.get("load_average") else "")


def header(name: str, r: dict[str, Any] | None) -> str:
    """The command that produced a section's figures, its wall time, machine and date."""
    if r is None:
        return f"Not run yet: `python -m bench run {name} --protocol cpu`."
    cmd = f"`python -m bench run {name} --protocol {r.get('protocol', 'cpu')} --seeds {r.get('seeds')}`"
    return f"{cmd} — {fmt(r.get('wall_seconds', 0) / 60, 1)} min on {machine_line(r)}; finished {r.get('finished')}."


def load(results: Path, name: str) -> dict[str, Any] | None:
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def render_report(results: Path = RESULTS, out: Path = BENCH / "REPORT.md", template: str | None = None) -> str:
    """Fill the template (default: ``out`` as it is, else bench/REPORT.md) from ``results``; write ``out``."""
    text = template if template is not None else (out if out.is_file() else BENCH / "REPORT.md").read_text()
    plots = out.parent / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    ns: dict[str, Any] = {}

    def fill(m: re.Match) -> str:
        if m.group(1):  # a section: its result and its experiment's names
            name, r = m.group(1), load(results, m.group(1))
            found = EXPERIMENTS.get(name)
            module = importlib.import_module(f"bench.experiments.{found[0]}") if found else None
            ns.clear()
            ns.update({k: v for k, v in vars(module).items() if not k.startswith("_")} if module else {})
            ns.update(fmt=fmt, ci=ci, verdict=verdict, md_table=md_table, r=r, name=name, plots=plots)
            ns.update(header=lambda: header(name, r), load=lambda other: load(results, other))
            return m.group(0)
        expr, block = m.group(2), m.group(3).startswith("\n")
        try:
            value = str(eval(expr, ns))  # noqa: S307 - the report's own template
        except Exception as e:  # shown in the report, and `python -m bench report` exits 1
            value = f"{NOT_RENDERED}: {type(e).__name__}: {e}**"
        return f"<!--= {expr} -->" + (f"\n\n{value}\n\n" if block else value) + "<!--/-->"

    text = MARK.sub(fill, text)
    out.write_text(text)
    return text
