"""Safe outputs: claims on output paths, atomic file and directory writes, JSON helpers and hashing.

Every command that writes an artifact does it in two steps:

1. :func:`claim_output` before any work: it takes an exclusive lock beside the target
   (``.NAME.lock``; a second writer of the same output fails at once), removes what
   killed runs left there (``.NAME.tmp-*``, ``.NAME.old-*``), checks that the location
   can be written, and refuses a target that exists and is not farzi's own artifact of
   the same kind (unless ``overwrite``);
2. :func:`atomic_file` / :func:`atomic_dir` at the end: everything is written into a
   temporary file or directory beside the target and renamed onto it; every failure
   removes the temporary. Inside a claim they check the target again just before the
   rename (someone may have put files there during a long run).

Artifacts get the modes a plain ``open``/``mkdir`` would give them: ``0o666 & ~umask``
for files, ``0o777 & ~umask`` for directories.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from farzi.errors import ConfigError

OutputKind = Literal["prepared", "trajectories", "model", "bundle", "export"]


# ------------------------------------------------------------------ recognizing farzi's own artifacts


def _json_format(path: Path) -> str | None:
    """The ``format`` field of a small JSON document, or None if it is not one."""
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > 256 << 20:
            return None
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc.get("format") if isinstance(doc, dict) and isinstance(doc.get("format"), str) else None


def _safetensors_format(path: Path) -> str | None:
    """The ``format`` entry of a safetensors file's ``__metadata__``, or None."""
    try:
        if path.is_symlink() or not path.is_file():
            return None
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                return None
            (n,) = struct.unpack("<Q", head)
            if n > 100 << 20:
                return None
            header = json.loads(f.read(n))
    except (OSError, ValueError):
        return None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    fmt = meta.get("format") if isinstance(meta, dict) else None
    return fmt if isinstance(fmt, str) else None


@dataclass(frozen=True)
class _Kind:
    what: str  # "a prepared dataset"
    is_dir: bool
    marker: str  # the file that says what the artifact is
    format: str  # its format name (formats/*.md)
    read_format: Callable[[Path], str | None]
    names: frozenset[str] = frozenset()  # the entries farzi writes in the directory ...
    pattern: re.Pattern[str] | None = None  # ... and those matching this


_KINDS: dict[str, _Kind] = {
    "prepared": _Kind(
        "a prepared dataset",
        True,
        "manifest.json",
        "farzi-prepared",
        _json_format,
        frozenset({"manifest.json", "vocab.json", "train.parquet", "valid.parquet", "test.parquet"})
        | {f"{split}.{part}.npy" for split in ("train", "valid", "test") for part in ("tokens", "offsets")},
    ),
    "trajectories": _Kind(
        "a trajectory set",
        True,
        "manifest.json",
        "farzi-trajectories",
        _json_format,
        frozenset({"manifest.json"}),
        re.compile(r"run\d+-step\d+(\.adam)?\.safetensors"),
    ),
    "model": _Kind(
        "a model directory written by train-student",
        True,
        "model.safetensors",
        "farzi-model",
        _safetensors_format,
        frozenset({"model.json", "model.safetensors"}),
    ),
    "bundle": _Kind("a Farzi Data bundle", False, "", "farzi-data", _safetensors_format),
    # farzictl export: any file format; its provenance sidecar PATH.json says it is one
    "export": _Kind(
        "a previous farzi export", False, "", "farzi-export", lambda p: _json_format(p.with_name(p.name + ".json"))
    ),
}

_State = Literal["absent", "empty", "own", "foreign"]


def _inspect(target: Path, kind: _Kind) -> tuple[_State, str, str]:
    """What is at ``target``: (state, problem, fix) -- problem and fix only for "foreign"."""
    if not os.path.lexists(target):
        return "absent", "", ""
    again = "or add --overwrite to replace it"
    if target.is_symlink():
        return (
            "foreign",
            f"{target} is a symbolic link",
            "pass --out with the real path, or add --overwrite to replace the link (what it points to is kept)",
        )
    if kind.is_dir:
        if not target.is_dir():
            return (
                "foreign",
                f"{target} exists and is not {kind.what} but a file (writing there would delete it)",
                f"pass --out with a new path or an empty directory, {again}",
            )
        try:
            entries = sorted(p.name for p in target.iterdir())
        except OSError as exc:
            return "foreign", f"{target} cannot be read ({_reason(exc)})", f"pass --out with a new path, {again}"
        if not entries:
            return "empty", "", ""
        if kind.read_format(target / kind.marker) != kind.format:
            return (
                "foreign",
                f"{target} exists and is not {kind.what} (writing there would delete it)",
                f"pass --out with a new path or an empty directory, {again}",
            )
        extra = [n for n in entries if n not in kind.names and not (kind.pattern and kind.pattern.fullmatch(n))]
        if extra:
            shown = ", ".join(extra[:3]) + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")
            return (
                "foreign",
                f"{target} is {kind.what} but also holds files farzi did not write ({shown}), "
                "which writing there would delete",
                "move them away, or add --overwrite to replace the whole directory",
            )
        return "own", "", ""
    if target.is_dir():
        return (
            "foreign",
            f"{target} is a directory, not {kind.what} (a file)",
            f"pass --out with a file path, e.g. inside that directory, {again}",
        )
    if kind.read_format(target) != kind.format:
        return (
            "foreign",
            f"{target} exists and is not {kind.what} (writing there would delete it)",
            f"pass --out with a new path, {again}",
        )
    return "own", "", ""


_WALK_LIMIT = 20_000  # entries --overwrite looks through before it replaces a directory


def _real(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.realpath(path))  # never raises: a name too long stays as it is


def _artifact_at(path: Path, is_dir: bool) -> str | None:
    """What farzi artifact ``path`` is (``a prepared dataset``, ...), or None."""
    for kind in _KINDS.values():
        if kind.is_dir != is_dir:
            continue
        fmt = kind.read_format(path / kind.marker if is_dir else path)
        if fmt == kind.format:
            return kind.what
    return None


def _held_artifact(root: Path, kind: _Kind) -> str | None:
    """Why the directory ``root`` is not one artifact to replace: it holds farzi artifacts (a prepared
    dataset, a trajectory set, a model or a bundle, as a workspace holds them: "holds a prepared
    dataset at ..."), or it is a prepared dataset and ``kind`` is not; else None. A tree too large to
    look through counts as holding one: --overwrite replaces one artifact, not a tree of them."""
    seen = 0
    stack = [root]
    while stack:
        d = stack.pop()
        what = _artifact_at(d, True)
        if d != root and what is not None:
            return f"holds {what} at {d}"
        if d == root and what == _KINDS["prepared"].what != kind.what:  # another kind replaces, not a dataset
            return f"is {what}"
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            seen += 1
            if seen > _WALK_LIMIT:
                return f"holds more than {_WALK_LIMIT:,} entries (too many to check that none is farzi data)"
            if e.is_dir(follow_symlinks=False):
                stack.append(Path(e.path))
            elif e.name.endswith(".safetensors") and not (d == root and _own_entry(kind, e.name)):
                if _safetensors_format(Path(e.path)) == _KINDS["bundle"].format:
                    return f"holds {_KINDS['bundle'].what} at {e.path}"
    return None


def _own_entry(kind: _Kind, name: str) -> bool:
    return name in kind.names or bool(kind.pattern and kind.pattern.fullmatch(name))


def _guard_replace(target: Path, kind: _Kind, inputs: Sequence[Path] = ()) -> None:
    """What even ``--overwrite`` never replaces: the file system root, the home directory, the workspace,
    the current directory or a parent of it, an input of the running command or a directory holding
    one, and a directory that holds farzi data (a workspace, a prepared dataset, ...) other than the
    one artifact of ``kind`` being replaced."""
    if not os.path.lexists(target) or target.is_symlink():
        return  # a symbolic link is replaced as a link: what it points to is kept
    fix = "pass --out with a path of its own"
    real = _real(target)
    for inp in inputs:
        if real == inp or real in inp.parents:
            how = "is" if real == inp else f"holds {inp}, which is"
            raise ConfigError(f"refusing to replace {target}: it {how} an input of this command", fix)
    if not target.is_dir():
        return
    cwd = _real(Path.cwd())
    precious = {Path(real.anchor), _real(Path.home())}
    home = os.environ.get("FARZI_HOME")
    if home:
        precious.add(_real(home))
    if real in precious or cwd == real or real in cwd.parents:
        raise ConfigError(
            f"refusing to replace {target}: it is the root, your home directory, the workspace, "
            "or holds the current directory",
            fix,
        )
    held = _held_artifact(real, kind)
    if held is not None:
        raise ConfigError(
            f"refusing to replace {target}: it {held}, which --overwrite never deletes",
            f"{fix}, or move that away first",
        )


@dataclass(frozen=True)
class Companion:
    """A side file (or directory) a command writes beside its output under the same claim: a log, a run
    state. ``is_own`` tells farzi's own from a user's file of the same name, which is never replaced
    without ``overwrite``."""

    path: Path
    what: str  # "a distillation log"
    is_own: Callable[[Path], bool]


def _check_companion(c: Companion, overwrite: bool, kind: _Kind, inputs: Sequence[Path]) -> None:
    if not os.path.lexists(c.path):
        return
    if not overwrite and (c.path.is_symlink() or not c.is_own(c.path)):
        raise ConfigError(
            f"{c.path} exists beside the output and is not {c.what} of farzi's (this run would replace it)",
            "move it away, pass another --out, or add --overwrite to replace it",
        )
    _guard_replace(c.path, kind, inputs)


def jsonl_log(marker: str) -> Callable[[Path], bool]:
    """A recognizer of farzi's JSON-lines logs: every line a JSON object that holds ``marker``."""

    def is_own(path: Path) -> bool:
        try:
            if path.is_symlink() or not path.is_file() or path.stat().st_size > 256 << 20:
                return False
            with open(path, encoding="utf-8") as f:
                return all(isinstance(r := json.loads(line), dict) and marker in r for line in f if line.strip())
        except (OSError, ValueError):
            return False

    return is_own


def safetensors_of(fmt: str) -> Callable[[Path], bool]:
    """A recognizer of farzi's safetensors files whose metadata ``format`` is ``fmt``."""
    return lambda path: _safetensors_format(path) == fmt


# ------------------------------------------------------------------ errors of the file system


_REASONS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large",
    errno.ENAMETOOLONG: "name too long",
    errno.ENOTDIR: "a part of the path is not a directory",
    errno.EISDIR: "it is a directory",
    errno.EEXIST: "it already exists",
    errno.ENOTEMPTY: "it is a directory that is not empty",
}
# errors in the middle of writing that are the location's, not the program's
_LOCATION_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _reason(exc: OSError) -> str:
    return _REASONS.get(exc.errno or 0, exc.strerror or type(exc).__name__)


def os_error(exc: OSError) -> ConfigError:
    """An error of the file system that reached a command (a path too long, a directory where a file
    was expected, ...) as one line naming the path, the reason and the fix."""
    what = exc.filename if exc.filename is not None else ""
    shown = str(what) if len(str(what)) <= 120 else str(what)[:60] + "..." + str(what)[-40:]
    fix = {
        errno.ENAMETOOLONG: "pass a shorter path (each name at most 255 bytes, the whole path 4096)",
        errno.ENOENT: "check the path",
        errno.ENOTDIR: "check the path: a part of it is a file",
        errno.EISDIR: "pass a file, not a directory",
        errno.ELOOP: "check the path: it has a loop of symbolic links",
        errno.ENOSPC: "free some space, or pass --out on another disk",
        errno.EDQUOT: "free some space, or pass --out on another disk",
    }.get(exc.errno or 0, "check the path and its permissions")
    where = f" {shown}" if shown else ""
    return ConfigError(f"cannot use{where} ({_reason(exc)})", fix)


_SHORTER = "pass --out (or --home) with a shorter path (each name at most 255 bytes, the whole path 4096)"


def _location_fix(exc: OSError) -> str:
    if exc.errno == errno.ENAMETOOLONG:
        return _SHORTER
    return "pass --out (or --home) with a location you can write to"


def _write_error(exc: OSError, target: Path) -> ConfigError:
    fix = {
        errno.ENAMETOOLONG: _SHORTER,
        errno.ENOSPC: "free some space, or pass --out on another disk",
        errno.EDQUOT: "free some space, or pass --out on another disk",
        errno.EISDIR: "pass --out with a file path, or move the directory away",
        errno.ENOTEMPTY: "pass --out with a new path, or move the directory away",
    }.get(exc.errno or 0, "pass --out (or --home) with a location you can write to")
    return ConfigError(f"cannot write {target} ({_reason(exc)})", fix)


def _ensure_dir(directory: Path, target: Path) -> list[Path]:
    """Create ``directory`` and its missing parents; return those created (outermost first)."""
    missing: list[Path] = []
    p = directory
    while not os.path.lexists(p):
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    if os.path.lexists(p) and not p.is_dir():
        raise ConfigError(
            f"cannot write {target}: {p} is a file, not a directory",
            "pass --out (or --home) with a path under a directory, or move the file away",
        )
    created: list[Path] = []
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o777)
            created.append(d)
        except FileExistsError:
            if not d.is_dir():
                raise ConfigError(f"cannot write {target}: {d} is not a directory", "pass --out elsewhere") from None
        except OSError as exc:
            _remove_dirs(created)
            raise ConfigError(
                f"cannot create the directory {d} for {target} ({_reason(exc)})", _location_fix(exc)
            ) from None
    return created


def _read_only(directory: Path) -> bool:
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _remove_dirs(created: Sequence[Path]) -> None:
    """Remove directories this process created, innermost first, where they are still empty."""
    for d in reversed(created):
        with contextlib.suppress(OSError):
            os.rmdir(d)


def _remove(path: Path) -> None:
    """Remove a file, a symbolic link or a directory tree; nothing if it is gone."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


# ------------------------------------------------------------------ claims


# ours are HEX; tempfile's names of earlier versions [a-z0-9_], and .NAME.old-PID; no dots, so the
# temporaries of another target whose name starts with NAME. are never matched
_STALE = r"\.{name}\.(tmp|old)-[A-Za-z0-9_]+"


def _stale_siblings(target: Path) -> list[Path]:
    """What killed runs on ``target`` left beside it: ``.NAME.tmp-*`` and ``.NAME.old-*``."""
    pattern = re.compile(_STALE.format(name=re.escape(target.name)))
    try:
        return sorted(p for p in target.parent.iterdir() if pattern.fullmatch(p.name))
    except OSError:
        return []


def _clean_stale(target: Path) -> None:
    stale = _stale_siblings(target)
    olds = [p for p in stale if ".old-" in p.name[len(target.name) + 1 :]]
    if len(olds) == 1 and not os.path.lexists(target):
        # killed between moving the previous artifact aside and renaming the new one in: put it back
        with contextlib.suppress(OSError):
            os.replace(olds[0], target)
    for p in stale:
        if os.path.lexists(p):
            _remove(p)


@dataclass
class Claim:
    """An output path held by this process (see :func:`claim_output`)."""

    target: Path  # absolute
    kind: str
    overwrite: bool
    existing: _State  # what was there when the claim was taken
    companions: tuple[Path, ...] = ()
    created: list[Path] = field(default_factory=list)  # parent directories this claim made
    thread: int = 0
    inputs: tuple[Path, ...] = ()  # real paths of what the command reads: never replaced

    def check(self) -> None:
        """Refuse (``ConfigError``) if the target is now something this claim may not replace."""
        state, problem, fix = _inspect(self.target, _KINDS[self.kind])
        if state == "foreign" and not self.overwrite:
            raise ConfigError(problem + " -- it appeared while this run was working, nothing was written", fix)
        _guard_replace(self.target, _KINDS[self.kind], self.inputs)


_HELD: dict[str, Claim] = {}
_HELD_LOCK = threading.Lock()


def _key(path: Path) -> str:
    return os.path.abspath(path)


def held_claim(target: str | os.PathLike[str]) -> Claim | None:
    """The claim this thread holds on ``target``, if any."""
    with _HELD_LOCK:
        claim = _HELD.get(_key(Path(target)))
    return claim if claim is not None and claim.thread == threading.get_ident() else None


def _lock(lock_path: Path, target: Path) -> int:
    """Open and exclusively lock ``lock_path``; return the descriptor. A held lock is an error at once."""
    while True:
        try:
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            except PermissionError:  # another user's lock file: reading is enough to lock it
                fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:  # the lock's name is the target's and 6 bytes more
                raise _write_error(exc, target) from None
            raise ConfigError(f"cannot write in {lock_path.parent} ({_reason(exc)})", _location_fix(exc)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = os.pread(fd, 32, 0).decode("ascii").strip()
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                pid = f" (pid {holder})" if holder.isdigit() else ""
                raise ConfigError(
                    f"{target} is being written by another farzi process{pid}",
                    "wait for it to finish, or write to another --out",
                ) from None
            raise ConfigError(
                f"cannot lock {lock_path} ({_reason(exc)})", "pass --out on a local file system"
            ) from None
        # the holder we waited for may have removed the file after we opened it: then ours is not the lock
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock_path))
        except FileNotFoundError:
            same = False
        if same:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
            return fd
        os.close(fd)


@contextlib.contextmanager
def claim_output(
    target: str | os.PathLike[str],
    kind: OutputKind,
    overwrite: bool = False,
    companions: Sequence[str | os.PathLike[str] | Companion] = (),
    inputs: Sequence[str | os.PathLike[str] | None] = (),
) -> Iterator[Claim]:
    """Hold ``target`` for writing an artifact of ``kind`` until the block ends.

    On entry, before any work: creates missing parent directories, takes an exclusive
    ``flock`` on ``.NAME.lock`` beside the target (another holder: ``ConfigError`` at
    once; the kernel releases it when the process dies, however it dies), removes the
    temporaries of killed runs on the target and on each of ``companions`` (side files
    such as a log, written under the same lock), and refuses with ``ConfigError`` a
    target that exists and is neither absent, an empty directory (directory kinds) nor
    farzi's own ``kind`` of artifact, unless ``overwrite`` (which still never replaces
    the root, the home directory, the workspace, a directory holding the current one, one of
    ``inputs`` (what the command reads) or a directory holding one, or a directory holding farzi
    data other than the one artifact replaced). A :class:`Companion` that exists and is not farzi's
    own is refused the same way unless ``overwrite``.

    Inside the block, :func:`atomic_file` / :func:`atomic_dir` on ``target`` check it
    again just before their rename. On exit the lock file is removed, and parent
    directories the claim created are removed again if they are still empty.

    Reentrant within one thread: a nested claim on the same target yields the outer one.
    """
    if kind not in _KINDS:
        raise ValueError(f"unknown output kind {kind!r}; expected one of {sorted(_KINDS)}")
    path = Path(_key(Path(target)))
    outer = held_claim(path)
    if outer is not None:
        if outer.kind != kind:
            raise ValueError(f"{path} is already claimed as {outer.kind!r}, not {kind!r}")
        yield outer
        return
    if path.name in ("", ".", ".."):
        raise ConfigError(f"--out {target} does not name a file or directory", "pass --out with a path of its own")
    created = _ensure_dir(path.parent, path)
    if not os.access(path.parent, os.W_OK | os.X_OK):
        _remove_dirs(created)
        reason = "read-only file system" if _read_only(path.parent) else "permission denied"
        raise ConfigError(
            f"cannot write in {path.parent} ({reason})", "pass --out (or --home) with a location you can write to"
        )
    fd = -1
    lock_path = path.parent / f".{path.name}.lock"
    try:
        fd = _lock(lock_path, path)
        known = [c if isinstance(c, Companion) else None for c in companions]
        others = tuple(Path(_key(Path(c.path if isinstance(c, Companion) else c))) for c in companions)
        reads = tuple(_real(p) for p in inputs if p is not None)
        for p in (path, *others):
            _clean_stale(p)
        state, problem, fix = _inspect(path, _KINDS[kind])
        if state == "foreign" and not overwrite:
            raise ConfigError(problem, fix)
        _guard_replace(path, _KINDS[kind], reads)
        for c, p in zip(known, others, strict=True):
            if c is not None:
                _check_companion(Companion(p, c.what, c.is_own), overwrite, _KINDS[kind], reads)
        claim = Claim(path, kind, overwrite, state, others, created, threading.get_ident(), inputs=reads)
        with _HELD_LOCK:
            _HELD[_key(path)] = claim
        try:
            yield claim
        finally:
            with _HELD_LOCK:
                _HELD.pop(_key(path), None)
    finally:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.unlink(lock_path)  # while still locked: a waiter that opened it sees another inode and retries
            os.close(fd)
        _remove_dirs(created)


# ------------------------------------------------------------------ what torch leaves behind


def _torch_cache_dirs() -> set[Path]:
    import tempfile

    found = set(Path(tempfile.gettempdir()).glob("torchinductor_*"))
    named = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    return {p for p in (found | {Path(named)} if named else found) if p.exists()}


@contextlib.contextmanager
def no_stray_torch_cache() -> Iterator[None]:
    """Remove, at the end, the compile cache directory torch made during the block and left without a
    file (``$TMPDIR/torchinductor_USER``, or ``TORCHINDUCTOR_CACHE_DIR``): importing ``torch._dynamo``
    (``torch.optim`` does on first use) makes it although farzi compiles nothing. The variable, which
    that import sets, is restored too. A command writes its outputs and nothing else."""
    env = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    before = _torch_cache_dirs()
    try:
        yield
    finally:
        for path in _torch_cache_dirs() - before:
            if path.is_dir() and not any(files for _, _, files in os.walk(path)):
                shutil.rmtree(path, ignore_errors=True)  # directories without a file only
        if env is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = env


# ------------------------------------------------------------------ atomic writes


def _new_temp(target: Path, directory: bool) -> Path:
    """A fresh ``.NAME.tmp-HEX`` beside ``target``, created with the umask's modes."""
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.tmp-{secrets.token_hex(4)}")
        try:
            if directory:
                os.mkdir(tmp, 0o777)
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666))
            return tmp
        except FileExistsError:
            continue
        except OSError as exc:
            raise _write_error(exc, target) from None
    raise ConfigError(f"cannot create a temporary name beside {target}", "remove the .NAME.tmp-* entries there")


def _aside(target: Path) -> Path:
    """Rename the current ``target`` to ``.NAME.old-HEX``; return that name."""
    old = target.with_name(f".{target.name}.old-{secrets.token_hex(4)}")
    os.replace(target, old)
    return old


@contextlib.contextmanager
def _writing(target: Path, directory: bool, may_replace: bool) -> Iterator[Path]:
    claim = held_claim(target)
    created = [] if claim is not None else _ensure_dir(target.parent, target)
    tmp = _new_temp(target, directory)
    old: Path | None = None
    try:
        try:
            yield tmp
        except OSError as exc:
            if exc.errno in _LOCATION_ERRNOS:
                raise _write_error(exc, target) from exc
            raise
        if claim is not None:
            claim.check()
        exists = os.path.lexists(target)
        if exists and not may_replace:
            raise FileExistsError(target)
        # a directory, or anything in the way of a directory, is moved aside first (a rename cannot
        # replace a non-empty directory, nor a file with a directory); only a claim lets a file replace a directory
        if exists and (directory or (claim is not None and target.is_dir() and not target.is_symlink())):
            old = _aside(target)
        try:
            os.replace(tmp, target)
        except OSError as exc:
            if old is not None:
                with contextlib.suppress(OSError):
                    os.replace(old, target)
                old = None
            raise _write_error(exc, target) from None
    except BaseException:
        _remove(tmp)
        _remove_dirs(created)
        raise
    if old is not None:
        _remove(old)


@contextlib.contextmanager
def atomic_dir(target: Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``target`` only on success.

    The temporary directory (``.NAME.tmp-HEX``) lives beside ``target`` (same file system,
    so the final rename is atomic); an existing target is moved to ``.NAME.old-HEX`` for the
    swap and removed after it. On any exception, the final rename's included, the temporary
    is removed and ``target`` is as it was. ``overwrite=False``: an existing target is a
    ``FileExistsError``. Inside a :func:`claim_output` on ``target``, the claim is checked
    again before the rename.
    """
    with _writing(Path(target), directory=True, may_replace=overwrite) as tmp:
        yield tmp


@contextlib.contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """Yield a temporary path (an empty file) that is renamed onto ``target`` on success.

    On any exception, the final rename's included (e.g. ``target`` is a directory), the
    temporary file is removed. Inside a :func:`claim_output` on ``target``, the claim is
    checked again before the rename, and with ``overwrite`` may replace a directory.
    """
    with _writing(Path(target), directory=False, may_replace=True) as tmp:
        yield tmp


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as stable, human-readable JSON (sorted keys, trailing newline)."""
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_json_atomic(path: Path, obj: Any) -> None:
    with atomic_file(Path(path)) as tmp:
        write_json(tmp, obj)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def md5_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
