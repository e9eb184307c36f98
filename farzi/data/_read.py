"""Reading input files: an operating-system error becomes a one-line :class:`DataError` that says what happened.

A file that cannot be opened is not a corrupt file: "permission denied" must not send the user off to
re-create a dataset that is fine. Every reader of a source file or a prepared dataset goes through
:func:`reading` (or :func:`check_readable` before a lazy polars scan, which would fail later).
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from pathlib import Path

from farzi.errors import DataError


def unreadable(path: Path, exc: OSError, directory_fix: str = "pass the file itself") -> DataError:
    """The error for an ``OSError`` raised while opening or reading ``path``."""
    path = Path(exc.filename) if getattr(exc, "filename", None) else Path(path)
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM):
        return DataError(
            f"{path} cannot be read (permission denied)",
            f"check its permissions and those of its directories (ls -l {path}), or run as a user who may read it",
        )
    if isinstance(exc, IsADirectoryError):
        return DataError(f"{path} is a directory, not a file", directory_fix)
    if isinstance(exc, FileNotFoundError):
        return DataError(f"{path} does not exist", "check the path")
    reason = exc.strerror or exc.__class__.__name__
    return DataError(f"cannot read {path} ({reason})", "check the file and the disk or file system it is on")


@contextlib.contextmanager
def reading(path: Path, directory_fix: str = "pass the file itself") -> Iterator[None]:
    """Turn an ``OSError`` inside the block into :func:`unreadable`'s error for ``path``."""
    try:
        yield
    except OSError as exc:
        raise unreadable(path, exc, directory_fix) from exc


def check_readable(path: Path) -> None:
    """Open ``path`` for reading once, so that a lazy reader's later failure cannot be a permission problem."""
    with reading(path), open(path, "rb"):
        pass


def read_bytes(path: Path) -> bytes:
    with reading(path):
        return Path(path).read_bytes()
