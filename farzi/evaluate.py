"""Evaluate a model on a prepared dataset's split (metrics in farzi.metrics)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from farzi.batching import pad_right
from farzi.data.prepared import PreparedDataset
from farzi.errors import ConfigError
from farzi.metrics import decile_of, lm_metrics, rank_metrics, target_nll, target_ranks
from farzi.models import SequenceModel
from farzi.progress import ProgressFn, report

HIGHER_IS_BETTER = {"hr", "ndcg", "auc", "accuracy"}


def metric_is_higher_better(metric: str) -> bool:
    return metric.split("@")[0] in HIGHER_IS_BETTER


def default_metric(task: str) -> str:
    return "hr@10" if task == "rec" else "ppl_corpus"


@torch.no_grad()
def rec_scores(
    model: SequenceModel,
    contexts: list[np.ndarray],
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Scores over all items for the next item after each context: [N, V] (cpu)."""
    max_len = model.config.max_len
    out = []
    for i in range(0, len(contexts), batch_size):
        chunk = [c[-max_len:] for c in contexts[i : i + batch_size]]
        x = pad_right(chunk).to(device)  # [B, L]
        last = torch.tensor([len(c) - 1 for c in chunk], device=device)
        logits = model(x)  # [B, L, V]
        out.append(logits[torch.arange(len(chunk), device=device), last].float().cpu())
    return torch.cat(out) if out else torch.zeros(0, model.config.vocab_size)


def evaluate_rec(
    model: SequenceModel,
    ds: PreparedDataset,
    split: str = "test",
    ks: tuple[int, ...] = (10, 100),
    mask_context: bool = True,
    stratify: str | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
) -> dict[str, Any]:
    seqs = ds.splits[split]
    keep = [i for i in range(len(seqs)) if len(seqs[i]) >= 2]
    contexts = [seqs[i][:-1] for i in keep]
    targets = torch.tensor([int(seqs[i][-1]) for i in keep], dtype=torch.long)
    was_training = model.training
    model.eval()
    scores = rec_scores(model, contexts, batch_size, device)
    model.train(was_training)
    V = ds.vocab_size
    cand = torch.ones(len(keep), V, dtype=torch.bool)
    cand[:, : ds.vocab.num_specials] = False
    if mask_context:
        for row, ctx in enumerate(contexts):
            cand[row, torch.from_numpy(ctx.astype(np.int64))] = False
    ranks_t, auc_t = target_ranks(scores, targets, cand)
    ranks, auc = ranks_t.numpy(), auc_t.numpy()
    result: dict[str, Any] = rank_metrics(ranks, auc, ks)
    result["nll"] = float(target_nll(scores, targets, cand).mean()) if len(keep) else float("nan")
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
def sentence_scores(
    model: SequenceModel, seqs: list[np.ndarray], device: torch.device | str = "cpu", batch_size: int = 128
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-sentence token NLLs and argmax hits under teacher forcing.

    A sentence longer than the model's context is scored with overlapping
    windows of ``max_len`` tokens (stride max_len // 2), each token once.
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
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        x = pad_right([pieces[k][2] for k in idx]).to(device)
        logp = F.log_softmax(model(x).float(), dim=-1)[:, :-1]  # [B, L-1, V]
        tgt = x[:, 1:]
        nll = -logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1).cpu().numpy()
        hit = (logp.argmax(-1) == tgt).cpu().numpy()
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
) -> dict[str, Any]:
    seqs = [s for s in ds.splits[split] if len(s) >= 2]
    was_training = model.training
    model.eval()
    nll, hits = sentence_scores(model, seqs, device, batch_size)
    model.train(was_training)
    return lm_metrics(nll, hits)


def evaluate(
    model: SequenceModel,
    ds: PreparedDataset,
    split: str = "test",
    ks: tuple[int, ...] = (10, 100),
    mask_context: bool = True,
    stratify: str | None = None,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Metrics of ``model`` on ``ds[split]`` (recommendation or language modeling)."""
    if split not in ds.splits:
        raise ConfigError(f"unknown split {split!r}", "use train, valid or test")
    if model.task != ds.task:
        raise ConfigError(
            f"model {model.name!r} is a {model.task} model but dataset {ds.name!r} is {ds.task}",
            "pick a model for this task",
        )
    report(progress, f"eval {split}", 0, 1)
    if ds.task == "rec":
        out = evaluate_rec(model, ds, split, ks, mask_context, stratify, device)
    else:
        if stratify is not None:
            raise ConfigError("--stratify applies to recommendation datasets only", "drop --stratify")
        out = evaluate_lm(model, ds, split, device)
    report(progress, f"eval {split}", 1, 1, done=True)
    out["split"] = split
    return out
