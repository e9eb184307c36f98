"""Second-order derivatives and soft-vs-id training, as distillation's inner loop uses them."""

from __future__ import annotations

import pytest
import torch
from _zoo import make_ids, one_hot, random_distributions
from torch.func import functional_call

from farzi.models import next_token_loss

H = 1e-5  # finite-difference step (float64)
RTOL = 1e-6


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}


def _direction(params: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """A random unit direction in parameter space.

    Unit norm keeps the finite-difference step at H in total, so it stays far below the
    scale of the small-init parameters and does not hop over ReLU kinks (SASRec's FFN).
    """
    g = torch.Generator().manual_seed(seed)
    v = {k: torch.randn(p.shape, generator=g, dtype=p.dtype) for k, p in params.items()}
    norm = _flat(v).norm()
    return {k: t / norm for k, t in v.items()}


def _loss(model, params, x):
    return next_token_loss(functional_call(model, params, (x,)), x)


def _grad(model, params, x, create_graph=False):
    names = list(params)
    loss = _loss(model, params, x)
    grads = torch.autograd.grad(loss, [params[k] for k in names], create_graph=create_graph)
    return dict(zip(names, grads, strict=True))


def _dot(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum((a[k] * b[k]).sum() for k in a)


def _flat(d: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in d.values()])


def _rel_err(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize("inputs", ["ids", "soft"])
def test_hessian_vector_product_matches_finite_differences(spec, inputs):
    model = spec.build(seed=1).eval()
    x = make_ids(seed=11) if inputs == "ids" else random_distributions(seed=11)
    params = _params(model)
    v = _direction(params, seed=12)

    grads = _grad(model, params, x, create_graph=True)
    names = list(params)
    hvp = torch.autograd.grad(_dot(grads, v), [params[k] for k in names])
    hvp = _flat(dict(zip(names, hvp, strict=True)))

    plus = {k: (p + H * v[k]).detach().requires_grad_(True) for k, p in params.items()}
    minus = {k: (p - H * v[k]).detach().requires_grad_(True) for k, p in params.items()}
    fd = (_flat(_grad(model, plus, x)) - _flat(_grad(model, minus, x))) / (2 * H)

    assert hvp.norm() > 1e-3
    assert _rel_err(hvp, fd) < RTOL


def test_mixed_derivative_in_soft_inputs_matches_finite_differences(spec):
    """d/dx <grad_w L(w, x), v> along a direction u equals a central difference in x."""
    model = spec.build(seed=2).eval()
    x0 = random_distributions(seed=21)
    params = _params(model)
    v = _direction(params, seed=22)
    g = torch.Generator().manual_seed(23)
    u = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    u[..., 0] = 0.0  # keep <pad> without mass
    u = u / u.norm()

    def inner(x):
        return _dot(_grad(model, params, x, create_graph=True), v)

    x = x0.clone().requires_grad_(True)
    (mixed,) = torch.autograd.grad(inner(x), x)  # [B, L, V]
    analytic = (mixed * u).sum()
    numeric = (inner(x0 + H * u) - inner(x0 - H * u)).detach() / (2 * H)

    assert mixed.shape == x0.shape
    assert mixed.norm() > 1e-3 and analytic.abs() > 1e-7
    assert (analytic - numeric).abs().item() / analytic.abs().item() < RTOL

    # the same mixed partial, seen from the other side: grad_w of <dL/dx, u>
    (dx,) = torch.autograd.grad(_loss(model, params, x), x, create_graph=True)
    names = list(params)
    dw = torch.autograd.grad((dx * u).sum(), [params[k] for k in names])
    other_side = _dot(dict(zip(names, dw, strict=True)), v)
    assert (other_side - analytic).abs().item() / analytic.abs().item() < 1e-9


def _train(model, x, steps: int, seed: int):
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-2)
    losses = []
    model.train()
    for step in range(steps):
        torch.manual_seed(seed + step)  # dropout masks drawn alike for both runs
        opt.zero_grad()
        loss = next_token_loss(model(x), x)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("dropout", [0.0, 0.3], ids=["no-dropout", "seeded-dropout"])
def test_training_on_one_hot_matches_training_on_ids(spec, dropout):
    ids = make_ids(seed=31, batch=5)
    assert (ids == 0).any() and (ids != 0).all(dim=1).any()  # padded and full rows
    by_ids = spec.build(seed=3, dropout=dropout)
    by_soft = spec.build(seed=99, dropout=dropout)
    by_soft.load_state_dict({k: v.clone() for k, v in by_ids.state_dict().items()})

    losses_ids = _train(by_ids, ids, steps=5, seed=7)
    losses_soft = _train(by_soft, one_hot(ids), steps=5, seed=7)

    assert losses_ids[-1] < losses_ids[0]
    for step, (a, b) in enumerate(zip(losses_ids, losses_soft, strict=True)):
        assert abs(a - b) <= 1e-10, f"step {step}: {a} vs {b}"
    soft_params = dict(by_soft.named_parameters())
    for name, p in by_ids.named_parameters():
        torch.testing.assert_close(soft_params[name], p, rtol=0, atol=1e-9, msg=name)
