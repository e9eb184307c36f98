"""The fast loss (model.loss, farzi.models.loss) against the plain next_token_loss(model(x), x).

Same values and gradients to float tolerance on ids, soft and one-hot inputs, for every
reduction and chunk size; double backward (Hessian-vector products, as distillation's inner
loop takes them); padding never reaching the output layer; and no [N, V] tensor saved for
backward.
"""

from __future__ import annotations

import pytest
import torch
from _zoo import VOCAB, make_ids, one_hot, random_distributions
from torch.func import functional_call

from farzi.models import (
    CHUNK_ELEMENTS,
    chunk_positions,
    features_next_token_loss,
    functional_loss,
    linear_cross_entropy,
    next_token_loss,
    score_targets,
)
from farzi.models.base import tied_logits

TOL = {"rtol": 1e-10, "atol": 1e-12}  # float64 throughout


def _inputs(kind: str) -> torch.Tensor:
    if kind == "ids":
        return make_ids(seed=5, batch=4)
    if kind == "one-hot":
        return one_hot(make_ids(seed=6, batch=4))
    x = random_distributions(seed=7, batch=3, length=6)
    x[1, 4:] = 0.0  # a padded tail: positions without mass are not scored
    return x


@pytest.mark.parametrize("kind", ["ids", "soft", "one-hot"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_same_loss_and_gradients_as_the_plain_path(spec, kind, reduction):
    model = spec.build(seed=1).eval()
    x = _inputs(kind)
    params = list(model.parameters())
    plain = next_token_loss(model(x), x, reduction)
    fast = model.loss(x, reduction=reduction)
    assert fast.shape == plain.shape
    torch.testing.assert_close(fast, plain, **TOL)
    weights = torch.rand(plain.shape, generator=torch.Generator().manual_seed(8), dtype=plain.dtype)
    g_plain = torch.autograd.grad((plain * weights).sum(), params)  # per-position weights for "none"
    g_fast = torch.autograd.grad((fast * weights).sum(), params)
    for (name, _), a, b in zip(model.named_parameters(), g_fast, g_plain, strict=True):
        torch.testing.assert_close(a, b, **TOL, msg=name)


def test_gradient_in_soft_inputs_and_targets(spec):
    """Distillation differentiates the loss in the synthetic data: through inputs and targets both."""
    model = spec.build(seed=2).eval()
    x0 = random_distributions(seed=9)
    xa, xb = x0.clone().requires_grad_(), x0.clone().requires_grad_()
    (ga,) = torch.autograd.grad(next_token_loss(model(xa), xa), xa)
    (gb,) = torch.autograd.grad(model.loss(xb), xb)
    assert ga.abs().sum() > 0
    torch.testing.assert_close(gb, ga, **TOL)


@pytest.mark.parametrize("chunk", [1, 2, 5, 1000])
@pytest.mark.parametrize("targets", ["ids", "soft"])
def test_every_chunk_size_gives_the_same_values_and_gradients(chunk, targets):
    g = torch.Generator().manual_seed(10)
    N, d, V = 7, 4, 11
    h = torch.randn(N, d, generator=g, dtype=torch.float64, requires_grad=True)
    table = torch.randn(V, d, generator=g, dtype=torch.float64, requires_grad=True)
    if targets == "ids":
        t = torch.randint(1, V, (N,), generator=g)
        want = -torch.log_softmax(tied_logits(h, table), -1).gather(1, t[:, None]).squeeze(1)
    else:
        t = torch.softmax(torch.randn(N, V, generator=g, dtype=torch.float64), -1)
        t[:, 0] = 0.0
        want = -(t * torch.log_softmax(tied_logits(h, table), -1)).sum(-1)
    got = linear_cross_entropy(h, table, t, chunk=chunk)
    torch.testing.assert_close(got, want, **TOL)
    for weights in (torch.ones(N, dtype=torch.float64), torch.arange(N, dtype=torch.float64)):  # fused, recomputed
        ga = torch.autograd.grad((got * weights).sum(), (h, table), retain_graph=True)
        gb = torch.autograd.grad((want * weights).sum(), (h, table), retain_graph=True)
        for a, b in zip(ga, gb, strict=True):
            torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("targets", ["ids", "soft"])
def test_gradcheck_and_gradgradcheck(targets):
    g = torch.Generator().manual_seed(11)
    N, d, V = 5, 3, 6
    h = torch.randn(N, d, generator=g, dtype=torch.float64, requires_grad=True)
    table = torch.randn(V, d, generator=g, dtype=torch.float64, requires_grad=True)
    if targets == "ids":
        t = torch.randint(1, V, (N,), generator=g)
        inputs: tuple[torch.Tensor, ...] = (h, table)

        def fn(*a):
            return linear_cross_entropy(a[0], a[1], t, chunk=2)
    else:
        t = torch.softmax(torch.randn(N, V, generator=g, dtype=torch.float64), -1).requires_grad_()
        inputs = (h, table, t)

        def fn(*a):
            return linear_cross_entropy(*a, chunk=2)

    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


def test_hessian_vector_product_through_functional_loss(spec):
    """functional_loss under double backward equals the plain path's HVP (the inner loop's use)."""
    model = spec.build(seed=3).eval()
    x = make_ids(seed=12)
    params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    names = list(params)
    g = torch.Generator().manual_seed(13)
    v = [torch.randn(params[k].shape, generator=g, dtype=torch.float64) for k in names]

    def hvp(loss):
        grads = torch.autograd.grad(loss, [params[k] for k in names], create_graph=True)
        dot = sum((a * b).sum() for a, b in zip(grads, v, strict=True))
        return torch.autograd.grad(dot, [params[k] for k in names])

    plain_loss = next_token_loss(functional_call(model, params, (x,)), x)
    fast_loss = functional_loss(model, params, x)
    torch.testing.assert_close(fast_loss, plain_loss, **TOL)
    for name, a, b in zip(names, hvp(fast_loss), hvp(plain_loss), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=name)
    # and it really used the given parameters
    shifted = {k: p + 0.05 for k, p in params.items()}
    assert not torch.allclose(functional_loss(model, shifted, x), fast_loss)


def test_padding_never_reaches_the_output_layer():
    """NaN features at padded positions (and at the last, which has no target) leave the loss finite."""
    g = torch.Generator().manual_seed(14)
    B, L, d, V = 3, 6, 4, 9
    x = torch.randint(1, V, (B, L), generator=g)
    x[1, 3:] = 0
    x[2, 1:] = 0  # one real token: nothing to score in this row
    h = torch.randn(B, L, d, generator=g, dtype=torch.float64)
    table = torch.randn(V, d, generator=g, dtype=torch.float64)
    clean = features_next_token_loss(h, table, x)
    poisoned = h.clone()
    poisoned[:, -1] = float("nan")  # the last position predicts nothing
    poisoned[1, 2:] = float("nan")  # row 1: positions 2.. predict pads
    poisoned[2, :] = float("nan")  # row 2: no targets at all
    got = features_next_token_loss(poisoned, table, x)
    assert torch.isfinite(got)
    torch.testing.assert_close(got, clean, **TOL)
    assert torch.isnan(next_token_loss(tied_logits(poisoned, table), x))  # the plain path does compute them


def _largest_saved(fn) -> int:
    sizes: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return max(sizes)


def test_no_positions_by_vocabulary_tensor_is_saved_for_backward(spec):
    V = 2000
    model = spec.build(seed=4, vocab_size=V).eval()
    x = make_ids(seed=15, batch=4, vocab=V)
    scored = int((x[:, 1:] != 0).sum())
    plain = _largest_saved(lambda: next_token_loss(model(x), x))
    fast = _largest_saved(lambda: model.loss(x))
    assert plain >= scored * V  # the plain path keeps (log-)probabilities of every position
    assert fast <= V * model.config.d_model  # the fast path: nothing larger than the table


def test_chunk_positions_bound_the_chunk():
    assert chunk_positions(10_000) == CHUNK_ELEMENTS // 10_000
    assert chunk_positions(10_000) * 10_000 <= CHUNK_ELEMENTS
    assert chunk_positions(CHUNK_ELEMENTS * 4) == 1
    assert chunk_positions(VOCAB, chunk_elements=VOCAB * 3) == 3


def test_score_targets_match_log_softmax():
    g = torch.Generator().manual_seed(16)
    N, d, V = 9, 4, 13
    h = torch.randn(N, d, generator=g)
    table = torch.randn(V, d, generator=g)
    t = torch.randint(1, V, (N,), generator=g)
    logp = torch.log_softmax(tied_logits(h, table), -1)
    nll, hit = score_targets(h, table, t, chunk=4)
    torch.testing.assert_close(nll, -logp.gather(1, t[:, None]).squeeze(1))
    assert hit.tolist() == (logp.argmax(-1) == t).tolist()
