"""Fixtures for the data-layer tests: a local HTTP server and small file helpers."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import pwd
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        pass


class LocalServer:
    """An ``http.server`` on 127.0.0.1 serving the files of ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        handler = functools.partial(_QuietHandler, directory=str(root))
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def put(self, name: str, data: bytes) -> str:
        """Serve ``data`` as ``name``; return its URL."""
        (self.root / name).write_bytes(data)
        return self.url + name

    def __enter__(self) -> LocalServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[LocalServer]:
    root = tmp_path / "www"
    root.mkdir()
    with LocalServer(root) as server:
        yield server


@pytest.fixture
def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (the port was just released)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/missing.txt"


class Unreadable:
    """Files that really cannot be read: ``chmod 000``, and, as root, the code under test run as ``nobody``.

    Root ignores file modes (the tests run as root here), so :meth:`enforced` drops the *effective*
    uid and gid to ``nobody`` for the block and restores them after (the saved uid stays 0). The
    directory :attr:`root` is world-traversable so that ``nobody`` reaches the files in it. Where
    the modes are still not enforced (no ``nobody``, no CAP_SETUID), the test is skipped.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    @staticmethod
    def revoke(*paths: Path) -> None:
        for path in paths:
            os.chmod(path, 0)

    @contextlib.contextmanager
    def enforced(self, *paths: Path) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            if os.geteuid() == 0:
                try:
                    nobody = pwd.getpwnam("nobody")
                    os.setegid(nobody.pw_gid)
                    stack.callback(os.setegid, os.getgid())
                    os.seteuid(nobody.pw_uid)
                    stack.callback(os.seteuid, 0)
                except (KeyError, PermissionError) as exc:
                    pytest.skip(f"cannot drop root privileges to make chmod 000 effective ({exc})")
            for path in paths:
                if os.access(path, os.R_OK, effective_ids=True):
                    pytest.skip(f"file modes are not enforced for this user ({path} stays readable)")
            yield


@pytest.fixture
def unreadable() -> Iterator[Unreadable]:
    root = Path(tempfile.mkdtemp(prefix="farzi-unreadable-"))
    os.chmod(root, 0o777)  # nobody may traverse it, and may create what a command under test creates
    try:
        yield Unreadable(root)
    finally:
        for path in root.rglob("*"):
            if not path.is_symlink():
                os.chmod(path, 0o700)
        shutil.rmtree(root, ignore_errors=True)
