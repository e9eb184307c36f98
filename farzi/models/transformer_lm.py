"""A small causal Transformer language model (nanoGPT-style, pre-LayerNorm, tied head)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from farzi.models.base import ModelConfig, SequenceModel, embed, padding_mask
from farzi.models.layers import TransformerBlock


@dataclass
class TransformerLMConfig(ModelConfig):
    max_len: int = 128
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    d_ff: int = 256
    dropout: float = 0.2


class TransformerLM(SequenceModel):
    name = "transformer"
    task = "lm"

    def __init__(self, config: TransformerLMConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.tok_emb = nn.Parameter(torch.randn(config.vocab_size, d) * 0.02)  # [V, d]
        self.pos_emb = nn.Parameter(torch.randn(config.max_len, d) * 0.02)  # [Lmax, d]
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(d, config.n_heads, config.d_ff, config.dropout) for _ in range(config.n_layers)
        )
        self.ln_f = nn.LayerNorm(d)

    def features(self, x: Tensor) -> Tensor:
        L = x.shape[1]
        mask = padding_mask(x)  # [B, L]
        keep = mask.unsqueeze(-1).to(self.tok_emb.dtype)
        h = self.drop(embed(x, self.tok_emb) * keep + self.pos_emb[:L])  # [B, L, d]
        for block in self.blocks:
            h = block(h, mask)
        return self.ln_f(h)  # [B, L, d]
