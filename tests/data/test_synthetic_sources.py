"""The embedded synthetic sources: determinism, layout, and the recorded true entropy/oracle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from farzi.data.prepare import PrepareOptions, prepare
from farzi.data.prepared import load_prepared
from farzi.data.synthetic import MarkovSpec, _transition, synthetic_lm, synthetic_rec
from farzi.errors import ConfigError

# the chain synthetic_lm builds (same spec, first draws of the seeded generator)
LM_SPEC = dict(rank=8, sharpness=3.0, zipf=1.0, eos_bias=2.5)
REC_SPEC = dict(rank=8, sharpness=3.0, zipf=1.0)


def lm_chain(seed: int, words: int) -> np.ndarray:
    return _transition(MarkovSpec(states=words, **LM_SPEC), np.random.default_rng(seed), with_eos=True)


def same(a, b) -> bool:
    return all(
        a[s].ids == b[s].ids and np.array_equal(a[s].offsets, b[s].offsets) and np.array_equal(a[s].tokens, b[s].tokens)
        for s in ("train", "valid", "test")
    )


# ---------------------------------------------------------------- synthetic-lm


def test_lm_is_deterministic_for_a_seed() -> None:
    v1, a, e1 = synthetic_lm(1, vocab_size=10, sentences=(40, 5, 5))
    v2, b, e2 = synthetic_lm(1, vocab_size=10, sentences=(40, 5, 5))
    _, c, _ = synthetic_lm(2, vocab_size=10, sentences=(40, 5, 5))
    assert v1 == v2 and e1 == e2 and same(a, b)
    assert not same(a, c)


def test_lm_layout() -> None:
    vocab, splits, _ = synthetic_lm(0, vocab_size=10, sentences=(60, 8, 9), max_length=12)
    assert vocab.tokens[:3] == ["<pad>", "<unk>", "<eos>"]
    assert vocab.tokens[3:] == [f"w{i:03d}" for i in range(10)]
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [60, 8, 9]
    for seqs in splits.values():
        for seq in seqs:
            assert seq[0] == 2 and seq[-1] == 2  # <eos> w1 .. wn <eos>
            body = seq[1:-1]
            assert 1 <= len(body) <= 11  # never empty; at most max_length - 1 words
            assert body.min() >= 3 and body.max() < len(vocab)  # no <pad>, <unk>, <eos> inside


def test_lm_recorded_entropy_is_the_stationary_entropy_rate() -> None:
    _, _, extra = synthetic_lm(5, vocab_size=3, sentences=(10, 1, 1))
    p = lm_chain(5, 3)
    pi = np.linalg.matrix_power(p, 4096)[0]  # brute-force stationary distribution
    assert np.allclose(pi @ p, pi, atol=1e-12)
    row_entropy = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=1)
    entropy = float(pi @ row_entropy)
    assert extra["true_entropy_nats"] == pytest.approx(entropy, abs=1e-6)
    assert extra["true_perplexity"] == pytest.approx(np.exp(entropy), abs=1e-4)
    for key in ("oracle_test_corpus_perplexity", "oracle_test_sentence_perplexity", "rank"):
        assert key in extra


def test_lm_entropy_matches_a_long_sample() -> None:
    """Plug-in bigram entropy of a long sample ~= recorded entropy rate ~= oracle test NLL."""
    _, splits, extra = synthetic_lm(5, vocab_size=3, sentences=(6000, 1, 6000))
    counts = np.zeros((4, 4))
    state = {2: 0, 3: 1, 4: 2, 5: 3}  # token id -> chain state (<eos> is state 0)
    for seq in splits["train"]:
        states = [state[t] for t in seq.tolist()]
        np.add.at(counts, (states[:-1], states[1:]), 1)
    total = counts.sum()
    rows = counts.sum(axis=1, keepdims=True)
    nz = counts > 0
    empirical = float(-(counts[nz] / total * np.log((counts / rows)[nz])).sum())
    assert empirical == pytest.approx(extra["true_entropy_nats"], abs=0.02)
    oracle_nll = np.log(extra["oracle_test_corpus_perplexity"])
    assert oracle_nll == pytest.approx(extra["true_entropy_nats"], abs=0.02)


def test_prepare_synthetic_lm_records_the_entropy(tmp_path: Path) -> None:
    opts = PrepareOptions(seed=3, synthetic_vocab=6, synthetic_sequences=40)
    ds = prepare("synthetic-lm", opts, home=tmp_path)
    loaded = load_prepared(tmp_path / "datasets" / "synthetic-lm")
    assert loaded.fingerprint() == ds.fingerprint()
    assert [len(loaded.splits[s]) for s in ("train", "valid", "test")] == [40, 5, 5]
    assert loaded.params == {
        "source": "synthetic-lm",
        "seed": 3,
        "synthetic_vocab": 6,
        "synthetic_sequences": 40,
    }
    for key in (
        "true_entropy_nats",
        "true_perplexity",
        "oracle_test_corpus_perplexity",
        "oracle_test_sentence_perplexity",
    ):
        assert loaded.extra[key] > 0
    again = prepare("synthetic-lm", opts, home=tmp_path / "other")
    assert again.fingerprint() == ds.fingerprint()


# ---------------------------------------------------------------- synthetic-rec


def test_rec_is_deterministic_for_a_seed() -> None:
    v1, a, e1 = synthetic_rec(4, items=50, users=30)
    v2, b, e2 = synthetic_rec(4, items=50, users=30)
    _, c, _ = synthetic_rec(5, items=50, users=30)
    assert v1 == v2 and e1 == e2 and same(a, b)
    assert not same(a, c)


def test_rec_layout() -> None:
    vocab, splits, _ = synthetic_rec(0, items=50, users=60, min_length=10, max_length=40)
    assert vocab.tokens == ["<pad>"] + [f"i{k:04d}" for k in range(50)]
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [48, 6, 6]
    ids = [set(splits[s].ids) for s in ("train", "valid", "test")]
    assert set.union(*ids) == {f"u{i}" for i in range(60)} and sum(map(len, ids)) == 60
    for seqs in splits.values():
        for seq in seqs:
            assert 10 <= len(seq) <= 40
            assert len(set(seq.tolist())) == len(seq)  # no repeated items
            assert seq.min() >= 1 and seq.max() <= 50


def test_rec_walks_are_capped_by_a_small_catalogue() -> None:
    _, splits, extra = synthetic_rec(0, items=12, users=20, min_length=10, max_length=40)
    for seqs in splits.values():
        for seq in seqs:
            assert 10 <= len(seq) <= 12 and len(set(seq.tolist())) == len(seq)
    assert np.isfinite(extra["oracle_test_nll"])


def test_rec_oracle_figures_match_the_true_chain() -> None:
    seed, items = 7, 50
    _, splits, extra = synthetic_rec(seed, items=items, users=60)
    p = _transition(MarkovSpec(states=items, **REC_SPEC), np.random.default_rng(seed), with_eos=False)
    hits, ndcg, nll = [], [], []
    for seq in splits["test"]:
        walk = (seq - 1).tolist()  # item ids are chain states + 1
        ctx, target = walk[:-1], walk[-1]
        q = p[ctx[-1]].copy()
        q[ctx] = 0.0
        q /= q.sum()
        rank = int((q > q[target]).sum() + (q == q[target]).sum() - 1)
        hits.append(rank < 10)
        ndcg.append(1 / np.log2(rank + 2) if rank < 10 else 0.0)
        nll.append(-np.log(q[target]))
    assert extra["oracle_test_hr@10"] == pytest.approx(np.mean(hits), abs=1e-4)
    assert extra["oracle_test_ndcg@10"] == pytest.approx(np.mean(ndcg), abs=1e-4)
    assert extra["oracle_test_nll"] == pytest.approx(np.mean(nll), abs=1e-4)
    assert 0.0 <= extra["oracle_test_hr@10"] <= 1.0


def test_prepare_synthetic_rec_records_the_oracle(tmp_path: Path) -> None:
    opts = PrepareOptions(seed=1, synthetic_vocab=40, synthetic_sequences=20)
    prepare("synthetic-rec", opts, home=tmp_path)
    loaded = load_prepared(tmp_path / "datasets" / "synthetic-rec")
    assert loaded.task == "rec" and loaded.vocab_size == 41
    assert [len(loaded.splits[s]) for s in ("train", "valid", "test")] == [16, 2, 2]
    for key in ("oracle_test_hr@10", "oracle_test_ndcg@10", "oracle_test_nll"):
        assert key in loaded.extra


@pytest.mark.parametrize(
    ("source", "opts", "flag"),
    [
        ("synthetic-lm", PrepareOptions(synthetic_vocab=0), "--synthetic-vocab 0"),
        ("synthetic-lm", PrepareOptions(synthetic_sequences=-5), "--synthetic-sequences -5"),
        ("synthetic-rec", PrepareOptions(synthetic_vocab=1), "--synthetic-vocab 1"),
        ("synthetic-rec", PrepareOptions(synthetic_sequences=5), "--synthetic-sequences 5"),
    ],
)
def test_too_small_synthetic_sizes_are_errors(tmp_path: Path, source, opts, flag) -> None:
    with pytest.raises(ConfigError, match=flag):
        prepare(source, opts, home=tmp_path)
    assert not (tmp_path / "datasets").exists()
