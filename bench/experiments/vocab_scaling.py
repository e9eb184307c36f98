"""What distillation and a student's step cost as the item vocabulary |V| grows (issue 28, item 1).

One model and budget on synthetic recommendation logs at |V| = 2k to 128k items and on Amazon Beauty (where ../shared
holds it), with a dense summary and, where ``DistillConfig`` has ``support``, a sparse one (K candidate items per
position). Each cell runs in a fresh process (``python -m bench.experiments.vocab_scaling SPEC.json``) under a time
limit and a memory cap, writing each phase's figures as it ends (a cell cut off keeps them): the full-data step
(:data:`DENOMINATOR`), ``Distillation.start`` (init), a student's step on the summary and outer steps
(``Distillation.step``), each with its peak RSS (high-water mark reset before it) and, on a GPU, peak CUDA memory; every
time also as a ratio to the full-data step. A sparse cell also times outer steps with the sampled softmaxes
(:data:`SAMPLED`: the inner loss's, then the meta-loss's too), before its own. ``--seeds`` is not used.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import REPO, SHARED
from bench.experiments.scale_out import _synthetic_log
from bench.report import fmt, md_table
from bench.scale_out_worker import rss_peak_mib
from farzi.batching import DistributionTrainSet, SequenceTrainSet
from farzi.data.prepare import PrepareOptions, prepare
from farzi.data.prepared import load_prepared
from farzi.data.sequences import Sequences
from farzi.distill.engine import Distillation, DistillConfig, FarziError
from farzi.distill.select import as_bundle
from farzi.distill.summary import real_windows
from farzi.limits import available_memory
from farzi.models import build_model
from farzi.train import batch_stream, train_step

BEAUTY = SHARED / "amazon-beauty" / "Beauty.txt"
DENOMINATOR = (
    "one step of farzi.train's loop on the full data (the next batch of a SequenceTrainSet, then train_step: forward, "
    "backward, Adam) of a fresh model of the teacher's architecture on mu real sequences of xi tokens (training "
    "sequences joined end to end: mu x xi target tokens, a student's batch on the bundle), median after a warm-up"
)
PHASES = ("full", "init", "outer", "student")
SAMPLED = dict(
    sampled={"inner_softmax": "sampled"}, sampled_meta={"inner_softmax": "sampled", "meta_softmax": "sampled"}
)
MEMORY_CAP = 0.75  # of the memory available when a cell starts (RLIMIT_DATA): this machine is shared
SMOKE_CAP_BYTES = 2 << 30  # a smoke cell's (the tests') cap, whatever the machine has


def run(protocol: str, work: Path, seeds: int, smoke: bool = False, experiment: str = "", support=None) -> dict:
    model = dict(d_model=8, n_layers=1, max_len=16) if smoke else dict(d_model=64, n_layers=2, max_len=50)
    d = dict(mu=4, xi=8, syn_batch=2, real_batch=8) if smoke else dict(mu=50, xi=50, syn_batch=16, real_batch=128)
    d |= dict(inner_steps=2 if smoke else 10, objective="mm", model="sasrec", model_overrides=model, seed=0)
    s = dict(distill=d | {"device": "cuda" if torch.cuda.is_available() else "cpu"}, users=60 if smoke else 5000)
    s |= dict(vocabs=[30, 60] if smoke else [2_000, 8_000, 32_000, 128_000], support=support or [0, 8 if smoke else 64])
    s |= dict(outer_steps=1 if smoke else 2, timed_steps=2 if smoke else 5, limit_s=120 if smoke else 600)
    s |= dict(beauty_users=200 if smoke else None, threads=torch.get_num_threads(), memory_cap=MEMORY_CAP)
    s |= dict(memory_cap_bytes=SMOKE_CAP_BYTES if smoke else None, sampled=SAMPLED)
    s |= dict(support_available="support" in DistillConfig().to_dict(), denominator=DENOMINATOR)
    rows = []
    for items in [*s["vocabs"], None]:
        data = _dataset(items, s, work)
        for k in s["support"]:
            row = {"data": "amazon-beauty", "items": items, "support": k, **data}
            if k and not s["support_available"] and "skipped" not in row:
                row["skipped"] = "not available: DistillConfig has no `support` setting yet"
            rows.append(row if "skipped" in row else _cell(row, s, work))
    return {"settings": s, "rows": rows}


def _dataset(items: int | None, s: dict[str, Any], work: Path) -> dict[str, Any]:
    """The cell's data, prepared under ``work`` (kept for a rerun), and where it came from."""
    if items is None and not BEAUTY.is_file():
        return {"skipped": f"{BEAUTY} not found"}
    # synthetic-rec holds ~3 dense |V| x |V| float64 matrices: past 4 GiB of them, bench's own log of the same size
    out, farzi = work / "data" / str(items or "amazon-beauty"), items and 24 * items**2 <= 4 * 1024**3
    log = "bench's synthetic log (scale_out._synthetic_log: uniform items, Poisson lengths of mean 25; synthetic-rec's"
    source = "farzi's synthetic-rec (lengths 10-40)" if farzi else log + " |V| x |V| chain would not fit)"
    if items is None:
        source = f"{BEAUTY.name} as a user,item,time CSV (time: the position on the line)"
        source += f", its first {s['beauty_users']} users" if s["beauty_users"] else ""
    data = "amazon-beauty" if items is None else "synthetic-rec" if farzi else "synthetic log"
    if items is None and not (out / "manifest.json").is_file():
        lines, csv = [x.split() for x in BEAUTY.read_text().splitlines()[: s["beauty_users"]]], work / "beauty.csv"
        csv.write_text("user,item,time\n" + "".join(f"{x[0]},{i},{t}\n" for x in lines for t, i in enumerate(x[1:])))
        opts = PrepareOptions(path=csv, user_col="user", item_col="item", time_col="time")
        prepare("interactions", opts, out=out, overwrite=True)
    elif not (out / "manifest.json").is_file():
        opts = PrepareOptions(synthetic_vocab=items, synthetic_sequences=s["users"], seed=0)
        prepare("synthetic-rec", opts, out=out, overwrite=True) if farzi else _synthetic_log(out, s["users"], items, 25)
    ds = load_prepared(out)
    return dict(data=data, path=str(out), source=source, vocab_size=ds.vocab_size, train_sequences=len(ds.train))


def _cell(row: dict[str, Any], s: dict[str, Any], work: Path) -> dict[str, Any]:
    """One cell in a fresh process, cut off at the time limit; its figures, and their ratios to its full-data step."""
    spec = work / "cells" / f"{row['data']}-{row['items']}-k{row['support']}.json"
    spec.parent.mkdir(parents=True, exist_ok=True)
    config, got = s["distill"] | ({"support": row["support"]} if row["support"] else {}), spec.with_suffix(".out.json")
    spec.write_text(json.dumps({"dataset": row["path"], "config": config, **s})), got.unlink(missing_ok=True)
    try:
        cmd = [sys.executable, "-m", __name__, str(spec)]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=s["limit_s"])
        row |= {"failed": f"exit {proc.returncode}: {proc.stderr.strip()[-800:]}"} if proc.returncode else {}
    except subprocess.TimeoutExpired:  # the phase it was in, unless the cell says how far it came
        row["phase"] = "start-up"
    row |= json.loads(got.read_text()) if got.is_file() else {}
    if row.get("phase") and "failed" not in row and "skipped" not in row:
        row["skipped"] = f"over the {s['limit_s']} s limit per cell, cut off in its {row['phase']} phase"
    full = row.get("full", {}).get("seconds")
    return row | {"ratios": {p: row[p]["seconds"] / full for p in PHASES[1:] if "seconds" in row.get(p, {}) and full}}


def _worker(spec_path: str) -> None:
    """One cell, in its own process: writes ``SPEC.out.json`` as each phase ends."""
    spec, out = json.loads(Path(spec_path).read_text()), Path(spec_path).with_suffix(".out.json")
    cap = min(int(spec["memory_cap"] * available_memory()), spec.get("memory_cap_bytes") or 1 << 62)
    cfg = DistillConfig.from_dict(spec["config"])
    resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))  # an allocation past it fails in here, not on the machine
    torch.set_num_threads(spec["threads"])
    row, cuda = {"memory_cap_gib": cap / 2**30}, cfg.device.startswith("cuda")

    def phase(name: str, measure) -> None:  # measure's own seconds, else the phase's
        row["phase"] = name
        out.write_text(json.dumps(row))
        Path("/proc/self/clear_refs").write_text("5")  # resets the RSS high-water mark (VmHWM)
        torch.cuda.reset_peak_memory_stats() if cuda else None
        start, got = time.perf_counter(), measure() or {}
        torch.cuda.synchronize() if cuda else None
        row[name] = {"seconds": time.perf_counter() - start, **got, "peak_rss_mib": round(rss_peak_mib(), 1)}
        row[name] |= {"peak_cuda_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)} if cuda else {}

    def steps(train_set) -> dict[str, Any]:
        torch.manual_seed(cfg.seed)
        model = build_model(run.teacher.model.name, run.teacher.model.config).to(run.teacher.device).train()
        opt, times = torch.optim.Adam(model.parameters(), lr=1e-3), []
        stream = batch_stream(train_set, cfg.mu, torch.Generator().manual_seed(0), run.teacher.device)
        for _ in range(spec["timed_steps"] + 1):
            start = time.perf_counter()
            train_step(model, opt, next(stream))
            times.append(time.perf_counter() - start)
        return {"seconds": statistics.median(times[1:]), "every_step": times}

    def outer(name: str = "outer", changes=None) -> dict[str, Any]:  # the last step's figures stand for the step
        other = run.variant(**changes) if changes else run  # the same summary, teacher and outer optimizer
        for _ in range(spec["outer_steps"]):  # each step's figures kept as it ends
            rec, every = other.step(), row.get(name, {}).get("every_step", [])
            split = {k: v for k, v in rec.items() if k.endswith("_seconds") and k != "step_seconds"}
            row[name] = {"seconds": rec["step_seconds"], "every_step": [*every, rec["step_seconds"]], "split": split}
            out.write_text(json.dumps(row | {name: row[name] | {"peak_rss_mib": round(rss_peak_mib(), 1)}}))
        return row.pop(name)

    try:
        ds = load_prepared(spec["dataset"])
        run = Distillation(ds, cfg, None, None)
        run.load_teacher()
        try:  # farzi's own estimate, recorded; the cap above is what holds a cell back
            cfg.check_memory(ds, run.teacher.model)
        except FarziError as e:
            row["farzi_memory_check"] = str(e)
        windows = real_windows(ds.train, cfg.mu, cfg.xi, torch.Generator().manual_seed(0), "joined").tolist()
        phase("full", lambda: steps(SequenceTrainSet(Sequences.from_lists([""] * cfg.mu, windows), cfg.xi)))
        phase("init", run.start)  # then a student's step on the initial summary (the distilled one's shapes)
        phase("student", lambda: steps(DistributionTrainSet(as_bundle(run.summary, ds.task, ds.vocab.pad_id))))
        for name, changes in spec.get("sampled", {}).items() if cfg.support else ():
            phase(name, lambda: outer(name, changes))  # noqa: B023 - called at once
        phase("outer", outer)
        row["phase"] = None
    except Exception as e:  # noqa: BLE001 - the row says what failed; the other cells run
        capped = isinstance(e, MemoryError) or "allocate memory" in str(e)
        why = f"over the {cap / 2**30:.1f} GiB memory cap: " if capped else ""
        row["skipped" if capped else "failed"] = why + f"{type(e).__name__}: {e}"[:600]
    out.write_text(json.dumps(row))


# ------------------------------------------------------------------------------------ report
def cell_table(r: dict[str, Any]) -> str:
    """Per cell: each phase's time as a ratio to the same process's full-data step, the seconds, and peak RSS."""
    rows, dense = [], {x["items"]: x["outer"]["seconds"] for x in r["rows"] if not x["support"] and "outer" in x}
    for x in r["rows"]:
        got, q, d = {p: x[p] for p in PHASES if "seconds" in x.get(p, {})}, x.get("ratios", {}), dense.get(x["items"])
        cells = [f"{fmt(q[p], 1)}x" if p in q else "—" for p in ("outer", "student", "init")]
        cells.append(f"{fmt(got['outer']['seconds'] / d, 2)}x" if x["support"] and "outer" in got and d else "—")
        cells += [fmt(got[p]["seconds"], 3) if p in got else "—" for p in ("outer", "full")]
        cells.append(" / ".join(fmt(got[p].get("peak_rss_mib"), 0) if p in got else "—" for p in PHASES))
        status = x.get("skipped") or (f"failed: {x['failed']}" if "failed" in x else "measured")
        status += " (farzi's memory estimate refuses it)" if "farzi_memory_check" in x else ""
        kind = f"sparse, K = {x['support']}" if x["support"] else "dense"
        rows.append([x["data"], x.get("vocab_size", x["items"] or "—"), kind, *cells, status])
        for name, what in (("sampled", "sampled inner softmax"), ("sampled_meta", "sampled inner and meta softmax")):
            if "seconds" in x.get(name, {}) and "seconds" in got.get("full", {}):  # the same process's denominator
                t, mib = x[name]["seconds"], fmt(x[name].get("peak_rss_mib"), 0)
                cells = [f"{fmt(t / got['full']['seconds'], 1)}x", "—", "—", f"{fmt(t / d, 2)}x" if d else "—"]
                rows.append([*rows[-1][:2], f"{kind}, {what}", *cells, fmt(t, 3), "—", f"outer: {mib}", "measured"])
    cols = ["data", "\\|V\\|", "summary", "outer step / full step", "student step / full step", "init / full step"]
    cols += ["outer step: sparse / dense", "s per outer step", "full-data step s"]
    return md_table([*cols, "peak RSS MiB: full / init / outer / student", "status"], rows)


if __name__ == "__main__":
    _worker(sys.argv[1])
