"""Evaluate a model on a prepared dataset's split (metrics in farzi.metrics)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from farzi.batching import pad_right
from farzi.data.prepared import PreparedDataset
from farzi.errors import ConfigError
from farzi.metrics import decile_of, lm_metrics, rank_metrics, target_nll, target_ranks
from farzi.models import SequenceModel, score_targets
from farzi.models.base import tied_logits
from farzi.models.loss import scored_positions
from farzi.progress import ProgressFn, report

NEGATIVE_SAMPLING = ("uniform", "popularity")

HIGHER_IS_BETTER = {"hr", "hr_all", "ndcg", "auc", "accuracy"}  # nll, xent, ppl_*: lower is better


def metric_is_higher_better(metric: str) -> bool:
    return metric.split("@")[0] in HIGHER_IS_BETTER


# what validation reports (``evaluate(model, ds, "valid")`` at its default cutoffs), by task
VALIDATION_METRICS = {
    "rec": ("xent", "nll", "auc", "hr@10", "hr@100", "ndcg@10", "ndcg@100", "hr_all@10"),
    "lm": ("ppl_corpus", "ppl_sentence", "nll", "accuracy"),
}


def check_metric(metric: str, task: str) -> None:
    """Refuse (``ConfigError``) an early-stopping metric validation does not report for ``task``
    ("" is the default, :func:`default_metric`)."""
    known = VALIDATION_METRICS.get(task, ())
    if metric and metric not in known:
        shown = metric if len(metric) <= 40 else metric[:37] + "..."
        raise ConfigError(
            f"--metric {shown!r} is not a validation metric of a {task} dataset",
            f"use one of: {', '.join(known)} (default {default_metric(task)})",
        )


def default_metric(task: str) -> str:
    """What a student selects its best state on: the validation cross-entropy of every target.

    Chosen by measurement (bench ``student-selection``): on ML-100k's 94 validation users HR@10
    moves by about 4 points between evaluations of the same run, so a student stopped on it keeps a
    state picked by noise; the cross-entropy over all of their items is smooth and ranks runs the
    same way as the test figures. For text the corpus perplexity is that same quantity.
    """
    return "xent" if task == "rec" else "ppl_corpus"


@torch.no_grad()
def rec_score_batches(
    model: SequenceModel,
    contexts: list[np.ndarray],
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> Iterator[torch.Tensor]:
    """Scores over all items for the next item after each context, a batch of users at a time: [b, V] (cpu).

    Only each context's last position reaches the output layer (``model.features``,
    then one [b, d] @ [d, V]); no [B, L, V] logits.
    """
    max_len = model.config.max_len
    table = model.output_table()  # [V, d]
    for i in range(0, len(contexts), batch_size):
        chunk = [c[-max_len:] for c in contexts[i : i + batch_size]]
        x = pad_right(chunk).to(device)  # [b, L]
        last = torch.tensor([len(c) - 1 for c in chunk], device=device)
        h = model.features(x)[torch.arange(len(chunk), device=device), last]  # [b, d]
        yield tied_logits(h, table).float().cpu()  # [b, V]


def rec_scores(
    model: SequenceModel,
    contexts: list[np.ndarray],
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Scores over all items for the next item after each context: [N, V] (cpu)."""
    out = list(rec_score_batches(model, contexts, batch_size, device))
    return torch.cat(out) if out else torch.zeros(0, model.config.vocab_size)


def sample_negatives(
    ds: PreparedDataset,
    contexts: list[np.ndarray],
    targets: np.ndarray,
    n: int,
    sampling: str = "uniform",
    seed: int = 0,
) -> np.ndarray:
    """``n`` negative items per user, ``[users, n]`` int64: distinct, none the user's target or context item
    (nor a special token), drawn uniformly or in proportion to the item's training frequency
    (``popularity``), without replacement, from one generator seeded by ``seed`` and walked in split
    order, so every model evaluated with the same seed ranks each user's target among the same items.
    """
    if sampling not in NEGATIVE_SAMPLING:
        raise ConfigError(f"unknown negative sampling {sampling!r}", f"use one of {', '.join(NEGATIVE_SAMPLING)}")
    specials, vocab = ds.vocab.num_specials, ds.vocab_size
    items = np.arange(specials, vocab)
    weight = np.ones(len(items))
    if sampling == "popularity":  # training count + 1: every item drawable
        weight += np.bincount(ds.train.tokens, minlength=vocab)[specials:]
    rng = np.random.default_rng(seed)
    out = np.zeros((len(contexts), n), dtype=np.int64)
    for u, (context, target) in enumerate(zip(contexts, targets, strict=True)):
        seen = np.union1d(context.astype(np.int64), [int(target)])
        allowed = np.ones(len(items), dtype=bool)
        allowed[seen[seen >= specials] - specials] = False
        if allowed.sum() < n:
            raise ConfigError(
                f"--negatives {n} is more than the {int(allowed.sum())} items user {u} has not interacted with",
                "ask for fewer negatives, or use full ranking (--negatives 0)",
            )
        p = weight * allowed
        out[u] = rng.choice(items, size=n, replace=False, p=p / p.sum())
    return out


def evaluate_rec(
    model: SequenceModel,
    ds: PreparedDataset,
    split: str = "test",
    ks: tuple[int, ...] = (10, 100),
    mask_context: bool = True,
    stratify: str | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    per_unit: bool = False,
    negatives: int = 0,
    negative_sampling: str = "uniform",
    negative_seed: int = 0,
) -> dict[str, Any]:
    """Ranking metrics; users are scored ``batch_size`` at a time, so memory holds [batch, V], not [N, V].

    By default each target is ranked among every item (full ranking; the user's context items
    excluded with ``mask_context``). ``negatives=n`` ranks it among ``n`` sampled items instead
    (:func:`sample_negatives`: ``uniform`` or ``popularity``, seeded by ``negative_seed``), the
    protocol of papers that sample 100 negatives; the result's ``ranking`` says which was used.

    Besides the target's rank metrics and NLL, ``xent`` is the next-item cross-entropy and
    ``hr_all@10`` the hit rate at 10 over every position of each user's most recent ``max_len``
    items (context and target, teacher-forced, no context masking): many more predictions than
    one target per user, so steadier validation signals. ``per_unit=True`` adds
    every user's figures (in split order), for paired comparisons.
    """
    seqs = ds.splits[split]
    keep = [i for i in range(len(seqs)) if len(seqs[i]) >= 2]
    contexts = [seqs[i][:-1] for i in keep]
    targets = torch.tensor([int(seqs[i][-1]) for i in keep], dtype=torch.long)
    sampled = (
        torch.from_numpy(sample_negatives(ds, contexts, targets.numpy(), negatives, negative_sampling, negative_seed))
        if negatives
        else None
    )  # [N, n]
    was_training = model.training
    model.eval()
    ranks_parts, auc_parts, nll_parts = [], [], []
    for b, scores in enumerate(rec_score_batches(model, contexts, batch_size, device)):
        lo = b * batch_size
        rows = range(lo, lo + scores.shape[0])
        tgt = targets[lo : lo + scores.shape[0]]
        if sampled is not None:  # the target and its sampled negatives alone
            cand = torch.zeros(scores.shape, dtype=torch.bool)  # [b, V]
            cand.scatter_(1, sampled[lo : lo + scores.shape[0]], True)
            cand.scatter_(1, tgt.unsqueeze(1), True)
        else:
            cand = torch.ones(scores.shape, dtype=torch.bool)  # [b, V]
            cand[:, : ds.vocab.num_specials] = False
            if mask_context:
                for row, r in enumerate(rows):
                    cand[row, torch.from_numpy(contexts[r].astype(np.int64))] = False
        ranks_b, auc_b = target_ranks(scores, tgt, cand)
        ranks_parts.append(ranks_b)
        auc_parts.append(auc_b)
        nll_parts.append(target_nll(scores, tgt, cand))
    xent_sum, xent_count, top10 = sequence_xent(
        model, [seqs[i] for i in keep], device, batch_size, specials=ds.vocab.num_specials
    )
    model.train(was_training)
    ranks = torch.cat(ranks_parts).numpy() if ranks_parts else np.zeros(0, dtype=np.int64)
    auc = torch.cat(auc_parts).numpy() if auc_parts else np.zeros(0)
    nll = torch.cat(nll_parts).double().numpy() if nll_parts else np.zeros(0)
    result: dict[str, Any] = rank_metrics(ranks, auc, ks)
    result["ranking"] = f"{negatives} {negative_sampling} negatives, seed {negative_seed}" if negatives else "full"
    result["nll"] = float(nll.mean()) if len(nll) else float("nan")
    result["xent"] = float(xent_sum.sum() / xent_count.sum()) if xent_count.sum() else float("nan")
    result["hr_all@10"] = 100.0 * float(top10.sum() / xent_count.sum()) if xent_count.sum() else float("nan")
    if per_unit:
        result["per_unit"] = {
            "unit": "user",
            "rank": ranks.tolist(),
            "auc": auc.tolist(),
            "nll": nll.tolist(),
            "xent_sum": xent_sum.tolist(),
            "xent_count": xent_count.tolist(),
            "top10_all": top10.tolist(),
        }
    if stratify == "popularity":
        result["strata"] = _popularity_strata(ds, contexts, targets.numpy(), ranks, auc, ks)
    elif stratify is not None:
        raise ConfigError(f"unknown stratification {stratify!r}", "use --stratify popularity")
    return result


def _popularity_strata(
    ds: PreparedDataset,
    contexts: list[np.ndarray],
    targets: np.ndarray,
    ranks: np.ndarray,
    auc: np.ndarray,
    ks: tuple[int, ...],
) -> dict[str, list[dict[str, Any]]]:
    """Metrics per decile of item popularity (the target's training frequency) and of
    user activity (context length): the paper's cold-start analysis."""
    counts = np.bincount(ds.train.tokens, minlength=ds.vocab_size).astype(np.float64)
    items = np.arange(ds.vocab.num_specials, ds.vocab_size)
    item_dec = decile_of(counts[targets], counts[items])
    user_len = np.array([len(c) for c in contexts], dtype=np.float64)
    user_dec = decile_of(user_len, user_len)
    out: dict[str, list[dict[str, Any]]] = {"item_popularity": [], "user_activity": []}
    for key, dec, value in (("item_popularity", item_dec, counts[targets]), ("user_activity", user_dec, user_len)):
        for d in range(10):
            sel = dec == d
            row: dict[str, Any] = {"decile": d + 1}
            if sel.any():
                row.update(rank_metrics(ranks[sel], auc[sel], ks))
                row["range"] = [float(value[sel].min()), float(value[sel].max())]
            else:
                row["users"] = 0
            out[key].append(row)
    return out


@torch.no_grad()
def sequence_xent(
    model: SequenceModel,
    seqs: list[np.ndarray],
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    k: int = 10,
    specials: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per sequence, over every next-token prediction in its most recent ``max_len`` tokens: the summed
    NLL, the count, and how many targets ranked in the top ``k`` (among all tokens but the
    ``specials`` first ids; ties count against the target)."""
    max_len = model.config.max_len
    table = model.output_table()  # [V, d]
    sums = np.zeros(len(seqs), dtype=np.float64)
    counts = np.zeros(len(seqs), dtype=np.int64)
    hits = np.zeros(len(seqs), dtype=np.int64)
    for lo in range(0, len(seqs), batch_size):
        x = pad_right([s[-max_len:] for s in seqs[lo : lo + batch_size]]).to(device)  # [b, L]
        h, tgt, valid = scored_positions(model.features(x), x)  # [N, d], [N], [b, L-1]
        nll_v, _ = score_targets(h, table, tgt)
        top_v = _in_top_k(h, table, tgt, k, specials)  # [N] bool
        nll = torch.zeros(valid.shape, dtype=torch.float64)
        top = torch.zeros(valid.shape, dtype=torch.int64)
        mask = valid.cpu()
        nll[mask] = nll_v.double().cpu()
        top[mask] = top_v.long().cpu()
        sums[lo : lo + x.shape[0]] = nll.sum(1).numpy()
        counts[lo : lo + x.shape[0]] = valid.sum(1).cpu().numpy()
        hits[lo : lo + x.shape[0]] = top.sum(1).numpy()
    return sums, counts, hits


def _in_top_k(h: torch.Tensor, table: torch.Tensor, targets: torch.Tensor, k: int, specials: int) -> torch.Tensor:
    """Whether each target is among the k best-scored tokens (rank as in farzi.metrics), chunk by chunk."""
    out = torch.empty(h.shape[0], dtype=torch.bool, device=h.device)
    chunk = max(1, (1 << 20) // max(table.shape[0], 1))
    for lo in range(0, h.shape[0], chunk):
        logits = tied_logits(h[lo : lo + chunk], table).float()  # [n, V]
        logits[:, :specials] = float("-inf")
        t = targets[lo : lo + chunk]
        tgt = logits.gather(1, t.unsqueeze(1))  # [n, 1]
        out[lo : lo + chunk] = ((logits >= tgt).sum(1) - 1) < k
    return out


@torch.no_grad()
def sentence_scores(
    model: SequenceModel, seqs: list[np.ndarray], device: torch.device | str = "cpu", batch_size: int = 128
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-sentence token NLLs and argmax hits under teacher forcing.

    A sentence longer than the model's context is scored with overlapping
    windows of ``max_len`` tokens (stride max_len // 2), each token once.
    Windows are batched by length; within a batch only real targets reach the
    output layer, ``chunk_positions(V)`` at a time.
    """
    max_len = model.config.max_len
    nlls: list[np.ndarray | None] = [None] * len(seqs)
    hits: list[np.ndarray | None] = [None] * len(seqs)
    pieces: list[tuple[int, int, np.ndarray, int]] = []  # (sentence, first scored target, window, window start)
    for i, s in enumerate(seqs):
        if len(s) <= max_len:
            pieces.append((i, 1, s, 0))
            continue
        stride = max(1, max_len // 2)
        scored_to = 1
        start = 0
        while True:
            window = s[start : start + max_len]
            pieces.append((i, scored_to, window, start))
            scored_to = start + len(window)
            if scored_to >= len(s):
                break
            start += stride
    order = sorted(range(len(pieces)), key=lambda k: len(pieces[k][2]))
    parts: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = {}
    table = model.output_table()  # [V, d]
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        x = pad_right([pieces[k][2] for k in idx]).to(device)  # [B, L]
        # only real targets are scored, a chunk of positions at a time: never [B, L, V]
        h, tgt, valid = scored_positions(model.features(x), x)  # [N, d], [N], [B, L-1]
        nll_v, hit_v = score_targets(h, table, tgt)
        nll = np.zeros(valid.shape, dtype=np.float64)
        hit = np.zeros(valid.shape, dtype=bool)
        mask = valid.cpu().numpy()
        nll[mask] = nll_v.double().cpu().numpy()
        hit[mask] = hit_v.cpu().numpy()
        for row, k in enumerate(idx):
            sent, first, window, start = pieces[k]
            # position j of the window predicts sentence token start + j + 1
            lo = first - start - 1
            hi = len(window) - 1
            parts.setdefault(sent, []).append((start + lo, nll[row, lo:hi], hit[row, lo:hi]))
    for sent, chunks in parts.items():
        chunks.sort(key=lambda c: c[0])
        nlls[sent] = np.concatenate([c[1] for c in chunks])
        hits[sent] = np.concatenate([c[2] for c in chunks])
    return [n for n in nlls if n is not None], [h for h in hits if h is not None]


def evaluate_lm(
    model: SequenceModel,
    ds: PreparedDataset,
    split: str = "test",
    device: torch.device | str = "cpu",
    batch_size: int = 128,
    per_unit: bool = False,
) -> dict[str, Any]:
    """Perplexities and accuracy; ``per_unit=True`` adds every sentence's NLL sum, tokens and hits."""
    seqs = [s for s in ds.splits[split] if len(s) >= 2]
    was_training = model.training
    model.eval()
    nll, hits = sentence_scores(model, seqs, device, batch_size)
    model.train(was_training)
    out = lm_metrics(nll, hits)
    if per_unit:
        out["per_unit"] = {
            "unit": "sentence",
            "nll_sum": [float(n.sum()) for n in nll],
            "tokens": [len(n) for n in nll],
            "correct": [int(h.sum()) for h in hits],
        }
    return out


def evaluate(
    model: SequenceModel,
    ds: PreparedDataset,
    split: str = "test",
    ks: tuple[int, ...] = (10, 100),
    mask_context: bool = True,
    stratify: str | None = None,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
    per_unit: bool = False,
    negatives: int = 0,
    negative_sampling: str = "uniform",
    negative_seed: int = 0,
) -> dict[str, Any]:
    """Metrics of ``model`` on ``ds[split]`` (recommendation or language modeling); ``per_unit``
    adds each user's / sentence's figures for paired comparisons; ``negatives``: rank each target
    among that many sampled items instead of all (:func:`evaluate_rec`; recommendation only)."""
    if negatives < 0:
        raise ConfigError(f"--negatives {negatives} is negative", "give 0 (full ranking) or a count such as 100")
    if negatives and ds.task != "rec":
        raise ConfigError("--negatives applies to recommendation datasets only", "drop --negatives")
    if split not in ds.splits:
        raise ConfigError(f"unknown split {split!r}", "use train, valid or test")
    if model.task != ds.task:
        raise ConfigError(
            f"model {model.name!r} is a {model.task} model but dataset {ds.name!r} is {ds.task}",
            "pick a model for this task",
        )
    report(progress, f"eval {split}", 0, 1)
    if ds.task == "rec":
        out = evaluate_rec(
            model,
            ds,
            split,
            ks,
            mask_context,
            stratify,
            device,
            per_unit=per_unit,
            negatives=negatives,
            negative_sampling=negative_sampling,
            negative_seed=negative_seed,
        )
    else:
        if stratify is not None:
            raise ConfigError("--stratify applies to recommendation datasets only", "drop --stratify")
        out = evaluate_lm(model, ds, split, device, per_unit=per_unit)
    report(progress, f"eval {split}", 1, 1, done=True)
    out["split"] = split
    return out
