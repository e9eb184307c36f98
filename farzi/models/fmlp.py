"""FMLP-Rec (Zhou et al., WWW 2022): filter-enhanced MLP for sequential recommendation.

The original learnable filter multiplies the sequence's FFT by a learned
spectrum, a *circular* convolution that lets position t see later items. For
next-item training that leaks the answer, so this implementation learns a
*causal* filter: a kernel k[0..Lmax) applied as y[t] = sum_{s<=t} k[t-s] x[s],
computed with zero-padded FFTs (still O(L log L), still a global filter).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from farzi.models.base import ModelConfig, SequenceModel, embed, padding_mask
from farzi.models.layers import FeedForward


@dataclass
class FMLPRecConfig(ModelConfig):
    max_len: int = 200
    d_model: int = 64
    n_layers: int = 2
    dropout: float = 0.2


class CausalFilter(nn.Module):
    def __init__(self, max_len: int, d_model: int, dropout: float) -> None:
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(max_len, d_model) * 0.02)  # [Lmax, d]
        self.drop = nn.Dropout(dropout)
        self.ln = nn.LayerNorm(d_model)

    def forward(self, x: Tensor) -> Tensor:
        L = x.shape[1]
        n = 2 * L  # zero padding turns the circular convolution into a causal one
        xf = torch.fft.rfft(x, n=n, dim=1)  # [B, L+1, d] complex
        kf = torch.fft.rfft(self.kernel[:L], n=n, dim=0)  # [L+1, d] complex
        y = torch.fft.irfft(xf * kf, n=n, dim=1)[:, :L]  # [B, L, d]
        return self.ln(x + self.drop(y))


class FMLPBlock(nn.Module):
    def __init__(self, max_len: int, d_model: int, dropout: float) -> None:
        super().__init__()
        self.filter = CausalFilter(max_len, d_model, dropout)
        self.ffn = FeedForward(d_model, 4 * d_model, dropout)
        self.ln = nn.LayerNorm(d_model)

    def forward(self, x: Tensor) -> Tensor:
        x = self.filter(x)
        return self.ln(x + self.ffn(x))


class FMLPRec(SequenceModel):
    name = "fmlp"
    task = "rec"

    def __init__(self, config: FMLPRecConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.item_emb = nn.Parameter(torch.randn(config.vocab_size, d) * 0.02)  # [V, d]
        self.pos_emb = nn.Parameter(torch.randn(config.max_len, d) * 0.02)  # [Lmax, d]
        self.ln = nn.LayerNorm(d)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(FMLPBlock(config.max_len, d, config.dropout) for _ in range(config.n_layers))

    def features(self, x: Tensor) -> Tensor:
        L = x.shape[1]
        keep = padding_mask(x).unsqueeze(-1).to(self.item_emb.dtype)  # [B, L, 1]
        h = self.drop(self.ln(embed(x, self.item_emb) + self.pos_emb[:L])) * keep  # [B, L, d]
        for block in self.blocks:
            h = block(h) * keep
        return h  # [B, L, d]
