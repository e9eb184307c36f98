"""The workspace: where prepared datasets, trajectories, models and bundles live.

Resolution order for the home directory: an explicit ``home`` argument (the
CLI's ``--home``), then the ``FARZI_HOME`` environment variable, then
``~/.farzi``. Layout::

    HOME/datasets/NAME/              prepared datasets (formats/prepared-dataset-v1.md)
    HOME/trajectories/DATASET/MODEL/ Omega: checkpoints of training runs
    HOME/models/DATASET/NAME/        trained students (safetensors + JSON)
    HOME/bundles/DATASET/NAME.safetensors   Farzi Data bundles
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def home_dir(home: str | os.PathLike[str] | None = None) -> Path:
    """The workspace directory; ``ConfigError`` if it (or a parent of it) is not a directory.

    It need not exist yet (commands create it when they first write there).
    """
    from farzi.errors import ConfigError

    env = os.environ.get("FARZI_HOME")
    if home:  # the CLI's --home also carries FARZI_HOME (its envvar): name the one that was set
        path, where = Path(home), "FARZI_HOME" if env and os.fspath(home) == env else "--home"
    elif env:
        path, where = Path(env), "FARZI_HOME"
    else:
        path, where = Path("~") / ".farzi", "the default workspace"
    try:
        path = path.expanduser()
    except RuntimeError:  # no home directory to expand '~' with
        raise ConfigError(
            f"the workspace {path} ({where}) cannot be expanded: no home directory is known",
            "pass --home (or set FARZI_HOME) with an absolute directory",
        ) from None
    _check_home(path, where)
    return path


def _check_home(path: Path, where: str) -> None:
    """``path`` is a directory, or absent under a directory (anything else breaks every write later)."""
    from farzi.errors import ConfigError

    fix = "pass --home (or set FARZI_HOME) with a directory, or move the file away"
    p = path
    while not os.path.lexists(p) and p.parent != p:
        p = p.parent
    if p.is_dir():
        return
    if p == path:
        raise ConfigError(f"the workspace {path} ({where}) is a file, not a directory", fix)
    raise ConfigError(f"the workspace {path} ({where}) cannot be created: {p} is a file, not a directory", fix)


def check_name(name: str, what: str = "name") -> str:
    """Workspace names become directory names: keep them to a safe alphabet."""
    from farzi.errors import ConfigError

    if not _NAME_RE.fullmatch(name):  # not match: "$" also matches before a trailing newline
        raise ConfigError(
            f"{what} {name!r} is not a valid workspace name",
            "use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return name


def datasets_dir(home: str | os.PathLike[str] | None = None) -> Path:
    return home_dir(home) / "datasets"


def dataset_dir(name: str, home: str | os.PathLike[str] | None = None) -> Path:
    return datasets_dir(home) / check_name(name, "dataset name")


def trajectories_dir(dataset: str, model: str, home: str | os.PathLike[str] | None = None) -> Path:
    return home_dir(home) / "trajectories" / check_name(dataset) / check_name(model)


def models_dir(dataset: str, home: str | os.PathLike[str] | None = None) -> Path:
    return home_dir(home) / "models" / check_name(dataset)


def bundles_dir(dataset: str, home: str | os.PathLike[str] | None = None) -> Path:
    return home_dir(home) / "bundles" / check_name(dataset)
