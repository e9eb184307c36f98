"""Scale-out (issue 10): distillation over 1 and 2 ranks (torch.distributed, gloo), and the memory a
rank spends on a large prepared dataset read memory-mapped or decoded from parquet.

Throughput: the same distillation run three ways, each in fresh processes (``bench/scale_out_worker.py``),
one torch thread per rank: 1 rank with a meta-batch of 1 (one inner loop per outer step), 1 rank with a
meta-batch of 2 (two inner loops one after the other: the algorithm 2 ranks run) and 2 ranks with a
meta-batch of 1 each (two inner loops side by side, one flat all_reduce). Outer steps per minute come
from rank 0's outer loop (start-up excluded); inner loops per minute = outer steps per minute x inner
loops per outer step. Scaling efficiency = 2-rank inner loops per minute / (2 x the 1-rank figure).

Memory: a synthetic interaction log written straight from numpy (no structure, only its size matters),
saved as a prepared dataset; R ranks load it at the same time and hold it while each reads its PSS
(proportional set size: a page shared by k processes counts 1/k in each), before and after the load. The
same directory without its .npy arrays is decoded from parquet into each rank's own memory.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import BENCH, REPO, python
from bench.report import fmt, md_table
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
    procs = []
    for r in range(world):
        e = dict(env)
        if world > 1:
            e.update(FARZI_INIT_METHOD=f"file://{store / 'rdv'}", RANK=str(r), WORLD_SIZE=str(world))
        procs.append(
            subprocess.Popen(
                [python(), str(WORKER), *args], env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
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


def _synthetic_log(path: Path, users: int, items: int, mean_length: int, seed: int = 0) -> PreparedDataset:
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.poisson(mean_length, size=users), 2, None)
    splits = {}
    cut = [int(users * 0.8), int(users * 0.9)]
    bounds = {"train": (0, cut[0]), "valid": (cut[0], cut[1]), "test": (cut[1], users)}
    for split in SPLITS:
        lo, hi = bounds[split]
        n = lengths[lo:hi]
        offsets = np.zeros(len(n) + 1, dtype=np.int64)
        np.cumsum(n, out=offsets[1:])
        tokens = rng.integers(1, items + 1, size=int(offsets[-1]), dtype=np.int32)
        splits[split] = Sequences([f"u{i}" for i in range(lo, hi)], offsets, tokens)
    vocab = build_item_vocab([str(i) for i in range(1, items + 1)])
    ds = PreparedDataset(name="scale-out-log", task="rec", vocab=vocab, splits=splits, params={"seed": seed})
    ds.save(path, overwrite=True)
    return ds


def _distill_config(smoke: bool) -> dict[str, Any]:
    if smoke:
        return dict(
            mu=4,
            xi=8,
            latent_dim=4,
            inner_steps=2,
            outer_steps=3,
            real_batch=8,
            syn_batch=4,
            seed=0,
            model="sasrec",
            model_overrides={"d_model": 8, "n_layers": 1, "n_heads": 1, "max_len": 16},
        )
    return dict(
        mu=20,
        xi=20,
        latent_dim=8,
        inner_steps=10,
        outer_steps=20,
        real_batch=64,
        syn_batch=8,
        seed=0,
        model="sasrec",
        model_overrides={"d_model": 32, "n_layers": 1, "n_heads": 1, "max_len": 20},
    )


def run(protocol: str, work: Path, seeds: int, smoke: bool = False, experiment: str = "") -> dict[str, Any]:
    from farzi.data.prepare import PrepareOptions, prepare

    users, items = (60, 40) if smoke else (2000, 500)
    ds = prepare(
        "synthetic-rec",
        PrepareOptions(synthetic_vocab=items, synthetic_sequences=users, seed=1),
        out=work / "distill-data",
        overwrite=True,
    )
    base = _distill_config(smoke)
    repeats = max(1, seeds)
    rows = []
    for rep in range(repeats):
        order = VARIANTS if rep % 2 == 0 else VARIANTS[::-1]
        for label, world, meta_batch in order:
            cfg = {**base, "meta_batch": meta_batch}
            load = os.getloadavg()[0]
            got = _ranks(
                [
                    "distill",
                    "--dataset",
                    str(ds.path),
                    "--out",
                    str(work / f"b-{world}-{meta_batch}.safetensors"),
                    "--config",
                    json.dumps(cfg),
                ],
                world,
            )
            zero = got[0]
            per_min = 60 * zero["outer_steps"] / max(zero["loop_seconds"], 1e-9)
            rows.append(
                {
                    "variant": label,
                    "ranks": world,
                    "meta_batch": meta_batch,
                    "repeat": rep,
                    "outer_steps_per_min": per_min,
                    "inner_loops_per_min": per_min * world * meta_batch,
                    "rss_peak_mib_per_rank": [r["rss_peak_mib"] for r in got],
                    "load_1min_before": load,
                    "load_1min_after": os.getloadavg()[0],
                }
            )
    summary = {}
    for label, world, meta_batch in VARIANTS:
        mine = [r for r in rows if r["variant"] == label]
        summary[label] = {
            "ranks": world,
            "meta_batch": meta_batch,
            "outer_steps_per_min": statistics.median(r["outer_steps_per_min"] for r in mine),
            "inner_loops_per_min": statistics.median(r["inner_loops_per_min"] for r in mine),
            "inner_loops_per_min_all": [round(r["inner_loops_per_min"], 2) for r in mine],
            "rss_peak_mib_per_rank": max(max(r["rss_peak_mib_per_rank"]) for r in mine),
        }
    one, two = summary[VARIANTS[0][0]], summary[VARIANTS[2][0]]
    same = summary[VARIANTS[1][0]]
    scaling = {
        "efficiency": two["inner_loops_per_min"] / (2 * one["inner_loops_per_min"]),
        "speedup_same_algorithm": two["outer_steps_per_min"] / same["outer_steps_per_min"],
    }

    # memory: a large log, R ranks loading it at once
    m_users, m_items, m_len = (200, 50, 10) if smoke else (400_000, 20_000, 25)
    t0 = time.perf_counter()
    big = work / "big-log"
    if not (big / "manifest.json").is_file():
        _synthetic_log(big, m_users, m_items, m_len)
    decoded = work / "big-log-parquet"
    if not decoded.is_dir():
        shutil.copytree(big, decoded)
        for f in decoded.glob("*.npy"):
            f.unlink()
    build_seconds = time.perf_counter() - t0
    memory = []
    for storage, path in (("memory-mapped", big), ("parquet", decoded)):
        for world in (1, 2):
            got = _ranks(["memory", "--dataset", str(path)], world)
            memory.append(
                {
                    "storage": storage,
                    "ranks": world,
                    "train_tokens": got[0]["train_tokens"],
                    "memory_mapped": all(r["memory_mapped"] for r in got),
                    "dataset_pss_mib_per_rank": [round(r["pss_after_mib"] - r["pss_before_mib"], 1) for r in got],
                    "dataset_pss_mib_total": round(sum(r["pss_after_mib"] - r["pss_before_mib"] for r in got), 1),
                    "rss_peak_mib_per_rank": [round(r["rss_peak_mib"], 1) for r in got],
                }
            )
    return {
        "settings": {
            "threads_per_rank": 1,
            "distill": base,
            "distill_data": {"source": "synthetic-rec", "users": users, "items": items},
            "memory_log": {
                "users": m_users,
                "items": m_items,
                "mean_length": m_len,
                "build_seconds": round(build_seconds, 1),
            },
            "repeats": repeats,
            "cores": os.cpu_count(),
        },
        "rows": rows,
        "summary": summary,
        "scaling": scaling,
        "memory": memory,
    }


def render(name: str, result: dict[str, Any], plots: Path) -> str:
    st = result["settings"]
    table = [
        [
            label,
            s["ranks"],
            s["meta_batch"],
            fmt(s["outer_steps_per_min"], 1),
            fmt(s["inner_loops_per_min"], 1),
            ", ".join(fmt(x, 1) for x in s["inner_loops_per_min_all"]),
            fmt(s["rss_peak_mib_per_rank"], 0),
        ]
        for label, s in result["summary"].items()
    ]
    loads = [r["load_1min_before"] for r in result["rows"]]
    spread = max(
        max(s["inner_loops_per_min_all"]) / max(min(s["inner_loops_per_min_all"]), 1e-9) - 1
        for s in result["summary"].values()
    )
    sc = result["scaling"]
    mem = [
        [
            m["storage"],
            m["ranks"],
            m["train_tokens"],
            ", ".join(fmt(x, 1) for x in m["dataset_pss_mib_per_rank"]),
            fmt(m["dataset_pss_mib_total"], 1),
            ", ".join(fmt(x, 0) for x in m["rss_peak_mib_per_rank"]),
        ]
        for m in result["memory"]
    ]
    d = st["distill"]
    ml = st["memory_log"]
    lines = [
        f"Distillation of synthetic-rec ({st['distill_data']['users']} users, {st['distill_data']['items']} items), "
        f"SASRec {d['model_overrides']}, budget {d['mu']}x{d['xi']}, T = {d['inner_steps']}, "
        f"{d['outer_steps']} outer steps, each variant in fresh processes, 1 torch thread per rank, "
        f"median of {st['repeats']} repeat(s) (all listed), on a {st['cores']}-core machine shared with other "
        f"work (1-minute load average before the runs: {fmt(min(loads), 1)} to {fmt(max(loads), 1)}). "
        "Outer steps per minute are rank 0's outer loop (start-up excluded).",
        "",
        md_table(
            [
                "variant",
                "ranks",
                "meta-batch per rank",
                "outer steps/min",
                "inner loops/min",
                "inner loops/min, every repeat",
                "peak RSS per rank (MiB)",
            ],
            table,
        ),
        "",
        f"Scaling efficiency (2-rank inner loops per minute / 2 x 1-rank): **{fmt(100 * sc['efficiency'], 0)} %**; "
        f"2 ranks against 1 rank running the same two inner loops one after the other: "
        f"**{fmt(sc['speedup_same_algorithm'], 2)}x** outer steps per minute. What scales is the number of inner "
        "loops per outer step (each rank runs its own); one outer step is not faster than one inner loop plus "
        "an all_reduce of the summary's gradient. On 2 shared cores the two ranks compete with each other and "
        "with other jobs: read the ratio as this machine's, not as what separate cores or GPUs give. "
        f"The repeats of one variant differ by up to {fmt(100 * spread, 0)} % (slowest to fastest), "
        "so neither ratio is measured better than that: this run shows no gain from a second rank here, "
        "and cannot tell apart gains or losses smaller than that spread.",
        "",
        f"Memory of a prepared log of {ml['users']} users (mean length {ml['mean_length']}, {ml['items']} items) "
        "while R ranks hold it: the PSS each rank gained by loading it (a page shared by k processes counts "
        "1/k), and its peak RSS (shared pages counted in full).",
        "",
        md_table(
            [
                "storage",
                "ranks",
                "train tokens",
                "dataset PSS per rank (MiB)",
                "dataset PSS, all ranks (MiB)",
                "peak RSS per rank (MiB)",
            ],
            mem,
        ),
    ]
    by = {(m["storage"], m["ranks"]): m["dataset_pss_mib_total"] for m in result["memory"]}
    if all(k in by for k in (("memory-mapped", 1), ("memory-mapped", 2), ("parquet", 1), ("parquet", 2))):
        grow_map = by[("memory-mapped", 2)] / max(by[("memory-mapped", 1)], 1e-9)
        grow_pq = by[("parquet", 2)] / max(by[("parquet", 1)], 1e-9)
        lines += [
            "",
            f"2 ranks spend {fmt(grow_map, 2)}x the dataset memory of 1 rank when it is memory-mapped, "
            f"{fmt(grow_pq, 2)}x when each rank decodes the parquet files. The mapped pages are the page "
            "cache's: the kernel may drop and re-read them under memory pressure.",
        ]
    return "\n".join(lines)
