"""Sample efficiency: Farzi Data vs random:N vs head:N vs the full data (paper Table 6, Figures 3-4).

ML-100k (SASRec) and the offline PTB protocol (Transformer LM), as a variant table (:mod:`bench.table`) per
dataset: the full data; per budget a Farzi bundle and its "init only" twin (the same initialization after
0 outer steps) per distillation seed, random:N and head:N; students on each over the same student seeds,
evaluated per test user / sentence, so that every comparison is paired.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.common import SETTINGS, settings  # noqa: F401 - SETTINGS: tests/cli reads the protocols here
from bench.report import ci, fmt, md_table
from bench.table import Table, Variant, compare, interval, pairs, run_table, value
from farzi.compare import units_to_resolve
from farzi.plots import line_panels
from farzi.presets import recipe_over_preset

# recommendation: figures over every position of the test users' most recent items (farzi.evaluate)
POSITION_METRICS = ("xent", "hr_all@10")
PAPER_50x150 = {"hr@10": 19.61, "hr@100": 61.50}  # the paper's ML-100k Farzi Data [50x150] (its Table 6)


def label(kind: str, mu: int, xi: int) -> str:
    """The table's name for ``kind`` of data (farzi, init only, random, head) at budget ``mu``."""
    return f"{kind} {mu}x{xi}" if kind in ("farzi", "init only") else f"{kind}:{mu}"


def table(s: dict[str, Any]) -> Table:
    """The protocol's kinds of data as variants (the students on a bundle take the recipe it records)."""
    xi, dseeds, v = s["xi"], s.get("distill_seeds", 1), {"full": Variant("the whole training split", None)}
    for mu in s["budgets"]:
        v[f"farzi {mu}x{xi}"] = Variant("Farzi Data", {}, mu=mu, distill_seeds=dseeds)
        v[f"init only {mu}x{xi}"] = Variant("its initialization", {"outer_steps": 0}, mu=mu, distill_seeds=dseeds)
        v |= {f"{kind}:{mu}": Variant(f"{kind} sample", None, data=f"{kind}:{mu}") for kind in ("random", "head")}
    return Table(v, metrics=tuple(s["metrics"]), split="test", recipe_fills=recipe_over_preset(s))


def run(protocol: str, work: Path, seeds: int, smoke: bool = False, experiment: str = "") -> dict[str, Any]:
    beauty = "beauty" if experiment.endswith("beauty") else ""
    s = settings("lm" if experiment.endswith("ptb") else "rec", protocol, smoke, dataset=beauty)
    if s.get("device", "cpu").startswith("cuda") and not torch.cuda.is_available():
        return {"skipped": "not run (no GPU)", "settings": s}
    return run_table(table(s), s, work, seeds, smoke)


def pair_results(a: dict, b: dict, label: str, metrics: list[str], n_boot: int = 2000) -> list[dict[str, Any]]:
    """The ``label`` runs of two results of one experiment (run with different settings) paired by student
    and distillation seed: per metric, a - b with its 95 % bootstrap interval."""
    runs = [{**x, "data": side} for side, res in (("a", a), ("b", b)) for x in res["runs"] if x["data"] == label]
    if not pairs(runs, "a", "b")[0]:
        raise ValueError(f"no {label!r} runs with the same seeds in both results; name a label both have")
    return [compare(runs, "a", "b", m, n_boot) for m in metrics]


def has_position_metrics(runs: list[dict[str, Any]]) -> bool:
    return bool(runs) and all(m in runs[0].get("test", {}) for m in POSITION_METRICS)


def comparisons(s: dict[str, Any], runs: list[dict[str, Any]], metric: str | None = None) -> list[dict[str, Any]]:
    """The paired comparisons the report shows (on ``metric``, default the protocol's first)."""
    mu, xi = s["claim_budget"], s["xi"]
    farzi, init = f"farzi {mu}x{xi}", f"init only {mu}x{xi}"
    wanted = [(farzi, "full"), (farzi, init), (farzi, f"head:{mu}"), (farzi, f"random:{mu}"), (init, f"head:{mu}")]
    found = [(a, b, compare(runs, a, b, metric or s["metrics"][0], s.get("n_boot", 2000))) for a, b in wanted]
    return [{**c, "a": a, "b": b, "mean_a": c["a"], "mean_b": c["b"]} for a, b, c in found if c]


@dataclass(frozen=True)
class Claim:
    """One of the issue's claims: ``a`` against ``b`` on the protocol's first metric, read as their ratio or
    difference (``flip``: printed as b - a, where lower is better), that holds when its 95 % interval lies
    above ``bar`` (below it when not ``above``); a ratio may touch its bar."""

    text: str
    a: str
    b: str
    statistic: str  # "ratio" or "diff"
    bar: float
    above: bool = True
    flip: bool = False

    def read(self, c: dict[str, Any]) -> tuple[float, float, float]:
        if self.statistic == "ratio":
            return c["ratio"], c["ratio_lo"], c["ratio_hi"]
        return (-c["diff"], -c["hi"], -c["lo"]) if self.flip else (c["diff"], c["lo"], c["hi"])

    def holds(self, lo: float, hi: float) -> bool:
        near = lo if self.above else hi
        return (near > self.bar if self.above else near < self.bar) or (self.statistic == "ratio" and near == self.bar)


def claim_specs(s: dict[str, Any]) -> list[Claim]:
    """The issue's claims for a protocol: Farzi Data against the full data, head:N and its own init."""
    mu, xi = s["claim_budget"], s["xi"]
    farzi, init, head = f"farzi {mu}x{xi}", f"init only {mu}x{xi}", f"head:{mu}"
    if s["metrics"][0] == "hr@10":
        ratio = Claim(f"Farzi {mu}x{xi} HR@10 >= 95 % of full data (ratio)", farzi, "full", "ratio", 0.95)
        return [ratio, *(Claim(f"HR@10: Farzi {mu}x{xi} - {o} > 0", farzi, o, "diff", 0.0) for o in (head, init))]
    ratio = Claim(f"Farzi {mu}x{xi} corpus perplexity <= 1.4x full data (ratio)", farzi, "full", "ratio", 1.4, False)
    ppl = (f"corpus perplexity: {o} - Farzi {mu}x{xi} > 0" for o in (head, init))
    return [ratio, *(Claim(text, farzi, o, "diff", 0.0, flip=True) for text, o in zip(ppl, (head, init), strict=True))]


def claims(s: dict[str, Any], comps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's claims, each decided by its paired 95 % interval."""
    by, out = {(c["a"], c["b"]): c for c in comps}, []
    for claim in claim_specs(s):
        if (c := by.get((claim.a, claim.b))) is not None:
            value, lo, hi = claim.read(c)
            out.append({"claim": claim.text, "value": value, "lo": lo, "hi": hi, "holds": claim.holds(lo, hi)})
    return out


def resolution(s: dict[str, Any], runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the test split itself can resolve of each claim: its interval with the student runs held as they
    are and only the test units resampled, and how many units the claim needs at its measured value."""
    out = []
    for claim in claim_specs(s):
        if (c := compare(runs, claim.a, claim.b, s["metrics"][0], s.get("n_boot", 2000), False)) is None:
            continue
        value, lo, hi = claim.read(c)
        needed = units_to_resolve(value, lo if claim.above else hi, claim.bar, c["units"], claim.above)
        out.append({"claim": claim.text, "value": value, "lo": lo, "hi": hi, "above": claim.above, "units": c["units"]})
        out[-1]["needed"] = needed
    return out


# ------------------------------------------------------------------------------------ report
def data_table(r: dict[str, Any]) -> str:
    """Every kind of data: runs, size, each metric's mean and 95 % interval, training seconds."""
    s, runs = r["settings"], r["runs"]
    rows = []
    for label in dict.fromkeys(x["data"] for x in runs):
        mine = [x for x in runs if x["data"] == label]
        cells = [ci(interval(mine, m, s.get("n_boot", 2000))) for m in s["metrics"]]
        seconds = fmt(statistics.fmean(x["train_seconds"] for x in mine), 1)
        rows.append([label, len(mine), mine[0]["sequences"], mine[0]["tokens"], *cells, seconds])
    return md_table(["data", "runs", "sequences", "tokens", *s["metrics"], "train s"], rows)


def pairs_table(r: dict[str, Any], metric: str | None = None) -> str:
    comps = comparisons(r["settings"], r["runs"], metric)
    ratio = [{"value": c["ratio"], "lo": c["ratio_lo"], "hi": c["ratio_hi"]} for c in comps]
    rows = [[c["a"], c["b"], ci(c), ci(q, 3), c["pairs"]] for c, q in zip(comps, ratio, strict=True)]
    return md_table(["a", "b", "a - b", "a / b", "pairs"], rows)


def position_table(r: dict[str, Any]) -> str:
    comps = [comparisons(r["settings"], r["runs"], m) for m in POSITION_METRICS]
    rows = [[c[0]["a"], c[0]["b"], *(ci(d, 3) for d in c)] for c in zip(*comps, strict=True)]
    return md_table(["a", "b", *(f"{m}: a - b" for m in POSITION_METRICS)], rows)


def claims_table(r: dict[str, Any]) -> str:
    found = claims(r["settings"], comparisons(r["settings"], r["runs"]))
    rows = [[c["claim"], ci(c, 3), "yes" if c["holds"] else "**no**"] for c in found]
    return md_table(["claim", "measured [95 % interval]", "holds"], rows)


def resolution_table(r: dict[str, Any]) -> str:
    res, rows = resolution(r["settings"], r["runs"]), []
    unit = "users" if r["settings"]["metrics"][0].startswith("hr") else "sentences"
    for x in res:
        enough = " (this split has enough)" if x["needed"] is not None and x["needed"] <= x["units"] else ""
        needed = "none: the measured value is not past the bar" if x["needed"] is None else f"about {x['needed']:,.0f}"
        margin = fmt(x["value"] - x["lo"] if x["above"] else x["hi"] - x["value"], 3)
        rows.append([x["claim"], fmt(x["value"], 3), f"[{x['lo']:.3f}, {x['hi']:.3f}]", margin, needed + enough])
    cols = ["claim", "measured", f"interval, test {unit} alone", "smallest margin", f"test {unit} needed"]
    return md_table(cols, rows)


def test_units(r: dict[str, Any]) -> int:
    first = r["runs"][0]["units"]
    return len(first.get("rank", first.get("tokens", [])))


def selection(r: dict[str, Any]) -> str:
    return ", ".join(sorted({x.get("selection_metric", "?") for x in r["runs"]}))


def stages(r: dict[str, Any]) -> str:
    t = r["timings"]
    return ", ".join(f"{k} {v / 60:.1f} min" for k, v in t.items()) + f"; total {sum(t.values()) / 60:.1f} min"


def lrs(r: dict[str, Any]) -> str:
    """The students' learning rate per kind of data, and which took it from their bundle's recipe."""
    lr = {x["data"]: x["lr"] for x in r["runs"]}
    recipe = ", ".join(dict.fromkeys(x["data"] for x in r["runs"] if x.get("from_recipe")))
    recipe = f" ({recipe} from the recipe their bundles record)" if recipe else ""
    return ", ".join(f"{d} {v:g}" for d, v in lr.items()) + recipe


def paper_table(p: dict[str, Any] | None) -> str:
    """The paper-protocol run (a GPU's) beside the paper's figures."""
    if p is None or "skipped" in p:
        ours = [(p or {}).get("skipped", "not run (no GPU)")] * 2
    else:
        farzi = [x for x in p["runs"] if x["data"].startswith("farzi")]
        ours = [ci(interval(farzi, m)) for m in ("hr@10", "hr@100")]
    paper = ["paper", fmt(PAPER_50x150["hr@10"]), fmt(PAPER_50x150["hr@100"])]
    return md_table(["", "HR@10", "HR@100"], [paper, ["ours (`--protocol paper`)", *ours]])


def plot(r: dict[str, Any], plots: Path) -> str:
    """The first metric against the budget for Farzi Data, its initialization, random and head samples, the full data
    as a line."""
    s, name, key = r["settings"], r["experiment"], r["settings"]["metrics"][0]
    labels = dict.fromkeys(x["data"] for x in r["runs"])
    mean = {lab: statistics.fmean(value(x, key) for x in r["runs"] if x["data"] == lab) for lab in labels}
    series = {}
    for kind in ("farzi", "init only", "random", "head"):
        labs = [(mu, label(kind, mu, s["xi"])) for mu in s["budgets"]]
        if found := [(mu, mean[lab]) for mu, lab in labs if lab in mean]:
            series[kind] = ([x for x, _ in found], [y for _, y in found])
    series["full data"] = ([min(s["budgets"]), max(s["budgets"])], [mean["full"]] * 2)
    panel = dict(title=f"{r['dataset']}: test {key} vs budget", xlabel="synthetic / sampled sequences", ylabel=key)
    line_panels(plots / f"{name}.png", [{**panel, "series": series}], name)
    return f"![{name}](plots/{name}.png)"
