"""farzi: autoregressive data distillation (Farzi Data, arXiv 2310.09983)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from farzi._version import __version__

__all__ = ["__version__", "FarziData", "load_bundle"]

if TYPE_CHECKING:
    from farzi.distill.bundle import FarziData, load_bundle


def __getattr__(name: str) -> Any:
    # lazy: `import farzi` stays cheap (no torch) until the bundle API is used
    if name in ("FarziData", "load_bundle"):
        from farzi.distill import bundle

        return getattr(bundle, name)
    raise AttributeError(f"module 'farzi' has no attribute {name!r}")
