"""Scale-out (issue 10): distillation over 1 and 2 ranks (torch.distributed, gloo), and the memory a rank
spends on a large prepared dataset read memory-mapped or decoded from parquet.

Throughput: one distillation three ways, each in fresh processes (``bench/scale_out_worker.py``), one
torch thread per rank, ``--seeds`` repeats in alternating order: 1 rank with a meta-batch of 1, 1 rank with
a meta-batch of 2 (two inner loops one after the other: what 2 ranks run) and 2 ranks with a meta-batch of
1 each (side by side, one all_reduce). Outer steps per minute are rank 0's outer loop (start-up excluded).
Memory: a synthetic log saved as a prepared dataset; R ranks load it at once and report their PSS (a page
shared by k processes counts 1/k) before and after; the same without its .npy arrays is decoded from parquet.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import BENCH, REPO
from bench.report import ci, fmt, md_table
from bench.table import t_diff
from farzi.data.prepare import PrepareOptions, prepare
from farzi.data.prepared import SPLITS, PreparedDataset
from farzi.data.sequences import Sequences
from farzi.data.vocab import build_item_vocab

WORKER = BENCH / "scale_out_worker.py"
VARIANTS = (("1 rank, meta-batch 1", 1, 1), ("1 rank, meta-batch 2", 1, 2), ("2 ranks, meta-batch 1 each", 2, 1))


def _ranks(args: list[str], world: int, timeout: float = 3600) -> list[dict[str, Any]]:
    """Run the worker as ``world`` ranks meeting through a file store; their JSON rows, by rank."""
    store = Path(tempfile.mkdtemp(prefix="scale-out-"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env |= {"FARZI_INIT_METHOD": f"file://{store / 'rdv'}", "WORLD_SIZE": str(world)} if world > 1 else {}
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    cmd = [sys.executable, str(WORKER), *args]
    procs = [subprocess.Popen(cmd, env={**env, "RANK": str(r)}, **pipes) for r in range(world)]
    rows = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            if p.returncode != 0:
                raise RuntimeError(f"scale-out worker failed ({p.returncode}): {err.strip()[-2000:]}")
            rows.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        shutil.rmtree(store, ignore_errors=True)
    return sorted(rows, key=lambda r: r["rank"])


def _synthetic_log(path: Path, users: int, items: int, mean_length: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.poisson(mean_length, size=users), 2, None)
    cut = [0, int(users * 0.8), int(users * 0.9), users]
    splits = {}
    for i, split in enumerate(SPLITS):
        n = lengths[cut[i] : cut[i + 1]]
        offsets = np.concatenate([[0], np.cumsum(n)]).astype(np.int64)
        tokens = rng.integers(1, items + 1, size=int(offsets[-1]), dtype=np.int32)
        splits[split] = Sequences([f"u{u}" for u in range(cut[i], cut[i + 1])], offsets, tokens)
    vocab = build_item_vocab([str(i) for i in range(1, items + 1)])
    PreparedDataset("scale-out-log", "rec", vocab, splits, {"seed": seed}).save(path, overwrite=True)


def run(protocol: str, work: Path, seeds: int, smoke: bool = False, experiment: str = "") -> dict[str, Any]:
    users, items = (60, 40) if smoke else (2000, 500)
    opts = PrepareOptions(synthetic_vocab=items, synthetic_sequences=users, seed=1)
    ds = prepare("synthetic-rec", opts, out=work / "distill-data", overwrite=True)
    size = dict(mu=4, xi=8, latent_dim=4, inner_steps=2, outer_steps=3, real_batch=8, syn_batch=4) if smoke else {}
    base = {"mu": 20, "xi": 20, "latent_dim": 8, "inner_steps": 10, "outer_steps": 20, "real_batch": 64, "syn_batch": 8}
    base |= size | {"seed": 0, "model": "sasrec"}
    base["model_overrides"] = dict(d_model=8 if smoke else 32, n_layers=1, n_heads=1, max_len=16 if smoke else 20)
    rows = []
    for rep in range(max(1, seeds)):
        for label, world, meta_batch in VARIANTS if rep % 2 == 0 else VARIANTS[::-1]:
            load = os.getloadavg()[0]
            out = str(work / f"b-{world}-{meta_batch}.safetensors")
            cfg = json.dumps({**base, "meta_batch": meta_batch})
            zero = _ranks(["distill", "--dataset", str(ds.path), "--out", out, "--config", cfg], world)
            per_min = 60 * zero[0]["outer_steps"] / max(zero[0]["loop_seconds"], 1e-9)
            rows.append({"variant": label, "ranks": world, "meta_batch": meta_batch, "repeat": rep})
            rows[-1] |= {"outer_steps_per_min": per_min, "inner_loops_per_min": per_min * world * meta_batch}
            rows[-1] |= {"rss_peak_mib_per_rank": [r["rss_peak_mib"] for r in zero], "load_1min_before": load}
    m_users, m_items, m_len = (200, 50, 10) if smoke else (400_000, 20_000, 25)
    big, decoded = work / "big-log", work / "big-log-parquet"
    if not (big / "manifest.json").is_file():
        _synthetic_log(big, m_users, m_items, m_len)
    if not decoded.is_dir():
        shutil.copytree(big, decoded, ignore=shutil.ignore_patterns("*.npy"))
    memory = []
    for storage, path in (("memory-mapped", big), ("parquet", decoded)):
        for world in (1, 2):
            got = _ranks(["memory", "--dataset", str(path)], world)
            pss = [round(r["pss_after_mib"] - r["pss_before_mib"], 1) for r in got]
            memory.append({"storage": storage, "ranks": world, "train_tokens": got[0]["train_tokens"]})
            memory[-1] |= {"memory_mapped": all(r["memory_mapped"] for r in got), "dataset_pss_mib_per_rank": pss}
            memory[-1] |= {"dataset_pss_mib_total": round(sum(pss), 1)}
            memory[-1] |= {"rss_peak_mib_per_rank": [round(r["rss_peak_mib"], 1) for r in got]}
    s = dict(threads_per_rank=1, distill=base, distill_data={"source": "synthetic-rec", "users": users, "items": items})
    s |= dict(memory_log={"users": m_users, "items": m_items, "mean_length": m_len}, repeats=max(1, seeds))
    return {"settings": s | {"cores": os.cpu_count()}, "rows": rows, "memory": memory}


# ------------------------------------------------------------------------------------ report
def _of(r: dict[str, Any], label: str, key: str) -> list[float]:
    """A variant's figure per repeat (repeat order)."""
    return [x[key] for x in sorted(r["rows"], key=lambda x: x["repeat"]) if x["variant"] == label]


def throughput_table(r: dict[str, Any]) -> str:
    """Per variant: the median over repeats, every repeat, and the peak RSS per rank."""
    rows = []
    for label, world, meta_batch in VARIANTS:
        loops, peak = _of(r, label, "inner_loops_per_min"), max(max(x) for x in _of(r, label, "rss_peak_mib_per_rank"))
        outer = statistics.median(_of(r, label, "outer_steps_per_min"))
        every = ", ".join(fmt(x, 1) for x in loops)
        rows.append([label, world, meta_batch, fmt(outer, 1), fmt(statistics.median(loops), 1), every, fmt(peak, 0)])
    cols = ["variant", "ranks", "meta-batch per rank", "outer steps/min", "inner loops/min"]
    return md_table([*cols, "inner loops/min, every repeat", "peak RSS per rank (MiB)"], rows)


def scaling(r: dict[str, Any]) -> dict[str, list[float]]:
    """Per repeat (the variants of one repeat ran back to back): scaling efficiency (2-rank inner loops per
    minute / 2 x 1-rank) and 2 ranks' outer steps per minute over 1 rank running both inner loops."""
    (one, same, two), loops, outer = (x[0] for x in VARIANTS), "inner_loops_per_min", "outer_steps_per_min"
    eff = [b / (2 * a) for a, b in zip(_of(r, one, loops), _of(r, two, loops), strict=True)]
    return {"efficiency": eff, "speedup": [b / a for a, b in zip(_of(r, same, outer), _of(r, two, outer), strict=True)]}


def medians(r: dict[str, Any], which: str) -> str:
    """The ratio of the variants' medians over repeats: efficiency (a percentage) or speedup."""
    (one, same, two), med = (x[0] for x in VARIANTS), lambda label, key: statistics.median(_of(r, label, key))
    if which == "efficiency":
        return f"{fmt(100 * med(two, 'inner_loops_per_min') / (2 * med(one, 'inner_loops_per_min')), 0)} %"
    return f"{fmt(med(two, 'outer_steps_per_min') / med(same, 'outer_steps_per_min'), 2)}x"


def scaling_table(r: dict[str, Any]) -> str:
    rows = [[what, ", ".join(fmt(v, 2) for v in values), ci(t_diff(values))] for what, values in scaling(r).items()]
    return md_table(["ratio", "per repeat", "mean [95 % t interval over repeats]"], rows)


def spread(r: dict[str, Any]) -> str:
    """How far apart the repeats of one variant are (slowest to fastest), at most."""
    loops = [_of(r, label, "inner_loops_per_min") for label, _, _ in VARIANTS]
    return f"{fmt(100 * max(max(x) / min(x) - 1 for x in loops), 0)} %"


def loads(r: dict[str, Any]) -> str:
    x = [row["load_1min_before"] for row in r["rows"]]
    return f"{fmt(min(x), 1)} to {fmt(max(x), 1)}"


def memory_table(r: dict[str, Any]) -> str:
    rows = [
        [m["storage"], m["ranks"], m["train_tokens"], ", ".join(fmt(x, 1) for x in m["dataset_pss_mib_per_rank"])]
        + [fmt(m["dataset_pss_mib_total"], 1), ", ".join(fmt(x, 0) for x in m["rss_peak_mib_per_rank"])]
        for m in r["memory"]
    ]
    cols = ["storage", "ranks", "train tokens", "dataset PSS per rank (MiB)", "dataset PSS, all ranks (MiB)"]
    return md_table([*cols, "peak RSS per rank (MiB)"], rows)


def growth(r: dict[str, Any], storage: str) -> str:
    """The dataset memory of 2 ranks over that of 1 rank."""
    by = {m["ranks"]: m["dataset_pss_mib_total"] for m in r["memory"] if m["storage"] == storage}
    return fmt(by[2] / max(by[1], 1e-9), 2)
