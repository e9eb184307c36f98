"""The embedded default datasets: seeded low-rank Markov sources with known entropy.

``synthetic-lm``: sentences from a first-order Markov chain over words and
``<eos>``; the transition matrix is ``softmax(U V^T * sharpness + log popularity)``
with a Zipf popularity skew and rank ``rank``. Every sentence starts from the
``<eos>`` state. The chain's entropy rate (expected next-token NLL of the true
source, in nats) is computed exactly from its stationary distribution and
recorded in the manifest: no model can beat ``exp(entropy)`` perplexity in
expectation.

``synthetic-rec``: users walk a Markov chain over items of the same form without
repeating an item; the oracle's next-item distribution (the true chain
renormalized over unseen items) gives the best possible test metrics, recorded
beside the data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from farzi.data.sequences import Sequences
from farzi.data.vocab import LM_SPECIALS, Vocabulary, build_item_vocab


@dataclass(frozen=True)
class MarkovSpec:
    states: int  # number of word/item states (without <eos>)
    rank: int = 8
    sharpness: float = 3.0
    zipf: float = 1.0
    eos_bias: float = 0.0  # extra log-odds of ending a sentence (LM only)


def _transition(spec: MarkovSpec, rng: np.random.Generator, with_eos: bool) -> np.ndarray:
    n = spec.states + (1 if with_eos else 0)
    u = rng.standard_normal((n, spec.rank)) / np.sqrt(spec.rank)
    v = rng.standard_normal((n, spec.rank)) / np.sqrt(spec.rank)
    pop = 1.0 / np.arange(1, n + 1) ** spec.zipf
    pop = pop[rng.permutation(n)]
    logits = spec.sharpness * (u @ v.T) + np.log(pop)[None, :]
    if with_eos:
        logits[:, 0] += spec.eos_bias  # state 0 is <eos>
        logits[0, 0] = -np.inf  # no empty sentences
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def _entropy_rows(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = np.where(p > 0, np.log(p), 0.0)
    return -(p * logp).sum(axis=1)


def _stationary(p: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eig(p.T)
    k = int(np.argmin(np.abs(vals - 1.0)))
    pi = np.real(vecs[:, k])
    pi = np.abs(pi)
    return pi / pi.sum()


def synthetic_lm(
    seed: int,
    vocab_size: int = 200,
    sentences: tuple[int, int, int] = (2000, 250, 250),
    rank: int = 8,
    max_length: int = 60,
) -> tuple[Vocabulary, dict[str, Sequences], dict]:
    rng = np.random.default_rng(seed)
    spec = MarkovSpec(states=vocab_size, rank=rank, sharpness=3.0, zipf=1.0, eos_bias=2.5)
    p = _transition(spec, rng, with_eos=True)  # state 0 = <eos>, states 1.. = words
    words = [f"w{i:03d}" for i in range(vocab_size)]
    tokens = list(LM_SPECIALS) + words
    specials = {t: i for i, t in enumerate(LM_SPECIALS)}
    vocab = Vocabulary(tokens=tokens, specials=specials)
    eos_id = specials["<eos>"]
    # token id of chain state s: <eos> for 0, else the word's id
    state_to_id = np.array([eos_id] + [len(LM_SPECIALS) + i for i in range(vocab_size)], dtype=np.int32)
    cum = np.cumsum(p, axis=1)
    splits: dict[str, Sequences] = {}
    nll_sum, n_tok, sent_ppl = 0.0, 0, []
    for name, count in zip(("train", "valid", "test"), sentences, strict=True):
        seqs = []
        for _ in range(count):
            state, states = 0, [0]
            while True:
                nxt = int(np.searchsorted(cum[state], rng.random() * cum[state, -1], side="right"))
                nxt = min(nxt, p.shape[1] - 1)
                if len(states) >= max_length and nxt != 0:
                    nxt = 0  # cap the length: force the end of the sentence
                states.append(nxt)
                state = nxt
                if nxt == 0:
                    break
            seqs.append(states)
            if name == "test":
                s = np.array(states)
                nll = -np.log(p[s[:-1], s[1:]])
                nll_sum += float(nll.sum())
                n_tok += len(nll)
                sent_ppl.append(float(np.exp(nll.mean())))
        splits[name] = Sequences.from_lists(
            [f"{name}-{i}" for i in range(count)], [state_to_id[s].tolist() for s in seqs]
        )
    pi = _stationary(p)
    entropy = float((pi * _entropy_rows(p)).sum())
    extra = {
        "source": "low-rank Markov chain over words and <eos> (Zipf popularity skew)",
        "true_entropy_nats": round(entropy, 6),
        "true_perplexity": round(float(np.exp(entropy)), 4),
        "oracle_test_corpus_perplexity": round(float(np.exp(nll_sum / n_tok)), 4),
        "oracle_test_sentence_perplexity": round(float(np.mean(sent_ppl)), 4),
        "rank": rank,
    }
    return vocab, splits, extra


def synthetic_rec(
    seed: int,
    items: int = 300,
    users: int = 1000,
    min_length: int = 10,
    max_length: int = 40,
    rank: int = 8,
) -> tuple[Vocabulary, dict[str, Sequences], dict]:
    rng = np.random.default_rng(seed)
    spec = MarkovSpec(states=items, rank=rank, sharpness=3.0, zipf=1.0)
    p = _transition(spec, rng, with_eos=False)
    start = 1.0 / np.arange(1, items + 1) ** spec.zipf
    start = start[rng.permutation(items)]
    start /= start.sum()
    seqs = []
    for _ in range(users):
        # a walk without repeats cannot outgrow the catalogue
        length = min(int(rng.integers(min_length, max_length + 1)), items)
        seen = np.zeros(items, dtype=bool)
        cur = int(rng.choice(items, p=start))
        walk = [cur]
        seen[cur] = True
        while len(walk) < length:
            q = np.where(seen, 0.0, p[cur])
            cur = int(rng.choice(items, p=q / q.sum()))
            walk.append(cur)
            seen[cur] = True
        seqs.append(walk)
    n_valid = round(0.1 * users)
    n_test = round(0.1 * users)
    perm = rng.permutation(users)
    parts = {
        "train": np.sort(perm[: users - n_valid - n_test]),
        "valid": np.sort(perm[users - n_valid - n_test : users - n_test]),
        "test": np.sort(perm[users - n_test :]),
    }
    splits = {
        name: Sequences.from_lists([f"u{i}" for i in idx], [[x + 1 for x in seqs[i]] for i in idx])
        for name, idx in parts.items()
    }
    # oracle on the test users: the true next-item distribution over unseen items
    hits10, ndcg10, nll = [], [], []
    for i in parts["test"]:
        walk = seqs[i]
        ctx, target = walk[:-1], walk[-1]
        q = p[ctx[-1]].copy()
        q[ctx] = 0.0
        q /= q.sum()
        rank_ = int((q > q[target]).sum() + ((q == q[target]).sum() - 1))  # ties count against
        hits10.append(float(rank_ < 10))
        ndcg10.append(1.0 / np.log2(rank_ + 2) if rank_ < 10 else 0.0)
        nll.append(-float(np.log(q[target])))
    vocab = build_item_vocab([f"i{k:04d}" for k in range(items)])
    extra = {
        "source": "low-rank Markov chain over items without repeats (Zipf popularity skew)",
        "oracle_test_hr@10": round(float(np.mean(hits10)), 4),
        "oracle_test_ndcg@10": round(float(np.mean(ndcg10)), 4),
        "oracle_test_nll": round(float(np.mean(nll)), 4),
        "rank": rank,
    }
    return vocab, splits, extra
