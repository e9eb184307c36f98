"""`farzictl demo` end to end (minutes: marked slow). Its wall time is measured, not asserted: see the README."""

from __future__ import annotations

import json

import pytest
from cli_runner import farzictl

from farzi.demo import farzi_against_each, with_intervals


@pytest.mark.slow
def test_demo_shows_farzi_its_initialization_samples_and_full_data(tmp_path) -> None:
    out = json.loads(farzictl("demo", "--json", home=tmp_path).ok().stdout)
    for task in ("lm", "rec"):
        labels = [r["data"] for r in out["tasks"][task]["rows"]]
        budget = out["tasks"][task]["budget"]
        assert labels == [f"farzi {budget}", f"init only {budget}", *labels[2:]]
        assert {"full"} <= set(labels) and any(x.startswith("random:") for x in labels)
        rows, headline = out["tasks"][task]["rows"], out["tasks"][task]["headline"]
        assert all(r[f"{headline}_lo"] <= r[headline] <= r[f"{headline}_hi"] for r in rows)
        comps = out["tasks"][task]["comparisons"]
        assert [c["against"] for c in comps] == labels[1:] and {c["metric"] for c in comps} == {headline}
        assert all(c["verdict"] in ("better", "worse", "not resolved") for c in comps)


def _user(xent_sums: list[float]) -> dict:
    n = len(xent_sums)
    return {
        "unit": "user",
        "rank": [0] * n,
        "auc": [1.0] * n,
        "nll": [0.0] * n,
        "xent_sum": xent_sums,
        "xent_count": [10] * n,
        "top10_all": [5] * n,
    }


def test_farzi_is_paired_with_each_row_and_given_a_verdict() -> None:
    base = [float(x) for x in range(20, 60, 2)]  # 20 users, 10 predictions each
    rows = [
        {"data": "farzi", "units": _user([x - 1.0 for x in base])},  # 0.1 nats lower at every user
        {"data": "same", "units": _user(base[::-1][::-1])},
        {"data": "farzi twin", "units": _user([x - 1.0 for x in base])},
        {"data": "better than farzi", "units": _user([x - 3.0 for x in base])},
    ]
    comps = farzi_against_each(rows, "xent", seed=0)
    assert [c["against"] for c in comps] == ["same", "farzi twin", "better than farzi"]
    assert [c["verdict"] for c in comps] == ["better", "not resolved", "worse"]  # xent: lower is better
    assert [round(c["diff"], 9) for c in comps] == [-0.1, 0.0, 0.2]
    table = with_intervals([{"data": r["data"]} for r in rows], rows, ("xent",), seed=0)
    assert table[0]["xent_lo"] < (sum(base) / 200 - 0.1) < table[0]["xent_hi"]
