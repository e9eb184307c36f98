"""One epoch of SASRec training through ``farzi.train.train_model``, in a process of its own.

Run by bench/experiments/train_throughput.py, once per (code version, |V|, repeat), as a script:

    python bench/train_throughput_worker.py --farzi-root DIR --vocab V ...

``--farzi-root`` is the directory holding the ``farzi`` package to measure (this
checkout, or an extracted copy of the code before the change); it goes first on
``sys.path`` before anything imports farzi. The script uses only the API both
versions share (Sequences, SequenceTrainSet, make_config/build_model,
TrainConfig/train_model, next_token_loss), so the same lines time either one.

Prints one JSON document: wall time and sequences per second of one epoch (after
a warm-up step on a tiny batch), the RSS before it and the high-water mark after
it (so their difference is the peak memory of the epoch's largest step), the
batch shapes the epoch computed, and the loss of the initial model on a fixed
batch (both versions must agree on it to float tolerance).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from types import SimpleNamespace


def rss_now_mib() -> float:
    """Current resident set (MiB), from /proc/self/statm."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def rss_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class _EpochDone(Exception):
    pass


def synthetic_lengths(n: int, seed: int, median: float, sigma: float, shortest: int, longest: int):
    """Interaction counts per user: log-normal around ``median`` (MovieLens-like: a long right tail)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    raw = np.exp(rng.normal(np.log(median), sigma, size=n))
    return np.clip(np.round(raw), shortest, longest).astype(np.int64)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--farzi-root", type=Path, required=True)
    ap.add_argument("--vocab", type=int, required=True, help="|V| including <pad>")
    ap.add_argument("--users", type=int, default=512)
    ap.add_argument("--median", type=float, default=72.0)
    ap.add_argument("--sigma", type=float, default=1.55)
    ap.add_argument("--shortest", type=int, default=20)
    ap.add_argument("--longest", type=int, default=5000)
    ap.add_argument("--max-len", type=int, default=200)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    root = args.farzi_root.resolve()
    sys.path.insert(0, str(root))
    import numpy as np
    import torch

    import farzi
    from farzi.batching import SequenceTrainSet, pad_right
    from farzi.data.sequences import Sequences
    from farzi.models import build_model, make_config, next_token_loss
    from farzi.train import TrainConfig, train_model

    if Path(farzi.__file__).resolve().parent != root / "farzi":
        raise SystemExit(f"imported farzi from {farzi.__file__}, not from {root}")
    torch.set_num_threads(args.threads)

    # the data: the same users and items for every code version (numpy, seeded)
    V = args.vocab
    lengths = synthetic_lengths(args.users, args.seed, args.median, args.sigma, args.shortest, args.longest)
    rng = np.random.default_rng(args.seed + 1)
    popularity = 1.0 / np.arange(1, V) ** 0.8  # Zipf-like item popularity over ids 1 .. V-1
    popularity /= popularity.sum()
    seqs = Sequences.from_lists(
        [f"u{i}" for i in range(args.users)], [rng.choice(np.arange(1, V), size=int(n), p=popularity) for n in lengths]
    )
    cfg = make_config("sasrec", V, max_len=args.max_len, d_model=args.d_model)
    torch.manual_seed(args.seed)
    model = build_model("sasrec", cfg)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}

    # warm-up: two steps of the same loop on a tiny model and batch (first-call costs: Adam's lazy imports,
    # thread pools, the allocator), far below the epoch's memory peak
    torch.manual_seed(args.seed)
    tiny = build_model("sasrec", make_config("sasrec", 50, max_len=args.max_len, d_model=8))
    few = Sequences.from_lists(["a", "b", "c"], [np.arange(1, 21) % 49 + 1, np.arange(1, 5), np.arange(3, 40) % 49 + 1])
    warm_cfg = TrainConfig(batch_size=2, max_steps=10**9, eval_every=10**9, patience=0, seed=args.seed)

    def stop_after_two(step: int, *_rest: object) -> None:  # older farzi passes 3 arguments, newer 4
        if step >= 2:
            raise _EpochDone

    try:
        train_model(
            tiny, SequenceTrainSet(few, args.max_len), SimpleNamespace(task="rec"), warm_cfg, on_step=stop_after_two
        )
    except _EpochDone:
        pass
    del tiny

    train_set = SequenceTrainSet(seqs, args.max_len)
    steps = args.epochs * -(-args.users // args.batch_size)
    config = TrainConfig(batch_size=args.batch_size, max_steps=10**9, eval_every=10**9, patience=0, seed=args.seed)
    step_times: list[float] = []

    def hook(step: int, *_rest: object) -> None:
        step_times.append(time.perf_counter())
        if step >= steps:
            raise _EpochDone

    before, peak_before = rss_now_mib(), rss_peak_mib()
    start = time.perf_counter()
    try:
        train_model(model, train_set, SimpleNamespace(task="rec"), config, on_step=hook)
    except _EpochDone:
        pass
    seconds = time.perf_counter() - start
    peak_after = rss_peak_mib()

    # what the epoch computed: the same batches again, from a generator seeded as train_model seeds its own
    gen = torch.Generator().manual_seed(args.seed)
    shapes = [list(b.shape) for _ in range(args.epochs) for b in train_set.batches(args.batch_size, gen, "cpu")]
    # the initial model's loss on a fixed batch (no dropout): the plain path here, the fast one if this code has it
    model.load_state_dict(initial)
    model.eval()
    fixed = pad_right([seqs[i][-args.max_len :] for i in range(min(16, args.users))])
    with torch.no_grad():
        plain = float(next_token_loss(model(fixed), fixed))
        fast = float(model.loss(fixed)) if hasattr(model, "loss") else None

    windows = np.minimum(lengths, args.max_len)
    print(
        json.dumps(
            {
                "farzi_root": str(root),
                "vocab": V,
                "users": args.users,
                "steps": steps,
                "sequences": args.users * args.epochs,
                "seconds": round(seconds, 4),
                "step_seconds": [round(b - a, 4) for a, b in zip([start, *step_times[:-1]], step_times, strict=True)],
                "sequences_per_second": round(args.users * args.epochs / seconds, 3),
                "rss_before_mib": round(before, 1),
                "rss_peak_before_mib": round(peak_before, 1),
                "rss_peak_after_mib": round(peak_after, 1),
                "peak_step_mib": round(peak_after - before, 1),
                "batch_shapes": shapes,
                "positions_computed": int(sum(b * L for b, L in shapes)),
                "real_tokens": int(windows.sum()) * args.epochs,
                "window_fill": round(float(windows.mean()) / args.max_len, 4),
                "median_length": float(np.median(lengths)),
                "loss_plain_at_init": plain,
                "loss_fast_at_init": fast,
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
