"""`farzictl demo` end to end (minutes: marked slow). Its wall time is measured, not asserted: see the README."""

from __future__ import annotations

import json

import pytest
from cli_runner import farzictl


@pytest.mark.slow
def test_demo_shows_farzi_its_initialization_samples_and_full_data(tmp_path) -> None:
    out = json.loads(farzictl("demo", "--json", home=tmp_path).ok().stdout)
    for task in ("lm", "rec"):
        labels = [r["data"] for r in out["tasks"][task]["rows"]]
        budget = out["tasks"][task]["budget"]
        assert labels == [f"farzi {budget}", f"init only {budget}", *labels[2:]]
        assert {"full"} <= set(labels) and any(x.startswith("random:") for x in labels)
