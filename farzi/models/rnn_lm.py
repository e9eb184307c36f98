"""A recurrent language model (GRU or LSTM), unrolled in plain ops, tied output."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from farzi.models.base import ModelConfig, SequenceModel, embed, padding_mask
from farzi.models.layers import GRULayer, LSTMLayer


@dataclass
class RNNLMConfig(ModelConfig):
    max_len: int = 128
    d_model: int = 64
    d_hidden: int = 128
    n_layers: int = 1
    cell: str = "gru"  # "gru" or "lstm"
    dropout: float = 0.2


class RNNLM(SequenceModel):
    name = "rnn"
    task = "lm"

    def __init__(self, config: RNNLMConfig) -> None:
        super().__init__()
        if config.cell not in ("gru", "lstm"):
            raise ValueError(f"cell must be 'gru' or 'lstm', not {config.cell!r}")
        self.config = config
        self.tok_emb = nn.Parameter(torch.randn(config.vocab_size, config.d_model) * 0.02)  # [V, d]
        self.drop = nn.Dropout(config.dropout)
        layer = GRULayer if config.cell == "gru" else LSTMLayer
        dims = [config.d_model] + [config.d_hidden] * config.n_layers
        self.layers = nn.ModuleList(layer(dims[i], dims[i + 1]) for i in range(config.n_layers))
        self.out = nn.Linear(config.d_hidden, config.d_model)

    def features(self, x: Tensor) -> Tensor:
        keep = padding_mask(x).unsqueeze(-1).to(self.tok_emb.dtype)  # [B, L, 1]
        h = self.drop(embed(x, self.tok_emb)) * keep  # [B, L, d]
        for layer in self.layers:
            h = self.drop(layer(h))  # [B, L, H]
        return self.out(h)  # [B, L, d]
