"""Inner-loop cost vs T per meta-gradient strategy (paper Figure 5; issue: memory-flat reverse mode), with the
two differentiable-optimizer libraries users reach for on the same problem, in the same run (issue 11.5).

Each (strategy, T) runs in its own process (bench/metagrad_worker.py) so that the RSS high-water mark
belongs to that configuration alone. Unrolled runs (farzi's ``unroll``, TorchOpt, higher) are skipped where
their memory, extrapolated linearly from the smaller T, would exceed the budget. Every meta-gradient is
compared with a float64 reference at the same T (farzi's ``checkpointed`` with model, summary and inner
state in float64; at the smallest T also checked against plain float64 autograd through the loop).
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import subprocess
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from bench.common import load_average, python, run_json
from bench.metagrad_worker import BETAS, EPS, EPS_ROOTS, LIBRARY, LR, PEERS, rel_error
from bench.report import fmt, md_table
from farzi.plots import line_panels

STRATEGIES = ("reverse", "checkpointed", "unroll", "paper", *PEERS)
UNROLLED = ("unroll", *PEERS)  # memory grows linearly in T: skipped past the budget
SHOWN = (*STRATEGIES, "unroll-f64")
# float32 strategies that compute the exact meta-gradient of the same inner loop (paper drops a term; TorchOpt's
# eps_root 0 is NaN and 1e-16 changes the inner optimizer)
FLOAT32_SAME = ("reverse", "checkpointed", "unroll", "higher", "torchopt-eps-root-tiny")
# the cpu protocol's T: 400 was dropped when the peers and the float64 reference joined the run (issue 11.5),
# to keep the run under ~25 min on the shared 2-core machine
CPU_STEPS = [25, 50, 100, 200]


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _projected(seen: list[dict[str, Any]], T: int) -> float | None:
    if len(seen) < 2:
        return None
    a, b = seen[-2], seen[-1]
    slope = (b["peak_rss_mib"] - a["peak_rss_mib"]) / max(b["steps"] - a["steps"], 1)
    return b["peak_rss_mib"] + slope * (T - b["steps"])


def run(
    protocol: str, work: Path, seeds: int, smoke: bool = False, experiment: str = "", memory_budget_mib: float = 14_000
) -> dict[str, Any]:
    if smoke:
        steps = [2, 4]
        shape = ["--vocab", "50", "--xi", "8", "--mu", "8", "--syn-batch", "4", "--d-model", "8", "--real-batch", "4"]
    else:
        steps = CPU_STEPS
        shape = ["--vocab", "2000", "--xi", "50", "--mu", "400", "--syn-batch", "32", "--d-model", "16"]
    threads = torch.get_num_threads()  # as set by `python -m bench run --threads N`
    grads_dir = work / "grads"
    grads_dir.mkdir(parents=True, exist_ok=True)
    load_start = load_average()
    rows: list[dict[str, Any]] = []

    def one(strategy: str, T: int) -> dict[str, Any]:
        out = grads_dir / f"{strategy}-T{T}.safetensors"
        cmd = [python(), "-m", "bench.metagrad_worker", "--strategy", strategy, "--steps", str(T), *shape]
        cmd += ["--threads", str(threads), "--save-grads", str(out)]
        try:
            row = run_json(cmd, timeout=3600)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            row = {"strategy": strategy, "steps": T, "failed": str(exc)[-500:]}
        if "seconds" in row:
            row["grads_file"] = str(out)
        return row

    references = {T: one("reference", T) for T in steps}
    rows += [references[T] for T in steps]
    rows.append(one("unroll-f64", steps[0]))  # the reference checked against plain float64 autograd
    for strategy in STRATEGIES:
        seen: list[dict[str, Any]] = []
        for T in steps:
            projected = _projected(seen, T) if strategy in UNROLLED else None
            if projected is not None and projected > memory_budget_mib:
                rows.append({"strategy": strategy, "steps": T, "skipped": True, "projected_peak_rss_mib": projected})
                continue
            row = one(strategy, T)
            rows.append(row)
            if "peak_rss_mib" in row:
                seen.append(row)
    # relative error of every meta-gradient against the float64 reference at the same T
    for row in rows:
        ref = references.get(row["steps"], {})
        if "grads_file" in row and "grads_file" in ref and row["strategy"] != "reference":
            g, r = load_file(row["grads_file"]), load_file(ref["grads_file"])
            keys = ("latent", "decoder")
            err = rel_error([g[k] for k in keys], [r[k] for k in keys])
            row["rel_error"] = err if math.isfinite(err) else str(err)
            nonfinite = sum(int((~torch.isfinite(g[k])).sum()) for k in keys)
            row["nonfinite_fraction"] = nonfinite / sum(g[k].numel() for k in keys)
    for row in rows:
        row.pop("grads_file", None)
    return {
        "protocol": protocol,
        "settings": {
            "shape": shape,
            "steps": steps,
            "inner_optimizer": f"adam lr {LR}, betas {BETAS}, eps {EPS}, weight decay 0",
            "model": "1-layer Transformer LM",
            "reference": "farzi checkpointed in float64 (model, summary and inner state)",
            "peers": {"torchopt": _version("torchopt"), "higher": _version("higher")},
            "threads": threads,
            "load_average_start": load_start,
            "cpu_count": os.cpu_count(),
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


def _err(r: dict[str, Any]) -> str:
    e = r.get("rel_error")
    if e is None:
        return "—"
    if isinstance(e, str):
        return f"{e} ({r.get('nonfinite_fraction', 0) * 100:.0f} % of entries not finite)"
    return f"{e:.1e}"


def _label(strategy: str, peers: dict[str, str | None]) -> str:
    """A peer's row label with the version that ran: 'torchopt 0.7.3', 'torchopt 0.7.3, eps_root 1e-16'."""
    if strategy not in PEERS:
        return strategy
    version = peers.get(LIBRARY[strategy])
    label = LIBRARY[strategy] + (f" {version}" if version else "")
    return label + (f", eps_root {EPS_ROOTS[strategy]:g}" if EPS_ROOTS.get(strategy) else "")


def _peers_table(result: dict[str, Any]) -> list[str]:
    """Each peer's time and peak RSS as ratios to farzi's reverse and unroll at the same T (same run)."""
    rows, steps = result["rows"], result["settings"]["steps"]
    table = []
    for peer in PEERS:
        for T in steps:
            p, d, u = _row(rows, peer, T), _row(rows, DEFAULT, T), _row(rows, "unroll", T)
            if not p:
                continue
            table.append(
                [
                    _label(peer, result["settings"].get("peers", {})) + (" (second run)" * bool(p.get("second_run"))),
                    T,
                    fmt(p["seconds"] / d["seconds"], 2) + "x" if d and not p.get("second_run") else "—",
                    fmt(p["seconds"] / u["seconds"], 2) + "x" if u and not p.get("second_run") else "—",
                    fmt(p["peak_rss_mib"] / d["peak_rss_mib"], 1) + "x" if d else "—",
                    fmt(p["peak_rss_mib"] / u["peak_rss_mib"], 2) + "x" if u else "—",
                ]
            )
    if not table:
        return []
    cols = ["peer", "T", f"seconds / {DEFAULT}", "seconds / unroll", f"peak RSS / {DEFAULT}", "peak RSS / unroll"]
    return [md_table(cols, table), ""]


def _comparison(result: dict[str, Any]) -> list[str]:
    """The honest comparison, in sentences built from the measured rows."""
    rows, steps = result["rows"], result["settings"]["steps"]
    peers = result["settings"].get("peers", {})
    out = []
    for peer in PEERS:
        measured = [r for T in steps if (r := _row(rows, peer, T))]
        if not measured:
            why = "not installed (`pip install -e '.[bench]'`)" if not peers.get(LIBRARY[peer]) else "no row completed"
            out.append(f"{_label(peer, peers)}: {why}.")
            continue
        last = measured[-1]
        T = last["steps"]
        d, u = _row(rows, DEFAULT, T), _row(rows, "unroll", T)
        if last.get("second_run"):
            bits = [
                f"second run (its seconds are not comparable with the first run's); at T={T} "
                f"{last['peak_rss_mib']:.0f} MiB peak"
            ]
            d = u = None
        else:
            bits = [f"at T={T} {last['seconds']:.1f} s and {last['peak_rss_mib']:.0f} MiB peak"]
        if d:
            bits.append(
                f"{last['seconds'] / d['seconds']:.2f}x the time and {last['peak_rss_mib'] / d['peak_rss_mib']:.1f}x "
                f"the memory of farzi's {DEFAULT}"
            )
        if u:
            bits.append(
                f"{last['seconds'] / u['seconds']:.2f}x the time and {last['peak_rss_mib'] / u['peak_rss_mib']:.2f}x "
                "the memory of farzi's own unrolled autograd"
            )
        skipped = [r["steps"] for r in rows if r["strategy"] == peer and r.get("skipped")]
        if skipped:
            bits.append(f"not run at T={', '.join(map(str, skipped))} (projected past the memory budget)")
        bits.append("relative error vs float64 " + ", ".join(f"T={r['steps']}: {_err(r)}" for r in measured))
        out.append(f"{_label(peer, peers)}: " + "; ".join(bits) + ".")
    floor = []  # the finite float32 meta-gradients that solve the same problem: how far apart are their errors?
    for T in steps:
        rs = {k: r for k in FLOAT32_SAME if (r := _row(rows, k, T))}
        errs = {k: r["rel_error"] for k, r in rs.items() if isinstance(r.get("rel_error"), float)}
        if len(errs) >= 2:
            floor.append((T, min(errs.values()), max(errs.values()), len(errs)))
    if floor:
        spread = max(hi / lo for _, lo, hi, _ in floor)
        agree = spread < 1.5
        out.append(
            f"The finite float32 meta-gradients of the same problem ({', '.join(FLOAT32_SAME)}, where they ran) have "
            "relative errors "
            + ", ".join(f"T={T}: {lo:.1e} to {hi:.1e}" for T, lo, hi, _ in floor)
            + (
                f" — within {spread:.2f}x of each other at every T: this error is float32 rounding of the problem "
                "itself (the reference is float64), not a property of any method."
                if agree
                else f" — up to {spread:.1f}x apart: the methods do not all carry the same float32 error."
            )
        )
    d_errs = [r for T in steps if (r := _row(rows, DEFAULT, T))]
    if d_errs:
        out.append(
            f"farzi {DEFAULT}: relative error vs float64 "
            + ", ".join(f"T={r['steps']}: {_err(r)}" for r in d_errs)
            + "."
        )
    return out


def _summary(result: dict[str, Any]) -> str:
    """One paragraph: what the same-run figures say about the peers against farzi, and how sure they are."""
    rows, steps = result["rows"], result["settings"]["steps"]
    s = result["settings"]
    first = lambda k: [r for T in steps if (r := _row(rows, k, T)) and not r.get("second_run")]  # noqa: E731
    parts = []
    both = [T for T in steps if all(_row(rows, k, T) for k in (DEFAULT, "unroll", "torchopt", "higher"))]
    if both:
        T = both[-1]
        mem = {k: _row(rows, k, T)["peak_rss_mib"] for k in (DEFAULT, "unroll", "torchopt", "higher")}
        vs_unroll = {
            k: [r["seconds"] / u["seconds"] for r in first(k) if (u := _row(rows, "unroll", r["steps"]))]
            for k in ("torchopt", "higher")
        }
        parts.append(
            "In short: both peers are unrolled autograd, so their memory grows linearly in T like farzi's `unroll` "
            f"(at T={T}: TorchOpt {mem['torchopt']:.0f} MiB, higher {mem['higher']:.0f} MiB, farzi unroll "
            f"{mem['unroll']:.0f} MiB, farzi {DEFAULT} {mem[DEFAULT]:.0f} MiB); their time per outer step was "
            + " and ".join(f"{k} {min(v):.2f}-{max(v):.2f}x" for k, v in vs_unroll.items() if v)
            + f" farzi unroll's. farzi's {DEFAULT} is the only one whose memory stays flat in T."
        )
    hi = [r["rel_error"] for r in first("higher") if isinstance(r.get("rel_error"), float)]
    u = [r["rel_error"] for r in first("unroll") if isinstance(r.get("rel_error"), float)]
    if hi and u:
        parts.append(
            "higher, with eps placed as torch.optim.Adam places it, gives farzi's meta-gradient to float32 rounding "
            f"(largest relative error {max(hi):.1e}, farzi unroll {max(u):.1e})."
        )
    t0 = [r for r in first("torchopt")]
    t16 = [r["rel_error"] for r in first("torchopt-eps-root") if isinstance(r.get("rel_error"), float)]
    t24 = [r["rel_error"] for k in ("torchopt-eps-root-tiny",) for T in steps if (r := _row(rows, k, T))]
    if t0:
        bad = all(isinstance(r.get("rel_error"), str) for r in t0)
        parts.append(
            ("TorchOpt with its defaults returned NaN at every T; " if bad else "TorchOpt with its defaults: ")
            + (f"eps_root 1e-16 moved the meta-gradient by {min(t16) * 100:.0f}-{max(t16) * 100:.0f} %" if t16 else "")
            + (f", eps_root 1e-24 matched farzi (largest {max(t24):.1e})" if t24 else "")
            + ": with TorchOpt the answer depends on a constant the user has to pick."
        )
    load0, load1 = s.get("load_average_start"), result.get("machine", {}).get("load_average")
    if load0 and load1:
        parts.append(
            f"Uncertainty: one repeat per cell, while the 1-minute load average went from {load0[0]:.2f} to "
            f"{load1[0]:.2f} on {s.get('cpu_count', '?')} cores (other people's jobs), so time ratios between rows "
            "are good to a factor of about 1.5 at best (the same cells moved by that much between this and the "
            "previous run of this experiment); peak memory and the relative errors do not depend on the load."
        )
    return " ".join(parts)


def render(name: str, result: dict[str, Any], plots: Path) -> str:
    rows, steps = result["rows"], result["settings"]["steps"]
    peers = result["settings"].get("peers", {})
    table = []
    for strategy in SHOWN:
        for T in steps:
            r = next((r for r in rows if r["strategy"] == strategy and r["steps"] == T), None)
            if r is None:
                continue
            label = _label(strategy, peers) + (" (second run)" if r.get("second_run") else "")
            if "seconds" in r:
                growth = r["peak_rss_mib"] - r["rss_before_mib"]
                table.append([label, T, fmt(r["seconds"], 2), fmt(r["peak_rss_mib"], 0), fmt(growth, 0), _err(r)])
            elif r.get("not_installed"):
                table.append([label, T, "not installed", "—", "—", "—"])
            elif r.get("skipped"):
                projected = f"not run (projected {r['projected_peak_rss_mib']:.0f})"
                table.append([label, T, "—", projected, "—", "—"])
            else:
                table.append([label, T, "failed", "—", "—", "—"])
    ref = [r for r in rows if r["strategy"] == "reference" and "seconds" in r]
    ref_seconds = ", ".join(f"{r['seconds']:.0f}" for r in ref)
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
    s = result["settings"]
    shape = " ".join(s["shape"])
    load = s.get("load_average_start")
    lines = [
        f"One outer step's meta-gradient, each (strategy, T) in its own process ({shape}; "
        f"{s['model']}, inner {s['inner_optimizer']}). Peak RSS is the process's "
        "high-water mark, including the Python/torch baseline; 'growth' subtracts the RSS before the meta-gradient. "
        f"'rel. error' is ||g - g_ref|| / ||g_ref|| over the whole summary gradient against the float64 reference "
        f"({s.get('reference', '?')}) at the same T"
        + (f"; the reference itself took {ref_seconds} s" if ref else "")
        + ". unroll-f64 is plain float64 autograd through the loop, a check of the reference."
        + (f" Load average at the start: {'/'.join(f'{x:.2f}' for x in load)} (1/5/15 min)." if load else ""),
        "",
        md_table(["strategy", "T", "seconds", "peak RSS MiB", "growth MiB", "rel. error vs float64"], table),
        "",
    ]
    second = result.get("second_run")
    if second:
        lines += [
            f"Rows marked 'second run' were {second['why']}; finished {second['finished']}, load average "
            f"{'/'.join(f'{x:.2f}' for x in second['load_average_start'])} at its start.",
            "",
        ]
    if steps == CPU_STEPS:
        lines += [
            "T=400 is no longer run (it was before the peers joined): the float64 reference and the two peers "
            "would have taken the run past ~25 min on this shared machine, and the unrolled runs could not reach it "
            "within the memory budget anyway.",
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
        "### Peers on the same problem (issue 11.5)",
        "",
        "TorchOpt (`torchopt.MetaAdam`, unrolled) and higher (`higher.innerloop_ctx` around `torch.optim.Adam`) "
        "train the same model copy from the same weights on the same synthetic batches with the same Adam "
        f"(lr {LR}, betas {BETAS}, eps {EPS}, no weight decay) in float32, and are differentiated with plain "
        "autograd, like farzi's `unroll`. How they differ from farzi's Adam, where it could not be matched: "
        "TorchOpt's default `eps_root=0` differentiates sqrt(v) at v = 0 (the parameters whose gradient is exactly "
        "zero here: the banned token's embedding row and the last position's embedding, which no scored output "
        "sees), 0 * inf = NaN, which spreads through the whole backward pass; farzi's Adam (and higher, which "
        "masks the gradient where v = 0) give that derivative 0. The `eps_root` rows use TorchOpt's own remedy, "
        "a small constant inside the square root, sqrt(v_hat + eps_root): a different inner optimizer wherever "
        "v_hat is not far above it. This problem has inner gradients down to ~1e-7 (1 % of entries below 4e-7 at "
        "the first step), so 1e-16, which looks harmless, moves those entries' steps; 1e-24 is below them all. "
        "TorchOpt also forms the bias correction "
        "1 - beta^t in float32 from a step counter tensor (~1e-5 relative at t=1 for beta2), where farzi uses "
        "Python floats. higher's Adam divides by sqrt(v) + eps with the bias correction in the step size, i.e. "
        "by sqrt(v_hat) + eps / sqrt(1 - beta2^t); the run passes eps * sqrt(1 - beta2^t) per step "
        "(`override`), which makes it exactly farzi's (and torch.optim.Adam's) placement.",
        "",
        *_peers_table(result),
        *[f"- {x}" for x in _comparison(result)],
        "",
        _summary(result),
        "",
        "Paper (Figure 5): reverse-mode memory is flat in T while unrolled autograd grows linearly; time grows "
        "linearly for both.",
        "",
        f"![{name}](plots/{png.name})",
    ]
    return "\n".join(lines)
