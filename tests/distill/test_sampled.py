"""The sampled softmax of a sparse summary's inner loss (``--inner-softmax sampled``) and of the meta-loss
(``--meta-softmax sampled``): each position's own candidates (or target) plus S negatives shared by the batch,
drawn uniformly, logQ corrected.

It is the full softmax when the negatives are every id; a candidate drawn as a negative counts once; the
corrected exp-sum of the negatives estimates the other ids' without bias; the exact reverse-mode meta-gradient
through it matches plain autograd in float64 (the negatives replayed); the draws depend on (seed, outer step,
start point, inner step) alone; and a run with both writes its bundle.

``python tests/distill/test_sampled.py`` prints the meta-gradient's quality table of the REPORT's vocab-scaling
section (:func:`quality_table`): the summary's meta-gradient with sampled softmaxes against the full ones."""

from __future__ import annotations

import math
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from farzi.distill.engine import DistillConfig, distill
from farzi.distill.inner import Adam, AdamState
from farzi.distill.metagrad import InnerLoop, meta_gradient
from farzi.distill.objectives import keyed_generator, step_draws
from farzi.distill.summary import banned_mask, materialize_sparse, top_support
from farzi.models import SparseDist, build_model, make_config, next_token_loss
from farzi.models.loss import draw_negatives, functional_loss, sampled_loss, sampled_nll

V, MU, XI, D, K = 23, 6, 8, 4, 5


def _summary(v: int = V, mu: int = MU, xi: int = XI, k: int = K, seed: int = 0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    latent = torch.randn(mu, xi, D, dtype=dtype, generator=gen).requires_grad_()
    decoder = torch.randn(D, v, dtype=dtype, generator=gen).requires_grad_()
    return latent, decoder, top_support(latent.detach(), decoder.detach(), k, banned_mask(v, [0]))


def _model(v: int = V, name: str = "sasrec", d_model: int = 8, xi: int = XI, dtype=torch.float64):
    torch.manual_seed(0)
    cfg = make_config(name, v, max_len=xi, d_model=d_model, n_layers=1, dropout=0.0)
    model = build_model(name, cfg).to(dtype).eval()
    return model, [n for n, _ in model.named_parameters()]


def test_the_negatives_are_distinct_sorted_ids_never_pad_and_every_id_when_s_covers_the_vocabulary() -> None:
    neg = draw_negatives(V, 7, torch.Generator().manual_seed(0))
    assert neg.shape == (7,) and bool((neg[1:] > neg[:-1]).all()) and int(neg.min()) >= 1 and int(neg.max()) < V
    assert torch.equal(draw_negatives(V, V - 1, torch.Generator()), torch.arange(1, V))
    assert torch.equal(draw_negatives(V, 10 * V, torch.Generator()), torch.arange(1, V))


def test_with_every_id_as_a_negative_the_sampled_softmax_is_the_full_one() -> None:
    latent, decoder, support = _summary()
    model, names = _model()
    params = dict(model.named_parameters())
    x = materialize_sparse(latent, decoder, 1.0, support)
    every = torch.arange(1, V)
    assert torch.allclose(sampled_loss(model, params, x, every), next_token_loss(model(x), x), atol=1e-12)
    ids = torch.randint(1, V, (4, XI), generator=torch.Generator().manual_seed(2))
    ids[0, 5:] = 0  # padding is not scored
    assert torch.allclose(sampled_loss(model, params, ids, every), functional_loss(model, params, ids), atol=1e-12)
    # gradients too, in the weights and in the summary
    wrt = [latent, decoder, *params.values()]
    a = torch.autograd.grad(sampled_loss(model, params, x, every), wrt)
    x = materialize_sparse(latent, decoder, 1.0, support)
    b = torch.autograd.grad(next_token_loss(model(x), x), wrt)
    for u, w in zip(a, b, strict=True):
        assert torch.allclose(u, w, atol=1e-10)


def test_a_candidate_drawn_as_a_negative_counts_once() -> None:
    gen = torch.Generator().manual_seed(1)
    h, table = (
        torch.randn(3, 4, dtype=torch.float64, generator=gen),
        torch.randn(9, 4, dtype=torch.float64, generator=gen),
    )
    cand, p = torch.tensor([[2, 5], [1, 8], [3, 4]]), torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.3, 0.7]])
    negatives = torch.tensor([2, 4, 6, 7])  # 2 is row 0's candidate, 4 row 2's
    got = sampled_nll(h, table, cand, p.double(), negatives)
    logits = h @ table.t()  # [3, 9]
    for i in range(3):
        others = [int(j) for j in negatives if int(j) not in cand[i].tolist()]
        scale = math.log(8 / 4)  # logQ: 4 draws among the 8 ids that are not <pad>
        lse = torch.logsumexp(torch.cat([logits[i, cand[i]], logits[i, others] + scale]), 0)
        want = lse * p[i].sum() - (p[i].double() * logits[i, cand[i]]).sum()
        assert float(got[i]) == pytest.approx(float(want), abs=1e-12)


def test_the_corrected_negatives_estimate_the_other_ids_exp_sum_without_bias() -> None:
    gen = torch.Generator().manual_seed(4)
    v, s = 200, 20
    logits = torch.randn(v, dtype=torch.float64, generator=gen)
    logits[0] = -math.inf  # <pad>
    draws = torch.stack([draw_negatives(v, s, gen) for _ in range(4000)])  # [n, S]
    estimate = (logits[draws].exp() * (v - 1) / s).sum(-1)  # [n]
    assert float(estimate.mean()) == pytest.approx(float(logits.exp().sum()), rel=0.02)


def _loop(negatives, sampled_meta: Tensor | None = None, steps: int = 8):
    latent, decoder, support = _summary()
    model, names = _model()
    w0 = [p.detach().clone() for p in model.parameters()]
    gen = torch.Generator().manual_seed(3)
    batches = [torch.randperm(MU, generator=gen)[:3] for _ in range(steps)]
    x_real = torch.randint(1, V, (5, XI), generator=gen)

    def syn(idx):
        return materialize_sparse(latent, decoder, 1.0, support, idx)

    def terminal(w):
        params = dict(zip(names, w, strict=True))
        if sampled_meta is not None:
            return sampled_loss(model, params, x_real, sampled_meta)
        return next_token_loss(functional_call(model, params, (x_real,)), x_real)

    loop = InnerLoop(model, names, Adam(lr=0.01), syn, [latent, decoder], batches, compute_dtype=torch.float64)
    loop.negatives = negatives
    return loop, w0, terminal


@pytest.mark.parametrize("meta", [False, True])
def test_the_reverse_meta_gradient_of_the_sampled_softmax_is_exact(meta: bool) -> None:
    """float64: the exact reverse-mode Adam (and the checkpointed pass) against plain autograd through the
    unrolled loop, every step with its own negatives, replayed alike; with a sampled meta-loss too."""
    gen = torch.Generator().manual_seed(5)
    negatives = [draw_negatives(V, 6, gen) for _ in range(8)]
    loop, w0, terminal = _loop(negatives, draw_negatives(V, 9, gen) if meta else None)
    want = meta_gradient(loop, w0, terminal, "unroll")
    for strategy, bound in (("checkpointed", 1e-10), ("reverse", 1e-5)):  # as tests/distill/test_sparse.py
        got = meta_gradient(loop, w0, terminal, strategy)
        g, w = (torch.cat([t.reshape(-1) for t in m.grads]) for m in (got, want))
        assert float((g - w).norm() / w.norm()) <= bound, strategy
        assert got.meta_loss == pytest.approx(want.meta_loss, rel=1e-12)
    # the negatives matter: other draws give another meta-gradient
    other = meta_gradient(_loop([draw_negatives(V, 6, gen) for _ in range(8)])[0], w0, terminal, "checkpointed")
    assert not torch.allclose(other.grads[1], want.grads[1])


def test_the_negatives_depend_on_seed_step_start_and_inner_step_alone() -> None:
    a, b = step_draws(7, 3), step_draws(7, 3)
    assert a.key == b.key and a.key != step_draws(7, 4).key != step_draws(7, 3, 1).key
    draw = [draw_negatives(1000, 50, keyed_generator(f"{a.key}:negatives:{t}")) for t in (1, 1, 2)]
    assert torch.equal(draw[0], draw[1]) and not torch.equal(draw[0], draw[2])
    assert a.rng.random() == b.rng.random()  # the other streams are those of every earlier version
    assert a.gen.initial_seed() == step_draws(7, 3).gen.initial_seed()


def test_a_run_with_sampled_inner_and_meta_softmax_writes_its_bundle(tiny_rec, tmp_path) -> None:
    base = dict(mu=4, xi=8, latent_dim=4, inner_steps=2, outer_steps=2, real_batch=8, objective="mm", seed=3)
    base |= dict(model="sasrec", model_overrides={"max_len": 16, "d_model": 8, "n_layers": 1}, support=4)
    cfg = DistillConfig.from_dict(
        base | dict(inner_softmax="sampled", inner_negatives=5, meta_softmax="sampled", meta_negatives=7)
    )
    result = distill(tiny_rec, cfg, tmp_path / "s.safetensors")
    record = result.bundle.meta["distill"]
    assert (record["inner_softmax"], record["inner_negatives"], record["meta_softmax"]) == ("sampled", 5, "sampled")
    assert result.summary["complete"]
    again = distill(tiny_rec, cfg, tmp_path / "t.safetensors")  # seeded: the same negatives, the same summary
    assert torch.equal(result.bundle.latent, again.bundle.latent)
    full_meta = DistillConfig.from_dict(base | dict(inner_softmax="sampled", inner_negatives=5))
    other = distill(tiny_rec, full_meta, tmp_path / "f.safetensors")  # the meta-loss over all 40 items
    assert not torch.equal(result.bundle.latent, other.bundle.latent)


# ------------------------------------------------------------------ quality of the meta-gradient (REPORT)
def quality(v: int, s: int, omega: bool, draws: int = 3, seed: int = 0) -> dict[str, float]:
    """The summary's meta-gradient (latent and decoder) with a sampled inner and / or meta softmax of ``s``
    negatives against the full ones: cosine and relative error, median over ``draws`` draws of negatives.

    A SASRec (d 32, 1 layer), a K = 16 summary of 8 x 20, T = 5 inner Adam steps on 4 sequences, 32 real
    sequences of 20 uniform random ids. ``omega``: the inner loop starts where 30 steps of training (lr 1e-3)
    left the model, continuing its Adam moments at lr 1e-3 (``--inner-state omega``, the default); else at the
    random init with fresh moments at lr 0.01 (objective ``mm``, the vocab-scaling bench's)."""
    mu, xi, k, steps = 8, 20, 16, 5
    latent, decoder, support = _summary(v, mu, xi, k, seed, torch.float32)
    model, names = _model(v, d_model=32, xi=xi, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed + 1)
    batches = [torch.randperm(mu, generator=gen)[:4] for _ in range(steps)]
    x_real = torch.randint(1, v, (32, xi), generator=gen)
    opt, state0, step0 = torch.optim.Adam(model.parameters(), lr=1e-3), None, 0
    for _ in range(30 if omega else 0):
        loss = model.loss(torch.randint(1, v, (32, xi), generator=gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
    if omega:
        moments = [[opt.state[p][m].clone() for p in model.parameters()] for m in ("exp_avg", "exp_avg_sq")]
        state0, step0 = AdamState(*moments), 30
    w0 = [p.detach().clone() for p in model.parameters()]

    def run(inner: list[Tensor] | None, meta: Tensor | None) -> Tensor:
        def terminal(w: list[Tensor]) -> Tensor:
            params = dict(zip(names, w, strict=True))
            return functional_loss(model, params, x_real) if meta is None else sampled_loss(model, params, x_real, meta)

        def syn(i: Tensor | None) -> SparseDist:
            return materialize_sparse(latent, decoder, 1.0, support, i)

        inner_opt = Adam(lr=1e-3 if omega else 0.01)
        loop = InnerLoop(model, names, inner_opt, syn, [latent, decoder], batches, state0=state0, step0=step0)
        loop.negatives = inner
        return torch.cat([g.reshape(-1).double() for g in meta_gradient(loop, w0, terminal).grads])

    full, out = run(None, None), {}
    for name, (si, sm) in {"inner": (s, 0), "meta": (0, s), "both": (s, s)}.items():
        cos, rel = [], []
        for r in range(draws):
            g = torch.Generator().manual_seed(100 * r + 7)
            inner = [draw_negatives(v, si, g) for _ in range(steps)] if si else None
            got = run(inner, draw_negatives(v, sm, g) if sm else None)
            cos.append(float(F.cosine_similarity(got, full, dim=0)))
            rel.append(float((got - full).norm() / full.norm()))
        out[f"{name}_cos"], out[f"{name}_rel"] = sorted(cos)[draws // 2], sorted(rel)[draws // 2]
    return out


def quality_table(vocabs=(2_000, 8_000, 32_000), negatives=(64, 512, 2048)) -> str:
    head = "| inner start | \\|V\\| | S | inner: cos / rel. error | meta: cos / rel. error | both: cos / rel. error |"
    rows = [head, "|---" * 6 + "|"]
    for omega in (True, False):
        for v in vocabs:
            for s in negatives:
                q = quality(v, s, omega)
                figs = [f"{q[f'{n}_cos']:.3f} / {q[f'{n}_rel']:.3f}" for n in ("inner", "meta", "both")]
                start = "omega (trained 30 steps, its moments)" if omega else "fresh (random init, zero moments)"
                rows.append(f"| {start} | {v} | {s} | " + " | ".join(figs) + " |")
                print(rows[-1], file=sys.stderr, flush=True)
    return "\n".join(rows)


if __name__ == "__main__":
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    print(quality_table())
    print(f"({time.perf_counter() - t0:.0f} s: python tests/distill/test_sampled.py, 1 thread)")
