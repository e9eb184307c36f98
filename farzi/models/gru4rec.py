"""GRU4Rec (Hidasi et al., ICLR 2016) with cross-entropy over all items.

The GRU is unrolled in plain ops (farzi.models.layers.GRULayer) so it supports
double backward on every device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from farzi.models.base import ModelConfig, SequenceModel, embed, padding_mask
from farzi.models.layers import GRULayer


@dataclass
class GRU4RecConfig(ModelConfig):
    max_len: int = 200
    d_model: int = 64
    d_hidden: int = 64
    n_layers: int = 1
    dropout: float = 0.2


class GRU4Rec(SequenceModel):
    name = "gru4rec"
    task = "rec"

    def __init__(self, config: GRU4RecConfig) -> None:
        super().__init__()
        self.config = config
        self.item_emb = nn.Parameter(torch.randn(config.vocab_size, config.d_model) * 0.02)  # [V, d]
        self.drop = nn.Dropout(config.dropout)
        dims = [config.d_model] + [config.d_hidden] * config.n_layers
        self.layers = nn.ModuleList(GRULayer(dims[i], dims[i + 1]) for i in range(config.n_layers))
        self.out = nn.Linear(config.d_hidden, config.d_model)

    def features(self, x: Tensor) -> Tensor:
        keep = padding_mask(x).unsqueeze(-1).to(self.item_emb.dtype)  # [B, L, 1]
        h = self.drop(embed(x, self.item_emb)) * keep  # [B, L, d]
        for layer in self.layers:
            h = self.drop(layer(h))  # [B, L, H]
        return self.out(h)  # [B, L, d]
