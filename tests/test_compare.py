"""Paired comparisons: exact estimates by hand, and intervals that resample pairs and units."""

from __future__ import annotations

import math

import numpy as np
import pytest

from farzi.compare import paired_difference, unit_values, units_to_resolve


def _users(ranks: list[int]) -> dict:
    n = len(ranks)
    return {
        "unit": "user",
        "rank": ranks,
        "auc": [0.5] * n,
        "nll": [1.0] * n,
        "xent_sum": [2.0] * n,
        "xent_count": [4] * n,
        "top10_all": [1] * n,
    }


def test_hit_rate_difference_by_hand() -> None:
    a = [_users([0, 3, 20, 50]), _users([9, 10, 0, 0])]  # hr@10: 50 %, 75 %
    b = [_users([30, 3, 20, 50]), _users([99, 10, 11, 0])]  # 25 %, 25 %
    out = paired_difference(a, b, "hr@10", n_boot=500)
    assert (out["a"], out["b"], out["diff"]) == (62.5, 25.0, 37.5)
    assert out["ratio"] == 2.5 and out["pairs"] == 2 and out["units"] == 4
    assert out["lo"] <= out["diff"] <= out["hi"]


def test_a_constant_shift_has_a_degenerate_interval() -> None:
    """Every user one rank better in every pair: the ndcg difference varies, hr's does not when all hit."""
    a = [_users([0, 1, 2]), _users([0, 1, 2])]
    b = [_users([1, 2, 3]), _users([1, 2, 3])]
    out = paired_difference(a, b, "hr@10", n_boot=200)
    assert out["diff"] == 0 and out["lo"] == 0 and out["hi"] == 0
    nd = paired_difference(a, b, "ndcg@10", n_boot=200)
    assert nd["lo"] > 0  # every resample keeps a better than b


def test_corpus_perplexity_is_a_ratio_of_totals() -> None:
    def sent(nll: list[float], tok: list[int]) -> dict:
        return {"unit": "sentence", "nll_sum": nll, "tokens": tok, "correct": [0] * len(tok)}

    a = [sent([2.0, 4.0], [2, 2])]  # exp(6 / 4)
    b = [sent([4.0, 4.0], [2, 2])]  # exp(8 / 4)
    out = paired_difference(b, a, "ppl_corpus", n_boot=300)
    assert out["a"] == pytest.approx(math.exp(2.0)) and out["b"] == pytest.approx(math.exp(1.5))
    num, den = unit_values(a[0], "ppl_corpus")
    assert list(num) == [2.0, 4.0] and list(den) == [2.0, 2.0]


def test_interval_covers_the_truth_on_noisy_pairs() -> None:
    """Simulated users with a true hit-rate gap of 10 points: the 95 % interval covers it and excludes 0."""
    rng = np.random.default_rng(1)
    a, b = [], []
    for _ in range(5):
        p = rng.random(400)
        a.append(_users([0 if x < 0.30 else 50 for x in p]))
        b.append(_users([0 if x < 0.20 else 50 for x in p]))
    out = paired_difference(a, b, "hr@10", n_boot=1000)
    assert out["lo"] < 10 < out["hi"] and out["lo"] > 0


def test_sides_must_pair_up() -> None:
    with pytest.raises(ValueError):
        paired_difference([_users([1])], [], "hr@10")
    with pytest.raises(ValueError):
        paired_difference([_users([1])], [_users([1, 2])], "hr@10")


def test_units_only_interval_holds_the_runs_fixed() -> None:
    """Two seeds, each hitting every user or none: the spread is all between runs, none between users."""
    a = [_users([0, 0, 0, 0]), _users([50, 50, 50, 50])]  # hr@10 100 %, 0 %
    b = [_users([0, 0, 0, 0]), _users([0, 0, 0, 0])]  # 100 %, 100 %
    both = paired_difference(a, b, "hr@10", n_boot=400)
    alone = paired_difference(a, b, "hr@10", n_boot=400, resample_runs=False)
    assert both["diff"] == alone["diff"] == -50.0
    assert alone["lo"] == alone["hi"] == -50.0  # resampling users alone cannot move it
    assert both["lo"] == -100.0 and both["hi"] == 0.0  # resampling the seeds does


def test_units_to_resolve_by_hand() -> None:
    # a difference of 3 whose interval reaches down to 1 on 100 users: half-width 2, margin 3
    assert units_to_resolve(3.0, 1.0, 0.0, 100) == pytest.approx(100 * (2 / 3) ** 2)
    # a ratio of 1.3 that must lie below 1.4, its interval reaching up to 1.35 on 50 sentences
    assert units_to_resolve(1.3, 1.35, 1.4, 50, above=False) == pytest.approx(50 * 0.25)
    # already resolved: fewer units than measured would do
    assert units_to_resolve(5.0, 4.0, 0.0, 100) == pytest.approx(4.0)
    # on the wrong side of the bar (or on it): no number of units makes it hold
    assert units_to_resolve(-1.0, -3.0, 0.0, 100) is None
    assert units_to_resolve(1.5, 1.6, 1.4, 100, above=False) is None
    assert units_to_resolve(0.0, -1.0, 0.0, 100) is None
