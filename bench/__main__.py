"""The benchmark harness.

    python -m bench list
    python -m bench run EXPERIMENT [--protocol cpu|paper] [--seeds N] [--smoke] [--carry]
    python -m bench report
    python -m bench pair A.json B.json --data LABEL [--metric M ...]

``run`` executes one experiment from scratch (through the farzi library, the same code the CLI calls),
writes ``bench/results/EXPERIMENT.json`` (every figure with its settings, seeds, machine and wall time)
and re-renders ``bench/REPORT.md`` and its plots from all results present. ``pair`` compares the runs of
one kind of data in two sample-efficiency results (say, a protocol and a variant of it), paired by seed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.common import RESULTS, write_result
from bench.report import EXPERIMENTS, NOT_RENDERED, ci, fmt, md_table, render_report
from farzi.errors import FarziError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list the experiments")
    run = sub.add_parser("run", help="run one experiment")
    run.add_argument("experiment", choices=sorted(EXPERIMENTS))
    run.add_argument("--protocol", choices=("cpu", "paper"), default="cpu")
    run.add_argument("--seeds", type=int, default=3, help="student seeds per variant (scale-out: repeats)")
    run.add_argument("--smoke", action="store_true", help="toy size, synthetic data (for tests)")
    run.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temporary one)")
    run.add_argument("--results", type=Path, default=RESULTS)
    run.add_argument("--threads", type=int, default=2)
    carry = "lever experiments: take over the rows of RESULTS/EXPERIMENT.json measured with the same settings and "
    carry += "seeds, measuring only new levers (and the references, checked against the earlier figures)"
    run.add_argument("--carry", action="store_true", help=carry)
    run.add_argument("--support", help="vocab-scaling: the summaries' support K to measure, e.g. 0,64 (0: dense)")
    rep = sub.add_parser("report", help="re-render bench/REPORT.md from bench/results/")
    rep.add_argument("--results", type=Path, default=RESULTS)
    rep.add_argument("--out", type=Path, default=None, help="write here (default: REPORT.md beside the results)")
    pair = sub.add_parser("pair", help="pair one kind of data across two sample-efficiency results")
    pair.add_argument("a", type=Path)
    pair.add_argument("b", type=Path)
    pair.add_argument("--data", required=True, help="the label of the runs, e.g. 'farzi 50x50'")
    pair.add_argument("--metric", action="append", help="default: the experiment's metrics")
    args = ap.parse_args(argv)
    if args.cmd == "pair":
        return _pair(args)
    if args.cmd == "list":
        print("\n".join(f"{name:26s} {title}" for name, (_module, title) in sorted(EXPERIMENTS.items())))
        return 0
    if args.cmd == "report":
        return _report(args.results, args.out or args.results.parent / "REPORT.md")
    torch.set_num_threads(args.threads)
    module = importlib.import_module(f"bench.experiments.{EXPERIMENTS[args.experiment][0]}")
    name = args.experiment + ("-smoke" if args.smoke else "") + ("-paper" if args.protocol == "paper" else "")
    extra = {"support": [int(k) for k in args.support.split(",")]} if args.support else {}
    if args.carry:
        if args.experiment not in getattr(module, "CARRY", ()):
            print(f"error: {args.experiment} has no rows to carry over; run it without --carry", file=sys.stderr)
            return 2
        previous = args.results / f"{name}.json"
        try:
            extra["earlier"] = json.loads(previous.read_text()) if previous.is_file() else None
            if extra["earlier"] is not None and not isinstance(extra["earlier"], dict):
                raise ValueError("it is not a result object")
        except (OSError, ValueError) as e:
            print(f"error: cannot read {previous} to carry its rows: {e} (run without --carry)", file=sys.stderr)
            return 2
    work = args.work or Path(tempfile.mkdtemp(prefix=f"bench-{args.experiment}-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        payload = module.run(args.protocol, work, args.seeds, smoke=args.smoke, experiment=args.experiment, **extra)
    except FarziError as e:  # bad input (a protocol the experiment lacks, ...): one line, nothing written
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
        print(f"error: {args.experiment}: {e}", file=sys.stderr)
        return 2
    payload |= {"wall_seconds": round(time.perf_counter() - start, 1), "protocol": args.protocol}
    payload |= {"smoke": args.smoke, "seeds": args.seeds}
    print(f"wrote {write_result(name, payload, args.results)}")
    if not args.smoke:  # the run stands whatever the report says of other results
        _report(args.results, args.results.parent / "REPORT.md")
    return 0


def _report(results: Path, out: Path) -> int:
    """Re-render the report; 1 when a generated part could not be rendered (each is named)."""
    text = render_report(results, out)
    failed = [line for line in text.splitlines() if NOT_RENDERED in line]
    for line in failed:
        print(f"error: {line.strip()[:300]}", file=sys.stderr)
    print(f"wrote {out}" + (f" ({len(failed)} parts not rendered)" if failed else ""))
    return 1 if failed else 0


def _pair(args: argparse.Namespace) -> int:
    from bench.experiments.sample_efficiency import POSITION_METRICS, has_position_metrics, pair_results

    try:
        a, b = (json.loads(Path(p).read_text()) for p in (args.a, args.b))
        extra = POSITION_METRICS if has_position_metrics(a["runs"]) else ()
        rows = pair_results(a, b, args.data, args.metric or [*a["settings"]["metrics"], *extra])
    except (OSError, ValueError, KeyError) as e:
        fix = "" if isinstance(e, ValueError) else " (give two results of `python -m bench run sample-efficiency-*`)"
        print(f"error: cannot pair {args.a} and {args.b}: {e}{fix}", file=sys.stderr)
        return 2
    print(f"{args.data}: {args.a.name} (a) - {args.b.name} (b), {rows[0]['pairs']} pairs, 95 % bootstrap interval")
    table = [[r["metric"], fmt(r["a"], 3), fmt(r["b"], 3), ci(r, 3)] for r in rows]
    print(md_table(["metric", "a", "b", "a - b"], table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
