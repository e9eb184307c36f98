"""Meta-gradients of an inner training loop with respect to the synthetic data.

Problem: start from weights w_0 (a checkpoint of Omega, or a random init), take
T steps of an inner optimizer on synthetic batches x_t = softmax(L[idx_t] M / tau),
and score the result with a terminal loss f(w_T) (the real-data loss, or a
trajectory-matching distance). We want df/dL and df/dM.

Strategies:

* ``unroll``: plain autograd through all T steps (the reference; memory grows
  with T because every step's activations are kept).
* ``reverse``: run forward keeping nothing, then walk backwards, rebuilding
  w_{t-1}, m_{t-1}, v_{t-1} from step t's state and g_t, while carrying the exact
  adjoint (dw, dm, dv) and accumulating dL, dM through Hessian-vector products.
  The inner state is kept in float64 (the model may compute in float32), and
  because the reversal amplifies rounding error at every step (measured ~1.4x
  per step on small models, more than the 1/beta1 of m alone), the exact state
  is also stored every K = 16 steps (``REVERSE_ANCHOR``) so the error never
  compounds; the drift is measured and logged. Memory is flat in T apart from
  T/K small state copies (3 x |params| each, no activations).
* ``checkpointed``: store the state every K steps (default ceil(sqrt(T))) and
  recompute each segment forward while walking back: exact, O(T/K + K) states.
* ``paper``: Algorithm 1 of the paper as printed: the same reversal, but the
  adjoint carries dm only (the second moment's dependence on w is dropped).
  Kept for the ablation; it is an approximation.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call

from farzi.distill.inner import InnerOptimizer
from farzi.models import SequenceModel, SparseDist, next_token_loss
from farzi.models.loss import candidate_loss, sampled_loss

STRATEGIES = ("reverse", "checkpointed", "unroll", "paper")
REVERSE_ANCHOR = 16  # reversal drifts ~1.4x per step on small models: re-anchor every 16 steps
DEFAULT_STRATEGY = "reverse"

Tensors = list[Tensor]


@dataclass
class InnerLoop:
    """Everything that defines one inner run (shared by all strategies)."""

    model: SequenceModel  # used through functional_call; must be in eval mode (checked)
    names: list[str]  # parameter names, in the order of the tensor lists
    optimizer: InnerOptimizer
    syn: Callable[[Tensor | None], Tensor]  # idx -> distributions, differentiable in (latent, decoder)
    data_params: Tensors  # [latent, decoder]: leaves requiring grad
    batches: list[Tensor | None]  # syn batch indices per step (None = all)
    compute_dtype: torch.dtype = torch.float32
    state_dtype: torch.dtype = torch.float64
    # where the optimizer starts: None = fresh (zero moments, step 0); else the state a training
    # run had reached after ``step0`` steps (e.g. Omega's Adam moments), which the loop continues
    state0: Any = None
    step0: int = 0
    # a learned inner learning rate: a scalar leaf log(lr) among ``data_params``; the optimizer's own lr
    # is then ignored and the meta-gradient covers log(lr) too
    log_lr: Tensor | None = None
    # sparse summaries: the inner loss's softmax over the batch's candidates (farzi.models.loss.candidate_loss)
    candidates_only: bool = False
    # sparse summaries: the inner loss's sampled softmax (farzi.models.loss.sampled_loss), step t's shared
    # negatives [S] at index t - 1; the reverse pass replays the same ones, so the meta-gradient stays exact
    negatives: list[Tensor] | None = None

    def __post_init__(self) -> None:
        # dropout (or any train-mode layer) would draw new masks in every forward pass, so the
        # reverse pass would differentiate another function than the forward pass ran
        training = [type(m).__name__ for m in self.model.modules() if m.training]
        if training:
            raise ValueError(f"meta-gradients need the model in eval mode; in train mode: {', '.join(training[:5])}")

    @property
    def steps(self) -> int:
        return len(self.batches)

    def initial_state(self, w: Tensors) -> Any:
        """The optimizer state before step 1, on ``w``'s dtype and device."""
        if self.state0 is None:
            return self.optimizer.init(w)
        return type(self.state0)(*[[x.to(p) for x, p in zip(f, w, strict=True)] for f in self.state0])

    def loss(self, w: Tensors, x: Tensor, t: int | None = None) -> Tensor:
        """The inner loss of step ``t`` (1-based; the sampled softmax needs it) at weights ``w`` on ``x``."""
        params = dict(zip(self.names, w, strict=True))
        if self.negatives is not None and isinstance(x, SparseDist):
            if t is None:
                raise ValueError("the sampled inner softmax needs the step's number (its negatives)")
            return sampled_loss(self.model, params, x, self.negatives[t - 1])
        if self.candidates_only and isinstance(x, SparseDist):
            return candidate_loss(self.model, params, x)
        return next_token_loss(functional_call(self.model, params, (x,)), x)


@dataclass
class MetaGradient:
    meta_loss: float
    grads: Tensors  # d meta_loss / d data_params
    inner_loss_first: float
    inner_loss_last: float
    seconds: float
    stats: dict[str, Any]


Terminal = Callable[[Tensors], Tensor]  # w_T (compute dtype, requires grad) -> scalar


def meta_gradient(
    loop: InnerLoop,
    w0: Tensors,
    terminal: Terminal,
    strategy: str = DEFAULT_STRATEGY,
    segment: int | None = None,
) -> MetaGradient:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown meta-gradient strategy {strategy!r}; choose one of {STRATEGIES}")
    start = time.perf_counter()
    if strategy == "unroll":
        out = _unroll(loop, w0, terminal)
    else:
        out = _reverse(loop, w0, terminal, strategy, segment)
    out.seconds = time.perf_counter() - start
    return out


def _with_lr(loop: InnerLoop, differentiable: bool) -> Any:
    """The inner optimizer at the learned learning rate (a graph node for unroll, a number for the reverse)."""
    if loop.log_lr is None:
        return loop.optimizer
    lr = loop.log_lr.exp() if differentiable else float(loop.log_lr.detach().exp())
    return dataclasses.replace(loop.optimizer, lr=lr)


def _unroll(loop: InnerLoop, w0: Tensors, terminal: Terminal) -> MetaGradient:
    opt = _with_lr(loop, differentiable=True)
    dt = loop.compute_dtype
    w = [p.detach().to(dt).requires_grad_() for p in w0]
    state = loop.initial_state(w)
    first = last = math.nan
    for t, idx in enumerate(loop.batches, start=1):
        loss = loop.loss(w, loop.syn(idx), t)
        grad = torch.autograd.grad(loss, w, create_graph=True)
        w, state = opt.step(w, list(grad), state, loop.step0 + t)
        first = float(loss.detach()) if t == 1 else first
        last = float(loss.detach())
    f = terminal(w)
    grads = torch.autograd.grad(f, loop.data_params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, loop.data_params, strict=True)]
    return MetaGradient(float(f.detach()), grads, first, last, 0.0, {"strategy": "unroll"})


def _grad_at(loop: InnerLoop, w: Tensors, t: int) -> tuple[Tensors, float]:
    """Step ``t``'s inner gradient at state-dtype weights ``w`` (no graph kept)."""
    wp = [p.to(loop.compute_dtype).requires_grad_() for p in w]
    with torch.no_grad():
        x = loop.syn(loop.batches[t - 1])
    with torch.enable_grad():
        loss = loop.loss(wp, x, t)
        grad = torch.autograd.grad(loss, wp)
    return [g.to(loop.state_dtype) for g in grad], float(loss.detach())


def _clone(ts: Tensors) -> Tensors:
    return [t.clone() for t in ts]


def _clone_state(state: Any) -> Any:
    return type(state)(*[_clone(list(f)) for f in state])


def _reverse(loop: InnerLoop, w0: Tensors, terminal: Terminal, strategy: str, segment: int | None) -> MetaGradient:
    opt = _with_lr(loop, differentiable=False)
    T = loop.steps
    sd = loop.state_dtype
    checkpointed = strategy == "checkpointed"
    if checkpointed:
        K = segment or max(1, math.ceil(math.sqrt(T)))
    else:
        K = segment or REVERSE_ANCHOR
    # ---- forward: keep only the state every K steps
    w = [p.detach().to(sd) for p in w0]
    state = loop.initial_state(w)
    saved: dict[int, tuple[Tensors, Any]] = {0: (_clone(w), _clone_state(state))}
    first = last = math.nan
    with torch.no_grad():
        for t in range(1, T + 1):
            g, loss = _grad_at(loop, w, t)
            w, state = opt.step(w, g, state, loop.step0 + t)
            if t % K == 0 and t < T:
                saved[t] = (_clone(w), _clone_state(state))
            first = loss if t == 1 else first
            last = loss
    # ---- terminal loss and its gradient
    wT = [p.to(loop.compute_dtype).requires_grad_() for p in w]
    with torch.enable_grad():
        f = terminal(wT)
        dw = [d.to(sd) for d in torch.autograd.grad(f, wT)]
    dstate = type(state)(*[[torch.zeros_like(p) for p in w] for _ in state])
    ddata = [torch.zeros_like(p) for p in loop.data_params]
    carry_dv = strategy != "paper"
    cache: dict[int, tuple[Tensors, Any]] = {}
    drift = 0.0
    d_lr = 0.0  # d f / d lr, for a learned learning rate: w_t = w_{t-1} - lr * u_t, so sum_t <dw_t, -u_t>
    # ---- backward: t = T .. 1; (w, state) hold w_t, state_t on entry
    for t in range(T, 0, -1):
        idx = loop.batches[t - 1]
        if loop.log_lr is not None:
            with torch.no_grad():
                u = opt.direction(state, loop.step0 + t)
                d_lr -= sum(float((a * b).sum()) for a, b in zip(dw, u, strict=True))
        if checkpointed:
            if t - 1 not in cache:
                cache = _recompute_segment(loop, opt, saved, t - 1, K)
            w_prev, state_prev = cache.pop(t - 1)
        elif t - 1 in saved:
            w_prev, state_prev = saved[t - 1]
            if t < T:  # how far did the reversal drift in this segment? (logged, not corrected)
                with torch.no_grad():
                    rebuilt = opt.undo_params(w, state, loop.step0 + t)
                    drift = max(drift, _rel_diff(rebuilt, w_prev))
        else:
            with torch.no_grad():
                w_prev = opt.undo_params(w, state, loop.step0 + t)
            state_prev = None
        wp = [p.to(loop.compute_dtype).requires_grad_() for p in w_prev]
        with torch.enable_grad():
            loss = loop.loss(wp, loop.syn(idx), t)
            g = torch.autograd.grad(loss, wp, create_graph=True)
            g_sd = [x.detach().to(sd) for x in g]
            with torch.no_grad():
                adj = opt.adjoint(dw, dstate, g_sd, w_prev, state, loop.step0 + t, carry_dv=carry_dv)
            hv = torch.autograd.grad(
                g, wp + loop.data_params, grad_outputs=[x.to(loop.compute_dtype) for x in adj.dgrad], allow_unused=True
            )
        with torch.no_grad():
            n = len(wp)
            dstate = adj.dstate
            dw = [a if h is None else a + h.to(sd) for a, h in zip(adj.dw_prev, hv[:n], strict=True)]
            for i, h in enumerate(hv[n:]):
                if h is not None:
                    ddata[i] += h
            if state_prev is None:
                state_prev = opt.undo_state(state, g_sd, w_prev, loop.step0 + t)
        w, state = w_prev, state_prev
    if loop.log_lr is not None:
        k = next(i for i, p in enumerate(loop.data_params) if p is loop.log_lr)
        ddata[k] = ddata[k] + d_lr * opt.lr  # d / d log(lr) = lr * d / d lr
    grads = [d.to(p.dtype) for d, p in zip(ddata, loop.data_params, strict=True)]
    stats = {"strategy": strategy, "segment": K, "saved_states": len(saved)}
    if not checkpointed:
        stats["reversal_drift"] = drift
    return MetaGradient(float(f.detach()), grads, first, last, 0.0, stats)


def _rel_diff(a: Tensors, b: Tensors) -> float:
    num = sum(float((x - y).norm() ** 2) for x, y in zip(a, b, strict=True))
    den = sum(float(y.norm() ** 2) for y in b)
    return math.sqrt(num / max(den, 1e-300))


def _recompute_segment(loop: InnerLoop, opt: Any, saved: dict[int, tuple[Tensors, Any]], s: int, K: int) -> dict:
    """Recompute states a..s (a = the stored state at or below s) for the checkpointed pass."""
    a = (s // K) * K
    w, state = saved[a]
    w, state = _clone(w), _clone_state(state)
    out = {a: (w, state)}
    with torch.no_grad():
        for t in range(a + 1, s + 1):
            g, _ = _grad_at(loop, w, t)
            w, state = opt.step(w, g, state, loop.step0 + t)
            out[t] = (w, state)
    return out
