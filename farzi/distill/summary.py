"""The factorized summary: latent [mu, xi, d] times decoder [d, V], temperature tau."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from farzi.models.sparse import SparseDist


def banned_mask(vocab_size: int, banned: list[int], device: torch.device | str = "cpu") -> Tensor:
    mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    if banned:
        mask[torch.tensor(banned, dtype=torch.long, device=device)] = True
    return mask


def materialize(
    latent: Tensor, decoder: Tensor, tau: float | Tensor, banned: Tensor, idx: Tensor | None = None
) -> Tensor:
    """softmax(latent[idx] @ decoder / tau) over the vocabulary, banned tokens at 0.

    latent [mu, xi, d], decoder [d, V] -> [b, xi, V] (b = len(idx), or mu).
    Differentiable in latent and decoder.
    """
    z = latent if idx is None else latent[idx]  # [b, xi, d]
    logits = (z @ decoder) / tau  # [b, xi, V]
    logits = logits.masked_fill(banned, float("-inf"))
    return F.softmax(logits, dim=-1)


def materialize_sparse(
    latent: Tensor, decoder: Tensor, tau: float | Tensor, support: Tensor, idx: Tensor | None = None
) -> SparseDist:
    """softmax over each position's K candidates of (latent @ decoder[:, candidates] / tau).

    latent [mu, xi, d], decoder [d, V], support [mu, xi, K] token ids -> SparseDist of [b, xi, K]
    (b = len(idx), or mu): O(K d) per position, never [b, xi, V]. Differentiable in latent and decoder.
    """
    z = latent if idx is None else latent[idx]  # [b, xi, d]
    cand = support if idx is None else support[idx]  # [b, xi, K]
    columns = F.embedding(cand, decoder.t())  # [b, xi, K, d]
    logits = (columns @ z.unsqueeze(-1)).squeeze(-1) / tau  # [b, xi, K]
    return SparseDist(cand, F.softmax(logits, dim=-1))


@torch.no_grad()
def top_support(latent: Tensor, decoder: Tensor, k: int, banned: Tensor, chunk_elements: int = 1 << 22) -> Tensor:
    """Each position's ``k`` largest logits of the dense summary ``latent @ decoder`` (banned tokens
    never chosen), in descending order: [mu, xi, k] token ids. A chunk of positions at a time (at most
    ``chunk_elements`` logits at once)."""
    mu, xi, d = latent.shape
    flat = latent.reshape(mu * xi, d)
    out = torch.empty(mu * xi, k, dtype=torch.long, device=latent.device)
    rows = max(1, chunk_elements // decoder.shape[1])
    for lo in range(0, mu * xi, rows):
        logits = (flat[lo : lo + rows] @ decoder).masked_fill_(banned, float("-inf"))  # [n, V]
        out[lo : lo + rows] = logits.topk(k, dim=-1).indices
    return out.view(mu, xi, k)


def init_summary(
    mu: int, xi: int, d: int, vocab_size: int, gen: torch.Generator, scale: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Random N(0, scale^2 / d) latent and N(0, 1) decoder: logits start at O(scale)."""
    latent = torch.randn(mu, xi, d, generator=gen) * (scale / d**0.5)
    decoder = torch.randn(d, vocab_size, generator=gen)
    return latent, decoder


def windows_kind(train: object, xi: int, kind: str = "auto") -> str:
    """``within`` or ``joined``: what ``kind`` (``auto`` / ``within`` / ``joined``) means for ``train``.

    ``auto`` takes windows within sequences when those at least ``xi`` long hold at least half of the
    training tokens (users' histories), else joins sequences (sentences: windows inside the few long
    ones would all come from them, mid-sentence). ``within`` without any long-enough sequence joins.
    """
    lengths = np.asarray(train.lengths, dtype=np.int64)  # type: ignore[attr-defined]
    long_tokens = int(lengths[lengths >= xi].sum())
    if kind == "joined" or long_tokens == 0:
        return "joined"
    if kind == "within":
        return "within"
    return "within" if 2 * long_tokens >= int(lengths.sum()) else "joined"


def real_windows(train: object, mu: int, xi: int, gen: torch.Generator, kind: str = "auto") -> Tensor:
    """``mu`` windows of ``xi`` real tokens [mu, xi], as :func:`windows_kind` says: a random window of
    a random sequence at least ``xi`` long, or consecutive random sequences joined end to end."""
    lengths = torch.as_tensor(train.lengths)  # type: ignore[attr-defined]
    long_enough = torch.nonzero(lengths >= xi).flatten()
    within = windows_kind(train, xi, kind) == "within"
    out = torch.zeros(mu, xi, dtype=torch.long)
    for i in range(mu):
        if within:
            j = int(long_enough[torch.randint(len(long_enough), (1,), generator=gen)])
            seq = torch.from_numpy(np.array(train[j], dtype=np.int64))  # a copy: splits may be read-only maps
            start = int(torch.randint(len(seq) - xi + 1, (1,), generator=gen))
            out[i] = seq[start : start + xi]
            continue
        parts, have = [], 0
        while have < xi:
            j = int(torch.randint(len(lengths), (1,), generator=gen))
            seq = torch.from_numpy(np.array(train[j], dtype=np.int64))  # a copy: splits may be read-only maps
            if parts and len(seq) > 1 and int(parts[-1][-1]) == int(seq[0]):
                seq = seq[1:]  # sentences end and start with <eos>: keep one boundary between them
            parts.append(seq)
            have += len(seq)
        out[i] = torch.cat(parts)[:xi]
    return out


def init_from_real(
    tokens: Tensor, embeddings: Tensor, d: int, sharpness: float, tau: float, banned: list[int]
) -> tuple[Tensor, Tensor]:
    """A summary that starts as smoothed real sequences.

    The decoder's columns are the tokens' embeddings (from a trained teacher)
    projected on their top-``d`` principal directions and scaled to unit norm;
    each latent vector is ``sharpness * tau`` times its token's column. Then
    softmax(latent @ decoder / tau) puts the most mass on the real token and
    the rest on tokens the teacher embeds nearby.
    """
    coords = principal_decoder(embeddings, d, banned).T  # [V, d]
    coords = coords / coords.norm(dim=1, keepdim=True).clamp_min(1e-12)
    decoder = coords.T.contiguous().float()  # [d, V]
    latent = (sharpness * tau) * decoder.T[tokens]  # [mu, xi, d]
    return latent.contiguous(), decoder


def fit_summary(
    targets: Tensor,
    decoder0: Tensor,
    tau: float,
    banned: Tensor,
    steps: int = 500,
    lr: float = 0.05,
    gen: torch.Generator | None = None,
    train_decoder: bool = True,
) -> tuple[Tensor, Tensor]:
    """Latent and decoder whose softmax(latent @ decoder / tau) best fits ``targets`` [mu, xi, V].

    Minimizes the cross-entropy to the targets with Adam, starting from
    ``decoder0`` [d, V] and a small random latent; ``train_decoder=False`` fits the latent alone
    (the decoder stays ``decoder0``).
    """

    def log_probs(latent: Tensor, decoder: Tensor) -> Tensor:  # [mu, xi, V]
        return F.log_softmax(((latent @ decoder) / tau).masked_fill(banned, -1e4), dim=-1)

    return _fit(targets, log_probs, decoder0, steps, lr, gen, train_decoder)


def fit_sparse_summary(
    support: Tensor,
    weights: Tensor,
    decoder0: Tensor,
    tau: float,
    steps: int = 500,
    lr: float = 0.05,
    gen: torch.Generator | None = None,
    train_decoder: bool = True,
) -> tuple[Tensor, Tensor]:
    """:func:`fit_summary` over each position's candidates alone: latent and decoder whose softmax
    over ``support`` [mu, xi, K] best fits ``weights`` [mu, xi, K]; O(K d) a position and step
    instead of O(V d). Decoder columns no position lists keep ``decoder0``'s values."""

    def log_probs(latent: Tensor, decoder: Tensor) -> Tensor:  # [mu, xi, K]
        columns = F.embedding(support, decoder.t())  # [mu, xi, K, d]
        return F.log_softmax((columns @ latent.unsqueeze(-1)).squeeze(-1) / tau, dim=-1)

    return _fit(weights, log_probs, decoder0, steps, lr, gen, train_decoder)


def _fit(
    targets: Tensor,
    log_probs: Any,
    decoder0: Tensor,
    steps: int,
    lr: float,
    gen: torch.Generator | None,
    train_decoder: bool = True,
) -> tuple[Tensor, Tensor]:
    """Adam on (latent, decoder) from ``decoder0`` and a small random latent, minimizing the
    cross-entropy of ``log_probs(latent, decoder)`` to ``targets`` (the same shape); on the latent
    alone when not ``train_decoder``."""
    mu, xi = targets.shape[:2]
    latent = (0.1 * torch.randn(mu, xi, decoder0.shape[0], generator=gen)).requires_grad_()  # [mu, xi, d]
    decoder = decoder0.detach().clone().float().requires_grad_(train_decoder)  # [d, V]
    opt = torch.optim.Adam([latent, decoder] if train_decoder else [latent], lr=lr)
    for _ in range(steps):
        loss = -(targets * log_probs(latent, decoder)).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return latent.detach(), decoder.detach()


@torch.no_grad()
def sparse_teacher_targets(
    tokens: Tensor, model: torch.nn.Module, mix: float, banned: Tensor, k: int, chunk_elements: int = 1 << 24
) -> tuple[Tensor, Tensor]:
    """The ``k`` heaviest tokens of :func:`teacher_targets` at each position and their weights
    renormalized over them: (support [mu, xi, k], weights [mu, xi, k]), a few windows at a time (at
    most ``chunk_elements`` of the [*, V] targets at once)."""
    mu, xi = tokens.shape
    rows = max(1, chunk_elements // (xi * int(banned.numel())))
    support = torch.empty(mu, xi, k, dtype=torch.long)
    weights = torch.empty(mu, xi, k)
    for lo in range(0, mu, rows):
        part = tokens[lo : lo + rows]
        targets = teacher_targets(part, model(part), mix, banned).masked_fill_(banned, -1.0)  # never a candidate
        w, idx = targets.topk(k, dim=-1)  # [n, xi, k]
        w = w.clamp_min(0.0)
        support[lo : lo + rows], weights[lo : lo + rows] = (
            idx.cpu(),
            (w / w.sum(-1, keepdim=True).clamp_min(1e-30)).cpu(),
        )
    return support, weights


def teacher_targets(tokens: Tensor, teacher_logits: Tensor, mix: float, banned: Tensor) -> Tensor:
    """Distributions for real windows ``tokens`` [mu, xi]: at each position after the first,
    ``mix`` of the real token plus ``1 - mix`` of the teacher's prediction for it
    (``teacher_logits`` [mu, xi, V] from the teacher run on the windows)."""
    V = teacher_logits.shape[-1]
    onehot = F.one_hot(tokens, V).float()  # [mu, xi, V]
    pred = F.softmax(teacher_logits[:, :-1].float().masked_fill(banned, float("-inf")), dim=-1)
    out = onehot.clone()
    out[:, 1:] = mix * onehot[:, 1:] + (1 - mix) * pred
    return out


def principal_decoder(embeddings: Tensor, d: int, banned: list[int]) -> Tensor:
    """The tokens' coordinates on the top-``d`` principal directions of ``embeddings`` [V, dm]: [d, V]."""
    emb = embeddings.detach().double()
    keep = torch.ones(emb.shape[0], dtype=torch.bool)
    keep[banned] = False
    centered = emb - emb[keep].mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(centered[keep], full_matrices=False)
    k = min(d, vh.shape[0])
    coords = centered @ vh[:k].T  # [V, k]
    if k < d:
        coords = torch.cat([coords, 1e-3 * torch.randn(emb.shape[0], d - k, dtype=coords.dtype)], dim=1)
    return coords.T.contiguous().float()


@dataclass
class Summary:
    """The summary being learned: leaves ``latent`` [mu, xi, d] and ``decoder`` [d, V], and optionally
    the log of the temperature (``--learn-tau``) and of the inner learning rate (``--learn-inner-lr``)."""

    latent: Tensor  # [mu, xi, d], requires grad
    decoder: Tensor  # [d, V], requires grad
    tau: float  # the temperature when it is not learned (else its start)
    banned: Tensor  # [V] bool: tokens that never get mass (padding)
    log_tau: Tensor | None = None  # [] learned log temperature
    log_inner_lr: Tensor | None = None  # [] learned log inner learning rate
    support: Tensor | None = None  # [mu, xi, K] candidate token ids of a sparse summary (None: dense)
    frozen_decoder: bool = False  # --decoder tied-frozen: the decoder is no outer parameter (no grad)

    @classmethod
    def create(
        cls,
        latent: Tensor,
        decoder: Tensor,
        tau: float,
        banned: list[int],
        device: torch.device,
        learn_tau: bool = False,
        inner_lr: float | None = None,
        support: int | Tensor = 0,
        train_decoder: bool = True,
    ) -> Summary:
        """``inner_lr`` given: the inner learning rate is learned, starting there. ``support``: a sparse
        summary over these candidates [mu, xi, K], or K > 0: over each position's K largest initial
        logits (:meth:`refresh_support`). ``train_decoder=False``: the decoder stays as given (it is
        left out of :attr:`params`, so it gets neither a meta-gradient nor an outer update)."""

        def scalar(x: float) -> Tensor:
            return torch.tensor(math.log(x), dtype=torch.float32, device=device).requires_grad_()

        out = cls(
            latent.to(device).requires_grad_(),
            decoder.to(device).requires_grad_(train_decoder),
            tau,
            banned_mask(decoder.shape[1], banned, device),
            scalar(tau) if learn_tau else None,
            scalar(inner_lr) if inner_lr is not None else None,
            frozen_decoder=not train_decoder,
        )
        if isinstance(support, Tensor):
            out.support = support.to(device)
        elif support:
            out.refresh_support(support)
        return out

    def refresh_support(self, k: int) -> None:
        """Each position's candidates: the ``k`` largest logits of the dense summary as it is now."""
        self.support = top_support(self.latent.detach(), self.decoder.detach(), k, self.banned)

    @property
    def mu(self) -> int:
        return int(self.latent.shape[0])

    @property
    def names(self) -> list[str]:
        """Names of :attr:`params` (in the run state and the outer optimizer's)."""
        return [n for n, p in self._named() if p is not None]

    @property
    def params(self) -> list[Tensor]:
        """The outer loop's parameters, in the order meta-gradients are returned."""
        return [p for _, p in self._named() if p is not None]

    def _named(self) -> list[tuple[str, Tensor | None]]:
        return [
            ("latent", self.latent),
            ("decoder", None if self.frozen_decoder else self.decoder),
            ("log_tau", self.log_tau),
            ("log_inner_lr", self.log_inner_lr),
        ]

    @property
    def temperature(self) -> float | Tensor:
        """tau, differentiable when learned."""
        return self.tau if self.log_tau is None else self.log_tau.exp()

    def current_tau(self) -> float:
        return self.tau if self.log_tau is None else float(self.log_tau.detach().exp())

    def current_inner_lr(self) -> float | None:
        return None if self.log_inner_lr is None else float(self.log_inner_lr.detach().exp())

    def syn(self, idx: Tensor | None = None) -> Tensor | SparseDist:
        """Distributions of the sequences ``idx`` (all when None), differentiable: [b, xi, V], or over
        each position's K candidates for a sparse summary (:class:`~farzi.models.sparse.SparseDist`)."""
        if self.support is not None:
            return materialize_sparse(self.latent, self.decoder, self.temperature, self.support, idx)
        return materialize(self.latent, self.decoder, self.temperature, self.banned, idx)

    def is_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.params)
