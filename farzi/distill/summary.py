"""The factorized summary: latent [mu, xi, d] times decoder [d, V], temperature tau."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def banned_mask(vocab_size: int, banned: list[int], device: torch.device | str = "cpu") -> Tensor:
    mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    if banned:
        mask[torch.tensor(banned, dtype=torch.long, device=device)] = True
    return mask


def materialize(latent: Tensor, decoder: Tensor, tau: float, banned: Tensor, idx: Tensor | None = None) -> Tensor:
    """softmax(latent[idx] @ decoder / tau) over the vocabulary, banned tokens at 0.

    latent [mu, xi, d], decoder [d, V] -> [b, xi, V] (b = len(idx), or mu).
    Differentiable in latent and decoder.
    """
    z = latent if idx is None else latent[idx]  # [b, xi, d]
    logits = (z @ decoder) / tau  # [b, xi, V]
    logits = logits.masked_fill(banned, float("-inf"))
    return F.softmax(logits, dim=-1)


def init_summary(
    mu: int, xi: int, d: int, vocab_size: int, gen: torch.Generator, scale: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Random N(0, scale^2 / d) latent and N(0, 1) decoder: logits start at O(scale)."""
    latent = torch.randn(mu, xi, d, generator=gen) * (scale / d**0.5)
    decoder = torch.randn(d, vocab_size, generator=gen)
    return latent, decoder
