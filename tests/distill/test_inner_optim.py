"""The inner optimizers: torch.optim parity, exact reversal, and the adjoint vs autograd."""

from __future__ import annotations

import pytest
import torch

from farzi.distill.inner import SGD, Adam


def _quadratic_problem(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(5, 5, generator=gen, dtype=torch.float64)
    h = a @ a.T + torch.eye(5, dtype=torch.float64)  # positive definite
    b = torch.randn(5, generator=gen, dtype=torch.float64)
    w0 = [torch.randn(5, generator=gen, dtype=torch.float64), torch.randn(3, generator=gen, dtype=torch.float64)]

    def loss(w):
        return 0.5 * w[0] @ h @ w[0] - b @ w[0] + (w[1] ** 4).sum() + (w[0][:3] * w[1]).sum()

    return w0, loss


OPTIMIZERS = [
    pytest.param(Adam(lr=0.05), lambda p: torch.optim.Adam(p, lr=0.05), id="adam"),
    pytest.param(
        Adam(lr=0.05, weight_decay=0.1), lambda p: torch.optim.Adam(p, lr=0.05, weight_decay=0.1), id="adam-wd"
    ),
    pytest.param(
        SGD(lr=0.02, momentum=0.9, weight_decay=0.1),
        lambda p: torch.optim.SGD(p, lr=0.02, momentum=0.9, weight_decay=0.1),
        id="sgd-momentum-wd",
    ),
    pytest.param(SGD(lr=0.02, momentum=0.0), lambda p: torch.optim.SGD(p, lr=0.02), id="sgd-plain"),
]


@pytest.mark.parametrize(("ours", "theirs"), OPTIMIZERS)
def test_matches_torch_optim(ours, theirs) -> None:
    w0, loss = _quadratic_problem()
    params = [p.clone().requires_grad_() for p in w0]
    ref = theirs(params)
    w = [p.clone() for p in w0]
    state = ours.init(w)
    for t in range(1, 31):
        ref.zero_grad()
        loss(params).backward()
        ref.step()
        wg = [p.clone().requires_grad_() for p in w]
        grad = torch.autograd.grad(loss(wg), wg)
        w, state = ours.step(w, list(grad), state, t)
        for a, b in zip(w, params, strict=True):
            torch.testing.assert_close(a, b.detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("ours", "theirs"), OPTIMIZERS)
def test_reversal_rebuilds_the_previous_step(ours, theirs) -> None:
    """undo_params / undo_state invert one step up to float64 rounding."""
    w0, loss = _quadratic_problem()
    w, state = [p.clone() for p in w0], ours.init(w0)
    history = [(w, state)]
    for t in range(1, 11):
        wg = [p.clone().requires_grad_() for p in w]
        grad = list(torch.autograd.grad(loss(wg), wg))
        w, state = ours.step(w, grad, state, t)
        history.append((w, state))
    for t in range(10, 0, -1):
        w_t, s_t = history[t]
        w_prev = ours.undo_params(w_t, s_t, t)
        wg = [p.clone().requires_grad_() for p in w_prev]
        grad = list(torch.autograd.grad(loss(wg), wg))
        s_prev = ours.undo_state(s_t, grad, w_prev, t)
        for a, b in zip(w_prev, history[t - 1][0], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        if getattr(ours, "momentum", 1.0) == 0:
            continue  # plain SGD: the buffer is overwritten by the next step, nothing to rebuild
        for field_a, field_b in zip(s_prev, history[t - 1][1], strict=True):
            for a, b in zip(field_a, field_b, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize(("ours", "theirs"), OPTIMIZERS)
@pytest.mark.parametrize("t", [1, 7])
def test_adjoint_matches_autograd(ours, theirs, t: int) -> None:
    """The hand-derived adjoint of one step equals autograd's vector-Jacobian product."""
    gen = torch.Generator().manual_seed(3)
    w = [torch.randn(4, dtype=torch.float64, generator=gen).requires_grad_()]
    grad = [torch.randn(4, dtype=torch.float64, generator=gen).requires_grad_()]
    state = ours.init([w[0].detach()])
    # a state as after a few steps: positive second moments
    state = type(state)(*[[torch.rand(4, dtype=torch.float64, generator=gen) + 0.1] for _ in state])
    state = type(state)(*[[x.requires_grad_() for x in f] for f in state])
    new_w, new_state = ours.step(w, grad, state, t)
    dw = [torch.randn(4, dtype=torch.float64, generator=gen)]
    dstate = type(state)(*[[torch.randn(4, dtype=torch.float64, generator=gen)] for _ in state])
    outputs = new_w + [x for f in new_state for x in f]
    cotangents = dw + [x for f in dstate for x in f]
    inputs = w + grad + [x for f in state for x in f]
    auto = torch.autograd.grad(outputs, inputs, grad_outputs=cotangents)
    with torch.no_grad():
        post_state = type(state)(*[[x.detach() for x in f] for f in new_state])
        adj = ours.adjoint(dw, dstate, [grad[0].detach()], [w[0].detach()], post_state, t)
    # d/dw_prev through the step alone (identity + weight decay; the Hessian term is the caller's)
    torch.testing.assert_close(auto[0], adj.dw_prev[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(auto[1], adj.dgrad[0], rtol=1e-10, atol=1e-12)
    for got, want in zip([x for f in adj.dstate for x in f], auto[2:], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_adam_unroll_has_no_nan_for_parameters_without_gradient() -> None:
    """v = 0 (a parameter that never gets gradient) must not poison autograd with inf * 0."""
    opt = Adam(lr=0.1)
    w = [torch.ones(3, dtype=torch.float64, requires_grad=True)]
    state = opt.init(w)
    grad = [torch.zeros(3, dtype=torch.float64, requires_grad=True)]
    new_w, _ = opt.step(w, grad, state, 1)
    (g_w, g_g) = torch.autograd.grad(new_w[0].sum(), [w[0], grad[0]])
    assert torch.isfinite(g_w).all() and torch.isfinite(g_g).all()
