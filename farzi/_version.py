"""The package version, in a module of its own so that submodules can import it without
importing the package root (``farzi/__init__.py`` imports nothing of its submodules eagerly,
but ``from farzi import __version__`` inside them was a cycle through the root)."""

__version__ = "0.1.0"
