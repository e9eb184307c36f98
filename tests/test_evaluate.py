"""farzi.evaluate: the plumbing from a model's logits to the metrics.

The recommendation tests use test doubles whose scores are fixed (or a simple
function of the input), so every rank, HR and AUC is known in advance; the
language-model tests check the windowing of sentences longer than the model's
context.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from farzi.data.prepared import PreparedDataset
from farzi.data.sequences import Sequences
from farzi.data.vocab import Vocabulary
from farzi.errors import ConfigError
from farzi.evaluate import evaluate, evaluate_lm, evaluate_rec, sample_negatives, sentence_scores
from farzi.models import NEG_INF, ModelConfig, SequenceModel, build_model, make_config

# ------------------------------------------------------------------ test doubles


class IdScores(SequenceModel):
    """Scores item ``v`` with ``v`` at every position: a higher id always ranks higher."""

    name = "id-scores"
    task = "rec"

    def __init__(self, vocab_size: int, max_len: int = 50) -> None:
        super().__init__()
        self.config = ModelConfig(vocab_size=vocab_size, max_len=max_len)
        self.register_buffer("scores", torch.arange(vocab_size, dtype=torch.float32))

    def features(self, x: Tensor) -> Tensor:
        return torch.ones(x.shape[0], x.shape[1], 1)  # [B, L, 1]: score = table entry

    def output_table(self) -> Tensor:
        return self.scores.unsqueeze(1)  # [V, 1]


class NextId(SequenceModel):
    """Predicts item ``x_t + 1`` after ``x_t`` (score 1, everything else 0)."""

    name = "next-id"
    task = "rec"

    def __init__(self, vocab_size: int, max_len: int = 50) -> None:
        super().__init__()
        self.config = ModelConfig(vocab_size=vocab_size, max_len=max_len)

    def features(self, x: Tensor) -> Tensor:
        return F.one_hot((x + 1) % self.config.vocab_size, self.config.vocab_size).float()  # [B, L, V]

    def output_table(self) -> Tensor:
        return torch.eye(self.config.vocab_size)  # [V, V]


class Bigram(SequenceModel):
    """Logits depend on the current token only: no position, no history (``table[x]``, <pad> at NEG_INF)."""

    name = "bigram"
    task = "lm"

    def __init__(self, table: Tensor, max_len: int) -> None:
        super().__init__()
        self.config = ModelConfig(vocab_size=table.shape[0], max_len=max_len)
        self.table = nn.Parameter(table.clone())
        with torch.no_grad():
            self.table[:, 0] = NEG_INF  # as every model: <pad> is never predicted

    def features(self, x: Tensor) -> Tensor:
        return F.one_hot(x, self.config.vocab_size).to(self.table.dtype)  # [B, L, V]

    def output_table(self) -> Tensor:
        return self.table.t()  # one_hot(x) @ table.t().t() = table[x]


def toy_rec() -> PreparedDataset:
    """Six items (ids 1..6); three scorable test users and one without a context."""
    vocab = Vocabulary(tokens=["<pad>"] + [f"i{i}" for i in range(1, 7)], specials={"<pad>": 0})
    train = Sequences.from_lists(["a", "b", "c"], [[1, 2, 3], [2, 2, 4], [2, 5]])
    valid = Sequences.from_lists(["d"], [[1, 3]])
    test = Sequences.from_lists(
        ["u0", "u1", "u2", "u3"],
        [
            [3, 5, 2],  # context {3, 5}, target 2
            [2, 4, 5, 4],  # context {2, 4, 5}, target 4 (a repeat)
            [1, 6],  # context {1}, target 6
            [4],  # no context: not evaluated
        ],
    )
    return PreparedDataset(name="toy", task="rec", vocab=vocab, splits={"train": train, "valid": valid, "test": test})


# ------------------------------------------------------------------ recommendation, by hand


@pytest.mark.parametrize("mask", [True, False])
def test_toy_ranks_by_hand(mask: bool) -> None:
    ds = toy_rec()
    out = evaluate(IdScores(ds.vocab_size), ds, "test", ks=(1, 2, 3, 10), mask_context=mask)
    if mask:
        # u0: negatives {1, 4, 6} -> rank 2, AUC 1/3; u1: {1, 3, 6} -> rank 1, AUC 2/3; u2: rank 0, AUC 1
        ranks, aucs = [2, 1, 0], [1 / 3, 2 / 3, 1.0]
    else:
        # u0: negatives {1, 3, 4, 5, 6} -> rank 4, AUC 1/5; u1: {1, 2, 3, 5, 6} -> rank 2, AUC 3/5; u2: 0, 1
        ranks, aucs = [4, 2, 0], [1 / 5, 3 / 5, 1.0]
    assert out["users"] == 3
    for k in (1, 2, 3, 10):
        assert out[f"hr@{k}"] == pytest.approx(100 * sum(r < k for r in ranks) / 3)
        assert out[f"ndcg@{k}"] == pytest.approx(100 * sum(1 / math.log2(r + 2) for r in ranks if r < k) / 3)
    assert out["auc"] == pytest.approx(sum(aucs) / 3)
    assert out["split"] == "test"


def test_toy_constant_scores_rank_last() -> None:
    ds = toy_rec()
    model = IdScores(ds.vocab_size)
    model.scores.zero_()
    out = evaluate_rec(model, ds, "test", ks=(1, 100))
    assert out["hr@1"] == 0.0
    assert out["hr@100"] == 100.0  # k beyond the item count
    assert out["auc"] == pytest.approx(0.5)


# ------------------------------------------------------------------ recommendation on tiny_rec


def _expected_id_scores(ds: PreparedDataset, mask: bool) -> tuple[np.ndarray, np.ndarray]:
    """Ranks and AUCs of IdScores, counted item by item."""
    items = range(ds.vocab.num_specials, ds.vocab_size)
    ranks, aucs = [], []
    for seq in ds.test:
        ctx, target = {int(t) for t in seq[:-1]}, int(seq[-1])
        negatives = [j for j in items if j != target and not (mask and j in ctx)]
        ranks.append(sum(j > target for j in negatives))
        aucs.append(sum(j < target for j in negatives) / len(negatives))
    return np.array(ranks), np.array(aucs)


@pytest.mark.parametrize("mask", [True, False])
def test_tiny_rec_with_fixed_scores(tiny_rec: PreparedDataset, mask: bool) -> None:
    ranks, aucs = _expected_id_scores(tiny_rec, mask)
    out = evaluate(IdScores(tiny_rec.vocab_size), tiny_rec, "test", ks=(5, 10, 100), mask_context=mask)
    assert out["users"] == len(tiny_rec.test)
    for k in (5, 10, 100):
        assert out[f"hr@{k}"] == pytest.approx(100 * np.mean(ranks < k))
        assert out[f"ndcg@{k}"] == pytest.approx(100 * np.mean(np.where(ranks < k, 1 / np.log2(ranks + 2), 0)))
    assert out["hr@100"] == 100.0  # 40 items
    assert out["auc"] == pytest.approx(aucs.mean())


def test_context_masking_lowers_ranks(tiny_rec: PreparedDataset) -> None:
    on, _ = _expected_id_scores(tiny_rec, True)
    off, _ = _expected_id_scores(tiny_rec, False)
    assert (on <= off).all() and (on < off).any()
    model = IdScores(tiny_rec.vocab_size)
    with_mask = evaluate(model, tiny_rec, "test", ks=(10,), mask_context=True)
    without = evaluate(model, tiny_rec, "test", ks=(10,), mask_context=False)
    assert with_mask["ndcg@10"] >= without["ndcg@10"]
    assert with_mask["auc"] != without["auc"]


def test_scores_are_read_at_each_users_last_context_item(tiny_rec: PreparedDataset) -> None:
    # contexts of different lengths are padded together: a hit needs the right position
    model = NextId(tiny_rec.vocab_size)
    hits = [int(s[-1]) == (int(s[-2]) + 1) % tiny_rec.vocab_size for s in tiny_rec.valid]
    out = evaluate_rec(model, tiny_rec, "valid", ks=(1,), mask_context=False, batch_size=3)
    assert out["hr@1"] == pytest.approx(100 * np.mean(hits))


def test_contexts_longer_than_max_len_use_the_most_recent_items(tiny_rec: PreparedDataset) -> None:
    full = evaluate_rec(NextId(tiny_rec.vocab_size, max_len=200), tiny_rec, "test", ks=(1, 10))
    short = evaluate_rec(NextId(tiny_rec.vocab_size, max_len=2), tiny_rec, "test", ks=(1, 10))
    assert {k: short[k] for k in ("hr@1", "hr@10", "auc")} == {k: full[k] for k in ("hr@1", "hr@10", "auc")}


def test_popularity_strata(tiny_rec: PreparedDataset) -> None:
    out = evaluate(IdScores(tiny_rec.vocab_size), tiny_rec, "test", ks=(10,), stratify="popularity")
    strata = out["strata"]
    assert set(strata) == {"item_popularity", "user_activity"}
    for key, rows in strata.items():
        assert [r["decile"] for r in rows] == list(range(1, 11)), key
        assert sum(r["users"] for r in rows) == out["users"], key
        # the per-decile metrics average back to the overall ones
        weighted = sum(r["users"] * r["hr@10"] for r in rows if r["users"])
        assert weighted / out["users"] == pytest.approx(out["hr@10"]), key
        for r in rows:
            if r["users"]:
                lo, hi = r["range"]
                assert lo <= hi


def test_bad_requests(tiny_rec: PreparedDataset, tiny_lm: PreparedDataset) -> None:
    model = IdScores(tiny_rec.vocab_size)
    with pytest.raises(ConfigError, match="unknown stratification"):
        evaluate(model, tiny_rec, "test", stratify="length")
    with pytest.raises(ConfigError, match="unknown split"):
        evaluate(model, tiny_rec, "dev")
    with pytest.raises(ConfigError, match="rec model"):
        evaluate(model, tiny_lm, "test")
    lm = Bigram(torch.zeros(tiny_lm.vocab_size, tiny_lm.vocab_size), max_len=8)
    with pytest.raises(ConfigError, match="recommendation datasets only"):
        evaluate(lm, tiny_lm, "test", stratify="popularity")


# ------------------------------------------------------------------ language modeling: windows


@pytest.mark.parametrize("max_len", [2, 3, 5, 8])
def test_long_sentences_score_every_token_once(tiny_lm: PreparedDataset, max_len: int) -> None:
    seqs = list(tiny_lm.test)
    assert max(len(s) for s in seqs) > 4 * max_len  # windowing is exercised
    g = torch.Generator().manual_seed(0)
    table = torch.randn(tiny_lm.vocab_size, tiny_lm.vocab_size, generator=g)
    model = Bigram(table, max_len)
    nll, hits = sentence_scores(model, seqs, batch_size=7)
    logp = F.log_softmax(model.table.detach(), dim=-1)
    assert len(nll) == len(seqs)
    for s, n, h in zip(seqs, nll, hits, strict=True):
        assert len(n) == len(h) == len(s) - 1  # every target exactly once
        want = np.array([-logp[s[t], s[t + 1]].item() for t in range(len(s) - 1)])
        np.testing.assert_allclose(n, want, rtol=1e-5, atol=1e-6)
        assert h.tolist() == [int(logp[s[t]].argmax()) == s[t + 1] for t in range(len(s) - 1)]


def test_windowed_metrics_equal_one_long_window_for_a_position_free_model(tiny_lm: PreparedDataset) -> None:
    table = torch.randn(tiny_lm.vocab_size, tiny_lm.vocab_size, generator=torch.Generator().manual_seed(1))
    short = evaluate_lm(Bigram(table, 4), tiny_lm, "test")
    long = evaluate_lm(Bigram(table, 1000), tiny_lm, "test")
    assert short["tokens"] == long["tokens"] == sum(len(s) - 1 for s in tiny_lm.test)
    assert short["sentences"] == long["sentences"] == len(tiny_lm.test)
    for key in ("ppl_sentence", "ppl_corpus", "accuracy", "nll"):
        assert short[key] == pytest.approx(long[key], rel=1e-6)


def test_rnn_windows_count_each_token_once(tiny_lm: PreparedDataset) -> None:
    # an RNN has no positions, so one state dict serves both context lengths; a window
    # restarts the recurrence, so only the first window's tokens score identically
    max_len = 6
    torch.manual_seed(0)
    cfg = make_config("rnn", tiny_lm.vocab_size, d_model=8, d_hidden=8, dropout=0.0, max_len=max_len)
    short = build_model("rnn", cfg).eval()
    long = build_model("rnn", {**cfg.to_dict(), "max_len": 1000}).eval()
    long.load_state_dict(short.state_dict())
    seqs = list(tiny_lm.test)
    nll_s, _ = sentence_scores(short, seqs)
    nll_l, _ = sentence_scores(long, seqs)
    for s, a, b in zip(seqs, nll_s, nll_l, strict=True):
        assert len(a) == len(b) == len(s) - 1
        np.testing.assert_allclose(a[: max_len - 1], b[: max_len - 1], rtol=1e-5, atol=1e-6)
    out = evaluate_lm(short, tiny_lm, "test")
    assert out["tokens"] == sum(len(s) - 1 for s in seqs)
    assert math.isfinite(out["ppl_corpus"]) and out["ppl_corpus"] > 1


# ------------------------------------------------------------------ the features path, on real models


def _no_forward(model: SequenceModel) -> SequenceModel:
    def refuse(x: Tensor) -> Tensor:
        raise AssertionError("evaluation must not build [B, L, V] logits through forward")

    model.forward = refuse  # type: ignore[method-assign]
    return model


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_rec_scores_are_the_logits_at_the_last_position(tiny_rec: PreparedDataset, name: str) -> None:
    from farzi.evaluate import rec_scores

    torch.manual_seed(0)
    model = build_model(name, make_config(name, tiny_rec.vocab_size, d_model=8, dropout=0.0, max_len=6)).eval()
    contexts = [s[:-1] for s in tiny_rec.test if len(s) >= 2]
    want = []
    with torch.no_grad():
        for c in contexts:
            want.append(model(torch.from_numpy(c[-6:].astype(np.int64))[None])[0, -1])
    got = rec_scores(_no_forward(model), contexts, batch_size=5)
    torch.testing.assert_close(got, torch.stack(want), rtol=1e-5, atol=1e-5)
    assert evaluate_rec(model, tiny_rec, "test")["users"] == len(contexts)


@pytest.mark.parametrize("name", ["transformer", "rnn"])
def test_sentence_scores_are_the_log_softmax_of_the_logits(tiny_lm: PreparedDataset, name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, make_config(name, tiny_lm.vocab_size, d_model=8, dropout=0.0, max_len=64)).eval()
    seqs = [s for s in tiny_lm.test if len(s) >= 2]
    assert max(len(s) for s in seqs) <= 64  # one window per sentence: the plain computation below applies
    with torch.no_grad():
        want = []
        for s in seqs:
            x = torch.from_numpy(s.astype(np.int64))[None]
            logp = F.log_softmax(model(x)[0, :-1], -1)
            want.append((-logp.gather(1, x[0, 1:, None]).squeeze(1)).numpy())
    nll, hits = sentence_scores(_no_forward(model), seqs, batch_size=4)
    for a, b in zip(nll, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert sum(len(h) for h in hits) == sum(len(s) - 1 for s in seqs)


# ------------------------------------------------------------------ sampled negatives


def test_every_allowed_item_as_negative_ranks_as_the_masked_full_ranking() -> None:
    ds = toy_rec()  # u0 may draw {1, 4, 6}, u1 {1, 3, 6}, u2 {2, 3, 4, 5}
    full = evaluate(IdScores(ds.vocab_size), ds, "test", ks=(1, 2, 3))
    sampled = evaluate(IdScores(ds.vocab_size), ds, "test", ks=(1, 2, 3), negatives=3)
    # u0 and u1 take all three of theirs; u2's target (6) outranks whichever three it draws
    assert [sampled[k] for k in ("hr@1", "hr@2", "hr@3", "auc")] == [full[k] for k in ("hr@1", "hr@2", "hr@3", "auc")]
    assert full["ranking"] == "full"
    assert sampled["ranking"] == "3 uniform negatives, seed 0"


def test_negatives_exclude_target_context_and_specials_and_repeat_with_the_seed() -> None:
    ds = toy_rec()
    contexts = [np.array([3, 5]), np.array([2, 4, 5]), np.array([1])]
    targets = np.array([2, 4, 6])
    a = sample_negatives(ds, contexts, targets, 2, "uniform", seed=5)
    assert a.shape == (3, 2)
    for row, c, t in zip(a, contexts, targets, strict=True):
        assert len(set(row)) == 2 and not set(row) & ({int(t), 0} | set(c.tolist()))
    assert np.array_equal(a, sample_negatives(ds, contexts, targets, 2, "uniform", seed=5))
    draws = {tuple(sample_negatives(ds, contexts, targets, 2, "uniform", seed=s)[2]) for s in range(20)}
    assert len(draws) > 1  # the seed matters


def test_popularity_negatives_follow_the_training_frequency() -> None:
    vocab = Vocabulary(tokens=["<pad>"] + [f"i{i}" for i in range(1, 11)], specials={"<pad>": 0})
    train = Sequences.from_lists(["a"], [[1] * 97 + [2, 3]])  # counts + 1: item 1 98, items 2-3 2, others 1
    test = Sequences.from_lists([f"u{i}" for i in range(400)], [[10, 9]] * 400)
    ds = PreparedDataset(name="pop", task="rec", vocab=vocab, splits={"train": train, "valid": test, "test": test})
    ctx, tgt = [np.array([10])] * 400, np.full(400, 9)
    pop = sample_negatives(ds, ctx, tgt, 1, "popularity", seed=0)[:, 0]
    uni = sample_negatives(ds, ctx, tgt, 1, "uniform", seed=0)[:, 0]
    # item 1 holds 98 of the 106 units of weight among items 1-8 (p 0.92); uniformly 1 in 8
    assert (pop == 1).mean() > 0.85 and (uni == 1).mean() < 0.25


def test_bad_negatives_are_refused() -> None:
    ds = toy_rec()
    with pytest.raises(ConfigError, match="--negatives 4 is more than the 3 items"):
        evaluate(IdScores(ds.vocab_size), ds, "test", negatives=4)
    with pytest.raises(ConfigError, match="negative"):
        evaluate(IdScores(ds.vocab_size), ds, "test", negatives=-1)
    with pytest.raises(ConfigError, match="unknown negative sampling"):
        evaluate(IdScores(ds.vocab_size), ds, "test", negatives=2, negative_sampling="zipf")
