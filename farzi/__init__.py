"""farzi: autoregressive data distillation (Farzi Data, arXiv 2310.09983)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
