"""What every model in the zoo shares.

A model maps a batch of sequences to next-token logits over the whole vocabulary:

    x: token ids [B, L] (int64)        -> input embedding E[x]
    x: distributions [B, L, V] (float) -> input embedding x @ E   (soft inputs)
    returns logits [B, L, V]; logits[:, t] scores the token at position t + 1

in two parts: ``features(x) -> h [B, L, d]`` (everything up to the output layer)
and the tied output layer ``h @ output_table().T`` (``output_table()`` is the
token embedding table [V, d]). ``forward`` composes the two. Training and
evaluation use the parts directly (``model.loss(x)``, farzi.models.loss), so the
|V|-wide matmul runs only at positions that have a target, a chunk at a time.

Padding is token 0 (``<pad>``): a position is padding when its id is 0 or its
distribution has no mass; padded positions are zeroed after the embedding, so
id inputs and their one-hot distributions give bitwise the same embeddings.
The ``<pad>`` logit is pushed to ``NEG_INF`` so no model ever predicts it.

Every model is plain ``nn.Module`` code without fused kernels, so it also runs
under ``torch.func.functional_call`` and supports double backward
(Hessian-vector products), which distillation's inner loop needs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from farzi.models.loss import NEG_INF, features_next_token_loss
from farzi.models.sparse import SparseDist

# NEG_INF = -1e4: finite, so 0 * NEG_INF stays 0 in soft cross-entropy


@dataclass
class ModelConfig:
    """Fields every model config has; each model's config adds its own."""

    vocab_size: int = 0
    max_len: int = 50
    d_model: int = 64
    dropout: float = 0.2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(raw) - names
        if unknown:
            raise ValueError(f"unknown config keys for {cls.__name__}: {sorted(unknown)}")
        return cls(**raw)


class SequenceModel(nn.Module):
    """Base class: ``forward(x) -> logits`` with the conventions above.

    A model implements ``features``; ``forward``, ``output_table`` and ``loss``
    come from here.
    """

    name: ClassVar[str] = ""
    task: ClassVar[str] = ""  # "rec" or "lm"
    config: ModelConfig

    def features(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Hidden states [B, L, d] in the space of the output table; ``h[:, t]`` predicts position t + 1."""
        raise NotImplementedError

    def output_table(self) -> Tensor:
        """The output layer's table [V, d]: logits = h @ table.T (tied with the input embedding)."""
        return self.token_embeddings()

    def forward(self, x: Tensor) -> Tensor:
        return tied_logits(self.features(x), self.output_table())  # [B, L, V]

    def loss(self, x: Tensor, targets: Tensor | None = None, reduction: str = "mean") -> Tensor:
        """``next_token_loss(self(x), targets)`` (targets default to ``x``) without the [B, L, V] logits.

        Only positions with a target are scored, a chunk of positions at a time
        (farzi.models.loss). Use it for training; the plain ``next_token_loss`` on
        ``forward``'s logits is the path for higher-order derivatives at full memory.
        """
        targets = x if targets is None else targets
        return features_next_token_loss(self.features(x), self.output_table(), targets, reduction)

    def token_embeddings(self) -> Tensor:
        """The input embedding table [V, d] (tied with the output in every model here)."""
        for name in ("item_emb", "tok_emb"):
            if hasattr(self, name):
                return getattr(self, name)
        raise AttributeError(f"{type(self).__name__} has no token embedding table")


def padding_mask(x: Tensor | SparseDist) -> Tensor:
    """[B, L] bool, True at real (non-pad) positions, for ids or distributions (dense or sparse)."""
    if isinstance(x, SparseDist):
        return x.p.sum(dim=-1) > 0
    if x.dtype in (torch.int64, torch.int32):
        return x != 0
    return x.sum(dim=-1) > 0


def embed(x: Tensor | SparseDist, table: Tensor) -> Tensor:
    """Embed ids ([B, L] -> [B, L, d]), distributions ([B, L, V] @ [V, d]) or sparse distributions
    (sum over K of p_k E[idx_k]: O(K d) per position)."""
    if isinstance(x, SparseDist):
        return (x.p.to(table.dtype).unsqueeze(-1) * F.embedding(x.idx, table)).sum(-2)  # [B, L, d]
    if x.dtype in (torch.int64, torch.int32):
        return F.embedding(x, table)
    return x.to(table.dtype) @ table


def tied_logits(h: Tensor, table: Tensor) -> Tensor:
    """Score every token by its embedding: [B, L, d] @ [d, V], <pad> masked out."""
    logits = h @ table.t()  # [B, L, V]
    pad = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    pad[0] = True
    return logits.masked_fill(pad, NEG_INF)


def next_token_loss(logits: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
    """Next-token cross-entropy on full logits; ``targets`` are the inputs (shift happens here).

    The plain path: ordinary autograd on [B, L, V], so derivatives of any order
    work (the distillation engine's inner loop). ``SequenceModel.loss`` computes
    the same value from features without [B, L, V] (training and evaluation).

    ``targets`` may be ids [B, L] (pad positions ignored) or distributions
    [B, L, V] (soft targets; positions without mass ignored). ``reduction``:
    ``mean`` over scored positions, ``sum``, or ``none`` ([B, L-1], zeros where
    nothing is scored).
    """
    logp = F.log_softmax(logits[:, :-1], dim=-1)  # [B, L-1, V]
    if isinstance(targets, SparseDist):
        idx, p = targets.idx[:, 1:], targets.p[:, 1:].to(logp.dtype)  # [B, L-1, K]
        valid = p.sum(-1) > 0
        nll = -(p * logp.gather(-1, idx)).sum(-1)  # [B, L-1]
    elif targets.dtype in (torch.int64, torch.int32):
        tgt = targets[:, 1:]
        valid = tgt != 0
        nll = -logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)  # [B, L-1]
    else:
        tgt = targets[:, 1:].to(logp.dtype)
        valid = tgt.sum(-1) > 0
        nll = -(tgt * logp).sum(-1)  # [B, L-1]
    nll = nll * valid
    if reduction == "none":
        return nll
    if reduction == "sum":
        return nll.sum()
    return nll.sum() / valid.sum().clamp_min(1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
