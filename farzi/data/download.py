"""Downloads with checksum verification.

A file is fetched into a temporary name beside its destination, its checksum is
checked, and only then is it renamed into place: a failed or tampered download
never leaves a file that looks complete. A checksum mismatch is an error.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from farzi._io import md5_file, sha256_file
from farzi.data._read import reading
from farzi.errors import ChecksumError, DataError
from farzi.progress import ProgressFn, report

_CHUNK = 1 << 16


def verify_checksum(path: Path, md5: str | None = None, sha256: str | None = None, label: str | None = None) -> str:
    """Check ``path`` against the expected digest(s); return its sha256. ``label`` names it in messages."""
    label = label or str(path)
    with reading(path):
        actual_sha = sha256_file(path)
    if sha256 is not None and actual_sha != sha256.lower():
        raise ChecksumError(
            f"checksum mismatch for {label}: sha256 {actual_sha}, expected {sha256}",
            "the file is corrupt or a different release; download it again or point --source at the official files",
        )
    if md5 is not None:
        with reading(path):
            actual_md5 = md5_file(path)
        if actual_md5 != md5.lower():
            raise ChecksumError(
                f"checksum mismatch for {label}: md5 {actual_md5}, expected {md5}",
                "the file is corrupt or a different release; download it again or point --source at the official files",
            )
    return actual_sha


def fetch(
    urls: Sequence[str],
    dest: Path,
    md5: str | None = None,
    sha256: str | None = None,
    progress: ProgressFn | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download the first URL that answers to ``dest`` and verify its checksum.

    An existing ``dest`` with the right checksum is reused (a download cache).
    """
    dest = Path(dest)
    if dest.is_file():
        try:
            verify_checksum(dest, md5=md5, sha256=sha256)
            return dest
        except ChecksumError:
            dest.unlink()
    errors: list[str] = []
    for url in urls:
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{dest.name}.part-", dir=dest.parent)
        except OSError as exc:
            raise DataError(
                f"cannot write to {dest.parent} ({exc.strerror or exc.__class__.__name__})",
                "check that the workspace's downloads directory is writable, or pass --home DIR",
            ) from exc
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                total = resp.headers.get("Content-Length")
                total_bytes = int(total) if total and total.isdigit() else None
                done = 0
                h = hashlib.sha256()
                while block := resp.read(_CHUNK):
                    out.write(block)
                    h.update(block)
                    done += len(block)
                    report(progress, f"download {dest.name}", done, total_bytes)
            verify_checksum(tmp, md5=md5, sha256=sha256, label=f"{dest.name} downloaded from {url}")
            os.replace(tmp, dest)
            report(progress, f"download {dest.name}", done, total_bytes, done=True)
            return dest
        except ChecksumError:
            tmp.unlink(missing_ok=True)
            raise
        except (urllib.error.URLError, OSError, ValueError) as exc:
            tmp.unlink(missing_ok=True)
            errors.append(f"{url}: {getattr(exc, 'reason', exc)}")
        except BaseException:  # e.g. Ctrl-C mid-download: leave no partial file behind
            tmp.unlink(missing_ok=True)
            raise
    raise DataError(
        f"could not download {dest.name} ({'; '.join(errors)})",
        "check the network, or download the files yourself and pass --source DIR",
    )
