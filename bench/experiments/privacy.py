"""Privacy (issue 30): ``farzictl audit`` (:mod:`farzi.audit`) on each cpu protocol's bundle (distillation seed 0;
Beauty where a ``beauty-cpu`` protocol exists) and on its initialization alone, ``seeds`` students per kind of data:
copying, the loss-threshold attack and the students' test utility, beside random:N and the full data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import common
from bench.report import ci, fmt, md_table
from farzi.audit import AuditConfig, audit_bundle, audit_plot, summary_rows
from farzi.presets import PROTOCOLS

PARTS = {"ml100k": ("rec", ""), "ptb": ("lm", ""), "beauty": ("rec", "beauty")}  # work subdirectory: task, dataset


def run(protocol: str, work: Path, seeds: int, smoke: bool = False, experiment: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"datasets": {}, "left_out": {}}
    for part, (task, dataset) in PARTS.items():
        if dataset and (smoke or f"{dataset}-{protocol}" not in PROTOCOLS):  # a smoke run has one synthetic rec
            out["left_out"][dataset] = "smoke run" if smoke else f"no {dataset}-{protocol} protocol in farzi.presets"
            continue
        s, where = common.settings(task, protocol, smoke, dataset=dataset), work / part  # a work directory each
        with common.exclusive(where / ".data.lock"):
            ds = common.prepare_dataset(s, where)
        if ds is None:
            out["left_out"][s["source"]] = f"not found under {common.SHARED}"
            continue
        traj, mu, audits = common.trajectories(ds, s, where), s["claim_budget"], {}
        for label, changes, refs in (("farzi", {}, ("random", "full")), ("init only", {"outer_steps": 0}, ())):
            path, _ = common.bundle(ds, s, where, traj, common.distill_config(s, mu, 0, **changes))
            cfg = AuditConfig(students=seeds, references=refs, max_steps=6 if smoke else 0, n_boot=1000 - 900 * smoke)
            audits[label] = audit_bundle(path, ds, cfg, where / "audits" / label.replace(" ", "-"))
        rows = summary_rows(audits["farzi"], f"farzi {mu}x{s['xi']}")
        rows.insert(1, summary_rows(audits["init only"], f"init only {mu}x{s['xi']}")[0] | {"kind": "init"})
        out["datasets"][ds.name] = {"rows": rows, "audits": audits, "settings": s}
    return out


def privacy_table(r: dict[str, Any]) -> str:
    """One row per kind of data and dataset: utility, attack, copying."""
    table = []
    for name, d in r["datasets"].items():
        metric = next(iter(d["audits"].values()))["membership"]["utility_metric"]
        for x in d["rows"]:
            run = f"{fmt(x['run_mean'])} / {x['run_max']}" if "run_mean" in x else "(the data itself)"
            grams = [fmt(100 * x[k], 1) if x.get(k) is not None else "—" for k in ("5-gram", "8-gram")]
            tpr = {k: 100 * v for k, v in x.get("tpr", {}).items() if k != "fpr"}
            own = f"; its {x['own_n']} users: {ci(x['own_auc'], 3)}" if "own_auc" in x else ""
            cells = [ci(x["auc"], 3) + own, ci(tpr, 1)] if "auc" in x else ["—"] * 2
            utility = f"{metric} {fmt(x['utility'])}" if "utility" in x else "—"
            table.append([name, x["data"], x.get("students", "—"), utility, *cells, run, *grams, x.get("copies", "—")])
    cols = ["dataset", "data", "students", "test utility", "attack AUC", "TPR % at 1 % FPR", "longest run mean / max"]
    return md_table([*cols, "5-grams in train %", "8-grams in train %", "copies"], table)


def reading(r: dict[str, Any]) -> str:
    """Per dataset: copies and longest runs of Farzi Data, its initialization and held-out data; the attack AUC on
    their students against the full data's and random:N's, read by their 95 % intervals (same sequences)."""
    lines = []
    for name, d in r["datasets"].items():
        by, min_copy = {x["kind"]: x for x in d["rows"]}, d["audits"]["farzi"]["copying"]["min_copy"]
        runs = ", ".join(f"{by[k]['data']} {by[k]['run_max']}" for k in ("farzi", "init", "reference"))
        lines.append(
            f"- {name}: copies of {min_copy}+ tokens: Farzi Data {by['farzi']['copies']}, its initialization "
            f"{by['init']['copies']}; longest run (argmax sequences, max): {runs}"
        )
        for a, b in (("farzi", "full"), ("farzi", "random"), ("init", "full")):
            x, y = by[a]["auc"], by[b].get("own_auc", by[b]["auc"])  # random:N: the users it releases, where measured
            word = "lower than" if x["hi"] < y["lo"] else "higher than" if x["lo"] > y["hi"] else "not resolved from"
            of = by[b]["data"] + (" on its own users" if "own_auc" in by[b] else "")
            lines.append(f"- {name}: attack AUC on {by[a]['data']} {ci(x, 3)} is {word} {of} {ci(y, 3)}")
    lines += [f"- {k}: skipped ({v})" for k, v in r["left_out"].items()]
    return "\n".join(lines)


def plots_md(r: dict[str, Any], plots: Path) -> str:
    """Each dataset's audit plot of its Farzi Data bundle (re-drawn from the result), as report images."""
    out = []
    for name, d in r["datasets"].items():
        audit_plot(d["audits"]["farzi"], plots / f"privacy-{name}.png")
        out.append(f"![privacy audit, {name}](plots/privacy-{name}.png)")
    return "\n\n".join(out)
