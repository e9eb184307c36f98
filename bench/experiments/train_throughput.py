"""Training throughput at large item vocabularies (issue 11.1): the code before the fast loss and length
bucketing against the code now, in one run.

One SASRec training epoch through ``farzi.train.train_model`` (default SASRec settings: max_len 200,
d_model 64, 2 blocks, batches of 128) on synthetic interaction logs with a MovieLens-like length spread
(log-normal, median 72 interactions, at least 20), at |V| = 1.7k, 10k and 25k. The code before the change
is extracted from git (commit ``BASELINE``) into the work directory; each (version, |V|, repeat) runs in
a fresh process (``bench/train_throughput_worker.py``) on the same data and seed, the two versions
alternating which goes first. Peak memory is that process's RSS high-water mark after the epoch minus
its RSS just before it: the memory of the epoch's largest step (tracemalloc would not see torch's
allocations).
"""

from __future__ import annotations

import io
import statistics
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import torch

from bench.common import BENCH, REPO, python, run_json
from bench.report import fmt, md_table

BASELINE = "bd37c7c76d59391362e239ce92956ad2a3a173df"  # the last commit before issue 11.1's training changes
VOCABS = (1_700, 10_000, 25_000)
GOAL_VOCAB = 10_000
WORKER = BENCH / "train_throughput_worker.py"
VERSIONS = ("before", "after")


def extract(commit: str, into: Path) -> Path:
    """``farzi/`` as of ``commit`` (git archive), under ``into``; returns ``into``."""
    if (into / "farzi" / "__init__.py").is_file():
        return into
    tar = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", commit, "farzi"], capture_output=True)
    if tar.returncode != 0:
        raise RuntimeError(f"git archive {commit} failed: {tar.stderr.decode(errors='replace').strip()}")
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as archive:
        archive.extractall(into, filter="data")
    return into


def _git(*args: str) -> str:
    out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    return out.stdout.strip()


def run(protocol: str, work: Path, seeds: int, smoke: bool = False, experiment: str = "") -> dict[str, Any]:
    threads = torch.get_num_threads()  # as set by `python -m bench run --threads N`
    if smoke:
        vocabs: tuple[int, ...] = (50, 120)
        shape = ["--users", "40", "--median", "8", "--shortest", "2", "--longest", "60", "--max-len", "20"]
        shape += ["--d-model", "8", "--batch-size", "16"]
    else:
        vocabs = VOCABS
        shape = ["--users", "512", "--median", "72", "--sigma", "1.55", "--shortest", "20", "--longest", "5000"]
        shape += ["--max-len", "200", "--d-model", "64", "--batch-size", "128"]
    roots = {"before": extract(BASELINE, work / "baseline"), "after": REPO}
    repeats = max(1, seeds)
    rows: list[dict[str, Any]] = []
    for V in vocabs:
        for rep in range(repeats):
            order = VERSIONS if rep % 2 == 0 else VERSIONS[::-1]  # alternate which version goes first
            for version in order:
                cmd = [python(), str(WORKER), "--farzi-root", str(roots[version]), "--vocab", str(V), *shape]
                cmd += ["--threads", str(threads), "--seed", "0"]
                rows.append({"version": version, "repeat": rep, **run_json(cmd, timeout=7200)})
    return {
        "protocol": protocol,
        "settings": {
            "model": "sasrec (defaults but the shape flags)",
            "shape": shape,
            "vocabs": list(vocabs),
            "repeats": repeats,
            "threads": threads,
            "baseline_commit": BASELINE,
            "current_commit": _git("rev-parse", "HEAD"),
            "current_dirty": bool(_git("status", "--porcelain", "--", "farzi")),
        },
        "rows": rows,
        "summary": summarize(rows, vocabs),
    }


def summarize(rows: list[dict[str, Any]], vocabs: tuple[int, ...] | list[int]) -> list[dict[str, Any]]:
    """Per |V|: the median over repeats of each version's figures, and the after / before ratios."""
    out = []
    for V in vocabs:
        by = {v: [r for r in rows if r["vocab"] == V and r["version"] == v] for v in VERSIONS}
        if not all(by.values()):
            continue
        med = {
            v: {
                "sequences_per_second": statistics.median(r["sequences_per_second"] for r in rs),
                "peak_step_mib": statistics.median(r["peak_step_mib"] for r in rs),
                "seconds": statistics.median(r["seconds"] for r in rs),
            }
            for v, rs in by.items()
        }
        b, a = by["before"][0], by["after"][0]
        loss_before = b["loss_plain_at_init"]
        loss_after = a["loss_fast_at_init"] if a["loss_fast_at_init"] is not None else a["loss_plain_at_init"]
        out.append(
            {
                "vocab": V,
                "before": med["before"],
                "after": med["after"],
                "speed_ratio": med["after"]["sequences_per_second"] / med["before"]["sequences_per_second"],
                "memory_ratio": med["after"]["peak_step_mib"] / max(med["before"]["peak_step_mib"], 1e-9),
                "positions_before": b["positions_computed"],
                "positions_after": a["positions_computed"],
                "real_tokens": a["real_tokens"],
                "window_fill": a["window_fill"],
                "median_length": a["median_length"],
                "loss_before": loss_before,
                "loss_after": loss_after,
                "loss_rel_diff": abs(loss_after - loss_before) / abs(loss_before),
                "peak_set_by_epoch": all(r["rss_peak_after_mib"] > r["rss_peak_before_mib"] for r in by["after"])
                and all(r["rss_peak_after_mib"] > r["rss_peak_before_mib"] for r in by["before"]),
            }
        )
    return out


def goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 11's must-hold line at |V| = 10k."""
    s = next((x for x in result["summary"] if x["vocab"] == GOAL_VOCAB), None)
    if s is None:
        return []
    return [
        {
            "goal": f"|V| = {GOAL_VOCAB}: >= 2x sequences per second",
            "measured": f"{s['speed_ratio']:.1f}x",
            "holds": s["speed_ratio"] >= 2.0,
        },
        {
            "goal": f"|V| = {GOAL_VOCAB}: <= 0.5x peak memory per training step",
            "measured": f"{s['memory_ratio']:.3f}x",
            "holds": s["memory_ratio"] <= 0.5,
        },
        {
            "goal": f"|V| = {GOAL_VOCAB}: same loss (initial model, fixed batch)",
            "measured": f"relative difference {s['loss_rel_diff']:.1e}",
            "holds": s["loss_rel_diff"] <= 1e-5,
        },
    ]


def render(name: str, result: dict[str, Any], plots: Path) -> str:
    st = result["settings"]
    table = []
    for s in result["summary"]:
        b, a = s["before"], s["after"]
        table.append(
            [
                s["vocab"],
                fmt(b["sequences_per_second"], 1),
                fmt(a["sequences_per_second"], 1),
                f"{s['speed_ratio']:.1f}x",
                fmt(b["peak_step_mib"], 0),
                fmt(a["peak_step_mib"], 0),
                f"{s['memory_ratio']:.3f}x",
                f"{s['positions_before']} / {s['positions_after']}",
                f"{s['loss_rel_diff']:.1e}",
            ]
        )
    fill = result["summary"][0]["window_fill"] if result["summary"] else None
    median = result["summary"][0]["median_length"] if result["summary"] else None
    lines = [
        "One epoch of SASRec training through `farzi.train.train_model`, the code before issue 11.1 (commit "
        f"`{st['baseline_commit'][:7]}`: full [B, L, V] logits, random batches padded to the longest) against the "
        f"code now (commit `{st['current_commit'][:7]}`{', with uncommitted changes' if st['current_dirty'] else ''}: "
        "the output layer and cross-entropy only at positions with a target, in chunks of positions, batches "
        "bucketed by length), each (version, |V|, repeat) in a fresh process, the versions alternating, "
        f"median of {st['repeats']} repeats, {st['threads']} torch thread(s). Data: synthetic logs "
        f"(`{' '.join(st['shape'])}`): median user length {fmt(median, 0)}, windows {fmt(100 * fill, 0)} % real "
        "tokens. Peak memory: the process's RSS high-water mark after the epoch minus its RSS just before it "
        "(the epoch's largest step). 'Positions' counts the [batch, length] positions each version ran through "
        "the model in the epoch (the real tokens: "
        f"{result['summary'][0]['real_tokens'] if result['summary'] else '—'}). 'Loss diff' compares the "
        "initial model's loss on a fixed batch: plain path before, fast path after.",
        "",
        md_table(
            [
                "\\|V\\|",
                "before: seq/s",
                "after: seq/s",
                "speed",
                "before: peak MiB",
                "after: peak MiB",
                "memory",
                "positions before / after",
                "loss diff",
            ],
            table,
        ),
        "",
    ]
    g = goals(result)
    if g:
        lines += [
            md_table(
                ["goal", "measured", "holds"],
                [[x["goal"], x["measured"], "yes" if x["holds"] else "**no**"] for x in g],
            ),
        ]
    return "\n".join(lines)
