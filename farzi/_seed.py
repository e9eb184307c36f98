"""Seeding: one call makes a run reproducible on CPU.

Every command takes ``--seed``; :func:`check_seed` is the one rule for what a seed may be, so
that a bad value is refused up front with the fix instead of crashing inside numpy or torch.
"""

from __future__ import annotations

import operator
import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

SEED_MAX = 2**63 - 1


def check_seed(seed: object, what: str = "--seed") -> int:
    """Return ``seed`` as an int if ``0 <= seed <= 2**63 - 1``; else raise :class:`ConfigError`.

    The range is what every generator farzi uses takes without wrapping: numpy's
    ``default_rng`` rejects negative seeds and torch's generators hold 64 bits, and a
    signed 64-bit integer survives JSON, safetensors metadata and other languages' readers.
    """
    from farzi.errors import ConfigError

    if isinstance(seed, bool):
        raise ConfigError(f"{what} {seed!r} is not an integer", f"pass an integer from 0 to {SEED_MAX}")
    try:
        value = operator.index(seed)  # type: ignore[arg-type]
    except TypeError:
        raise ConfigError(f"{what} {seed!r} is not an integer", f"pass an integer from 0 to {SEED_MAX}") from None
    if not 0 <= value <= SEED_MAX:
        raise ConfigError(f"{what} {value} is out of range", f"pass an integer from 0 to {SEED_MAX} (2**63 - 1)")
    return value


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch generator seeded the same way.

    Valid for every seed :func:`check_seed` accepts (0 .. 2**63 - 1). numpy's legacy global
    generator takes 32 bits, so it gets ``seed % 2**32``; python and torch get the seed itself.
    """
    import numpy as np
    import torch  # here, not at the top: check_seed must not cost a torch import (prepare has no torch)

    seed = check_seed(seed)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen
