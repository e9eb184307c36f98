"""Next-token cross-entropy from features: only scored positions, in chunks of positions.

Two paths compute the same loss (to float tolerance):

* ``next_token_loss(model(x), x)`` (farzi.models.base): the plain path on full
  logits [B, L, V]. Every op is ordinary autograd, so it supports any order of
  derivative; the distillation engine's inner loop (Hessian-vector products
  through ``torch.func.functional_call``) uses it.
* ``model.loss(x)`` = ``features_next_token_loss(model.features(x),
  model.output_table(), x)`` (this module): the fast path for training. It
  gathers the positions that have a target (padding never reaches the |V|-wide
  matmul) and scores them ``chunk_positions(V)`` at a time, so at most one
  chunk's [chunk, V] logits exist at once, in the forward and in the backward
  pass. The chunks' gradients are computed in the forward pass while the chunk's
  logits are at hand (only [N, d] + [V, d] are kept for backward); when backward
  is asked for a graph (``create_graph=True``) or for per-position weights, each
  chunk's logits are recomputed instead, with differentiable ops, so double
  backward works too (memory then grows with the graph, as on the plain path).

``functional_loss(model, params, x)`` is the fast path under
``torch.func.functional_call`` (for a real-data loss in the distillation engine).

At a large vocabulary the distillation engine can replace the softmax over |V| by an estimate:
``candidate_loss`` (a sparse batch's union of candidates) and ``sampled_loss`` (each position's own
candidates or target plus S negatives shared by the batch, drawn uniformly by ``draw_negatives``,
logQ corrected): plain autograd over O(K + S) logits a position.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from farzi.models.sparse import SparseDist

if TYPE_CHECKING:
    from farzi.models.base import SequenceModel

NEG_INF = -1.0e4  # the <pad> logit (same value as farzi.models.base.NEG_INF)

# One chunk of logits holds at most this many elements: 2**20 floats = 4 MiB in float32 (8 in float64),
# i.e. 104 positions at |V| = 10k. Small enough to stay in cache on a CPU, large enough for an efficient matmul.
CHUNK_ELEMENTS = 1 << 20


def chunk_positions(vocab_size: int, chunk_elements: int = CHUNK_ELEMENTS) -> int:
    """Positions scored per chunk so that a chunk's [positions, V] logits stay within ``chunk_elements``."""
    return max(1, chunk_elements // max(vocab_size, 1))


def is_ids(x: Tensor) -> bool:
    return x.dtype in (torch.int64, torch.int32)


def _chunk_logits(h: Tensor, table: Tensor) -> Tensor:
    """[n, d] @ [d, V] with the <pad> column at NEG_INF (out of place: differentiable)."""
    logits = h @ table.t()  # [n, V]
    pad = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    pad[0] = True
    return logits.masked_fill(pad, NEG_INF)


class _LinearCrossEntropy(torch.autograd.Function):
    """nll[i] = -sum_v t[i, v] log softmax(h[i] @ table.T)[v], chunk by chunk (ids: t one-hot).

    Inputs: h [N, d], table [V, d], target [N] int64 or [N, V] float, chunk (positions).
    Output: nll [N].
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, h: Tensor, table: Tensor, target: Tensor, chunk: int, weights: Tensor | None = None
    ) -> Tensor:
        # weights given: a sparse target, ``target`` [N, K] candidate ids and ``weights`` [N, K] their mass
        ids = is_ids(target) and weights is None
        want_h, want_table = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        want_target = (not ids) and (ctx.needs_input_grad[2] or (weights is not None and ctx.needs_input_grad[4]))
        fuse = (want_h or want_table) and not want_target  # gradients now, while each chunk's logits are at hand
        N = h.shape[0]
        nll = h.new_empty(N)  # [N]
        dh = h.new_zeros(h.shape) if fuse else None  # [N, d]: d nll_i / d h_i
        dtable = table.new_zeros(table.shape) if fuse else None  # [V, d]: sum_i d nll_i / d table
        for lo in range(0, N, chunk):
            hi = min(lo + chunk, N)
            logits = h[lo:hi] @ table.t()  # [n, V]
            logits[:, 0] = NEG_INF
            if ids:
                t = target[lo:hi]
                picked = logits.gather(1, t.unsqueeze(1)).squeeze(1)  # [n]: the target's logit
            elif weights is not None:
                t, w = target[lo:hi], weights[lo:hi].to(logits.dtype)  # [n, K] each
                mass = w.sum(-1)  # [n]
                picked = (w * logits.gather(1, t)).sum(-1)  # [n]: sum_k w_k logit_{t_k}
            else:
                t = target[lo:hi].to(logits.dtype)  # [n, V]
                mass = t.sum(-1)  # [n]
                picked = (t * logits).sum(-1)  # [n]: sum_v t_v logit_v
            # log-sum-exp and (when fused) the softmax in place, in as few passes over [n, V] as possible
            top = logits.amax(dim=-1, keepdim=True)  # [n, 1]
            probs = logits.sub_(top).exp_()  # [n, V], unnormalized
            total = probs.sum(-1, keepdim=True)  # [n, 1]
            lse = (top + total.log()).squeeze(1)  # [n]
            nll[lo:hi] = lse - picked if ids else lse * mass - picked
            if not fuse:
                continue
            if weights is not None:  # mass x softmax in one pass over [n, V], then the candidates' -w
                grad = probs.mul_(mass.unsqueeze(1) / total).scatter_add_(1, t, -w)
            else:
                grad = probs.div_(total)  # softmax [n, V]
            if ids:
                grad.scatter_add_(1, t.unsqueeze(1), grad.new_full((hi - lo, 1), -1.0))
            elif weights is None:
                grad.mul_(mass.unsqueeze(1)).sub_(t)
            grad[:, 0] = 0.0  # the <pad> logit is a constant
            if want_h:
                torch.mm(grad, table, out=dh[lo:hi])  # type: ignore[index]
            if want_table:
                dtable.addmm_(grad.t(), h[lo:hi])  # type: ignore[union-attr]
        ctx.chunk, ctx.ids, ctx.fused = chunk, ids, fuse
        ctx.want_target = want_target
        ctx.save_for_backward(h, table, target, dh, dtable, weights)
        return nll

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        h, table, target, dh, dtable, weights = ctx.saved_tensors
        want_h, want_table = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        N = h.shape[0]
        uniform = N > 0 and bool((g == g[0]).all())  # a mean or sum of the nll: one weight for every position
        if ctx.fused and uniform and not torch.is_grad_enabled():
            scale = g[0]
            return (dh * g.unsqueeze(1) if want_h else None, dtable * scale if want_table else None, None, None, None)
        if weights is not None:  # the sparse target as a dense one, chunk by chunk in _recomputed_backward
            target = (target, weights)
        grads = _recomputed_backward(h, table, target, g, ctx.chunk, ctx.ids, want_h, want_table, ctx.want_target)
        if weights is not None:
            return (*grads[:2], None, None, grads[2])
        return (*grads, None)


def _recomputed_backward(
    h: Tensor,
    table: Tensor,
    target: Tensor,
    g: Tensor,
    chunk: int,
    ids: bool,
    want_h: bool,
    want_table: bool,
    want_target: bool,
) -> tuple[Tensor | None, ...]:
    """Gradients with each chunk's logits recomputed, in differentiable ops (double backward)."""
    N = h.shape[0]
    dh_parts, dt_parts = [], []
    dtable = torch.zeros_like(table) if want_table else None  # [V, d]
    for lo in range(0, N, chunk):
        hi = min(lo + chunk, N)
        h_c, g_c = h[lo:hi], g[lo:hi].unsqueeze(1)  # [n, d], [n, 1]
        logp = F.log_softmax(_chunk_logits(h_c, table), dim=-1)  # [n, V]
        if ids:
            t_c = F.one_hot(target[lo:hi], table.shape[0]).to(logp.dtype)  # [n, V]
        elif isinstance(target, tuple):  # sparse: candidates and their mass, scattered into [n, V]
            idx, w = target[0][lo:hi], target[1][lo:hi].to(logp.dtype)
            t_c = logp.new_zeros(logp.shape).scatter_add(1, idx, w)
        else:
            t_c = target[lo:hi].to(logp.dtype)
        if want_h or want_table:
            grad = (logp.exp() * t_c.sum(-1, keepdim=True) - t_c) * g_c  # d nll / d logits [n, V]
            grad = grad.masked_fill(_pad_column(grad), 0.0)
            if want_h:
                dh_parts.append(grad @ table)  # [n, d]
            if want_table:
                dtable = dtable + grad.t() @ h_c  # type: ignore[operator]
        if want_target:
            dt_c = -logp * g_c  # [n, V]
            dt_parts.append(dt_c.gather(1, idx).to(w.dtype) if isinstance(target, tuple) else dt_c.to(target.dtype))
    like = target[1] if isinstance(target, tuple) else target
    dh = (torch.cat(dh_parts) if dh_parts else torch.zeros_like(h)) if want_h else None
    dt = (torch.cat(dt_parts) if dt_parts else torch.zeros_like(like)) if want_target else None
    return dh, dtable, dt, None


def _pad_column(t: Tensor) -> Tensor:
    pad = torch.zeros(t.shape[-1], dtype=torch.bool, device=t.device)
    pad[0] = True
    return pad


def linear_cross_entropy(h: Tensor, table: Tensor, target: Tensor, chunk: int | None = None) -> Tensor:
    """Per-position cross-entropy of the tied scores ``h @ table.T`` (<pad> masked) against ``target``.

    h [N, d]; table [V, d]; target ids [N] or distributions [N, V]. Returns nll [N].
    Never holds more than one chunk of [chunk, V] logits (``chunk_positions(V)`` by default).
    """
    chunk = chunk or chunk_positions(table.shape[0])
    return _LinearCrossEntropy.apply(h, table, target, chunk, None)


def sparse_cross_entropy(h: Tensor, table: Tensor, target: SparseDist, chunk: int | None = None) -> Tensor:
    """Per-position cross-entropy of the tied scores against sparse targets (idx, p [N, K]):
    mass * logsumexp(h @ table.T) - sum_k p_k logit_{idx_k}, a chunk of [chunk, V] logits at a time,
    its backward fused as for token ids (the candidates' logits and their gradient are read from and
    scattered into the chunk's logits: O(K) a position beyond a step on ids)."""
    chunk = chunk or chunk_positions(table.shape[0])
    return _LinearCrossEntropy.apply(h, table, target.idx, chunk, target.p)


def scored_positions(h: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The positions that have a next-token target, gathered.

    h [B, L, d]; targets ids [B, L] or distributions [B, L, V] (the inputs; the shift
    happens here). Returns (h_scored [N, d], targets_scored [N] or [N, V], valid [B, L-1] bool).
    """
    B, L, d = h.shape
    if isinstance(targets, SparseDist):
        p, idx = targets.p[:, 1:], targets.idx[:, 1:]  # [B, L-1, K]
        valid = p.sum(-1) > 0
        flat = valid.reshape(-1).nonzero().squeeze(1)  # [N]
        hs = h[:, :-1].reshape(B * (L - 1), d).index_select(0, flat)  # [N, d]
        K = p.shape[-1]
        return hs, SparseDist(idx.reshape(-1, K).index_select(0, flat), p.reshape(-1, K).index_select(0, flat)), valid
    tgt = targets[:, 1:]
    valid = tgt != 0 if is_ids(targets) else tgt.sum(-1) > 0  # [B, L-1]
    flat = valid.reshape(-1).nonzero().squeeze(1)  # [N]
    hs = h[:, :-1].reshape(B * (L - 1), d).index_select(0, flat)  # [N, d]
    if is_ids(targets):
        ts = tgt.reshape(-1).index_select(0, flat)  # [N]
    else:
        ts = tgt.reshape(B * (L - 1), -1).index_select(0, flat)  # [N, V]
    return hs, ts, valid


def features_next_token_loss(
    h: Tensor, table: Tensor, targets: Tensor, reduction: str = "mean", chunk: int | None = None
) -> Tensor:
    """``next_token_loss(tied_logits(h, table), targets, reduction)`` without the [B, L, V] logits.

    h [B, L, d] (a model's ``features``); table [V, d] (its ``output_table``); targets
    as in ``next_token_loss``: ids [B, L] (pad ignored) or distributions [B, L, V]
    (positions without mass ignored). ``reduction``: ``mean`` over scored positions,
    ``sum``, or ``none`` ([B, L-1], zeros where nothing is scored).
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"unknown reduction {reduction!r}; use mean, sum or none")
    hs, ts, valid = scored_positions(h, targets)
    nll = (
        sparse_cross_entropy(hs, table, ts, chunk)
        if isinstance(ts, SparseDist)
        else linear_cross_entropy(hs, table, ts, chunk)
    )
    if reduction == "none":
        flat = valid.reshape(-1).nonzero().squeeze(1)
        out = nll.new_zeros(valid.numel()).index_add(0, flat, nll)
        return out.view(valid.shape)  # [B, L-1]
    total = nll.sum()
    if reduction == "sum":
        return total
    return total / valid.sum().clamp_min(1)


@torch.no_grad()
def score_targets(h: Tensor, table: Tensor, targets: Tensor, chunk: int | None = None) -> tuple[Tensor, Tensor]:
    """Evaluation: NLL and argmax hit of each target id, chunk by chunk (no grad, no [N, V] at once).

    h [N, d], table [V, d], targets [N] int64. Returns (nll [N] float, hit [N] bool),
    computed in float32 at least (as ``log_softmax(logits.float())`` would).
    """
    chunk = chunk or chunk_positions(table.shape[0])
    nll = torch.empty(h.shape[0], dtype=torch.promote_types(h.dtype, torch.float32), device=h.device)
    hit = torch.empty(h.shape[0], dtype=torch.bool, device=h.device)
    for lo in range(0, h.shape[0], chunk):
        hi = min(lo + chunk, h.shape[0])
        logits = _chunk_logits(h[lo:hi], table).to(nll.dtype)  # [n, V]
        t = targets[lo:hi].unsqueeze(1)
        nll[lo:hi] = (torch.logsumexp(logits, dim=-1, keepdim=True) - logits.gather(1, t)).squeeze(1)
        hit[lo:hi] = logits.argmax(-1) == targets[lo:hi]
    return nll, hit


class _LossOf(nn.Module):
    """Wraps a model so that ``functional_call`` reaches its fast loss (``model.`` prefixes the names)."""

    def __init__(self, model: SequenceModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, targets: Tensor | None, reduction: str) -> Tensor:
        return self.model.loss(x, targets, reduction)


def functional_loss(
    model: SequenceModel,
    params: dict[str, Tensor],
    x: Tensor,
    targets: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """``model.loss(x, targets)`` with ``params`` in place of the model's own (as ``functional_call``).

    Equal to ``next_token_loss(functional_call(model, params, (x,)), x)`` to float tolerance.
    """
    named = {f"model.{k}": v for k, v in params.items()}
    return functional_call(_LossOf(model), named, (x, targets, reduction))


class _FeaturesAndTable(nn.Module):
    """Wraps a model so that ``functional_call`` reaches its features and output table."""

    def __init__(self, model: SequenceModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor | SparseDist) -> tuple[Tensor, Tensor]:
        return self.model.features(x), self.model.output_table()


def candidate_loss(model: SequenceModel, params: dict[str, Tensor], x: SparseDist) -> Tensor:
    """Next-token cross-entropy of sparse ``x`` against its own targets, the softmax taken over the
    candidates the batch holds (their union) instead of the whole vocabulary: O(|union| d) per
    position instead of O(V d). A deterministic function of the weights and ``x`` (no sampling), so
    its meta-gradient is exact; it equals the full loss where the union is the whole vocabulary
    (less ``<pad>``). Plain autograd (any order of derivative)."""
    named = {f"model.{k}": v for k, v in params.items()}
    h, table = functional_call(_FeaturesAndTable(model), named, (x,))  # [B, L, d], [V, d]
    union, where = torch.unique(x.idx, return_inverse=True)  # [u], [B, L, K]: each candidate's column
    logp = F.log_softmax(h[:, :-1] @ table[union].t(), dim=-1)  # [B, L-1, u]
    p = x.p[:, 1:].to(logp.dtype)  # [B, L-1, K]
    valid = p.sum(-1) > 0
    nll = -(p * logp.gather(-1, where[:, 1:])).sum(-1) * valid  # [B, L-1]
    return nll.sum() / valid.sum().clamp_min(1)


# ------------------------------------------------------------------ sampled softmax (large vocabularies)
def draw_negatives(vocab_size: int, count: int, gen: torch.Generator) -> Tensor:
    """``count`` distinct token ids drawn uniformly without replacement from 1 .. V-1 (never ``<pad>``),
    sorted: [S]. Every id but ``<pad>`` when ``count >= V - 1`` (the sampled softmax is then the full one)."""
    n = vocab_size - 1
    if count >= n:
        return torch.arange(1, vocab_size)
    return (torch.randperm(n, generator=gen)[:count] + 1).sort().values  # [S]


def sampled_nll(h: Tensor, table: Tensor, cand: Tensor, p: Tensor, negatives: Tensor) -> Tensor:
    """Cross-entropy of targets ``p`` over candidates ``cand`` under a sampled softmax: each position's
    logits are its own K candidates plus S negatives shared by all positions, drawn uniformly from the
    V - 1 ids that are not ``<pad>`` (:func:`draw_negatives`). The logQ correction adds log((V-1)/S) to a
    negative's logit (each id is drawn with probability S/(V-1)), so the negatives' exp-sum estimates the
    non-candidates' without bias; a negative that is one of the position's own candidates is removed (its
    logit at NEG_INF), so no id counts twice. With S = V - 1 this is the full softmax's cross-entropy.

    h [..., d]; table [V, d]; cand [..., K] ids (never <pad>); p [..., K] their mass; negatives [S] sorted
    ids. Returns nll [...] = mass * logsumexp(own, negatives) - sum_k p_k logit_k. Plain autograd (any order).
    """
    V, S = table.shape[0], negatives.numel()
    own = (F.embedding(cand, table) @ h.unsqueeze(-1)).squeeze(-1)  # [..., K]
    neg = h @ table[negatives].t()  # [..., S]
    if S < V - 1:
        neg = neg + math.log((V - 1) / S)  # logQ: uniform draws of S among V - 1
    at = torch.searchsorted(negatives, cand.contiguous()).clamp_max(S - 1)  # [..., K]: where each candidate would sit
    hit = (negatives[at] == cand).to(neg.dtype)  # [..., K]: the candidate is among the negatives
    mask = torch.zeros(neg.shape, dtype=neg.dtype, device=neg.device).scatter_add_(-1, at, hit) > 0  # [..., S]
    lse = torch.logsumexp(torch.cat([own, neg.masked_fill(mask, NEG_INF)], dim=-1), dim=-1)  # [...]
    p = p.to(own.dtype)
    return lse * p.sum(-1) - (p * own).sum(-1)


def sampled_loss(model: SequenceModel, params: dict[str, Tensor], x: Tensor | SparseDist, negatives: Tensor) -> Tensor:
    """Mean next-token cross-entropy of ``x`` against its own targets under :func:`sampled_nll`'s sampled
    softmax: a sparse summary's batch (each position's K candidates plus the S shared ``negatives``) or
    real token ids (each position's target plus the negatives). O((K + S) d) a position instead of O(V d);
    a deterministic function of the weights, ``x`` and ``negatives``, so with the same negatives replayed
    its meta-gradient is exact. Plain autograd (any order of derivative)."""
    named = {f"model.{k}": v for k, v in params.items()}
    h, table = functional_call(_FeaturesAndTable(model), named, (x,))  # [B, L, d], [V, d]
    if isinstance(x, SparseDist):
        cand, p = x.idx[:, 1:], x.p[:, 1:]  # [B, L-1, K]
        valid = p.sum(-1) > 0  # [B, L-1]
    else:
        valid = x[:, 1:] != 0  # [B, L-1]
        cand, p = x[:, 1:].unsqueeze(-1), valid.unsqueeze(-1).to(h.dtype)  # [B, L-1, 1]
        cand = cand.clamp_min(1)  # <pad> targets (no mass) scored as any id, then dropped
    nll = sampled_nll(h[:, :-1], table, cand, p, negatives.to(cand.device)) * valid  # [B, L-1]
    return nll.sum() / valid.sum().clamp_min(1)
