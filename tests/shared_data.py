"""Where the maintainers' real datasets live, and the skip marker for tests that need them.

Importable from any test module (``pythonpath = ["tests"]`` in pyproject.toml); a user's checkout has
no ``../shared``, so every test over it skips with the reason below.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
ML100K = SHARED / "ml-100k"
PTB = SHARED / "ptb"

needs_shared = pytest.mark.skipif(
    not (ML100K / "u.data").is_file() or not (PTB / "ptb.valid.txt").is_file(),
    reason=f"real datasets not found at {SHARED} (only the maintainers' checkout has ../shared)",
)
