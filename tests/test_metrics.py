"""farzi.metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from farzi.metrics import decile_of, hit_rate, lm_metrics, ndcg, rank_metrics, target_ranks


def _ranks(scores: list[list[float]], targets: list[int], candidates: list[list[bool]] | None = None):
    s = torch.tensor(scores, dtype=torch.float64)
    c = torch.ones_like(s, dtype=torch.bool) if candidates is None else torch.tensor(candidates)
    rank, auc = target_ranks(s, torch.tensor(targets), c)
    return rank.tolist(), auc.tolist()


# ------------------------------------------------------------------ target_ranks


def test_rank_counts_ties_against_the_target() -> None:
    # target (id 1) scores 0.5; id 2 ties it, id 3 beats it, ids 0 and 4 are below
    rank, auc = _ranks([[0.1, 0.5, 0.5, 0.7, 0.2]], [1])
    assert rank == [2]  # #(score >= 0.5) over the other four items
    assert auc == [pytest.approx((2 + 0.5 * 1) / 4)]  # 2 below, 1 tied (half), 4 negatives


def test_rank_of_a_clear_winner_and_a_clear_loser() -> None:
    rank, auc = _ranks([[0.9, 0.1, 0.2, 0.3], [0.9, 0.1, 0.2, 0.3]], [0, 1])
    assert rank == [0, 3]
    assert auc == [1.0, 0.0]


def test_constant_scorer_gets_no_free_hit() -> None:
    rank, auc = _ranks([[0.0] * 6], [4])
    assert rank == [5]  # every other item ties the target: it is last
    assert auc == [0.5]
    assert hit_rate(np.array(rank), 5).tolist() == [0.0]


def test_non_candidates_are_ignored() -> None:
    # id 0 (a special) and id 3 (say, in the context) score highest but are not candidates
    scores = [[9.0, 0.5, 0.4, 8.0, 0.6]]
    cand = [[False, True, True, False, True]]
    rank, auc = _ranks(scores, [1], cand)
    assert rank == [1]  # only id 4 (0.6) is above among {2, 4}
    assert auc == [0.5]  # id 2 below, id 4 above


def test_target_stays_a_candidate_even_when_marked_out() -> None:
    # a repeat consumption: the target is in the context, so its candidate flag is False;
    # it is still ranked (against the remaining candidates, never against itself)
    scores = [[0.0, 0.3, 0.8, 0.5, 0.1]]
    cand = [[False, True, False, False, True]]  # ids 2 and 3 are context items; 3 is the target
    rank, auc = _ranks(scores, [3], cand)
    assert rank == [0]  # candidates besides the target: ids 1 (0.3) and 4 (0.1), both below
    assert auc == [1.0]


def test_no_negatives_gives_rank_0_and_auc_1() -> None:
    rank, auc = _ranks([[0.0, 0.2, 0.3]], [2], [[False, False, False]])
    assert rank == [0]
    assert auc == [1.0]


# ------------------------------------------------------------------ HR, nDCG, rank_metrics


def test_hit_rate_and_ndcg_by_hand() -> None:
    ranks = np.array([0, 1, 4, 9, 10, 50])
    assert hit_rate(ranks, 10).tolist() == [1, 1, 1, 1, 0, 0]
    assert hit_rate(ranks, 1).tolist() == [1, 0, 0, 0, 0, 0]
    expected = [1.0, 1 / math.log2(3), 1 / math.log2(6), 1 / math.log2(11), 0.0, 0.0]
    assert ndcg(ranks, 10) == pytest.approx(expected)
    assert ndcg(ranks, 100)[-1] == pytest.approx(1 / math.log2(52))


def test_rank_metrics_in_percent() -> None:
    ranks = np.array([0, 3, 20, 7])
    auc = np.array([1.0, 0.9, 0.2, 0.5])
    out = rank_metrics(ranks, auc, (1, 5, 10))
    assert out["hr@1"] == pytest.approx(25.0)
    assert out["hr@5"] == pytest.approx(50.0)
    assert out["hr@10"] == pytest.approx(75.0)
    assert out["ndcg@5"] == pytest.approx(100 * (1.0 + 1 / math.log2(5)) / 4)
    assert out["ndcg@10"] == pytest.approx(100 * (1.0 + 1 / math.log2(5) + 1 / math.log2(9)) / 4)
    assert out["auc"] == pytest.approx(0.65)
    assert out["users"] == 4


def test_k_larger_than_the_item_count_is_a_sure_hit() -> None:
    # 5 items: a rank is at most 4, so HR@100 = 100 % whatever the scores
    s = torch.randn(7, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rank, auc = target_ranks(s, torch.arange(7) % 5, torch.ones(7, 5, dtype=torch.bool))
    out = rank_metrics(rank.numpy(), auc.numpy(), (100,))
    assert out["hr@100"] == 100.0
    assert rank.max().item() <= 4


def test_rank_metrics_of_nobody() -> None:
    out = rank_metrics(np.array([], dtype=np.int64), np.array([]), (10,))
    assert math.isnan(out["hr@10"]) and math.isnan(out["auc"]) and out["users"] == 0


# ------------------------------------------------------------------ language modeling


def test_lm_metrics_by_hand() -> None:
    nll = [np.array([1.0, 2.0, 3.0]), np.array([0.5]), np.array([math.log(2), math.log(4)])]
    correct = [np.array([True, False, True]), np.array([False]), np.array([True, True])]
    out = lm_metrics(nll, correct)
    # paper: mean over sentences of exp(mean NLL) = (e^2 + e^0.5 + sqrt(8)) / 3
    assert out["ppl_sentence"] == pytest.approx((math.exp(2) + math.exp(0.5) + math.sqrt(8)) / 3)
    # corpus: exp(total NLL / tokens) = exp((6 + 0.5 + ln 8) / 6)
    total = 6.0 + 0.5 + math.log(8)
    assert out["ppl_corpus"] == pytest.approx(math.exp(total / 6))
    assert out["nll"] == pytest.approx(total / 6)
    assert out["accuracy"] == pytest.approx(100 * 4 / 6)
    assert out["sentences"] == 3
    assert out["tokens"] == 6


def test_lm_metrics_two_sentences_differ_between_sentence_and_corpus_ppl() -> None:
    # one long easy sentence, one short hard one: corpus ppl weighs by tokens, paper ppl by sentence
    nll = [np.zeros(9), np.array([math.log(10)])]
    out = lm_metrics(nll, [np.ones(9, dtype=bool), np.zeros(1, dtype=bool)])
    assert out["ppl_sentence"] == pytest.approx((1.0 + 10.0) / 2)
    assert out["ppl_corpus"] == pytest.approx(10 ** (1 / 10))
    assert out["accuracy"] == pytest.approx(90.0)


def test_lm_metrics_of_nothing() -> None:
    out = lm_metrics([], [])
    assert out["sentences"] == 0 and out["tokens"] == 0 and math.isnan(out["ppl_corpus"])
    # sentences without any scored token (a model whose context holds a single token)
    out = lm_metrics([np.zeros(0), np.zeros(0)], [np.zeros(0, dtype=bool)] * 2)
    assert out["sentences"] == 2 and out["tokens"] == 0
    assert math.isnan(out["ppl_sentence"]) and math.isnan(out["accuracy"])


# ------------------------------------------------------------------ deciles


def test_decile_of_ten_values() -> None:
    ref = np.arange(1, 11, dtype=np.float64)
    assert decile_of(ref, ref).tolist() == list(range(10))


def test_decile_of_a_hundred_values() -> None:
    ref = np.arange(100, dtype=np.float64)
    assert decile_of(ref, ref).tolist() == (np.arange(100) // 10).tolist()
    assert np.bincount(decile_of(ref, ref), minlength=10).tolist() == [10] * 10


def test_decile_of_values_outside_the_reference() -> None:
    ref = np.arange(1, 11, dtype=np.float64)
    assert decile_of(np.array([-5.0, 0.0, 1.5, 10.0, 1e9]), ref).tolist() == [0, 0, 0, 9, 9]


def test_decile_of_a_constant_reference_is_the_top_decile() -> None:
    # every edge equals the constant: a value equal to it is above all edges
    ref = np.full(20, 3.0)
    assert decile_of(np.array([3.0, 2.0]), ref).tolist() == [9, 0]
