"""One rank of the scale-out benchmark (bench/experiments/scale_out.py); prints one JSON document.

``distill``: join the job (``FARZI_INIT_METHOD``, ``RANK``, ``WORLD_SIZE`` in the environment, or alone),
run ``farzi.distill.engine.distill`` with the collective and report the outer loop's time and this
process's peak RSS. ``memory``: load a prepared dataset while the other ranks hold theirs, and report
this process's proportional set size (PSS: shared pages split among the processes that map them) before
and after, so that the sum over ranks is what the machine really spends.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path


def _mib(path: str, key: str) -> float | None:
    """A figure of this process from /proc, in MiB (None where the OS has none)."""
    try:
        return next(int(x.split()[1]) / 1024 for x in Path(path).read_text().splitlines() if x.startswith(key))
    except (OSError, StopIteration):
        return None


def pss_mib() -> float | None:
    return _mib("/proc/self/smaps_rollup", "Pss:")


def rss_peak_mib() -> float:
    """VmHWM (getrusage's ru_maxrss survives exec: it would report the process that started this one)."""
    return _mib("/proc/self/status", "VmHWM:") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("distill", "memory"))
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--out", default="")
    ap.add_argument("--config", default="{}", help="the distillation's flat record (DistillConfig.from_dict) as JSON")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from farzi.data.prepared import load_prepared
    from farzi.distill.config import DistillConfig
    from farzi.distill.engine import distill
    from farzi.distributed import ranks

    with ranks("cpu", timeout=600) as collective:
        row = {"rank": collective.rank, "ranks": collective.world}
        if args.mode == "memory":
            collective.gather(None)  # everyone imported: measure from here
            before = pss_mib()
            ds = load_prepared(args.dataset)
            checksum = int(ds.train.tokens[:: max(1, len(ds.train.tokens) // 1000)].sum())  # use the data
            collective.gather(None)  # every rank holds its copy (or its mapping) now
            after = pss_mib()
            collective.gather(None)
            row |= {"pss_before_mib": before, "pss_after_mib": after, "rss_peak_mib": rss_peak_mib()}
            mapped = type(ds.train.tokens).__name__ == "memmap"
            row |= {"train_tokens": int(ds.train.num_tokens), "memory_mapped": mapped, "checksum": checksum}
        else:
            ds, cfg = load_prepared(args.dataset), DistillConfig.from_dict(json.loads(args.config))
            t0 = time.perf_counter()
            result = distill(ds, cfg, Path(args.out), collective=collective, overwrite=True)
            row |= {"outer_steps": result.steps, "loop_seconds": round(result.wall_seconds, 4)}
            row |= {"call_seconds": round(time.perf_counter() - t0, 4), "rss_peak_mib": round(rss_peak_mib(), 1)}
    sys.stdout.write(json.dumps(row) + "\n")
    return 0


def leave(status: int) -> None:
    """End the process once its row is out, without the interpreter's teardown: a process group's
    threads can abort a rank there (SIGABRT, "terminate called without an active exception", seen in
    CI), turning a finished rank into a failed one (as ``farzictl.app.entry`` does for the CLI's ranks)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    leave(main())
