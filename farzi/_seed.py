"""Seeding: one call makes a run reproducible on CPU."""

from __future__ import annotations

import random

import numpy as np
import torch

MAX_SEED = 2**63 - 1  # torch.manual_seed takes up to 2**64 - 1; 2**63 - 1 keeps seed + run in range


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen
