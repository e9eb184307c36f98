"""Shared fixtures: tiny prepared datasets, and the real datasets when present."""

from __future__ import annotations

import pytest
import torch

from farzi.data.prepare import PrepareOptions, prepare
from farzi.data.prepared import PreparedDataset


@pytest.fixture(autouse=True)
def _few_threads():
    """Tiny tensors: extra intra-op threads only add synchronization on a 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> PreparedDataset:
    """synthetic-lm at toy size: 30 words, 120 training sentences."""
    home = tmp_path_factory.mktemp("home-lm")
    return prepare("synthetic-lm", PrepareOptions(synthetic_vocab=30, synthetic_sequences=120, seed=1), home=home)


@pytest.fixture(scope="session")
def tiny_rec(tmp_path_factory: pytest.TempPathFactory) -> PreparedDataset:
    """synthetic-rec at toy size: 40 items, 100 users."""
    home = tmp_path_factory.mktemp("home-rec")
    return prepare("synthetic-rec", PrepareOptions(synthetic_vocab=40, synthetic_sequences=100, seed=1), home=home)
