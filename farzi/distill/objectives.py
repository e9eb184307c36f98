"""The meta-objectives: one object each, mapping (summary, the step's draws) to a contribution.

A :class:`Contribution` is what one start point gives the outer step: the
meta-loss, its gradient with respect to the summary's parameters, and the figures
worth logging. The outer loop averages contributions (a meta-batch), clips and
steps; an objective knows nothing about the outer optimizer.

Every objective consumes a step's random draws in the same order, so objectives
and settings compare on the same samples:

1. the start point, from ``draws.rng`` (an Omega checkpoint, or a random init for ``mm``);
2. the real batch, from ``draws.gen`` (drawn even where unused, to keep the streams aligned);
3. the synthetic batch of every inner step, from ``draws.gen`` (when ``syn_batch`` < mu).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from farzi.batching import pad_right
from farzi.data.prepared import PreparedDataset
from farzi.distill.config import (
    DistillConfig,
    InnerOptimizerName,
    InnerSoftmax,
    InnerState,
    MetaSoftmax,
    Objective,
)
from farzi.distill.inner import SGD, Adam, AdamState, InnerOptimizer
from farzi.distill.metagrad import InnerLoop, meta_gradient
from farzi.distill.summary import Summary
from farzi.distill.teacher import Teacher
from farzi.errors import ConfigError
from farzi.models import SequenceModel, functional_loss, next_token_loss
from farzi.models.loss import draw_negatives, sampled_loss
from farzi.moments import AdamMoments

Tensors = list[Tensor]


@dataclass
class Draws:
    """The random streams of one start point of one outer step."""

    rng: random.Random  # start points
    gen: torch.Generator  # real and synthetic batches
    key: str = ""  # what the streams are seeded by: further streams (sampled negatives) derive from it


def keyed_generator(key: str) -> torch.Generator:
    """A generator seeded by ``key`` alone (sha256): the same key, the same draws."""
    digest = hashlib.sha256(key.encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def step_draws(seed: int, step: int, index: int = 0) -> Draws:
    """Draws that depend on (seed, step, index) alone, so a resumed run replays them exactly.

    ``index`` numbers the start points of one outer step (a meta-batch); index 0 is the
    stream every earlier version used for the step's single start point.
    """
    key = f"farzi:{seed}:{step}" if index == 0 else f"farzi:{seed}:{step}:{index}"
    gen = keyed_generator(key)
    return Draws(random.Random(gen.initial_seed()), gen, key)


@dataclass
class Start:
    """Where an inner loop starts: weights, the Omega checkpoint they are, and the optimizer state."""

    w: Tensors
    checkpoint: int | None = None  # index in Omega; None for a random initialization
    state: Any = None  # inner optimizer state to continue (None = fresh)
    step: int = 0  # optimizer steps the state has taken

    @property
    def stats(self) -> dict[str, Any]:
        # moments: whether the inner optimizer continued Omega's state (--inner-state omega, Adam, saved moments)
        return {"checkpoint": self.checkpoint, "moments": self.state is not None}


@dataclass
class Contribution:
    meta_loss: float
    grads: Tensors  # d meta_loss / d summary.params
    stats: dict[str, Any] = field(default_factory=dict)


class MetaObjective:
    """What every objective shares: the teacher, the data, the inner optimizer, the draws."""

    def __init__(self, cfg: DistillConfig, ds: PreparedDataset, teacher: Teacher) -> None:
        self.cfg, self.ds, self.teacher = cfg, ds, teacher
        self.names = teacher.names
        self.inner = inner_optimizer(cfg)
        self.eligible: list[int] | None = None  # the checkpoints starts are drawn from (None: all)
        if (cfg.omega_min_step or cfg.omega_max_step) and teacher.omega is not None:
            omega, low, high = teacher.omega, cfg.omega_min_step, cfg.omega_max_step or None
            steps = [int(omega.entry(i)["step"]) for i in range(len(omega))]
            self.eligible = [i for i, s in enumerate(steps) if s >= low and (high is None or s <= high)]
            if not self.eligible:
                where = f"at or after training step {low}" if high is None else f"in training steps {low}-{high}"
                raise ConfigError(
                    f"no trajectory checkpoint is {where} (they are at steps {min(steps)}-{max(steps)})",
                    "widen --omega-min-step / --omega-max-step",
                )

    def __call__(self, summary: Summary, draws: Draws) -> Contribution:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- the draws, in their fixed order
    def start(self, draws: Draws) -> Start:
        """Inner start: a random checkpoint of Omega (with its Adam state for ``--inner-state omega``)."""
        return self.at_checkpoint(self.draw_checkpoint(draws))

    def draw_checkpoint(self, draws: Draws) -> int:
        if self.eligible is None:
            return self.teacher.sample_checkpoint(draws.rng)
        return self.eligible[draws.rng.randrange(len(self.eligible))]

    def at_checkpoint(self, i: int) -> Start:
        start = Start(self.teacher.checkpoint(i), i)
        if self.cfg.inner_state is InnerState.omega:
            moments = self.teacher.moments(i)
            if moments is not None:
                start.state, start.step = moments_state(self.inner, moments, self.names), moments.step
        return start

    def real_batch(self, draws: Draws) -> Tensor:
        """``real_batch`` random windows of the teacher's context from the training split: [b, L]."""
        n = len(self.ds.train)
        size, max_len = self.cfg.real_batch, self.teacher.model.config.max_len
        idx = torch.randint(n, (size,), generator=draws.gen).numpy()
        starts = torch.rand(size, generator=draws.gen, dtype=torch.float64).numpy()
        seqs = []
        for j, r in zip(idx, starts, strict=True):
            s = self.ds.train[int(j)]
            room = max(len(s) - max_len, 0)
            begin = int(np.floor(r * (room + 1)))
            seqs.append(s[begin : begin + max_len])
        return pad_right(seqs).to(self.teacher.device)

    def syn_batches(self, draws: Draws) -> list[Tensor | None]:
        """The synthetic sequences of each inner step (None = all of them)."""
        bsz, mu = self.cfg.syn_batch, self.cfg.mu
        if not bsz or bsz >= mu:
            return [None] * self.cfg.inner_steps
        device = self.teacher.device
        return [torch.randperm(mu, generator=draws.gen)[:bsz].to(device) for _ in range(self.cfg.inner_steps)]

    def inner_negatives(self, summary: Summary, draws: Draws) -> list[Tensor] | None:
        """``--inner-softmax sampled`` on a sparse summary: each inner step's shared negatives [S], from a
        generator seeded by (seed, outer step, start point, inner step) alone; else None."""
        if self.cfg.inner_softmax is not InnerSoftmax.sampled or summary.support is None:
            return None
        V, S, device = int(summary.decoder.shape[1]), self.cfg.inner_negatives, self.teacher.device
        steps = range(1, self.cfg.inner_steps + 1)
        return [draw_negatives(V, S, keyed_generator(f"{draws.key}:negatives:{t}")).to(device) for t in steps]

    def meta_negatives(self, draws: Draws) -> Tensor | None:
        """``--meta-softmax sampled``: the real batch's shared negatives [S] (seeded by the step's key); else None,
        also where S covers the vocabulary (the sampled softmax is then the full one: the fused loss computes it)."""
        V = int(self.teacher.model.config.vocab_size)
        if self.cfg.meta_softmax is not MetaSoftmax.sampled or self.cfg.meta_negatives >= V - 1:
            return None
        return draw_negatives(V, self.cfg.meta_negatives, keyed_generator(f"{draws.key}:meta-negatives")).to(
            self.teacher.device
        )

    # -- pieces
    def loss(self, w: Tensors, x: Tensor) -> Tensor:
        """Next-token cross-entropy of the teacher architecture at weights ``w`` on ``x``."""
        logits = functional_call(self.teacher.model, dict(zip(self.names, w, strict=True)), (x,))
        return next_token_loss(logits, x)

    def unrolled(
        self,
        summary: Summary,
        start: Start,
        batches: list[Tensor | None],
        terminal: Callable[[Tensors], Tensor],
        negatives: list[Tensor] | None = None,
    ) -> Contribution:
        """T inner steps on the summary from ``start``, scored by ``terminal``; its meta-gradient."""
        loop = InnerLoop(
            self.teacher.model,
            self.names,
            self.inner,
            summary.syn,
            summary.params,
            batches,
            state0=start.state,
            step0=start.step,
            log_lr=summary.log_inner_lr,
            candidates_only=self.cfg.inner_softmax is InnerSoftmax.candidates,
            negatives=negatives,
        )
        mg = meta_gradient(loop, start.w, terminal, self.cfg.meta_grad.value, segment=self.cfg.segment or None)
        stats = {"inner_loss_first": mg.inner_loss_first, "inner_loss_last": mg.inner_loss_last, **mg.stats}
        return Contribution(mg.meta_loss, mg.grads, stats)


class _Features(nn.Module):
    """Wraps a model so that ``functional_call`` reaches its last hidden states."""

    def __init__(self, model: SequenceModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.features(x)  # [B, L, d]


def features_at(model: SequenceModel, params: dict[str, Tensor], x: Tensor) -> Tensor:
    """``model.features(x)`` [B, L, d] with ``params`` in place of the model's own (differentiable)."""
    return functional_call(_Features(model), {f"model.{k}": v for k, v in params.items()}, (x,))


def feature_distance(model: SequenceModel, params: dict[str, Tensor], x: Tensor, target: Tensor) -> Tensor:
    """The mean, over the real (non-pad) tokens of ``x`` [B, L] and the d features, of the squared
    difference between the last hidden states at ``params`` and ``target`` [B, L, d] (a full-data
    model's on the same ``x``): a scalar, differentiable in ``params``."""
    h = features_at(model, params, x)  # [B, L, d]
    real = (x != 0).to(h.dtype)  # [B, L]
    per_token = (h - target.to(h.dtype)).pow(2).mean(-1)  # [B, L]
    return (per_token * real).sum() / real.sum().clamp_min(1)


class MetaMatching(MetaObjective):
    """``farzi`` (paper Eq. 2): T inner steps from a checkpoint of Omega, then the real-data loss.
    ``mm``: the same from random initializations.

    ``--feature-align W`` adds W x :func:`feature_distance` to a full-data model's hidden states on the
    same real batch (:meth:`Teacher.full_data`: the end of the start's own run) to the terminal loss, so
    the exact meta-gradient covers it."""

    def start(self, draws: Draws) -> Start:
        if self.cfg.objective is Objective.mm or self.teacher.omega is None:
            return Start(self.teacher.random_init(draws.rng))
        return super().start(draws)

    def target_features(self, start: Start, x_real: Tensor) -> Tensor | None:
        """The full-data model's last hidden states on ``x_real`` [B, L, d] (constants), or None without
        ``--feature-align``."""
        if not self.cfg.feature_align:
            return None
        full = dict(zip(self.names, self.teacher.full_data(start.checkpoint), strict=True))
        with torch.no_grad():
            return features_at(self.teacher.model, full, x_real)  # [B, L, d]

    def terminal(
        self, x_real: Tensor, meta_negatives: Tensor | None, target: Tensor | None, seen: dict[str, float]
    ) -> Callable[[Tensors], Tensor]:
        """The meta-loss at inner-trained weights: the real loss (sampled where ``meta_negatives``), plus
        ``feature_align`` x the feature distance to ``target`` where given (its value goes to ``seen``)."""
        model, weight = self.teacher.model, self.cfg.feature_align

        def terminal(w: Tensors) -> Tensor:  # first-order only: the fused loss, no [B, L, V] logits kept
            params = dict(zip(self.names, w, strict=True))
            if meta_negatives is not None:  # each target plus the shared negatives: O(S d) a position
                loss = sampled_loss(model, params, x_real, meta_negatives)
            else:
                loss = functional_loss(model, params, x_real)
            if target is None:
                return loss
            distance = feature_distance(model, params, x_real, target)
            seen["feature_distance"] = float(distance.detach())
            return loss + weight * distance

        return terminal

    def __call__(self, summary: Summary, draws: Draws) -> Contribution:
        start = self.start(draws)
        x_real = self.real_batch(draws)
        batches = self.syn_batches(draws)
        meta_negatives = self.meta_negatives(draws)
        target = self.target_features(start, x_real)
        seen: dict[str, float] = {}
        terminal = self.terminal(x_real, meta_negatives, target, seen)

        # the meta-objective before the inner loop (with --feature-align, the real loss plus its term)
        with torch.no_grad():
            before = float(terminal(start.w))
        stats: dict[str, Any] = {}
        if target is not None:
            stats["feature_distance_start"] = seen["feature_distance"]
        out = self.unrolled(summary, start, batches, terminal, self.inner_negatives(summary, draws))
        if target is not None:
            stats["feature_distance"] = seen["feature_distance"]
        out.stats = {**self.stage(start), "real_loss_start": before, **stats, **out.stats}
        return out

    def stage(self, start: Start) -> dict[str, Any]:
        """The start's checkpoint and how far its run had trained (the stage the log groups by)."""
        if start.checkpoint is None or self.teacher.omega is None:
            return start.stats
        return {**start.stats, "checkpoint_step": int(self.teacher.omega.entry(start.checkpoint)["step"])}


class GradientMatching(MetaObjective):
    """``dc`` (Zhao et al. 2021): at a checkpoint of Omega, the per-tensor cosine distance between
    the gradient on the whole summary and on a real batch."""

    def __call__(self, summary: Summary, draws: Draws) -> Contribution:
        start = self.start(draws)
        x_real = self.real_batch(draws)
        w = [p.detach().clone().requires_grad_() for p in start.w]
        g_real = torch.autograd.grad(self.loss(w, x_real), w)
        g_syn = torch.autograd.grad(self.loss(w, summary.syn(None)), w, create_graph=True)
        loss = sum(
            1 - F.cosine_similarity(a.flatten(), b.detach().flatten(), dim=0, eps=1e-12)
            for a, b in zip(g_syn, g_real, strict=True)
        )
        grads = torch.autograd.grad(loss, summary.params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, summary.params, strict=True)]
        return Contribution(float(loss.detach()), grads, start.stats)


class TrajectoryMatching(MetaObjective):
    """``mtt`` (Cazenavette et al. 2022): T inner steps from checkpoint i, then the squared distance to
    checkpoint i + ``mtt_offset`` of the same run, normalized by the distance the run itself covered."""

    MAX_DRAWS = 10_000

    def __init__(self, cfg: DistillConfig, ds: PreparedDataset, teacher: Teacher) -> None:
        super().__init__(cfg, ds, teacher)
        omega = teacher.omega
        assert omega is not None  # load_teacher refuses mtt without trajectories
        if not any(omega.later(i, cfg.mtt_offset) is not None for i in range(len(omega))):
            raise ConfigError(
                f"no trajectory run has more than {cfg.mtt_offset} saved checkpoints after a start point",
                "lower --mtt-offset, or save checkpoints more often (farzictl trajectories --every)",
            )

    def start(self, draws: Draws) -> Start:
        """A checkpoint with a target ``mtt_offset`` saves later in its run (redrawn until one has)."""
        omega = self.teacher.omega
        assert omega is not None
        for _ in range(self.MAX_DRAWS):
            i = self.draw_checkpoint(draws)
            if omega.later(i, self.cfg.mtt_offset) is not None:
                return self.at_checkpoint(i)
        raise RuntimeError("no checkpoint with a later target was drawn")  # the constructor checked one exists

    def __call__(self, summary: Summary, draws: Draws) -> Contribution:
        start = self.start(draws)
        i, w0 = start.checkpoint, start.w
        assert i is not None and self.teacher.omega is not None
        j = self.teacher.omega.later(i, self.cfg.mtt_offset)
        assert j is not None
        self.real_batch(draws)  # unused; drawn so that the synthetic batches match the other objectives'
        batches = self.syn_batches(draws)
        target = self.teacher.checkpoint(j)
        negatives = self.inner_negatives(summary, draws)
        denom = sum(float((a - b).pow(2).sum()) for a, b in zip(w0, target, strict=True)) or 1.0

        def terminal(w: Tensors) -> Tensor:
            return sum((a - b).pow(2).sum() for a, b in zip(w, target, strict=True)) / denom

        out = self.unrolled(summary, start, batches, terminal, negatives)
        out.stats = {"checkpoint": i, "target": j, **out.stats}
        return out


OBJECTIVES: dict[Objective, type[MetaObjective]] = {
    Objective.farzi: MetaMatching,
    Objective.mm: MetaMatching,
    Objective.dc: GradientMatching,
    Objective.mtt: TrajectoryMatching,
}


def make_objective(cfg: DistillConfig, ds: PreparedDataset, teacher: Teacher) -> MetaObjective:
    return OBJECTIVES[cfg.objective](cfg, ds, teacher)


def moments_state(inner: InnerOptimizer, moments: AdamMoments, names: list[str]) -> AdamState | None:
    """Omega's Adam moments as the inner optimizer's starting state (None for SGD: it has no moments)."""
    if not isinstance(inner, Adam):
        return None
    return AdamState([moments.exp_avg[n] for n in names], [moments.exp_avg_sq[n] for n in names])


def inner_optimizer(cfg: DistillConfig) -> InnerOptimizer:
    if cfg.inner_optimizer is InnerOptimizerName.adam:
        return Adam(lr=cfg.inner_lr, weight_decay=cfg.inner_weight_decay)
    return SGD(lr=cfg.inner_lr, momentum=cfg.inner_momentum, weight_decay=cfg.inner_weight_decay)


def grad_norm(grads: Tensors) -> float:
    """The L2 norm over all tensors (float64 accumulation); NaN/inf when any entry is."""
    return math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))
