"""The paper's ablations and the PTB baseline's recipe, each a variant table (:mod:`bench.table`):

* ``baseline-recipe-ptb``: full-data PTB students with the preset's recipe and with the Farzi Data students'
  (is the baseline that the Farzi/full ratio divides by at its best? validation split);
* ``meta-objectives``: farzi / mm / dc / mtt, each with Adam and with SGD in the inner loop (paper Table 2),
  every variant from the same initialization (real sequences) and Omega;
* ``cross-architecture``: teachers SASRec and GRU4Rec, students SASRec, GRU4Rec, FMLP-Rec (paper Table 1);
* ``omega-size``: |Omega| trajectories, 0 (no trained model: random inner initializations, the mm objective,
  a summary from real sequences) to 5 (paper Figure 6b: 0, 1, 5, 20);
* ``cold-start``: Farzi Data vs the full data per popularity decile (paper Figure 6a);
* ``speedup``: time and sequences seen until a student reaches the full-data model's validation quality, on
  Farzi Data and on the full data (thesis Table 4.7), without early stopping.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.common import settings
from bench.report import ci, fmt, md_table, verdict
from bench.table import Table, Variant, compare, interval, name_of, run_table, t_diff
from farzi.plots import line_panels

V = Variant
NAMES = {"hr@10": "HR@10", "hr@100": "HR@100", "ndcg@10": "nDCG@10", "ppl_corpus": "valid ppl"}
GRU = {"n_layers": 1}  # GRU4Rec's layers (teacher and student)
NO_STOP = {"patience": 0, "metric": "hr@10"}  # speedup: whole curves of the figure it is read on


RECIPES = {
    "preset": V("the protocol's full-data students: lr 2e-3, no weight decay", None),
    "wd 1e-3": V("Adam weight decay 1e-3 at the preset's lr 2e-3", None, {"weight_decay": 1e-3}),
    "lr 1e-3 + wd 1e-3": V("the recipe the Farzi Data students take", None, {"lr": 1e-3, "weight_decay": 1e-3}),
}


def _recipes(protocol: str, smoke: bool) -> tuple[dict, Table]:
    return settings("lm", protocol, smoke), Table(RECIPES, ("preset",), ("ppl_corpus",), "valid", keep_units=False)


def _objectives(protocol: str, smoke: bool) -> tuple[dict, Table]:
    s = settings("rec", smoke=smoke, runs=2)
    s["distill"] |= {"outer_steps": 2 if smoke else 30, "outer_lr": 0.01, "mtt_offset": 1, "init": "real"}
    variants = {
        f"{obj}-{opt}": V(f"{obj}, inner {opt}", {"objective": obj, "inner_optimizer": opt, "inner_lr": lr})
        for obj in ("farzi", "mm", "dc", "mtt")
        for opt, lr in (("adam", 0.01), ("sgd", 0.1))
    }
    return s, Table(variants, ("farzi-adam",), ("hr@10", "hr@100", "ndcg@10"), mu=(4, 25))


def _architectures(protocol: str, smoke: bool) -> tuple[dict, Table]:
    variants = {}
    for st in ("sasrec", "gru4rec", "fmlp"):
        arch = {"model": GRU} if st == "gru4rec" else {}
        variants[f"{st} | full"] = V(f"{st} on the full data", None, arch, model=st)
        for te in ("sasrec", "gru4rec"):
            omega = {"model": te, "overrides": GRU if te == "gru4rec" else {}}
            variants[f"{st} | farzi (teacher {te})"] = V(f"{st} on {te}'s", {"model": te}, arch, omega=omega, model=st)
    return settings("rec", smoke=smoke, runs=2), Table(variants, metrics=("hr@10", "hr@100"))


SIZES, CPU_SIZES = (0, 1, 5, 20), (0, 1, 2, 5)  # the paper's Figure 6b; the cpu protocol's (20 runs do not fit)


def _omega_size(protocol: str, smoke: bool) -> tuple[dict, Table]:
    sizes = (0, 1, 2) if smoke else CPU_SIZES
    s = settings("rec", smoke=smoke)
    s["trajectories"]["runs"] = max(sizes)
    if not smoke:  # 5 training runs on 2 cores: short runs of a narrower model
        s["model_overrides"] |= {"d_model": 32, "n_layers": 1}
        s["trajectories"] |= {"every": 30, "train": {"lr": 3e-3, "batch_size": 128, "max_steps": 120}}
        s["distill"]["outer_steps"] = 60
    zero = "no trajectories: random inner initializations (mm), a summary from real sequences"
    variants = {"|Omega| = 0": V(zero, {"objective": "mm", "init": "real"}, omega=None)}
    variants |= {f"|Omega| = {n}": V(f"{n} trajectories", {"omega_runs": n}) for n in sizes if n}
    return s, Table(variants, ("|Omega| = 0",), ("hr@10", "hr@100"))


def _data(speedup: bool):
    def setup(protocol: str, smoke: bool) -> tuple[dict, Table]:
        s = settings("rec", smoke=smoke, runs=2)
        mu, change = 4 if smoke else 50, NO_STOP if speedup else {}
        variants = {"full": V("full data", None, change), f"farzi {mu}x{s['xi']}": V("Farzi Data", {}, change)}
        return s, Table(variants, ("full",), ("hr@10",), stratify=None if speedup else "popularity")

    return setup


SETUPS = {"baseline-recipe-ptb": _recipes, "meta-objectives": _objectives, "cross-architecture": _architectures}
SETUPS |= {"omega-size": _omega_size, "cold-start": _data(speedup=False), "speedup": _data(speedup=True)}


def run(protocol: str, work: Path, seeds: int, smoke: bool = False, experiment: str = "") -> dict[str, Any]:
    s, t = SETUPS[experiment](protocol, smoke)
    return run_table(t, s, work, seeds, smoke)


# ------------------------------------------------------------------------------------ report
def seeds_of(r: dict[str, Any]) -> int:
    """How many student seeds each variant ran (the runs of the first)."""
    runs = r.get("runs") or [x for p in r["pairs"] for x in (p["full"], p["farzi"])]
    return sum(x["data"] == runs[0]["data"] for x in runs)


def budget(r: dict[str, Any]) -> str:
    return r.get("budget") or f"{r['mu']}x{r['settings']['xi']}"


def outer_steps(r: dict[str, Any]) -> int:
    return r.get("outer_steps") or r["settings"]["distill"]["outer_steps"]


def compare_table(r: dict, metrics: tuple[str, ...], reference: Any, heads: tuple[str, ...] = (), step=False) -> str:
    """Per variant: each metric's mean and 95 % interval, and its paired difference with ``reference`` (a
    variant, or a function of the variant's name), paired by student seed; ``step``: seconds per outer step."""
    runs, n_boot, rows = r["runs"], r["settings"].get("n_boot", 2000), []
    for n in dict.fromkeys(x["data"] for x in runs):
        mine, ref = [x for x in runs if x["data"] == n], reference(n) if callable(reference) else reference
        cells = [ci(interval(mine, m, n_boot)) for m in metrics]
        cells += ["—" if ref == n else ci(compare(runs, n, ref, m, n_boot)) for m in metrics]
        b = r["bundles"].get(n) if step else None  # one bundle per variant (results before the runner: its summary)
        cells += [fmt((b if isinstance(b, dict) else b[0])["seconds_per_step"], 2)] if step else []
        rows.append([*(n.split(" | ") if heads else [n]), len(mine), *cells])
    cols = [NAMES.get(m, m) for m in metrics]
    cols += [f"{c} - reference" for c in cols] + (["s / outer step"] if step else [])
    return md_table([*(heads or ["variant"]), "seeds", *cols], rows)


def recipe_table(r: dict[str, Any]) -> str:
    """baseline-recipe-ptb: each recipe's validation perplexity, paired with the preset's."""
    rows = []
    for x in r["rows"]:
        d = x.get("ppl_corpus - preset", x.get("vs reference"))  # rows before the shared runner: 'vs reference'
        steps = ", ".join(map(str, x["best_steps"]))
        rows.append([name_of(x), x["what"], ci(x.get("ppl_corpus", x), 1), ci(d), verdict(d, True), steps])
    return md_table(["recipe", "what", "valid ppl [95 % CI]", "- preset", "verdict", "best steps"], rows)


def omega_plot(r: dict[str, Any], plots: Path) -> str:
    sizes = [int(n.split()[-1]) for n in dict.fromkeys(x["data"] for x in r["runs"])]
    runs = {n: [x for x in r["runs"] if x["data"] == f"|Omega| = {n}"] for n in sizes}
    series = {NAMES[m]: (sizes, [interval(runs[n], m)["mean"] for n in sizes]) for m in ("hr@10", "hr@100")}
    panel = dict(title="ML-100k: test HR@10 vs |Omega| (training runs)", xlabel="|Omega| (trajectories)", ylabel="%")
    line_panels(plots / "omega-size.png", [{**panel, "series": series}], "omega-size")
    return "![omega-size](plots/omega-size.png)"


def _deciles(r: dict[str, Any], label: str, key: str) -> list[list[float | None]]:
    """Per decile, each seed's HR@10 (seed order)."""
    runs = sorted((x for x in r["runs"] if x["data"] == label), key=lambda x: x["seed"])
    return [[x["test"]["strata"][key][d].get("hr@10") for x in runs] for d in range(10)]


def decile_table(r: dict[str, Any], key: str) -> str:
    """cold-start: HR@10 per decile of ``key``, each kind of data's mean over seeds and their paired difference
    (farzi - full) with its t interval over the seeds."""
    full, farzi = dict.fromkeys(x["data"] for x in r["runs"])
    users = [r["runs"][0]["test"]["strata"][key][d].get("users", 0) for d in range(10)]
    a, b, rows = _deciles(r, farzi, key), _deciles(r, full, key), []
    for d in range(10):
        both = [(x, y) for x, y in zip(a[d], b[d], strict=True) if x is not None and y is not None]
        mean = [fmt(sum(v) / len(v)) if (v := [x for x in side[d] if x is not None]) else "—" for side in (b, a)]
        rows.append([d + 1, users[d], *mean, ci(t_diff([x - y for x, y in both])) if both else "—"])
    return md_table(["decile", "test users", full, farzi, f"{farzi} - full"], rows)


def cold_plot(r: dict[str, Any], plots: Path) -> str:
    panels = []
    for key, title in (("item_popularity", "target item popularity"), ("user_activity", "user activity")):
        series = {}
        for label in dict.fromkeys(x["data"] for x in r["runs"]):
            got = [(d + 1, [x for x in s if x is not None]) for d, s in enumerate(_deciles(r, label, key))]
            series[label] = ([d for d, v in got if v], [sum(v) / len(v) for _, v in got if v])
        panels.append(dict(title=f"HR@10 by {title} decile", xlabel="decile", ylabel="HR@10 (%)", series=series))
    line_panels(plots / "cold-start.png", panels, "Cold-start analysis (ML-100k)")
    return "![cold-start](plots/cold-start.png)"


def _speed_pairs(r: dict[str, Any]) -> list[tuple[int, dict, dict]]:
    """speedup: (seed, full's run, Farzi's run) per seed (results before the shared runner keep 'pairs')."""
    if "pairs" in r:
        return [(p["seed"], p["full"], p["farzi"]) for p in r["pairs"]]
    by = {(x["data"] == "full", x["seed"]): x for x in r["runs"]}
    return [(seed, by[True, seed], by[False, seed]) for seed in sorted({s for _, s in by})]


def _reach(full: dict[str, Any], farzi: dict[str, Any], frac: float) -> tuple[dict | None, dict | None, float | None]:
    """speedup: where full's and Farzi's curves first reach ``frac`` of full's best valid HR@10; the time speed-up."""
    a, b = (next((p for p in x["curve"] if p["hr@10"] >= frac * full["valid"]), None) for x in (full, farzi))
    return a, b, a["elapsed"] / b["elapsed"] if a and b and b["elapsed"] else None


FRACTIONS = (0.75, 0.9, 1.0)


def speed_table(r: dict[str, Any]) -> str:
    """speedup: per seed and target, seconds and sequences seen until each reaches it."""
    rows = []
    for seed, full, farzi in _speed_pairs(r):
        for frac in FRACTIONS:
            a, b, up = _reach(full, farzi, frac)
            rows.append(
                [seed, f"{int(frac * 100)} % of full's best valid HR@10 ({fmt(frac * full['valid'])})"]
                + [fmt(a["elapsed"], 1) if a else "never", a.get("sequences_seen", "—") if a else "—"]
                + [fmt(b["elapsed"], 1) if b else "never", b.get("sequences_seen", "—") if b else "—"]
                + [fmt(up, 1)]
            )
    cols = ["seed", "target", "full: seconds", "full: sequences seen", "Farzi: seconds", "Farzi: sequences seen"]
    return md_table([*cols, "speed-up (time)"], rows)


def speed_pairs_table(r: dict[str, Any]) -> str:
    """speedup: the paired comparisons over seeds, with t intervals where two or more seeds give a value."""
    pairs = _speed_pairs(r)
    found = [("best valid HR@10: Farzi - full", [farzi["valid"] - full["valid"] for _, full, farzi in pairs])]
    for frac in FRACTIONS:
        ratios = [_reach(full, farzi, frac)[2] for _, full, farzi in pairs]
        found.append((f"speed-up (time) to {int(frac * 100)} % of full's best", ratios))
    rows = []
    for what, values in found:
        got = [v for v in values if v is not None]
        why = f"cannot be computed: both reached the target in {len(got)} of {len(values)} seeds"
        cell = ci(t_diff(got)) if len(got) >= 2 else why
        rows.append([what, ", ".join("never" if v is None else fmt(v) for v in values), cell])
    return md_table(["comparison", "per seed", "mean [95 % t interval]"], rows)


def best_valid(r: dict[str, Any]) -> str:
    """speedup: each run's best validation HR@10."""
    pairs = _speed_pairs(r)
    return "; ".join(f"seed {s}: full {fmt(a['valid'])}, Farzi {fmt(b['valid'])}" for s, a, b in pairs)
