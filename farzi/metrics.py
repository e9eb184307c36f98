"""Evaluation metrics.

Recommendation (full ranking over the item set, no sampled negatives):

* the *rank* of the target is the number of candidate items scored **at least
  as high** as the target, the target itself excluded (0 = top). Ties count
  against the target, so a constant scorer gets no free hits.
* HR@k = 1 if rank < k; nDCG@k = 1 / log2(rank + 2) if rank < k, else 0
  (one relevant item, so the ideal DCG is 1).
* NLL = -log softmax(scores over the candidates)[target], a smooth score
  (lower is better);
* AUC = (#negatives scored below the target + 0.5 * #negatives tied with it)
  / #negatives: the Mann-Whitney statistic, ties counted half.

Candidates are all items except the special tokens and, when context masking is
on (the default), the items already in the user's context — except the target
itself, which always stays a candidate (a repeat consumption is still scored).

Language modeling:

* ``ppl_sentence``: mean over sentences of exp(mean token NLL of the sentence),
  the paper's perplexity;
* ``ppl_corpus``: exp(total NLL / total tokens), the usual corpus perplexity;
* ``accuracy``: share of tokens whose argmax prediction is the target.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def target_ranks(scores: Tensor, targets: Tensor, candidates: Tensor) -> tuple[Tensor, Tensor]:
    """Rank and AUC of each row's target among its candidates.

    scores [N, V] float, targets [N] int64, candidates [N, V] bool (the target's
    own entry is treated as a candidate whatever it says). Returns (rank [N]
    int64, auc [N] float64).
    """
    n = scores.shape[0]
    rows = torch.arange(n, device=scores.device)
    cand = candidates.clone()
    cand[rows, targets] = False  # negatives only
    tgt = scores[rows, targets].unsqueeze(1)  # [N, 1]
    higher_or_tied = ((scores >= tgt) & cand).sum(1)
    lower = ((scores < tgt) & cand).sum(1).double()
    tied = ((scores == tgt) & cand).sum(1).double()
    n_neg = cand.sum(1).double()
    auc = torch.where(n_neg > 0, (lower + 0.5 * tied) / n_neg.clamp_min(1), torch.ones_like(n_neg))
    return higher_or_tied.long(), auc


def target_nll(scores: Tensor, targets: Tensor, candidates: Tensor) -> Tensor:
    """-log softmax probability of each row's target among its candidates (the target included): [N].

    A smooth companion to the rank metrics, e.g. for early stopping on few users.
    """
    rows = torch.arange(scores.shape[0], device=scores.device)
    cand = candidates.clone()
    cand[rows, targets] = True
    logz = torch.logsumexp(scores.double().masked_fill(~cand, float("-inf")), dim=1)
    return logz - scores[rows, targets].double()


def hit_rate(ranks: Tensor | np.ndarray, k: int) -> np.ndarray:
    r = np.asarray(ranks)
    return (r < k).astype(np.float64)


def ndcg(ranks: Tensor | np.ndarray, k: int) -> np.ndarray:
    r = np.asarray(ranks).astype(np.float64)
    return np.where(r < k, 1.0 / np.log2(r + 2.0), 0.0)


def rank_metrics(ranks: np.ndarray, auc: np.ndarray, ks: tuple[int, ...]) -> dict[str, float]:
    """Mean HR@k, nDCG@k (in percent, as the paper reports) and AUC over users."""
    out: dict[str, float] = {}
    for k in ks:
        out[f"hr@{k}"] = 100.0 * float(hit_rate(ranks, k).mean()) if len(ranks) else float("nan")
        out[f"ndcg@{k}"] = 100.0 * float(ndcg(ranks, k).mean()) if len(ranks) else float("nan")
    out["auc"] = float(np.mean(auc)) if len(auc) else float("nan")
    out["users"] = int(len(ranks))
    return out


def lm_metrics(sentence_nll: list[np.ndarray], sentence_correct: list[np.ndarray]) -> dict[str, float]:
    """Perplexities and accuracy from per-sentence token NLLs and argmax hits."""
    if not sum(len(s) for s in sentence_nll):  # nothing scored (no sentence, or no target in any)
        return {
            "ppl_sentence": float("nan"),
            "ppl_corpus": float("nan"),
            "accuracy": float("nan"),
            "nll": float("nan"),
            "sentences": len(sentence_nll),
            "tokens": 0,
        }
    total = sum(float(s.sum()) for s in sentence_nll)
    count = sum(len(s) for s in sentence_nll)
    per_sentence = [_exp(float(s.mean())) for s in sentence_nll if len(s)]
    correct = sum(float(c.sum()) for c in sentence_correct)
    return {
        "ppl_sentence": float(np.mean(per_sentence)),
        "ppl_corpus": _exp(total / count),
        "accuracy": 100.0 * correct / count,
        "nll": total / count,
        "sentences": len(sentence_nll),
        "tokens": int(count),
    }


def decile_of(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Decile (0 = least popular .. 9 = most) of each value within ``reference``.

    Deciles are cut at the reference's 10 %, 20 %, ... quantiles, so each
    decile holds about a tenth of the reference population.
    """
    edges = np.quantile(reference, np.linspace(0.1, 0.9, 9))
    return np.searchsorted(edges, values, side="right").clip(0, 9)


def _exp(x: float) -> float:
    """``exp(x)``, infinite where it overflows (a diverged model's perplexity) rather than an error."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf
