"""Helpers for the model-zoo tests: tiny configs, seeded batches, one-hot conversion.

Imported by the test modules as ``_zoo`` (pytest puts this directory on ``sys.path``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from farzi.models import MODELS, SequenceModel, build_model, make_config

VOCAB = 17
SEQ_LEN = 8
MAX_LEN = 12

# Small values for every setting a model may have; each model takes the ones its config knows.
TINY = {
    "d_model": 8,
    "max_len": MAX_LEN,
    "dropout": 0.0,
    "n_layers": 2,
    "n_heads": 2,
    "d_hidden": 8,
    "d_ff": 16,
}


@dataclass(frozen=True)
class Spec:
    """One entry of the zoo under test: a registered model name plus extra settings."""

    id: str
    name: str
    extra: dict[str, Any] = field(default_factory=dict)

    def config(self, vocab_size: int = VOCAB, **overrides: Any):
        _, cfg_cls = MODELS[self.name]
        known = {k: v for k, v in TINY.items() if hasattr(cfg_cls(), k)}
        return make_config(self.name, vocab_size, **{**known, **self.extra, **overrides})

    def build(
        self,
        *,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
        vocab_size: int = VOCAB,
        **overrides: Any,
    ) -> SequenceModel:
        torch.manual_seed(seed)
        model = build_model(self.name, self.config(vocab_size, **overrides))
        return model.to(dtype)


ZOO = [Spec(name, name) for name in MODELS] + [Spec("rnn-lstm", "rnn", {"cell": "lstm"})]


def make_ids(seed: int = 0, batch: int = 3, length: int = SEQ_LEN, vocab: int = VOCAB) -> torch.Tensor:
    """Token ids [B, L] with right padding: full rows, then shorter ones (pad id 0)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (batch, length), generator=g)
    lengths = [length, length - 3, 3, 5, 2][:batch]
    for row, n in enumerate(lengths):
        ids[row, n:] = 0
    return ids


def one_hot(ids: torch.Tensor, vocab: int = VOCAB, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """[B, L, V] one-hot rows; pad positions are all-zero rows (no mass)."""
    out = F.one_hot(ids, vocab).to(dtype)
    out[ids == 0] = 0.0
    return out


def random_distributions(
    seed: int = 0,
    batch: int = 2,
    length: int = 6,
    vocab: int = VOCAB,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Softmax of random logits with no mass on <pad> (column 0)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, length, vocab, generator=g, dtype=dtype)
    z[..., 0] = float("-inf")
    return torch.softmax(z, dim=-1)
