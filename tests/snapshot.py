"""A snapshot of a directory tree (names, bytes, modes), hidden entries included, to show nothing changed."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ``root`` (and ``root`` itself) -> (type, mode, content): bytes, link target or None."""
    out: dict[str, tuple] = {}
    root = Path(root)
    for path in [root, *sorted(root.rglob("*"))] if root.is_dir() else [root]:
        st = os.lstat(path)
        rel = str(path.relative_to(root)) if path != root else "."
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", mode, os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", mode, None)
        else:
            out[rel] = ("file", mode, path.read_bytes())
    return out


def hidden(root: Path) -> list[str]:
    """Names of hidden entries (temporaries, locks) anywhere under ``root``."""
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob(".*"))
