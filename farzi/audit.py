"""A privacy audit of a Farzi Data bundle: how much of the real training data it gives away
(``farzictl audit``, format ``farzi-audit`` v1 in formats/farzi-audit-v1.md).

Two reports, each beside a reference that says what "normal" looks like:

* **Copying.** The bundle's sequences are decoded as ``farzictl export`` decodes them (argmax, and
  ``samples`` seeded draws each: :func:`farzi.export.decode_sequences`). For each decoded sequence:
  the longest run of tokens that appears contiguously in one training sequence, and the share of
  its n-grams (n = 2, 3, 5, 8) that occur anywhere in the training split. The same figures for
  windows of the same length cut from the held-out test split are the reference: how much data that
  was never trained on shares with the training data anyway. Every decoded sequence that copies a
  training window of at least ``min_copy`` tokens is listed with the training user (or sentence)
  it copies.
* **Membership inference.** Students trained on the bundle (or the given ``models``) score the
  training sequences (members) and the held-out validation and test sequences (non-members) by
  their per-sequence loss; a loss-threshold attack (a lower loss says "member") is summarized by its
  AUC and its true-positive rate at 1 % false positives, with seeded bootstrap 95 % intervals over
  the sequences. Beside them: students trained on ``random:N`` (N = the bundle's sequence count)
  and on the full training split -- models that saw the members themselves, the leak to compare
  against. Students keep their final state (one validation, at the last step), so the validation
  split never chose a state and is as held out as the test split.

Matching is done on 64-bit rolling hashes of n-grams (a sorted hash table of the training split per
length n, built once for all queries); a listed copy is checked token by token. Two different
n-grams share a hash with probability about 2**-64 per pair.

This is an audit, not a guarantee: it measures two known attacks on this bundle; it does not bound
what any other attack could learn (that takes differential privacy, which distillation does not give).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from farzi._io import read_json, sha256_file, write_json_atomic
from farzi._version import __version__
from farzi.batching import TrainSet
from farzi.checkpoint import check_dataset, load_checkpoint
from farzi.data.prepared import PreparedDataset
from farzi.data.sequences import Sequences
from farzi.distill.bundle import FarziData, created_now, load_bundle, read_bundle_meta
from farzi.errors import BundleError, ConfigError
from farzi.evaluate import evaluate, sequence_xent
from farzi.export import decode_sequences
from farzi.models import DEFAULT_MODEL, SequenceModel, build_model, make_config, model_task
from farzi.plan import Plan, Stage, measure_training
from farzi.progress import ProgressFn, report
from farzi.student import apply_recipe, parse_spec, select_sequences, training_set
from farzi.train import TrainConfig, check_model_sizes, train_model

AUDIT_FORMAT = "farzi-audit"
AUDIT_VERSION = 1
NGRAMS = (2, 3, 5, 8)
KINDS = ("farzi", "random", "full")  # the kinds of training data whose students are attacked
MAX_SAMPLES = 1000
MAX_STUDENTS = 20
MAX_REFERENCE = 2000  # held-out windows the copying reference looks at (a seeded sample beyond it)
MAX_COPIES_LISTED = 1000
DEFAULT_STEPS = 300  # student steps where the bundle records no recipe (and at most this many from one)
FPR = 0.01
_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier of the rolling hash (wraps modulo 2**64)


@dataclass
class AuditConfig:
    """What the audit does: ``samples`` seeded draws per synthetic sequence besides its argmax (0: argmax
    only), copies of at least ``min_copy`` tokens listed, ``students`` per kind of training data
    (0: no students trained; with ``models`` those alone are attacked), ``max_steps`` per student (0: the
    bundle recipe's steps, at most :data:`DEFAULT_STEPS`), ``models``: checkpoints trained on the bundle
    to attack instead of training students on it, ``references``: the kinds of data besides the bundle
    whose students are attacked too, ``n_boot`` bootstrap replicates, ``seed`` for everything drawn."""

    samples: int = 4
    min_copy: int = 10
    students: int = 1
    max_steps: int = 0
    models: list[Path] = field(default_factory=list)
    references: tuple[str, ...] = ("random", "full")
    n_boot: int = 1000
    seed: int = 0
    device: str = "cpu"

    def validate(self) -> None:
        """Refuse (``ConfigError``) values out of range and ``models`` that are not there."""
        if not 0 <= self.samples <= MAX_SAMPLES:
            raise ConfigError(
                f"--samples {self.samples} is out of range",
                f"pass 0 (argmax only) to {MAX_SAMPLES} sampled sequences per synthetic sequence",
            )
        if self.min_copy < 1:
            raise ConfigError(f"--min-copy {self.min_copy} must be at least 1", "pass e.g. --min-copy 10")
        if not 0 <= self.students <= MAX_STUDENTS:
            raise ConfigError(
                f"--students {self.students} is out of range", f"pass 0 to {MAX_STUDENTS} students per kind of data"
            )
        if self.max_steps < 0:
            raise ConfigError(f"--max-steps {self.max_steps} must be >= 0", "pass e.g. --max-steps 300 (0 = recipe)")
        if not 100 <= self.n_boot <= 100_000:
            raise ConfigError(f"n_boot {self.n_boot} is out of range", "use 100 to 100000 bootstrap replicates")
        bad = [k for k in self.references if k not in KINDS[1:]]
        if bad:
            raise ConfigError(f"unknown reference data {bad[0]!r}", "use random and/or full")
        for path in self.models:
            p = Path(path)
            if not p.exists():
                raise ConfigError(f"--models {p} does not exist", "pass a model directory written by train-student")
            if p.is_dir() and not (p / "model.safetensors").is_file():
                raise ConfigError(
                    f"--models {p} is a directory without model.safetensors",
                    "pass a model directory written by train-student, or its model.safetensors",
                )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["models"] = [str(p) for p in self.models]
        d["references"] = list(self.references)
        return d


# ------------------------------------------------------------------ n-gram matching


def _flat(seqs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sequences as one token array [T] (int64), their offsets [n + 1], and each position's tokens left
    in its sequence [T]."""
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.concatenate([np.asarray(s, dtype=np.int64) for s in seqs]) if seqs else np.zeros(0, np.int64)
    rest = np.repeat(offsets[1:], lengths) - np.arange(offsets[-1])  # [T]
    return tokens, offsets, rest


@dataclass
class Matches:
    """What :func:`match_ngrams` found for each query sequence (index ``q``)."""

    longest: np.ndarray  # [Q] the longest run found contiguously in one training sequence
    where: np.ndarray  # [Q, 3] (start in the query, training sequence, start in it) of one such run (-1: none)
    overlap: dict[int, np.ndarray]  # n -> [Q] share of the query's n-grams found in training (nan: none)


def match_ngrams(
    train: Sequences | list[np.ndarray],
    queries: list[np.ndarray],
    ns: tuple[int, ...] = NGRAMS,
    max_n: int | None = None,
) -> Matches:
    """For every query: the longest run of its tokens that occurs contiguously in one training sequence
    (with where), and for each n in ``ns`` the share of its n-grams that occur in some training sequence.

    One pass over n = 1, 2, ...: the training split's n-grams (never across two sequences) are hashed
    with a rolling 64-bit hash, sorted once per n, and every query's n-grams are looked up together
    (``searchsorted``); the pass ends once n passed ``max(ns)`` and no query has a run of length n (or
    at ``max_n``).
    """
    train_list = [train[i] for i in range(len(train))]
    t_tok, t_off, t_rest = _flat(train_list)
    q_tok, q_off, q_rest = _flat(list(queries))
    n_q = len(queries)
    q_id = np.repeat(np.arange(n_q), np.diff(q_off))  # [Tq] the query each position belongs to
    longest = np.zeros(n_q, dtype=np.int64)
    where = np.full((n_q, 3), -1, dtype=np.int64)
    overlap = {n: np.full(n_q, np.nan) for n in ns}
    h_t = np.zeros(len(t_tok), dtype=np.uint64)
    h_q = np.zeros(len(q_tok), dtype=np.uint64)
    alive = np.ones(n_q, dtype=bool)
    n = 0
    with np.errstate(over="ignore"):
        while True:
            n += 1
            if n > max(ns, default=0) and not alive.any():
                break
            if n > max(int(q_rest.max(initial=0)), int(t_rest.max(initial=0))) or (max_n and n > max_n):
                break
            # h[i] over tokens i .. i+n-1 (positions past a sequence's end are masked out by rest below)
            h_t[: len(t_tok) - n + 1] = h_t[: len(t_tok) - n + 1] * _BASE + (t_tok[n - 1 :] + 1).astype(np.uint64)
            h_q[: len(q_tok) - n + 1] = h_q[: len(q_tok) - n + 1] * _BASE + (q_tok[n - 1 :] + 1).astype(np.uint64)
            t_ok = np.nonzero(t_rest >= n)[0]  # [m] training positions starting an n-gram
            order = np.argsort(h_t[t_ok], kind="stable")
            table, at = h_t[t_ok][order], t_ok[order]  # [m] sorted hashes, their positions
            q_ok = np.nonzero(q_rest >= n)[0]  # [k] query positions starting an n-gram
            if len(table) and len(q_ok):
                idx = np.minimum(np.searchsorted(table, h_q[q_ok]), len(table) - 1)
                found = table[idx] == h_q[q_ok]  # [k]
            else:
                idx, found = np.zeros(len(q_ok), dtype=np.int64), np.zeros(len(q_ok), dtype=bool)
            if n in overlap:
                total = np.bincount(q_id[q_ok], minlength=n_q)
                hits = np.bincount(q_id[q_ok[found]], minlength=n_q)
                overlap[n] = np.where(total > 0, hits / np.maximum(total, 1), np.nan)
            hit_q = q_id[q_ok[found]]
            now = np.zeros(n_q, dtype=bool)
            now[hit_q] = True
            alive &= now
            if alive.any():
                qs, first = np.unique(hit_q, return_index=True)  # each query's first run of length n
                pos, tp = q_ok[found][first], at[idx[found]][first]  # [a] query and training positions
                seq = np.searchsorted(t_off, tp, side="right") - 1  # [a] the training sequence
                longest[qs] = n
                where[qs] = np.stack([pos - q_off[qs], seq, tp - t_off[seq]], axis=1)
    return Matches(longest=longest, where=where, overlap=overlap)


def _copied(train: Sequences, query: np.ndarray, start: int, seq: int, at: int, length: int) -> bool:
    """Whether ``query[start : start + length]`` is token for token ``train[seq][at : at + length]``."""
    window = np.asarray(train[seq][at : at + length], dtype=np.int64)
    return len(window) == length and bool(np.array_equal(window, np.asarray(query[start : start + length])))


def _summary(seqs: list[np.ndarray], m: Matches) -> dict[str, Any]:
    lengths = np.array([len(s) for s in seqs], dtype=np.float64)
    runs = m.longest.astype(np.float64)
    return {
        "sequences": len(seqs),
        "length_mean": round(float(lengths.mean()), 3) if len(seqs) else 0.0,
        "longest_run": {
            "mean": round(float(runs.mean()), 4) if len(runs) else 0.0,
            "median": float(np.median(runs)) if len(runs) else 0.0,
            "p90": float(np.quantile(runs, 0.9)) if len(runs) else 0.0,
            "max": int(runs.max()) if len(runs) else 0,
        },
        "ngram_overlap": {str(n): _nanmean(v) for n, v in m.overlap.items()},
    }


def _nanmean(v: np.ndarray) -> float | None:
    ok = v[~np.isnan(v)]
    return round(float(ok.mean()), 6) if len(ok) else None


def reference_windows(ds: PreparedDataset, xi: int, seed: int = 0, most: int = MAX_REFERENCE) -> list[np.ndarray]:
    """Windows of the held-out test split shaped like the synthetic sequences: each test user's most
    recent ``xi`` items (the whole history where shorter), or for sentences the test split joined end to
    end (one ``<eos>`` between two) cut into consecutive windows of ``xi`` tokens; at most ``most`` of
    them (a seeded sample)."""
    test = ds.test
    if ds.task == "rec":
        out = [np.asarray(test[i][-xi:], dtype=np.int64) for i in range(len(test)) if len(test[i]) >= 2]
    else:
        parts: list[np.ndarray] = []
        for i in range(len(test)):
            s = np.asarray(test[i], dtype=np.int64)
            if parts and len(s) > 1 and len(parts[-1]) and parts[-1][-1] == s[0]:
                s = s[1:]  # sentences end and start with <eos>: keep one boundary (as distillation joins them)
            parts.append(s)
        stream = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        out = [stream[i : i + xi] for i in range(0, len(stream) - 1, xi) if len(stream[i : i + xi]) >= 2]
    if len(out) > most:
        keep = np.sort(np.random.default_rng(seed).choice(len(out), size=most, replace=False))
        out = [out[i] for i in keep]
    return out


def _windows(task: str) -> str:
    return "each test user's most recent items" if task == "rec" else "the test sentences joined, cut into windows"


def copying_report(
    data: FarziData,
    ds: PreparedDataset,
    samples: int = 4,
    min_copy: int = 10,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """The copying part of the audit (see the module's docstring) for a loaded bundle ``data`` of ``ds``."""
    report(progress, "audit: decode", 0, 1)
    decoded = list(decode_sequences(data, "argmax"))
    if samples:
        decoded += list(decode_sequences(data, "sample", samples, seed))
    kinds = ["argmax"] * data.mu + ["sample"] * (len(decoded) - data.mu)
    queries = [np.asarray(d.ids, dtype=np.int64) for d in decoded]
    held = reference_windows(ds, data.xi, seed)
    report(progress, "audit: decode", 1, 1, done=True)
    report(progress, "audit: n-gram matching", 0, 1)
    m = match_ngrams(ds.train, queries + held)
    report(progress, "audit: n-gram matching", 1, 1, done=True)
    n_syn = len(queries)

    def part(sel: np.ndarray) -> Matches:
        return Matches(m.longest[sel], m.where[sel], {n: v[sel] for n, v in m.overlap.items()})

    arg = np.arange(data.mu)
    smp = np.arange(data.mu, n_syn)
    ref = np.arange(n_syn, n_syn + len(held))
    copies: list[dict[str, Any]] = []
    for q in np.nonzero(m.longest[:n_syn] >= min_copy)[0].tolist():
        start, seq, at = (int(x) for x in m.where[q])
        length = int(m.longest[q])
        if not _copied(ds.train, queries[q], start, seq, at, length):
            continue  # a 64-bit hash collision (about 2**-64 per pair): not a copy
        d = decoded[q]
        copies.append(
            {
                "name": d.name,
                "decode": kinds[q],
                "sequence": d.index,
                "sample": d.sample,
                "length": length,
                "start": start,
                "train_index": seq,
                "train_id": str(ds.train.ids[seq]),
                "train_start": at,
            }
        )
    copies.sort(key=lambda c: (-c["length"], c["decode"], c["sequence"], c["sample"]))
    per_sequence = [
        {
            "name": decoded[q].name,
            "decode": kinds[q],
            "longest_run": int(m.longest[q]),
            "ngram_overlap": {
                str(n): None if math.isnan(v[q]) else round(float(v[q]), 6) for n, v in m.overlap.items()
            },
        }
        for q in range(n_syn)
    ]
    return {
        "ngrams": list(NGRAMS),
        "min_copy": min_copy,
        "synthetic": {
            "argmax": _summary([queries[i] for i in arg], part(arg)),
            "sampled": _summary([queries[i] for i in smp], part(smp)) if len(smp) else None,
        },
        "held_out": {"split": "test", "windows": _windows(ds.task), **_summary(held, part(ref))},
        "copies_total": len(copies),
        "copied_training_sequences": len({c["train_index"] for c in copies}),
        "copies": copies[:MAX_COPIES_LISTED],
        "per_sequence": per_sequence,
    }


# ------------------------------------------------------------------ membership inference


def auc(members: np.ndarray, non_members: np.ndarray) -> float:
    """P(a member scores above a non-member) + P(tie) / 2 (the Mann-Whitney U over both sizes)."""
    members, non_members = np.asarray(members, np.float64), np.asarray(non_members, np.float64)
    p, q = len(members), len(non_members)
    if not p or not q:
        return math.nan
    both = np.concatenate([members, non_members])
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # [p + q] average ranks, 1-based
    return float((ranks[:p].sum() - p * (p + 1) / 2.0) / (p * q))


def tpr_at_fpr(members: np.ndarray, non_members: np.ndarray, fpr: float = FPR) -> float:
    """The share of members scored above a threshold that at most ``fpr`` of the non-members pass: the
    threshold is the (k+1)-th highest non-member score, k = floor(fpr * non-members)."""
    members, non_members = np.asarray(members, np.float64), np.asarray(non_members, np.float64)
    if not len(members) or not len(non_members):
        return math.nan
    k = int(math.floor(fpr * len(non_members) + 1e-9))
    threshold = np.sort(non_members)[::-1][min(k, len(non_members) - 1)]
    return float((members > threshold).mean())


def loss_attack(
    member_losses: list[np.ndarray] | np.ndarray,
    non_member_losses: list[np.ndarray] | np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    fpr: float = FPR,
) -> dict[str, Any]:
    """The loss-threshold attack (a lower loss says "member") on one or more models' per-sequence losses:
    ``member_losses`` [S, P] and ``non_member_losses`` [S, Q], S models scoring the same sequences.

    Its AUC and true-positive rate at ``fpr`` false positives, each the mean over the S models, with a
    percentile bootstrap 95 % interval: members and non-members are resampled (each group on its own,
    the same draw for every model) ``n_boot`` times with a generator seeded by ``seed``.
    """
    mem = np.atleast_2d(np.asarray(member_losses, dtype=np.float64))  # [S, P]
    non = np.atleast_2d(np.asarray(non_member_losses, dtype=np.float64))  # [S, Q]
    if mem.shape[0] != non.shape[0]:
        raise ValueError("member and non-member losses must come from the same models")
    s_mem, s_non = -mem, -non  # attack scores: higher says member

    def stats(i: np.ndarray, j: np.ndarray) -> tuple[float, float]:
        a = [auc(s_mem[s, i], s_non[s, j]) for s in range(len(mem))]
        t = [tpr_at_fpr(s_mem[s, i], s_non[s, j], fpr) for s in range(len(mem))]
        return float(np.mean(a)), float(np.mean(t))

    p, q = mem.shape[1], non.shape[1]
    value_auc, value_tpr = stats(np.arange(p), np.arange(q))
    rng = np.random.default_rng(seed)
    boot = np.array([stats(rng.integers(p, size=p), rng.integers(q, size=q)) for _ in range(n_boot)])  # [B, 2]
    lo, hi = np.quantile(boot, [0.025, 0.975], axis=0) if p and q else (np.full(2, np.nan), np.full(2, np.nan))
    return {
        "auc": {"value": value_auc, "lo": float(lo[0]), "hi": float(hi[0])},
        "tpr_at_fpr": {"value": value_tpr, "lo": float(lo[1]), "hi": float(hi[1]), "fpr": fpr},
        "models": len(mem),
        "members": p,
        "non_members": q,
        "n_boot": n_boot,
    }


def sequence_losses(model: SequenceModel, seqs: list[np.ndarray], device: str | torch.device = "cpu") -> np.ndarray:
    """Each sequence's mean next-token loss (nats) over its most recent ``max_len`` tokens [N] (dropout off)."""
    was_training = model.training
    model.eval()
    sums, counts, _ = sequence_xent(model, seqs, device)  # [N] summed NLL, [N] predictions
    model.train(was_training)
    return sums / np.maximum(counts, 1)


def audit_sets(ds: PreparedDataset) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Members (every training sequence) and non-members (every validation and test sequence), those with
    at least two tokens (one prediction)."""
    members = [ds.train[i] for i in range(len(ds.train)) if len(ds.train[i]) >= 2]
    non = [s[i] for s in (ds.valid, ds.test) for i in range(len(s)) if len(s[i]) >= 2]
    return members, non


def student_model(meta: dict[str, Any], ds: PreparedDataset) -> tuple[str, dict[str, Any]]:
    """The students' model: the bundle's teacher (its name and settings), else the task's default."""
    teacher = meta.get("teacher") or {}
    name = teacher.get("model")
    if not isinstance(name, str) or name not in ("sasrec", "gru4rec", "fmlp", "transformer", "rnn"):
        return DEFAULT_MODEL[ds.task], {}
    if model_task(name) != ds.task:
        return DEFAULT_MODEL[ds.task], {}
    config = teacher.get("config") if isinstance(teacher.get("config"), dict) else {}
    return name, {k: v for k, v in config.items() if k != "vocab_size"}


def student_config(meta: dict[str, Any], cfg: AuditConfig, kind: str, seed: int) -> TrainConfig:
    """How a student of ``kind`` trains: the bundle recipe's batch size (and, on the bundle, its learning
    rate and weight decay), ``cfg.max_steps`` steps (0: the recipe's, at most :data:`DEFAULT_STEPS`), one
    validation at the last step (its final state is kept: no state is chosen on the validation split)."""
    recipe = meta.get("recipe") if isinstance(meta.get("recipe"), dict) else {}
    steps = cfg.max_steps or min(int(recipe.get("max_steps", DEFAULT_STEPS)), DEFAULT_STEPS)
    base = TrainConfig(batch_size=int(recipe.get("batch_size", 128)), max_steps=steps, seed=seed)
    base = dataclasses.replace(base, eval_every=steps, patience=0)
    if kind == "farzi":
        base, _ = apply_recipe(base, recipe, ("lr", "weight_decay"))
    return base


def _specs(data: FarziData, bundle: Path, cfg: AuditConfig) -> list[tuple[str, str, str]]:
    """(kind, label, data spec) of the students to train."""
    if not cfg.students:
        return []
    own = [] if cfg.models else [("farzi", f"farzi {data.mu}x{data.xi}", str(bundle))]
    specs = {"random": f"random:{data.mu}", "full": "full"}
    return own + [(kind, specs[kind], specs[kind]) for kind in cfg.references]


def _utility_metric(task: str) -> str:
    return "hr@10" if task == "rec" else "ppl_corpus"


def _train(
    ds: PreparedDataset,
    name: str,
    overrides: dict[str, Any],
    spec: str,
    config: TrainConfig,
    device: str,
    progress: ProgressFn | None,
    label: str,
) -> tuple[SequenceModel, dict[str, Any]]:
    model_cfg = make_config(name, ds.vocab_size, **overrides)
    train_set, info = training_set(ds, parse_spec(spec), model_cfg.max_len, config.seed, device=device)
    torch.manual_seed(config.seed)
    model = build_model(name, model_cfg)
    result = train_model(model, train_set, ds, config, device=device, progress=progress, task_name=f"audit: {label}")
    return result.model, {"steps": result.steps, "sequences": info.get("n", info.get("mu")), "tokens": info["tokens"]}


def membership_report(
    data: FarziData,
    bundle: Path,
    ds: PreparedDataset,
    cfg: AuditConfig,
    progress: ProgressFn | None = None,
) -> dict[str, Any] | None:
    """The membership part of the audit (see the module's docstring); None when nothing is attacked."""
    specs = _specs(data, bundle, cfg)
    if not specs and not cfg.models:
        return None
    members, non = audit_sets(ds)
    name, overrides = student_model(data.meta, ds)
    metric = _utility_metric(ds.task)
    groups: list[dict[str, Any]] = []
    if cfg.models:
        losses_m, losses_n, students = [], [], []
        for path in cfg.models:
            ckpt = load_checkpoint(path, device=cfg.device)
            check_dataset(ckpt.dataset, ds, f"model {path}")
            report(progress, "audit: scoring", 0, 1)
            losses_m.append(sequence_losses(ckpt.model, members, cfg.device))
            losses_n.append(sequence_losses(ckpt.model, non, cfg.device))
            utility = float(evaluate(ckpt.model, ds, "test", device=cfg.device)[metric])
            students.append({"source": str(path), "model": ckpt.model_name, "utility": utility})
        groups.append({"kind": "farzi", "label": "farzi (given models)", "data": str(bundle), "students": students})
        groups[-1]["_losses"] = (losses_m, losses_n)
    position = {t: k for k, t in enumerate(i for i in range(len(ds.train)) if len(ds.train[i]) >= 2)}  # in members
    for kind, label, spec in specs:
        losses_m, losses_n, students, own = [], [], [], []
        for k in range(cfg.students):
            config = student_config(data.meta, cfg, kind, cfg.seed + k)
            model, info = _train(ds, name, overrides, spec, config, cfg.device, progress, f"{label} student {k}")
            losses_m.append(sequence_losses(model, members, cfg.device))
            losses_n.append(sequence_losses(model, non, cfg.device))
            if kind == "random":  # the members this student trained on (the sample it drew)
                drawn = select_sequences(ds, parse_spec(spec), config.seed)
                own.append(losses_m[-1][[position[int(i)] for i in drawn if int(i) in position]])
            utility = float(evaluate(model, ds, "test", device=cfg.device)[metric])
            row = {"source": "trained", "model": name, "seed": config.seed, "lr": config.lr, "utility": utility}
            students.append({**row, **info})
        groups.append(
            {"kind": kind, "label": label, "data": spec, "students": students, "_losses": (losses_m, losses_n)}
        )
        if own:  # the attack on the N users a random:N release holds (the full group dilutes it)
            groups[-1]["own_members"] = loss_attack(own, losses_n, cfg.n_boot, cfg.seed)
    for g in groups:
        losses_m, losses_n = g.pop("_losses")
        g.update(loss_attack(losses_m, losses_n, cfg.n_boot, cfg.seed))
        g["utility"] = float(np.mean([s["utility"] for s in g["students"]]))
        g["member_loss"] = float(np.mean([x.mean() for x in losses_m]))
        g["non_member_loss"] = float(np.mean([x.mean() for x in losses_n]))
    return {
        "attack": "loss threshold",
        "members": {"split": "train", "sequences": len(members)},
        "non_members": {"splits": ["valid", "test"], "sequences": len(non)},
        "student_model": {"model": name, **overrides},
        "utility_metric": metric,
        "utility_split": "test",
        "groups": groups,
    }


# ------------------------------------------------------------------ the audit


def _check_match(meta: dict[str, Any], bundle: Path, ds: PreparedDataset) -> list[str]:
    """Refuse (``BundleError``) a dataset the bundle was not distilled from; the notes to keep."""
    recorded = meta.get("dataset") or {}
    was = recorded.get("name")
    fix = f"pass --data with the dataset it was distilled from ({was!r})" if was else "pass --data with its dataset"
    if meta["task"] != ds.task:
        raise BundleError(f"bundle {bundle} is for {meta['task']}, dataset {ds.name!r} is {ds.task}", fix)
    if meta["vocab_size"] != ds.vocab_size or meta["vocab_sha256"] != ds.vocab.sha256():
        raise BundleError(
            f"bundle {bundle} was distilled over another vocabulary ({meta['vocab_size']} tokens, dataset {was!r}) "
            f"than dataset {ds.name!r} ({ds.vocab_size} tokens)",
            fix,
        )
    fingerprint = recorded.get("fingerprint")
    if fingerprint is None:
        return ["the bundle records no dataset fingerprint: that it was distilled from this dataset is not checked"]
    if fingerprint != ds.fingerprint():
        raise BundleError(
            f"bundle {bundle} was distilled from dataset {was!r} (fingerprint {str(fingerprint)[:12]}), "
            f"not from {ds.name!r} (fingerprint {ds.fingerprint()[:12]}): its members would be other sequences",
            fix,
        )
    return []


def check_audit(
    bundle: str | Path, ds: PreparedDataset, cfg: AuditConfig, out: str | Path | None = None
) -> tuple[dict[str, Any], list[str]]:
    """Every refusal of :func:`audit_bundle` before any work: the options, the bundle file, whether it
    belongs to ``ds``, the ``models`` (readable checkpoints of ``ds``) and the output directory ``out``.
    Returns the bundle's metadata and notes."""
    cfg.validate()
    if out is not None:
        check_out(Path(out))
    meta, _ = read_bundle_meta(Path(bundle))
    notes = _check_match(meta, Path(bundle), ds)
    for path in cfg.models:
        ckpt = load_checkpoint(path)
        check_dataset(ckpt.dataset, ds, f"model {path}")
    if cfg.references and not cfg.students and not cfg.models:
        notes.append("no students (--students 0): membership inference skipped")
    return meta, notes


def default_out(bundle: str | Path) -> Path:
    """``farzi-50x50-s0.safetensors`` -> ``farzi-50x50-s0.audit`` (a directory beside the bundle)."""
    return Path(bundle).with_suffix(".audit")


def check_out(out: Path) -> None:
    """Refuse an output that is not a directory, or one that holds anything but an earlier audit's
    ``audit.json`` and ``audit.png`` (an audit never writes into other data's directory)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory", "pass --out with a directory")
    if not out.is_dir():
        return
    own = {"audit.json", "audit.png"}
    others = sorted(p.name for p in out.iterdir() if p.name not in own and not p.name.startswith(".audit."))
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise ConfigError(
            f"--out {out} holds files an audit did not write ({shown})", "pass --out with a new or empty directory"
        )
    prior = out / "audit.json"
    if prior.exists():
        try:
            ok = read_json(prior).get("format") == AUDIT_FORMAT
        except (OSError, ValueError, AttributeError):
            ok = False
        if not ok:
            raise ConfigError(f"{prior} exists and is not an earlier audit", "pass --out with another directory")


def audit_bundle(
    bundle: str | Path,
    ds: PreparedDataset,
    cfg: AuditConfig,
    out: str | Path | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Audit ``bundle`` against the dataset ``ds`` it was distilled from; write ``OUT/audit.json`` (atomically)
    and ``OUT/audit.png`` (``out`` default :func:`default_out`); return the JSON document.

    Refused before any work (one :class:`~farzi.errors.FarziError`): bad options, a bundle that is not
    of ``ds`` (other task, vocabulary, or dataset fingerprint), ``models`` that are missing, unreadable
    or trained on another dataset, an ``out`` that is a file or holds a ``audit.json`` of something else.
    """
    bundle = Path(bundle)
    target = Path(out) if out is not None else default_out(bundle)
    meta, notes = check_audit(bundle, ds, cfg, target)
    started = time.perf_counter()
    data = load_bundle(bundle)  # decoded on the CPU (seeded draws); students load it on cfg.device
    copying = copying_report(data, ds, cfg.samples, cfg.min_copy, cfg.seed, progress)
    copy_seconds = time.perf_counter() - started
    membership = membership_report(data, bundle, ds, cfg, progress)
    doc = {
        "format": AUDIT_FORMAT,
        "version": AUDIT_VERSION,
        "created": created_now(),
        "package": {"name": "farzi", "version": __version__},
        "config": cfg.to_dict(),
        "threads": torch.get_num_threads(),
        "bundle": {
            "path": str(bundle.resolve()),
            "sha256": sha256_file(bundle),
            "task": meta["task"],
            "budget": f"{data.mu}x{data.xi}",
            "dataset": meta.get("dataset", {}),
            "recipe": meta.get("recipe"),
        },
        "dataset": {
            "name": ds.name,
            "path": str(ds.path) if ds.path else None,
            "fingerprint": ds.fingerprint(),
            "sequences": {s: len(ds.splits[s]) for s in ("train", "valid", "test")},
        },
        "copying": copying,
        "membership": membership,
        "notes": notes,
        "seconds": {"copying": round(copy_seconds, 2), "total": round(time.perf_counter() - started, 2)},
        "plot": "audit.png",
    }
    target.mkdir(parents=True, exist_ok=True)
    audit_plot(doc, target / "audit.png")
    write_json_atomic(target / "audit.json", doc)
    return doc


def audit_plot(doc: dict[str, Any], path: Path) -> Path:
    """The audit at a glance (PNG, written atomically): the share of n-grams found in the training split
    for the synthetic sequences beside the held-out reference, the mean longest copied run, and the attack
    AUC per kind of training data with its 95 % interval (0.5: chance)."""
    from farzi._io import atomic_file
    from farzi.plots import _pyplot

    plt = _pyplot()
    c, m = doc["copying"], doc.get("membership")
    rows = [("Farzi argmax", c["synthetic"]["argmax"]), ("Farzi sampled", c["synthetic"]["sampled"])]
    rows = [(lab, x) for lab, x in [*rows, ("held-out", c["held_out"])] if x]
    colors = {"Farzi argmax": "#c0392b", "Farzi sampled": "#e59866", "held-out": "#7f8c8d"}
    fig, axes = plt.subplots(1, 3 if m else 2, figsize=(13 if m else 9, 3.8), squeeze=False)
    ax = axes[0][0]
    ns, width = c["ngrams"], 0.8 / len(rows)
    for k, (lab, x) in enumerate(rows):
        values = [100.0 * (x["ngram_overlap"][str(n)] or 0.0) for n in ns]  # [len(ns)]
        ax.bar([i + k * width for i in range(len(ns))], values, width, label=lab, color=colors[lab])
    ax.set_xticks([i + width * (len(rows) - 1) / 2 for i in range(len(ns))], [f"{n}-grams" for n in ns])
    ax.set_ylabel("% found in the training split")
    ax.set_title("n-gram overlap", fontsize=10)
    ax.set_ylim(0.0, 125.0)  # room for the legend above 100 %
    ax.legend(fontsize=8, loc="upper right", ncol=len(rows))
    ax = axes[0][1]
    ax.bar(range(len(rows)), [x["longest_run"]["mean"] for _, x in rows], color=[colors[lab] for lab, _ in rows])
    ax.set_xticks(range(len(rows)), [f"{lab}\n(max {x['longest_run']['max']})" for lab, x in rows], fontsize=8)
    ax.set_ylabel("tokens")
    ax.set_title("longest run copied from one training sequence (mean)", fontsize=10)
    if m:
        ax, g = axes[0][2], m["groups"]
        vals = [x["auc"]["value"] for x in g]
        err = [[v - x["auc"]["lo"] for v, x in zip(vals, g, strict=True)]]
        err.append([x["auc"]["hi"] - v for v, x in zip(vals, g, strict=True)])
        ax.bar(
            range(len(g)),
            vals,
            yerr=err,
            capsize=4,
            color=["#c0392b" if x["kind"] == "farzi" else "#7f8c8d" for x in g],
        )
        ax.axhline(0.5, color="#2c3e50", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(g)), [x["label"] for x in g], fontsize=8)
        ax.set_ylim(0.0, 1.0)
        ax.set_ylabel("AUC (95 % interval; 0.5 = chance)")
        ax.set_title("loss-threshold membership attack", fontsize=10)
    fig.suptitle(f"privacy audit: {Path(doc['bundle']['path']).name} on {doc['dataset']['name']}", fontsize=11)
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.16, top=0.84, wspace=0.3)
    with atomic_file(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return Path(path)


def summary_rows(doc: dict[str, Any], label: str | None = None) -> list[dict[str, Any]]:
    """An audit as rows, one per kind of training data (what a table of audits shows): the students' test
    utility, the attack's AUC and TPR at 1 % FPR (each ``{value, lo, hi}``), and for the bundle its copying
    figures (mean / max longest run, 5- and 8-gram overlap, copies); ``label`` renames the bundle's row.
    The held-out reference comes last, with its copying figures alone."""

    def copying(x: dict[str, Any]) -> dict[str, Any]:
        run = x["longest_run"]
        return {
            "run_mean": run["mean"],
            "run_max": run["max"],
            **{f"{n}-gram": x["ngram_overlap"][str(n)] for n in (5, 8)},
        }

    c, m = doc["copying"], doc.get("membership") or {"groups": []}
    rows = []
    for g in m["groups"]:
        row = {"data": label if label and g["kind"] == "farzi" else g["label"], "kind": g["kind"]}
        row |= {"students": len(g["students"]), "utility": g["utility"], "auc": g["auc"], "tpr": g["tpr_at_fpr"]}
        if "own_members" in g:  # random:N: the attack on the N users its students trained on
            row |= {"own_auc": g["own_members"]["auc"], "own_n": g["own_members"]["members"]}
        if g["kind"] == "farzi":
            row |= copying(c["synthetic"]["argmax"]) | {"copies": c["copies_total"]}
        rows.append(row)
    if not any(r["kind"] == "farzi" for r in rows):
        rows.insert(
            0,
            {
                "data": label or "farzi",
                "kind": "farzi",
                **copying(c["synthetic"]["argmax"]),
                "copies": c["copies_total"],
            },
        )
    rows.append({"data": "held-out (never trained on)", "kind": "reference", **copying(c["held_out"])})
    return rows


# ------------------------------------------------------------------ what it will cost


def plan_audit(
    bundle: str | Path, ds: PreparedDataset, cfg: AuditConfig, out: str | Path | None = None, probe_steps: int = 2
) -> Plan:
    """The cost of :func:`audit_bundle` with these arguments: the n-gram matching (one length timed on
    the real split, times the lengths the pass is expected to take), then every student's steps timed
    as ``train-student --plan`` times them (:func:`farzi.plan.measure_training`), its scoring and its
    bootstrap. Writes nothing."""
    from farzi.plan import _finish, _start

    started = _start()
    bundle = Path(bundle)
    meta, notes = check_audit(bundle, ds, cfg, out)
    data = load_bundle(bundle)
    syn = [np.ones(data.xi, dtype=np.int64)] * (data.mu * (1 + cfg.samples))
    held = reference_windows(ds, data.xi, cfg.seed)
    t0 = time.perf_counter()
    match_ngrams(ds.train, syn + held, ns=(), max_n=2)
    per_length = (time.perf_counter() - t0) / 2
    # the pass runs to the longest run found: at most xi lengths (a sequence copied whole)
    stages = [Stage("copying: n-gram matching (at most)", max(max(NGRAMS), data.xi), "length", per_length)]
    members, non = audit_sets(ds)
    name, overrides = student_model(meta, ds)
    model_cfg = make_config(name, ds.vocab_size, **overrides)
    check_model_sizes(model_cfg)
    dev = torch.device(cfg.device)
    for kind, label, spec in _specs(data, bundle, cfg):
        config = student_config(meta, cfg, kind, cfg.seed)
        train_set: TrainSet
        train_set, _ = training_set(ds, parse_spec(spec), model_cfg.max_len, config.seed, device=cfg.device)
        torch.manual_seed(config.seed)
        model = build_model(name, model_cfg)
        cost = measure_training(model, train_set, ds, config, dev, probe_steps)
        stages.append(Stage(f"{label}: training", cfg.students * config.max_steps, "step", cost.step_seconds))
        # scoring members and non-members and the test split: about as long as validations over as many sequences
        scale = (len(members) + len(non) + len(ds.test)) / max(1, len(ds.valid))
        stages.append(
            Stage(f"{label}: validation and scoring", cfg.students, "student", cost.eval_seconds * (1 + scale))
        )
    attacked = cfg.students * len(_specs(data, bundle, cfg)) + len(cfg.models)  # models the attack scores
    if attacked:
        a, b = np.random.default_rng(0).random(len(members)), np.random.default_rng(1).random(len(non))
        t0 = time.perf_counter()
        for _ in range(5):
            auc(a, b), tpr_at_fpr(a, b)
        each = (time.perf_counter() - t0) / 5
        stages.append(Stage("attack bootstrap", attacked * cfg.n_boot, "model x replicate", each))
    if cfg.models:
        notes = [*notes, f"{len(cfg.models)} given model(s) scored (not timed)"]
    return _finish("audit", stages, dev, started, 0, notes)


def read_audit(path: str | Path) -> dict[str, Any]:
    """An audit JSON document (``OUT/audit.json``), checked for its format."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or doc.get("format") != AUDIT_FORMAT:
        raise ConfigError(f"{path} is not a farzi audit", "pass the audit.json farzictl audit wrote")
    return doc
