"""Paired comparisons: exact estimates by hand, and intervals that resample pairs and units."""

from __future__ import annotations

import math

import numpy as np
import pytest

from farzi.compare import paired_difference, unit_values


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
