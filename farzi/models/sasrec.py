"""SASRec (Kang & McAuley, ICDM 2018): self-attentive sequential recommendation.

Trained here with full softmax cross-entropy over all items (as in the Farzi
paper's setup) rather than the original one-negative BCE; item embeddings are
shared between input and output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from farzi.models.base import ModelConfig, SequenceModel, embed, padding_mask
from farzi.models.layers import TransformerBlock


@dataclass
class SASRecConfig(ModelConfig):
    max_len: int = 200
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 1
    dropout: float = 0.2


class SASRec(SequenceModel):
    name = "sasrec"
    task = "rec"

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.item_emb = nn.Parameter(torch.randn(config.vocab_size, d) * 0.02)  # [V, d]
        self.pos_emb = nn.Parameter(torch.randn(config.max_len, d) * 0.02)  # [Lmax, d]
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(d, config.n_heads, d, config.dropout, activation="relu") for _ in range(config.n_layers)
        )
        self.ln_f = nn.LayerNorm(d)

    def features(self, x: Tensor) -> Tensor:
        L = x.shape[1]
        mask = padding_mask(x)  # [B, L]
        keep = mask.unsqueeze(-1).to(self.item_emb.dtype)  # [B, L, 1]
        h = embed(x, self.item_emb) * math.sqrt(self.config.d_model)  # [B, L, d]
        h = self.drop(h + self.pos_emb[:L]) * keep
        for block in self.blocks:
            h = block(h, mask) * keep  # SASRec's timeline mask after every block
        return self.ln_f(h)  # [B, L, d]
