"""Inner-loop optimizers as pure functions, each with its exact reverse.

Like torchopt's ``scale_by_adam``: the state is a NamedTuple of tensor lists, and
``step`` returns new tensors instead of mutating, so an inner loop can be run
under autograd (the ``unroll`` reference) or replayed backwards by hand.

Each optimizer offers, besides ``init`` and ``step``:

* ``undo_params(w_t, state_t, t)``: w_{t-1}, from the state after step t alone;
* ``undo_state(state_t, g_t, w_{t-1}, t)``: state_{t-1}, once g_t = grad at w_{t-1} is known;
* ``adjoint(dw_t, dstate_t, g_t, w_{t-1}, state_t, t)``: given the adjoints of the step's
  outputs, a :class:`StepAdjoint`: the adjoint of the raw gradient ``dgrad``, of the
  previous weights through the step alone ``dw_prev`` (the identity path plus L2
  weight decay), and of the previous state. The caller adds the one term that needs
  the model, the Hessian-vector product: dw_{t-1} = dw_prev + H_t dgrad.

Conventions match ``torch.optim.Adam`` / ``torch.optim.SGD`` (L2 weight decay
added to the gradient; SGD momentum with dampening 0, first buffer = gradient).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

Tensors = list[Tensor]


def _safe_sqrt(x: Tensor) -> Tensor:
    """sqrt whose gradient at 0 is 0 rather than inf * 0 = NaN (parameters with no gradient)."""
    if not x.requires_grad:
        return torch.sqrt(x)
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), torch.zeros_like(x))


def l2_decayed(grad: Tensors, w: Tensors, weight_decay: float) -> Tensors:
    """The gradient the update sees: g + weight_decay * w (L2 decay, as torch.optim does)."""
    if not weight_decay:
        return list(grad)
    return [g + weight_decay * p for g, p in zip(grad, w, strict=True)]


def _decay_adjoint(dw: Tensors, dgrad: Tensors, weight_decay: float) -> Tensors:
    """Adjoint of w_{t-1} through the step alone: the identity path, plus the decay term's."""
    if not weight_decay:
        return list(dw)
    return [a + weight_decay * b for a, b in zip(dw, dgrad, strict=True)]


class AdamState(NamedTuple):
    m: Tensors  # first moment
    v: Tensors  # second moment


class MomentumState(NamedTuple):
    buf: Tensors  # momentum buffer


class StepAdjoint(NamedTuple):
    dgrad: Tensors  # adjoint of the raw gradient g_t (the direction of the Hessian-vector product)
    dw_prev: Tensors  # adjoint of w_{t-1} through the step alone (add H_t dgrad for the full adjoint)
    dstate: Any  # adjoint of the state before the step (same NamedTuple type as the state)


@dataclass(frozen=True)
class Adam:
    lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0

    name = "adam"

    def init(self, w: Tensors) -> AdamState:
        return AdamState([torch.zeros_like(p) for p in w], [torch.zeros_like(p) for p in w])

    def step(self, w: Tensors, grad: Tensors, state: AdamState, t: int) -> tuple[Tensors, AdamState]:
        """Step ``t`` (1-based): differentiable, no in-place ops."""
        b1, b2 = self.beta1, self.beta2
        c1, c2 = 1 - b1**t, 1 - b2**t
        new_w, new_m, new_v = [], [], []
        for p, g, m, v in zip(w, l2_decayed(grad, w, self.weight_decay), state.m, state.v, strict=True):
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            new_w.append(p - self.lr * (m / c1) / (_safe_sqrt(v / c2) + self.eps))
            new_m.append(m)
            new_v.append(v)
        return new_w, AdamState(new_m, new_v)

    def direction(self, state: AdamState, t: int) -> Tensors:
        """u_t with w_t = w_{t-1} - lr * u_t: the bias-corrected m / (sqrt(v) + eps) after step t."""
        c1, c2 = 1 - self.beta1**t, 1 - self.beta2**t
        return [(m / c1) / (torch.sqrt(v / c2) + self.eps) for m, v in zip(state.m, state.v, strict=True)]

    def undo_params(self, w: Tensors, state: AdamState, t: int) -> Tensors:
        c1, c2 = 1 - self.beta1**t, 1 - self.beta2**t
        return [
            p + self.lr * (m / c1) / (torch.sqrt(v / c2) + self.eps)
            for p, m, v in zip(w, state.m, state.v, strict=True)
        ]

    def undo_state(self, state: AdamState, grad: Tensors, w_prev: Tensors, t: int) -> AdamState:
        b1, b2 = self.beta1, self.beta2
        ms, vs = [], []
        for g, m, v in zip(l2_decayed(grad, w_prev, self.weight_decay), state.m, state.v, strict=True):
            ms.append((m - (1 - b1) * g) / b1)
            vs.append(((v - (1 - b2) * g * g) / b2).clamp_min(0.0))  # exact arithmetic keeps v >= 0
        return AdamState(ms, vs)

    def adjoint(
        self,
        dw: Tensors,
        dstate: AdamState,
        grad: Tensors,
        w_prev: Tensors,
        state: AdamState,
        t: int,
        carry_dv: bool = True,
    ) -> StepAdjoint:
        """Adjoint of step t.

        w_t = w - lr * mhat / (sqrt(vhat) + eps), mhat = m_t / c1, vhat = v_t / c2, g = grad + wd * w:
          dm~ = dm_t + dw_t * dw_t/dm_t,  dw_t/dm_t = -lr / (c1 * (sqrt(vhat) + eps))
          dv~ = dv_t + dw_t * dw_t/dv_t,  dw_t/dv_t = lr * mhat / (sqrt(vhat) + eps)^2 / (2 sqrt(vhat) c2)
          dg  = (1 - b1) dm~ + 2 (1 - b2) g dv~;  dm_{t-1} = b1 dm~;  dv_{t-1} = b2 dv~
          dw_{t-1} (step alone) = dw_t + wd * dg
        ``carry_dv=False`` drops the second-moment path (the paper's Algorithm 1).
        """
        b1, b2 = self.beta1, self.beta2
        c1, c2 = 1 - b1**t, 1 - b2**t
        dgs, dms, dvs = [], [], []
        decayed = l2_decayed(grad, w_prev, self.weight_decay)
        for i, (d_w, g) in enumerate(zip(dw, decayed, strict=True)):
            m, v = state.m[i], state.v[i]
            s = torch.sqrt(v / c2)
            denom = s + self.eps
            dm_tilde = dstate.m[i] - d_w * (self.lr / c1) / denom
            if carry_dv:
                safe = torch.where(s > 0, s, torch.ones_like(s))
                dw_dv = torch.where(s > 0, self.lr * (m / c1) / (denom * denom) / (2 * safe * c2), torch.zeros_like(s))
                dv_tilde = dstate.v[i] + d_w * dw_dv
                dgs.append((1 - b1) * dm_tilde + 2 * (1 - b2) * g * dv_tilde)
                dvs.append(b2 * dv_tilde)
            else:
                dgs.append((1 - b1) * dm_tilde)
                dvs.append(torch.zeros_like(v))
            dms.append(b1 * dm_tilde)
        return StepAdjoint(dgs, _decay_adjoint(dw, dgs, self.weight_decay), AdamState(dms, dvs))


@dataclass(frozen=True)
class SGD:
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0

    name = "sgd"

    def init(self, w: Tensors) -> MomentumState:
        return MomentumState([torch.zeros_like(p) for p in w])

    def step(self, w: Tensors, grad: Tensors, state: MomentumState, t: int) -> tuple[Tensors, MomentumState]:
        new_w, bufs = [], []
        for p, g, b in zip(w, l2_decayed(grad, w, self.weight_decay), state.buf, strict=True):
            b = self.momentum * b + g  # buffer starts at 0, so the first buffer is g, as in torch
            new_w.append(p - self.lr * b)
            bufs.append(b)
        return new_w, MomentumState(bufs)

    def direction(self, state: MomentumState, t: int) -> Tensors:
        """u_t with w_t = w_{t-1} - lr * u_t: the momentum buffer after step t."""
        return list(state.buf)

    def undo_params(self, w: Tensors, state: MomentumState, t: int) -> Tensors:
        return [p + self.lr * b for p, b in zip(w, state.buf, strict=True)]

    def undo_state(self, state: MomentumState, grad: Tensors, w_prev: Tensors, t: int) -> MomentumState:
        if self.momentum == 0:
            return MomentumState([torch.zeros_like(b) for b in state.buf])
        decayed = l2_decayed(grad, w_prev, self.weight_decay)
        return MomentumState([(b - g) / self.momentum for g, b in zip(decayed, state.buf, strict=True)])

    def adjoint(
        self,
        dw: Tensors,
        dstate: MomentumState,
        grad: Tensors,
        w_prev: Tensors,
        state: MomentumState,
        t: int,
        carry_dv: bool = True,
    ) -> StepAdjoint:
        """Adjoint of step t: b_t = momentum * b + g, w_t = w - lr * b_t, g = grad + wd * w."""
        dgs, dbufs = [], []
        for d_w, d_b in zip(dw, dstate.buf, strict=True):
            d_tilde = d_b - self.lr * d_w
            dgs.append(d_tilde)
            dbufs.append(self.momentum * d_tilde)
        return StepAdjoint(dgs, _decay_adjoint(dw, dgs, self.weight_decay), MomentumState(dbufs))


InnerOptimizer = Adam | SGD
