"""Line charts for the report: a panel with nothing measured still renders, without a warning."""

from __future__ import annotations

import warnings
from pathlib import Path

from farzi.plots import line_panels


def test_a_panel_without_series_renders_quietly(tmp_path: Path) -> None:
    panels = [
        {"title": "measured", "series": {"a": ([1, 2], [3.0, 4.0])}},
        {"title": "peer not installed", "series": {}},
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = line_panels(tmp_path / "p.png", panels, "two panels")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
