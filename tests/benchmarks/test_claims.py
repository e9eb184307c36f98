"""The issue's claims in sample-efficiency results: read, decided, and what the test split can resolve."""

from __future__ import annotations

import pytest

from bench.experiments.sample_efficiency import Claim, claim_specs, claims, resolution, resolution_table

ML = {"claim_budget": 4, "xi": 8, "metrics": ["hr@10"], "n_boot": 200}
LM = {"claim_budget": 4, "xi": 8, "metrics": ["ppl_corpus"], "n_boot": 200}


def _comp(a: str, b: str, diff: float, lo: float, hi: float, ratio: float, rlo: float, rhi: float) -> dict:
    return {"a": a, "b": b, "diff": diff, "lo": lo, "hi": hi, "ratio": ratio, "ratio_lo": rlo, "ratio_hi": rhi}


def test_claims_are_read_and_decided_by_their_intervals() -> None:
    comps = [
        _comp("farzi 4x8", "full", -1.0, -3.0, 1.0, 0.96, 0.95, 1.02),  # ratio touching 0.95: holds
        _comp("farzi 4x8", "head:4", 2.0, 0.0, 4.0, 1.2, 1.0, 1.4),  # diff touching 0: does not
        _comp("farzi 4x8", "init only 4x8", 2.0, 0.5, 4.0, 1.2, 1.1, 1.4),
    ]
    out = claims(ML, comps)
    assert [c["holds"] for c in out] == [True, False, True]
    assert (out[0]["value"], out[0]["lo"], out[0]["hi"]) == (0.96, 0.95, 1.02)
    # perplexity: lower is better, so the head and init claims are printed as other - Farzi
    lm = [
        _comp("farzi 4x8", "full", 50.0, 45.0, 55.0, 1.41, 1.39, 1.43),
        _comp("farzi 4x8", "head:4", -10.0, -12.0, -8.0, 0.9, 0.8, 0.95),
        _comp("farzi 4x8", "init only 4x8", -1.0, -2.0, 0.5, 0.99, 0.98, 1.01),
    ]
    out = claims(LM, lm)
    assert [c["holds"] for c in out] == [False, True, False]
    assert (out[1]["value"], out[1]["lo"], out[1]["hi"]) == (10.0, 8.0, 12.0)
    assert Claim("x", "a", "b", "ratio", 1.4, above=False).holds(1.3, 1.4)  # a ratio may touch its bar


def _run(data: str, seed: int, ranks: list[int], dseed: int | None = None) -> dict:
    return {"data": data, "seed": seed, "distill_seed": dseed, "units": {"unit": "user", "rank": ranks}}


def test_resolution_counts_the_users_a_claim_needs() -> None:
    # 20 users; Farzi hits 8 of them, head 6 (the first 6), init 8 (the same 8), full 10
    farzi, head, full = [0] * 8 + [50] * 12, [0] * 6 + [50] * 14, [0] * 10 + [50] * 10
    runs = [_run("farzi 4x8", s, farzi, d) for s in (0, 1) for d in (0, 1)]
    runs += [_run("init only 4x8", s, farzi, d) for s in (0, 1) for d in (0, 1)]
    runs += [_run("head:4", s, head) for s in (0, 1)] + [_run("full", s, full) for s in (0, 1)]
    rows = {r["claim"]: r for r in resolution(ML, runs)}
    assert [c.text for c in claim_specs(ML)] == list(rows)
    ratio, vs_head, vs_init = rows.values()
    assert ratio["value"] == pytest.approx(0.8) and ratio["needed"] is None  # below 0.95 whatever the users
    assert vs_head["value"] == pytest.approx(10.0) and vs_head["units"] == 20
    # the head difference is 100 on 2 of 20 users: its users-alone interval's low end sets the count
    assert vs_head["lo"] < 10.0 and vs_head["needed"] == pytest.approx(20 * ((10 - vs_head["lo"]) / 10) ** 2)
    assert vs_init["value"] == 0.0 and vs_init["needed"] is None  # identical: never resolved
    text = resolution_table({"settings": ML, "runs": runs})
    assert "| interval, test users alone |" in text and "none: the measured value is not past the bar" in text
