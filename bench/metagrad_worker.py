"""One outer step's meta-gradient on a PTB-shaped problem, in a process of its own (run by
bench/experiments/metagrad_cost.py). Prints one JSON row: wall seconds, this process's peak RSS before and
after, the gradient norm; ``--save-grads PATH`` writes the meta-gradient (latent, decoder) as safetensors.

Strategies: farzi's (``reverse``, ``checkpointed``, ``unroll``, ``paper``); ``reference`` (``checkpointed``
with model, summary and inner state in float64) and ``unroll-f64`` (plain float64 autograd, a check of the
reference); the peers, imported here only: ``torchopt`` (``torchopt.MetaAdam``, unrolled, ``eps_root`` 0,
1e-16 and 1e-24 as ``torchopt``, ``torchopt-eps-root``, ``torchopt-eps-root-tiny``) and ``higher``
(``higher.innerloop_ctx`` around ``torch.optim.Adam``). A peer not installed prints ``not_installed``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.metadata
import json
import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import functional_call

from farzi.distill.inner import Adam
from farzi.distill.metagrad import InnerLoop, meta_gradient
from farzi.distill.summary import banned_mask, init_summary, materialize
from farzi.models import SequenceModel, build_model, make_config, next_token_loss

FARZI = ("reverse", "checkpointed", "unroll", "paper")
PEERS = ("torchopt", "torchopt-eps-root", "torchopt-eps-root-tiny", "higher")
# TorchOpt's eps_root (inside the square root): 0 is its default, and the derivative of sqrt(v) at v = 0 is then
# inf. The variant rows add a small eps_root: 1e-16 looks harmless but changes Adam's step where the gradient is
# ~1e-7 (this problem has such entries: the meta-gradient moved by 6-26 %); 1e-24 is below every v_hat here
EPS_ROOTS = {"torchopt": 0.0, "torchopt-eps-root": 1e-16, "torchopt-eps-root-tiny": 1e-24}
STRATEGIES = (*FARZI, "reference", "unroll-f64", *PEERS)
LIBRARY = {**{k: "torchopt" for k in EPS_ROOTS}, "higher": "higher"}  # peer -> its distribution
# the inner optimizer every strategy and peer is given (farzi.distill.inner.Adam's defaults, weight decay 0)
LR, BETAS, EPS = 0.01, (0.9, 0.999), 1e-8


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class Problem:
    """One inner run and its terminal loss, as tensors every strategy reads the same way."""

    model: SequenceModel  # eval mode, float32, parameters = w0
    names: list[str]
    w0: list[Tensor]
    latent: Tensor  # leaves (float32)
    decoder: Tensor
    banned: Tensor
    batches: list[Tensor]
    x_real: Tensor

    def in_dtype(self, dtype: torch.dtype) -> Problem:
        """The same problem, every float cast to ``dtype`` (new leaves for the summary)."""
        latent, decoder = (x.detach().to(dtype).requires_grad_() for x in (self.latent, self.decoder))
        w0, model = [p.detach().to(dtype) for p in self.w0], copy.deepcopy(self.model).to(dtype)
        return dataclasses.replace(self, model=model, w0=w0, latent=latent, decoder=decoder)

    def syn(self, idx: Tensor | None) -> Tensor:
        return materialize(self.latent, self.decoder, 1.0, self.banned, idx)

    def terminal_with(self, forward: Callable[[Tensor], Tensor]) -> Tensor:
        return next_token_loss(forward(self.x_real), self.x_real)


def build_problem(steps: int, vocab=2000, xi=50, mu=400, syn_batch=32, d_model=16, latent_dim=8, real_batch=64, seed=0):
    """One PTB-shaped inner run: a 1-layer Transformer LM, a summary, T synthetic batches, a Zipf real batch."""
    torch.manual_seed(seed)
    V = vocab + 3
    cfg = make_config("transformer", V, max_len=xi, d_model=d_model, n_layers=1, n_heads=2, d_ff=4 * d_model, dropout=0)
    model = build_model("transformer", cfg).eval()
    names = [n for n, _ in model.named_parameters()]
    w0 = [p.detach().clone() for p in model.parameters()]
    gen = torch.Generator().manual_seed(seed)
    latent, decoder = init_summary(mu, xi, latent_dim, V, gen)
    batches = [torch.randperm(mu, generator=gen)[:syn_batch] for _ in range(steps)]
    # Zipf-distributed "sentences" as the real batch
    probs = 1.0 / torch.arange(1, V - 2, dtype=torch.float64)
    x_real = torch.multinomial(probs, real_batch * xi, replacement=True, generator=gen).view(real_batch, xi) + 3
    latent, decoder = latent.requires_grad_(), decoder.requires_grad_()
    return Problem(model, names, w0, latent, decoder, banned_mask(V, [0]), batches, x_real)


def _farzi(problem: Problem, strategy: str, dtype: torch.dtype) -> tuple[list[Tensor], float, dict]:
    p = problem if dtype == torch.float32 else problem.in_dtype(dtype)
    inner = Adam(lr=LR, beta1=BETAS[0], beta2=BETAS[1], eps=EPS)
    loop = InnerLoop(p.model, p.names, inner, p.syn, [p.latent, p.decoder], p.batches, compute_dtype=dtype)

    def terminal(w: list[Tensor]) -> Tensor:
        return p.terminal_with(lambda x: functional_call(p.model, dict(zip(p.names, w, strict=True)), (x,)))

    base = {"reference": "checkpointed", "unroll-f64": "unroll"}.get(strategy, strategy)
    out = meta_gradient(loop, p.w0, terminal, base)
    return out.grads, out.meta_loss, out.stats


def _torchopt(problem: Problem, eps_root: float) -> tuple[list[Tensor], float, dict]:
    import torchopt

    model = copy.deepcopy(problem.model)  # MetaAdam rebinds the module's parameters to graph nodes
    opt = torchopt.MetaAdam(model, lr=LR, betas=BETAS, eps=EPS, weight_decay=0.0, eps_root=eps_root)
    for idx in problem.batches:
        x = problem.syn(idx)
        opt.step(next_token_loss(model(x), x))
    f = problem.terminal_with(model)
    grads = torch.autograd.grad(f, [problem.latent, problem.decoder])
    version = importlib.metadata.version("torchopt")
    return list(grads), float(f.detach()), {"library": f"torchopt {version}", "eps_root": eps_root}


def _higher(problem: Problem) -> tuple[list[Tensor], float, dict]:
    import higher

    model = copy.deepcopy(problem.model)
    opt = torch.optim.Adam(model.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=0.0)
    with higher.innerloop_ctx(model, opt, copy_initial_weights=True) as (fmodel, diffopt):
        for t, idx in enumerate(problem.batches, start=1):
            x = problem.syn(idx)
            # higher's Adam divides by sqrt(v) + eps with the bias correction folded into the step size,
            # i.e. by sqrt(v_hat) + eps / sqrt(1 - beta2^t); this eps per step makes it sqrt(v_hat) + EPS,
            # torch.optim.Adam's and farzi's placement
            diffopt.step(next_token_loss(fmodel(x), x), override={"eps": [EPS * math.sqrt(1 - BETAS[1] ** t)]})
        f = problem.terminal_with(fmodel)
        grads = torch.autograd.grad(f, [problem.latent, problem.decoder])
    return list(grads), float(f.detach()), {"library": f"higher {importlib.metadata.version('higher')}"}


def solve(problem: Problem, strategy: str) -> tuple[list[Tensor], float, dict]:
    """(d meta-loss / d [latent, decoder], meta-loss, stats); ImportError where a peer is not installed."""
    if strategy in (*FARZI, "reference", "unroll-f64"):
        return _farzi(problem, strategy, torch.float32 if strategy in FARZI else torch.float64)
    if strategy in EPS_ROOTS:
        return _torchopt(problem, EPS_ROOTS[strategy])
    if strategy == "higher":
        return _higher(problem)
    raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")


def rel_error(grads: list[Tensor], ref: list[Tensor]) -> float:
    """||g - g_ref|| / ||g_ref|| over all of the summary's gradient, in float64 (nan if g has nan)."""
    num = sum(float((g.double() - r.double()).norm() ** 2) for g, r in zip(grads, ref, strict=True))
    den = sum(float(r.double().norm() ** 2) for r in ref)
    return math.sqrt(num / den)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--strategy", required=True, choices=STRATEGIES)
    ap.add_argument("--steps", type=int, required=True)
    sizes = dict(vocab=2000, xi=50, mu=400, syn_batch=32, d_model=16, latent_dim=8, real_batch=64, threads=2, seed=0)
    for flag, default in sizes.items():
        ap.add_argument(f"--{flag.replace('_', '-')}", type=int, default=default)
    ap.add_argument("--save-grads", default=None, help="write the meta-gradient here (safetensors)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    a = args
    problem = build_problem(a.steps, a.vocab, a.xi, a.mu, a.syn_batch, a.d_model, a.latent_dim, a.real_batch)
    row = {"strategy": args.strategy, "steps": args.steps}
    try:  # import a peer before the clock starts (and before the RSS baseline), as farzi's modules already are
        if args.strategy in PEERS:
            importlib.import_module(LIBRARY[args.strategy])
    except ImportError as exc:
        print(json.dumps({**row, "not_installed": exc.name or str(exc)}))
        return
    before, start = rss_mib(), time.perf_counter()
    grads, meta_loss, stats = solve(problem, args.strategy)
    seconds = time.perf_counter() - start
    if args.save_grads:
        from safetensors.torch import save_file

        tensors = {"latent": grads[0], "decoder": grads[1]}
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, args.save_grads)
    norm = float(torch.cat([g.flatten() for g in grads]).norm())
    row |= {"seconds": round(seconds, 3), "rss_before_mib": round(before, 1), "peak_rss_mib": round(rss_mib(), 1)}
    row |= {"grad_norm": norm if math.isfinite(norm) else str(norm), "meta_loss": meta_loss, "stats": stats}
    print(json.dumps(row | {"params": sum(p.numel() for p in problem.w0)}))


if __name__ == "__main__":
    main()
