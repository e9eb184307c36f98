"""Fixtures for the model-zoo tests."""

from __future__ import annotations

import pytest
import torch
from _zoo import ZOO, Spec


@pytest.fixture(params=ZOO, ids=[s.id for s in ZOO])
def spec(request: pytest.FixtureRequest) -> Spec:
    """Every model in farzi.models.MODELS, plus the LSTM variant of ``rnn``."""
    return request.param


@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny tensors: intra-op threads only add sync overhead (badly so on a busy 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
