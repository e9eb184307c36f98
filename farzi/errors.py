"""Errors the library raises for bad input.

Every error a user can cause is a :class:`FarziError` carrying two parts: what
is wrong and how to fix it. The CLI prints ``str(err)`` as one line and exits
with status 2; library callers can catch the base class or a specific one.
"""

from __future__ import annotations

import json
from typing import Any


class FarziError(Exception):
    """A problem with the input, named together with its fix."""

    def __init__(self, problem: str, fix: str = "") -> None:
        self.problem = problem.rstrip(". ")
        self.fix = fix.rstrip(". ")
        super().__init__(self.one_line())

    def one_line(self) -> str:
        text = self.problem
        if self.fix:
            text += f"; {self.fix}"
        return " ".join(text.split())  # exactly one line, whatever the parts held


class DataError(FarziError):
    """A dataset (source files, prepared directory) is missing, malformed or empty."""


class ChecksumError(DataError):
    """A downloaded or local file does not have the published checksum."""


class ConfigError(FarziError):
    """An option value is out of range or inconsistent with the data."""


class CheckpointError(FarziError):
    """A model checkpoint or trajectory set is unreadable or belongs elsewhere."""


class BundleError(FarziError):
    """A Farzi Data bundle is unreadable, invalid or does not fit its use."""


def setting_differences(then: str | dict[str, Any] | None, now: dict[str, Any] | None) -> str:
    """``": --inner-lr 0.01 (now 0.02), ..."`` naming the settings (flat, by option name) where ``then``
    (a mapping, or its JSON) and ``now`` differ; "" when ``then`` is unknown or nothing differs."""
    if isinstance(then, str):
        try:
            then = json.loads(then)
        except ValueError:
            then = None
    if not isinstance(then, dict) or now is None:
        return ""
    now = json.loads(json.dumps(now, sort_keys=True))  # the values as a saved record holds them
    keys = sorted(k for k in then.keys() | now.keys() if then.get(k) != now.get(k))
    shown = [f"--{k.replace('_', '-')} {then.get(k, 'unset')} (now {now.get(k, 'unset')})" for k in keys[:4]]
    more = f" and {len(keys) - 4} more" if len(keys) > 4 else ""
    return ": " + ", ".join(shown) + more if keys else ""
