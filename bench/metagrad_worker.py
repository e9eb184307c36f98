"""One outer step's meta-gradient on a PTB-shaped problem, in a process of its own.

Prints JSON: wall seconds of the meta-gradient, this process's peak RSS before
and after it, and the gradient norm. Run by bench/experiments/metagrad_cost.py.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch
from torch.func import functional_call

from farzi.distill.inner import Adam
from farzi.distill.metagrad import InnerLoop, meta_gradient
from farzi.distill.summary import banned_mask, init_summary, materialize
from farzi.models import build_model, make_config, next_token_loss


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--strategy", required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--vocab", type=int, default=2000)
    ap.add_argument("--xi", type=int, default=50)
    ap.add_argument("--mu", type=int, default=400)
    ap.add_argument("--syn-batch", type=int, default=32)
    ap.add_argument("--d-model", type=int, default=16)
    ap.add_argument("--latent-dim", type=int, default=8)
    ap.add_argument("--real-batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    V = args.vocab + 3
    cfg = make_config(
        "transformer",
        V,
        max_len=args.xi,
        d_model=args.d_model,
        n_layers=1,
        n_heads=2,
        d_ff=4 * args.d_model,
        dropout=0.0,
    )
    model = build_model("transformer", cfg).eval()
    names = [n for n, _ in model.named_parameters()]
    w0 = [p.detach().clone() for p in model.parameters()]
    gen = torch.Generator().manual_seed(args.seed)
    latent, decoder = init_summary(args.mu, args.xi, args.latent_dim, V, gen)
    latent.requires_grad_()
    decoder.requires_grad_()
    banned = banned_mask(V, [0])

    def syn(idx):
        return materialize(latent, decoder, 1.0, banned, idx)

    batches = [torch.randperm(args.mu, generator=gen)[: args.syn_batch] for _ in range(args.steps)]
    loop = InnerLoop(model, names, Adam(lr=0.01), syn, [latent, decoder], batches)
    # Zipf-distributed "sentences" as the real batch
    probs = 1.0 / torch.arange(1, V - 2, dtype=torch.float64)
    x_real = (
        torch.multinomial(probs, args.real_batch * args.xi, replacement=True, generator=gen).view(
            args.real_batch, args.xi
        )
        + 3
    )

    def terminal(w):
        return next_token_loss(functional_call(model, dict(zip(names, w, strict=True)), (x_real,)), x_real)

    before = rss_mib()
    start = time.perf_counter()
    out = meta_gradient(loop, w0, terminal, args.strategy)
    seconds = time.perf_counter() - start
    norm = float(torch.cat([g.flatten() for g in out.grads]).norm())
    print(
        json.dumps(
            {
                "strategy": args.strategy,
                "steps": args.steps,
                "seconds": round(seconds, 3),
                "rss_before_mib": round(before, 1),
                "peak_rss_mib": round(rss_mib(), 1),
                "grad_norm": norm,
                "meta_loss": out.meta_loss,
                "stats": out.stats,
                "params": sum(p.numel() for p in w0),
            }
        )
    )


if __name__ == "__main__":
    main()
