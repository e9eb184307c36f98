"""Settings declared once, as dataclass fields.

A config is a dataclass whose fields are made with :func:`setting` (a value, its help text and its
bounds) or :func:`group` (a nested config). From that one declaration follow:

* the flat name of each setting (a group's settings are prefixed with the group's name:
  ``DistillConfig.recipe.lr`` is ``recipe_lr``), its option (``--recipe-lr``, built by
  ``farzictl/options.py``) and its key in the records a bundle or model keeps (:func:`to_record`,
  :func:`from_record`);
* the checks of every field's type and bounds (:func:`check_fields`), whose messages name the option;
* the merge of defaults, a preset, a bundle's recipe and the flags a user gave (:func:`merge`), which
  says where each value came from.

Adding a setting to a config is adding its field: the CLI option, help, checks, preset support and
record follow.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from enum import Enum
from typing import Any

from farzi.errors import ConfigError
from farzi.limits import FLOAT32_MAX

SOURCES = ("default", "preset", "recipe", "flag")  # the layers of a merge, lowest first


def setting(
    default: Any = MISSING,
    help: str = "",  # noqa: A002 - the option's help text
    *,
    factory: Callable[[], Any] | None = None,
    least: float | None = None,
    most: float | None = None,
    positive: bool = False,
    within: tuple[float, float, bool] | None = None,
    outside: str = "",
    fix: str = "",
    label: str = "",
    word: str = "",
    doc: str = "",
    check: Callable[[Any], None] | None = None,
    keys: tuple[str, ...] = (),
    cli: bool = True,
) -> Any:
    """A config field with its help and bounds.

    ``least``/``most``: an integer's bounds (``fix`` says how to mend a value below ``least``);
    ``positive``: a finite number above 0; ``least=0`` on a float: a finite number >= 0;
    ``within=(lo, hi, closed)``: a number in [lo, hi] (or [lo, hi) when not ``closed``), ``outside`` a
    message template for a value outside it (``{flag}``, ``{value}``, ``{lo}``, ``{hi}``); ``check``: a
    function that raises :class:`ConfigError` for a bad value (it replaces the checks by type).
    ``keys``: the keys of a mapping setting that have options of their own
    (:data:`farzi.models.MODEL_OPTIONS`). ``label`` names the setting in messages where it has no
    option of its own (``--budget sequences (MU)``), ``word`` names an enum setting in prose, ``doc``
    is the longer text of the format document, and ``cli=False`` keeps the setting off the command line.
    """
    meta = {
        "help": help,
        "least": least,
        "most": most,
        "positive": positive,
        "within": within,
        "outside": outside,
        "fix": fix,
        "label": label,
        "word": word,
        "doc": doc,
        "check": check,
        "keys": keys,
        "cli": cli,
    }
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def group(factory: Callable[[], Any], prefix: str | None = None) -> Any:
    """A nested config (``factory()`` gives its defaults); its settings' flat names start with ``prefix``
    (default: the field's name and ``_``)."""
    return field(default_factory=factory, metadata={"group": True, "prefix": prefix})


@dataclass(frozen=True)
class Setting:
    """One setting of a config, by its flat name."""

    name: str  # flat: the option (--name-with-dashes) and the record key
    path: tuple[str, ...]  # attribute path in the config: ("recipe", "lr")
    kind: type  # int, float, str, bool, dict, Path or an Enum
    default: Any
    meta: Mapping[str, Any]
    optional: bool = False  # None allowed (X | None): "not set"

    @property
    def flag(self) -> str:
        return flag_of(self.name)

    @property
    def help(self) -> str:
        return str(self.meta.get("help", ""))

    @property
    def label(self) -> str:
        return str(self.meta.get("label") or self.flag)

    @property
    def cli(self) -> bool:
        return bool(self.meta.get("cli", True))


def flag_of(name: str) -> str:
    """The option of a flat setting name: ``recipe_lr`` -> ``--recipe-lr``."""
    return "--" + name.replace("_", "-")


def _kind(hint: Any) -> tuple[type, bool]:
    """(the setting's type, whether it may be None) of a field's type hint."""
    origin = typing.get_origin(hint)
    if origin in (dict, Mapping):
        return dict, False
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin in (typing.Union, types.UnionType) and len(args) == 1 and isinstance(args[0], type):
        return args[0], True
    if isinstance(hint, type):
        return hint, False
    raise TypeError(f"unsupported setting type {hint!r}")


_hints = functools.cache(typing.get_type_hints)  # a config class's resolved field types (read on every init)


@functools.cache
def settings_of(cls: type) -> tuple[Setting, ...]:
    """Every setting of config class ``cls``, groups flattened, in declaration order."""
    return tuple(_walk(cls(), "", ()))


def _walk(defaults: Any, prefix: str, path: tuple[str, ...]) -> list[Setting]:
    """The settings of config instance ``defaults`` (its values are the defaults: a group's factory may
    set other defaults than its class)."""
    cls = type(defaults)
    hints = _hints(cls)
    out: list[Setting] = []
    for f in fields(cls):
        value = getattr(defaults, f.name)
        if f.metadata.get("group"):
            inner = f.metadata.get("prefix")
            out += _walk(value, prefix + (f.name + "_" if inner is None else inner), (*path, f.name))
            continue
        kind, optional = _kind(hints[f.name])
        out.append(Setting(prefix + f.name, (*path, f.name), kind, value, f.metadata, optional))
    return out


def _get(cfg: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        cfg = getattr(cfg, part)
    return cfg


def to_record(cfg: Any) -> dict[str, Any]:
    """The flat record of a config: every setting by its flat name, enums as their values (JSON-ready)."""
    out: dict[str, Any] = {}
    for s in settings_of(type(cfg)):
        value = _get(cfg, s.path)
        out[s.name] = value.value if isinstance(value, Enum) else dict(value) if isinstance(value, dict) else value
    return out


def from_record(cls: type, raw: Mapping[str, Any], what: str = "settings") -> Any:
    """A config from a flat record (a setting it lacks takes its default); an unknown name is a ``ConfigError``."""
    known = {s.name: s for s in settings_of(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"unknown {what} {', '.join(unknown)}", f"use only: {', '.join(sorted(known))}")
    return build(cls, {known[k].path: v for k, v in raw.items()})


def build(cls: type, values: Mapping[tuple[str, ...], Any]) -> Any:
    """An instance of ``cls`` with the values given by attribute path (the rest: defaults)."""
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.metadata.get("group"):
            inner = {p[1:]: v for p, v in values.items() if p[0] == f.name}
            kwargs[f.name] = dataclasses.replace(f.default_factory(), **_nested(inner))  # type: ignore[misc]
        elif (f.name,) in values:
            kwargs[f.name] = values[(f.name,)]
    return cls(**kwargs)


def _nested(values: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
    """Values by path one level down (a group inside a group is not used by farzi's configs)."""
    if any(len(p) != 1 for p in values):
        raise TypeError("settings nest one level deep")
    return {p[0]: v for p, v in values.items()}


def coerce_enums(cfg: Any) -> None:
    """Plain strings of ``cfg``'s enum settings (library callers, JSON) turned into the enum; an unknown
    one is left for :func:`check_fields` to report. (Called from ``__post_init__``: it reads the fields'
    types, never a default instance.)"""
    hints = _hints(type(cfg))
    for f in fields(cfg):
        kind, value = hints[f.name], getattr(cfg, f.name)
        if isinstance(kind, type) and issubclass(kind, Enum) and not isinstance(value, kind):
            try:
                setattr(cfg, f.name, kind(value))
            except ValueError:
                pass


# ------------------------------------------------------------------ checks
def check_fields(cfg: Any) -> None:
    """Check every setting's type and bounds as its field declares them; raise :class:`ConfigError`
    naming the option of the first that fails."""
    for s in settings_of(type(cfg)):
        _check(s, _get(cfg, s.path))


def _check(s: Setting, value: Any) -> None:
    m, flag = s.meta, s.label
    if s.optional and value is None:
        return
    if m.get("check") is not None:
        m["check"](value)
    elif issubclass(s.kind, Enum):
        if not isinstance(value, s.kind):
            word = m.get("word") or s.name.replace("_", " ")
            choices = ", ".join(e.value for e in s.kind)
            raise ConfigError(f"unknown {word} {value!r} ({s.flag})", f"choose one of: {choices}")
    elif s.kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{flag} {value!r} must be true or false", f"pass {s.flag} or {flag_of('no_' + s.name)}")
    elif s.kind is int:
        if m.get("least") is not None and (isinstance(value, bool) or not isinstance(value, int) or value < m["least"]):
            raise ConfigError(f"{flag} {value} must be at least {m['least']}", m.get("fix") or f"pass e.g. {flag} 1")
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{flag} {value!r} must be an integer", f"pass e.g. {flag} 1")
        if m.get("most") is not None and value > m["most"]:
            raise ConfigError(f"{flag} {value} exceeds the limit of {m['most']}", f"pass at most {m['most']}")
    elif s.kind is float:
        _check_number(s, value)


def _check_number(s: Setting, value: Any) -> None:
    m, flag = s.meta, s.label
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{flag} {value!r} must be a number", f"pass e.g. {flag} 1")
    if m.get("positive") and not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{flag} {value} must be a positive number", f"pass a positive {flag}")
    if m.get("least") == 0 and not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"{flag} {value} must be a number >= 0", f"pass e.g. {flag} 0")
    if m.get("within") is not None:
        lo, hi, closed = m["within"]
        if not (lo <= value <= hi if closed else lo <= value < hi):
            text = m.get("outside") or "{flag} {value} must lie in [{lo:g}, {hi:g}" + ("]" if closed else ")")
            raise ConfigError(text.format(flag=flag, value=value, lo=lo, hi=hi), m.get("fix") or f"pass e.g. {flag} 0")
    if abs(value) > FLOAT32_MAX:
        raise ConfigError(f"{flag} {value:g} is beyond float32's range ({FLOAT32_MAX:.3g})", f"pass e.g. {flag} 1")


# ------------------------------------------------------------------ merging
@dataclass
class Merged:
    """A config merged from layers, and where each setting's value came from (:data:`SOURCES`;
    a mapping setting per key, as ``model_overrides.d_model``)."""

    config: Any
    sources: dict[str, str]

    def from_source(self, source: str) -> list[str]:
        """The flat names whose value came from ``source``."""
        return [k for k, v in self.sources.items() if v == source]


def merge(cls: type, layers: list[tuple[str, Mapping[str, Any] | None]]) -> Merged:
    """A ``cls`` from its defaults, then each layer in turn (``(source, partial settings by flat
    name)``, later layers win; a mapping setting such as ``model_overrides`` merges key by key).

    A name no setting of ``cls`` has is a ``ConfigError`` (a preset or recipe is never dropped
    silently); values are not checked here (the config's ``validate`` does that)."""
    known = {s.name: s for s in settings_of(cls)}
    values: dict[str, Any] = {name: _copy(s.default) for name, s in known.items()}
    sources = {name: "default" for name in known}
    for source, layer in layers:
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r}")
        for name, value in (layer or {}).items():
            if name not in known:
                raise ConfigError(
                    f"the {source} names a setting {name!r} this command does not have",
                    f"use only: {', '.join(sorted(known))}",
                )
            if known[name].kind is dict:
                for key, item in dict(value or {}).items():
                    values[name][key] = item
                    sources[f"{name}.{key}"] = source
            else:
                values[name] = value
                sources[name] = source
    config = build(cls, {known[n].path: v for n, v in values.items()})
    return Merged(config, sources)


def _copy(value: Any) -> Any:
    return dict(value) if isinstance(value, dict) else value


def markdown_rows(cls: type) -> list[str]:
    """The rows of a format document's table of ``cls``'s settings: name, JSON type, default, meaning."""
    rows = []
    for s in settings_of(cls):
        if issubclass(s.kind, Enum):
            kind = "string: " + " \\| ".join(f"`{e.value}`" for e in s.kind)
        else:
            kind = {int: "integer", float: "number", bool: "boolean", str: "string", dict: "object"}[s.kind]
        default = s.default.value if isinstance(s.default, Enum) else s.default
        rows.append(f"| `{s.name}` | {kind} | `{json.dumps(default)}` | {s.meta.get('doc') or s.help} |")
    return rows


__all__ = [
    "Merged",
    "SOURCES",
    "Setting",
    "build",
    "check_fields",
    "coerce_enums",
    "flag_of",
    "from_record",
    "group",
    "markdown_rows",
    "merge",
    "setting",
    "settings_of",
    "to_record",
]
