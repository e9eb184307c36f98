"""Building blocks written out in plain ops (double-backward safe, no fused kernels)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with the softmax written out.

    ``F.scaled_dot_product_attention`` may pick a fused kernel that has no double
    backward on CPU; this module never does.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        # no bias: a key bias has an exactly-zero gradient (softmax is shift invariant), and
        # rounding noise in it would dominate Adam's meta-gradient through 1 / sqrt(v)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model)
        self.attn_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        B, L, D = x.shape
        H = self.n_heads
        q, k, v = self.qkv(x).split(D, dim=-1)  # 3 x [B, L, D]
        q = q.view(B, L, H, D // H).transpose(1, 2)  # [B, H, L, Dh]
        k = k.view(B, L, H, D // H).transpose(1, 2)
        v = v.view(B, L, H, D // H).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(D // H)  # [B, H, L, L]
        allowed = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
        if key_mask is not None:
            # a query may look at real keys, and always at itself (no empty rows)
            allowed = (allowed & key_mask[:, None, None, :]) | torch.eye(L, dtype=torch.bool, device=x.device)
        att = att.masked_fill(~allowed, float("-inf"))
        att = self.attn_drop(F.softmax(att, dim=-1))
        y = (att @ v).transpose(1, 2).reshape(B, L, D)  # [B, L, D]
        return self.proj(y)


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, dropout: float, activation: str = "gelu") -> None:
        super().__init__()
        self.fc = nn.Linear(d_model, d_ff)
        self.out = nn.Linear(d_ff, d_model)
        self.drop = nn.Dropout(dropout)
        self.act = F.gelu if activation == "gelu" else F.relu

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.out(self.drop(self.act(self.fc(x)))))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: x + attn(ln(x)), then x + ffn(ln(x))."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float, activation: str = "gelu") -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, d_ff, dropout, activation)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        x = x + self.drop(self.attn(self.ln1(x), key_mask))
        return x + self.ffn(self.ln2(x))


class GRULayer(nn.Module):
    """One GRU layer unrolled over time in plain ops (double backward on any device).

    Same gate layout as ``nn.GRU``: r, z, n.
    """

    def __init__(self, d_in: int, d_hidden: int) -> None:
        super().__init__()
        self.d_hidden = d_hidden
        self.w_ih = nn.Linear(d_in, 3 * d_hidden)
        self.w_hh = nn.Linear(d_hidden, 3 * d_hidden)

    def forward(self, x: Tensor) -> Tensor:
        B, L, _ = x.shape
        gi = self.w_ih(x)  # [B, L, 3H], all time steps at once
        h = x.new_zeros(B, self.d_hidden)
        outs = []
        for t in range(L):
            gh = self.w_hh(h)  # [B, 3H]
            i_r, i_z, i_n = gi[:, t].chunk(3, dim=-1)
            h_r, h_z, h_n = gh.chunk(3, dim=-1)
            r = torch.sigmoid(i_r + h_r)
            z = torch.sigmoid(i_z + h_z)
            n = torch.tanh(i_n + r * h_n)
            h = (1 - z) * n + z * h
            outs.append(h)
        return torch.stack(outs, dim=1)  # [B, L, H]


class LSTMLayer(nn.Module):
    """One LSTM layer unrolled over time in plain ops (gates i, f, g, o as nn.LSTM)."""

    def __init__(self, d_in: int, d_hidden: int) -> None:
        super().__init__()
        self.d_hidden = d_hidden
        self.w_ih = nn.Linear(d_in, 4 * d_hidden)
        self.w_hh = nn.Linear(d_hidden, 4 * d_hidden)

    def forward(self, x: Tensor) -> Tensor:
        B, L, _ = x.shape
        gi = self.w_ih(x)  # [B, L, 4H]
        h = x.new_zeros(B, self.d_hidden)
        c = x.new_zeros(B, self.d_hidden)
        outs = []
        for t in range(L):
            i, f, g, o = (gi[:, t] + self.w_hh(h)).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outs.append(h)
        return torch.stack(outs, dim=1)  # [B, L, H]
