"""Errors the library raises for bad input.

Every error a user can cause is a :class:`FarziError` carrying two parts: what
is wrong and how to fix it. The CLI prints ``str(err)`` as one line and exits
with status 2; library callers can catch the base class or a specific one.
"""

from __future__ import annotations


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
