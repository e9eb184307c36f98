"""Bounds derived from the machine: the memory this process may still take, and the cores it may use.

Every size option (``--latent-dim``, ``--budget``, ``--real-batch``, ``--meta-batch``, ``--syn-batch``,
``--inner-steps``, ``--batch-size``, ``--max-len``, ``--d-model``, ...) is bounded by memory, not by a
fixed element count: before a run allocates anything, its big allocations are estimated from the
settings and the dataset (:func:`distill_needs`, :func:`training_needs`) and :func:`check_needs`
refuses, in one :class:`~farzi.errors.ConfigError`, a run whose estimate exceeds
:func:`available_memory`, naming the option to lower.

The estimates count what a step holds at its peak, in float32 (4 bytes) unless said otherwise, with
generous factors for autograd's saved tensors and temporaries: conservative, yet a run of the
benchmark protocols (ML-100k / PTB, ``--preset cpu``) needs well under 4 GiB. The process's own
baseline (the interpreter, torch, the dataset) is not counted: :func:`available_memory` is measured
with it already in use.
"""

from __future__ import annotations

import math
import os
import resource
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farzi.errors import ConfigError

FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max: a rate above it overflows an optimizer's step
MEMINFO = Path("/proc/meminfo")
PROC_STATUS = Path("/proc/self/status")
PROC_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")
NO_LIMIT = 1 << 60  # a cgroup v1 limit this high (9223372036854771712: a page short of 2**63) means none
KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
MOST = 0.8  # an error names the largest parts of a run's memory until they make up this share of it

F32, F64, ID = 4, 8, 8  # bytes of a float32, a float64, an int64 token id
GRAPH = 3  # a forward pass kept for its backward: its activations, their gradients and temporaries
SECOND_ORDER = 2  # ... and a double backward (Hessian-vector products) about doubles that
SEQUENCE_OBJECT_BYTES = 200  # a Python object per drawn window (a numpy slice in a list), besides its tokens
CHUNK_LOGITS = (1 << 20) * F32 * 4  # chunked training loss: a chunk's logits, softmax and gradients (models.loss)
EVAL_ROWS = 256  # sequences evaluated at once (farzi.evaluate's largest batch)

# Copies of the model's parameters a training run holds: weights, gradients, Adam's two moments, the
# best state kept for early stopping, and a trajectory run's latest unsaved state with its moments.
TRAIN_MODEL_COPIES = 8
# Copies of the summary (latent and decoder) an outer step holds: the leaves, the outer Adam's two
# moments, the meta-gradient, its accumulator and temporaries in the reversal, the clipped update.
SUMMARY_COPIES = 8
# float64 copies of the summary averaging a meta-batch takes (the running sum, a start's flat copy, the mean)
META_BATCH_F64_COPIES = 3
# Bytes per teacher parameter in the inner loop: its float32 weights and a working copy, and float64
# weights, moments and their adjoints being reversed (w, m, v; dw, dm, dv; w_prev, m_prev, v_prev).
TEACHER_BYTES_PER_PARAMETER = 2 * F32 + 9 * F64 + 4 * F32
STATE_F64_COPIES = 3  # a saved inner state: float64 weights and Adam's two moments
# [b, L, |V|] float32 tensors: a synthetic batch (logits, masked, softmax) and the teacher's full
# logits on it (logits, masked, log-softmax, weighted targets)
SOFT_STEP_COPIES = 7
REAL_LOGIT_COPIES = 6  # the real batch's full logits: logits, masked, log-softmax and their gradients
INIT_COPIES = 8  # the teacher init: its logits, targets (one-hot, prediction, mix) and the fit's logits
SPARSE_STEP_COPIES = 4  # a sparse summary's inner step: the teacher's full logits alone (no [b, L, |V|] inputs)
SPARSE_INIT_ELEMENTS = 1 << 24  # the sparse teacher init's targets, a few windows at a time
FUSED_LOGIT_COPIES = 3  # a fused loss's chunk of logits (farzi.models.loss.CHUNK_ELEMENTS): logits, softmax, grad
SAMPLED_LOGIT_COPIES = 5  # a sampled softmax's [N, 1 + S] logits (plain autograd): logits, masked, cat, exp, grad
SOFT_BATCH_COPIES = 3  # a soft training batch: logits, masked, softmax


# ------------------------------------------------------------------ the machine
def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask; all of them where the OS has none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _field_kib(text: str | None, name: str) -> int | None:
    """``NAME:  N kB`` of /proc/meminfo or /proc/self/status, in bytes."""
    for line in (text or "").splitlines():
        key, _, rest = line.partition(":")
        if key.strip() == name:
            parts = rest.split()
            if parts and parts[0].isdigit():
                return int(parts[0]) * KIB
    return None


def _int(text: str | None) -> int | None:
    text = (text or "").strip()
    return int(text) if text.isdigit() else None


def _stat(text: str | None, *names: str) -> int:
    """The first of ``names`` in a cgroup memory.stat (0 if none)."""
    values = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            values[parts[0]] = int(parts[1])
    return next((values[n] for n in names if n in values), 0)


def physical_available() -> int | None:
    """Memory the kernel can give without swapping: MemAvailable, else the free pages (os.sysconf)."""
    avail = _field_kib(_read(MEMINFO), "MemAvailable")
    if avail is not None:
        return avail
    for pages in ("SC_AVPHYS_PAGES", "SC_PHYS_PAGES"):
        try:
            return int(os.sysconf(pages)) * int(os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, OSError, ValueError):
            continue
    return None


def rlimit_room() -> int | None:
    """Room left under this process's soft RLIMIT_AS (address space) and RLIMIT_DATA (heap), where set."""
    status = _read(PROC_STATUS)
    room = None
    for limit, used in ((resource.RLIMIT_AS, "VmSize"), (getattr(resource, "RLIMIT_DATA", None), "VmData")):
        if limit is None:
            continue
        try:
            soft = resource.getrlimit(limit)[0]
        except (OSError, ValueError):
            continue
        if soft == resource.RLIM_INFINITY or soft < 0:
            continue
        left = max(0, soft - (_field_kib(status, used) or 0))
        room = left if room is None else min(room, left)
    return room


def _cgroup_dirs() -> list[tuple[Path, Path, str]]:
    """(the process's cgroup directory, the hierarchy's root, "v2" or "v1") for the memory controller."""
    out: list[tuple[Path, Path, str]] = []
    for line in (_read(PROC_CGROUP) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        rel = rel.strip().lstrip("/")
        if controllers == "":
            roots = [CGROUP_ROOT, CGROUP_ROOT / "unified"]
            kind = "v2"
        elif "memory" in controllers.split(","):
            roots = [CGROUP_ROOT / "memory"]
            kind = "v1"
        else:
            continue
        for root in roots:
            if not root.is_dir():
                continue
            here = root / rel
            # inside a cgroup namespace (a container) the path names the host's view: the root is ours
            out.append((here if here.is_dir() else root, root, kind))
    return out


def cgroup_room() -> int | None:
    """Room left under the cgroup memory limits of this process and its parents (v2 or v1), where set:
    the limit less the usage that cannot be reclaimed (the inactive page cache excluded)."""
    room = None
    for here, root, kind in _cgroup_dirs():
        d = here
        while True:
            if kind == "v2":
                limit, usage = _int(_read(d / "memory.max")), _int(_read(d / "memory.current"))
                cache = _stat(_read(d / "memory.stat"), "inactive_file")
            else:
                limit, usage = _int(_read(d / "memory.limit_in_bytes")), _int(_read(d / "memory.usage_in_bytes"))
                cache = _stat(_read(d / "memory.stat"), "total_inactive_file", "inactive_file")
            if limit is not None and limit < NO_LIMIT:
                left = max(0, limit - max(0, (usage or 0) - cache))
                room = left if room is None else min(room, left)
            if d == root or d.parent == d:
                break
            d = d.parent
    return room


def available_memory() -> int:
    """Bytes this process may still allocate: the least of the memory the kernel has available
    (MemAvailable), the room under its RLIMIT_AS / RLIMIT_DATA, and the room under its cgroup's memory
    limit (``sys.maxsize`` where none of them is known)."""
    known = [x for x in (physical_available(), rlimit_room(), cgroup_room()) if x is not None]
    return min(known) if known else 2**63 - 1


def device_available(device: Any) -> int | None:
    """Free memory on a CUDA device (None for the CPU, or where it cannot be asked)."""
    if getattr(device, "type", str(device).split(":")[0]) != "cuda":
        return None
    try:
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    except (RuntimeError, AssertionError, ValueError):
        return None


def size_text(nbytes: float) -> str:
    """``~8.2 GiB``-style: MiB below a GiB, TiB from 1024 GiB."""
    if nbytes < GIB:
        return f"{nbytes / MIB:.1f} MiB"
    if nbytes < 1024 * GIB:
        return f"{nbytes / GIB:.1f} GiB"
    return f"{nbytes / (1024 * GIB):.3g} TiB"


# ------------------------------------------------------------------ checks
@dataclass(frozen=True)
class Need:
    """One part of a run's memory: what it is, its bytes, and how to shrink it."""

    what: str
    nbytes: int
    fix: str


def _limit(device: Any = None) -> tuple[int, str]:
    avail = available_memory()
    gpu = device_available(device) if device is not None else None
    if gpu is not None and gpu < avail:
        return gpu, f"{device} has"
    return avail, "this machine has"


def check_fits(what: str, nbytes: int, fix: str, device: Any = None) -> None:
    """Raise ConfigError "WHAT needs ~N GiB but this machine has ~M GiB available; FIX" when ``nbytes``
    is more than :func:`available_memory` (or, on a CUDA ``device``, the GPU's free memory if less)."""
    avail, where = _limit(device)
    if nbytes > avail:
        raise ConfigError(f"{what} needs ~{size_text(nbytes)} but {where} ~{size_text(avail)} available", fix)


def check_needs(command: str, needs: Iterable[Need], device: Any = None) -> None:
    """:func:`check_fits` on the sum of ``needs``; the error names the largest parts and their fixes:
    as many as it takes for the rest to fit, or to make up MOST of the total."""
    parts = sorted((n for n in needs if n.nbytes > 0), key=lambda n: -n.nbytes)
    total = sum(n.nbytes for n in parts)
    avail, where = _limit(device)
    if total <= avail:
        return
    named, covered = [], 0
    for part in parts:
        named.append(part)
        covered += part.nbytes
        if total - covered <= avail or covered >= MOST * total:
            break
    what = "; ".join(f"{p.what}: ~{size_text(p.nbytes)}" for p in named)
    fixes = list(dict.fromkeys(p.fix for p in named))
    raise ConfigError(
        f"{command} needs ~{size_text(total)} ({what}) but {where} ~{size_text(avail)} available",
        ", and ".join(fixes),
    )


# ------------------------------------------------------------------ models
def model_parameters(name: str, cfg: Any) -> int:
    """The parameters model ``name`` with config ``cfg`` has, counted on the meta device (nothing is
    allocated); a deep model is built with two layers and its count extrapolated (exact: every model's
    parameters grow linearly with ``n_layers``)."""
    import dataclasses

    import torch

    from farzi.models import build_model

    def count(c: Any) -> int:
        try:
            with torch.device("meta"):
                return sum(p.numel() for p in build_model(name, c).parameters())
        except (RuntimeError, OverflowError, ValueError):  # torch's size arithmetic overflowed: beyond any memory
            return 2**63

    layers = getattr(cfg, "n_layers", None)
    if not isinstance(layers, int) or layers <= 2:
        return count(cfg)
    one, two = count(dataclasses.replace(cfg, n_layers=1)), count(dataclasses.replace(cfg, n_layers=2))
    return one + (layers - 1) * (two - one)


def token_floats(cfg: Any, length: int) -> int:
    """Floats one position's forward pass computes (a generic upper count from the config's widths):
    per layer its norms, projections and residuals (10 d), feed-forward (2 d_ff), recurrent gates
    (12 d_hidden) and attention row (3 heads x length), plus the embedding and output (4 d)."""
    d = int(cfg.d_model)
    ff = int(getattr(cfg, "d_ff", 4 * d))
    hidden = int(getattr(cfg, "d_hidden", 0))
    heads = int(getattr(cfg, "n_heads", 0))
    layers = int(getattr(cfg, "n_layers", 1))
    return 4 * d + layers * (10 * d + 2 * ff + 12 * hidden + 3 * heads * length)


def training_needs(
    model_name: str,
    cfg: Any,
    vocab_size: int,
    rows: int,
    length: int,
    soft_rows: int = 0,
    eval_length: int | None = None,
    copies: int = TRAIN_MODEL_COPIES,
    batch_flag: str = "--batch-size",
    parameters: int | None = None,
) -> list[Need]:
    """What a training run holds at its peak: the model's parameters (``copies`` of them: weights,
    gradients, Adam's moments, kept states), one batch of ``rows`` x ``length`` positions through the
    model and its backward, ``soft_rows`` sequences of distributions ([length, |V|] each) materialized
    for a soft batch, and a validation batch (EVAL_ROWS sequences of ``eval_length``, scores over |V|)."""
    P = model_parameters(model_name, cfg) if parameters is None else parameters
    tokens = rows * length
    batch = tokens * (GRAPH * F32 * token_floats(cfg, length) + ID) + CHUNK_LOGITS
    ev_len = length if eval_length is None else eval_length
    evaluation = EVAL_ROWS * (ev_len * F32 * token_floats(cfg, ev_len) + 3 * F32 * vocab_size)
    needs = [
        Need(f"the model, {P} parameters with gradients and Adam moments", copies * F32 * P, _model_fix(cfg)),
        Need(f"a batch of {rows} x {length} positions", batch, f"lower {batch_flag} or --max-len"),
        Need("validation", evaluation, "lower --max-len or the model's size"),
    ]
    if soft_rows:
        soft = SOFT_BATCH_COPIES * F32 * soft_rows * length * vocab_size
        needs.append(
            Need(f"a batch of {soft_rows} x {length} x {vocab_size} distributions", soft, f"lower {batch_flag}")
        )
    return needs


def _model_fix(cfg: Any) -> str:
    flags = ["--d-model", "--n-layers"] if hasattr(cfg, "n_layers") else ["--d-model"]
    return f"use a smaller model (lower {' or '.join(flags)})"


# ------------------------------------------------------------------ distillation
def distill_needs(
    cfg: Any, vocab_size: int, longest: int, model_name: str, model_cfg: Any, checkpoints: int = 0
) -> list[Need]:
    """What one outer step of distillation ``cfg`` (a DistillConfig) holds at its peak, on a dataset of
    ``vocab_size`` tokens whose longest training sequence has ``longest``, with teacher ``model_name``
    / ``model_cfg`` and ``checkpoints`` Omega checkpoints cached (their weights, and with
    ``--inner-state omega`` their Adam moments):

    * the summary: latent mu x xi x d and decoder d x |V|, SUMMARY_COPIES of them, and with a
      meta-batch one meta-gradient per start point plus the float64 average;
    * the initial summary (``--init teacher``): [mu, xi, |V|] targets and the fit's logits;
    * an inner step: syn_batch x xi distributions through the teacher's full logits (with
      ``--inner-softmax sampled``, over K candidates and S negatives), twice for the double backward;
      every step of it with ``--meta-grad unroll``; else the saved inner states;
    * the real batch: real_batch x L positions through the teacher's full logits and backward, a
      chunk at a time (with ``--meta-softmax sampled``, over 1 + S logits each), and its drawn windows
      (L = the teacher's context, or the longest sequence if shorter);
    * the teacher's weights, the inner optimizer's states and their adjoints;
    * with ``--select-every``, a student trained on the summary with the recipe.
    """
    mu, xi, d, V = cfg.mu, cfg.xi, cfg.latent_dim, vocab_size
    objective, meta_grad, init = _value(cfg.objective), _value(cfg.meta_grad), _value(cfg.init)
    P = model_parameters(model_name, model_cfg)
    L = max(1, min(int(model_cfg.max_len), longest))
    S = mu * xi * d + d * V
    summary = f"latent {mu} x {xi} x {d} and decoder {d} x {V}"
    needs = [Need(f"the summary, {summary}", SUMMARY_COPIES * F32 * S, "lower --latent-dim or the --budget")]
    if cfg.meta_batch > 1:
        grads = cfg.meta_batch * F32 * S + META_BATCH_F64_COPIES * F64 * S
        needs.append(Need(f"the meta-gradients of {cfg.meta_batch} start points", grads, "lower --meta-batch"))
    K = int(getattr(cfg, "support", 0) or 0)  # a sparse summary's candidates a position (0: dense)
    if init == "teacher":
        dense_targets = INIT_COPIES * F32 * (min(mu * xi * V, SPARSE_INIT_ELEMENTS) if K else mu * xi * V)
        targets = dense_targets + mu * xi * F32 * (token_floats(model_cfg, xi) + (3 * K * d if K else 0))
        needs.append(Need(f"the teacher init, {mu} x {xi} x {V} targets", targets, "lower the --budget"))
    b = mu if objective == "dc" or not 0 < cfg.syn_batch < mu else cfg.syn_batch
    syn_tokens = b * xi
    copies = SPARSE_STEP_COPIES if K else SOFT_STEP_COPIES
    # --inner-softmax sampled: the logits over K candidates and S shared negatives, not over |V|
    sampled = K and _value(getattr(cfg, "inner_softmax", "full")) == "sampled"
    width = min(V, K + int(cfg.inner_negatives)) if sampled else V
    per_token = copies * F32 * width + GRAPH * F32 * token_floats(model_cfg, xi) + (3 * F32 * K * d if K else 0)
    step = SECOND_ORDER * syn_tokens * per_token
    steps = 1 if objective == "dc" else cfg.inner_steps
    syn_fix = "lower --syn-batch or the --budget"
    if meta_grad == "unroll" and objective != "dc":  # every step's graph kept, one of them differentiated twice
        graph = syn_tokens * per_token
        kept = steps * (graph + STATE_F64_COPIES * F32 * P) + step
        needs.append(Need(f"{steps} unrolled inner steps of {b} x {xi}", kept, "use --meta-grad reverse, " + syn_fix))
    else:
        needs.append(Need(f"an inner step, {b} x {xi} x {V} distributions", step, syn_fix))
        if objective != "dc":
            saved = saved_states(steps, meta_grad, cfg.segment)
            needs.append(Need(f"{saved} saved inner states", saved * STATE_F64_COPIES * F64 * P, "lower --inner-steps"))
    windows = cfg.real_batch * (L * ID + 2 * ID + SEQUENCE_OBJECT_BYTES)
    if objective != "mtt":  # mtt draws the real batch (to keep the draws aligned) but never runs it
        real_tokens = cfg.real_batch * L
        windows += real_tokens * GRAPH * F32 * token_floats(model_cfg, L)
        if objective == "dc":  # its real gradient on the full logits
            windows += real_tokens * REAL_LOGIT_COPIES * F32 * V
        elif _value(getattr(cfg, "meta_softmax", "full")) == "sampled":  # each target and S shared negatives
            windows += real_tokens * SAMPLED_LOGIT_COPIES * F32 * (min(V, int(cfg.meta_negatives)) + 1)
        else:  # the meta-loss through the fused loss: a chunk of logits at a time
            from farzi.models.loss import CHUNK_ELEMENTS

            windows += FUSED_LOGIT_COPIES * F32 * min(real_tokens * V, max(CHUNK_ELEMENTS, V))
    needs.append(Need(f"the real batch, {cfg.real_batch} x {L} positions x {V} tokens", windows, "lower --real-batch"))
    omega = 3 if _value(cfg.inner_state) == "omega" else 1
    teacher = P * TEACHER_BYTES_PER_PARAMETER + checkpoints * omega * F32 * P
    needs.append(Need(f"the teacher, {P} parameters, and its inner states", teacher, _model_fix(model_cfg)))
    if cfg.select_every:
        rows = min(cfg.recipe.batch or mu, mu)
        student = training_needs(
            model_name, model_cfg, V, rows, xi, soft_rows=rows, eval_length=L, batch_flag="--recipe-batch", parameters=P
        )
        needs += [Need(f"selection: {n.what}", n.nbytes, n.fix) for n in student]
    return needs


def saved_states(inner_steps: int, meta_grad: str, segment: int = 0) -> int:
    """Inner states the meta-gradient keeps (farzi.distill.metagrad): every K-th for the reversal
    (K = ``segment`` or REVERSE_ANCHOR, 16), and for ``checkpointed`` also a segment's recomputed
    states (K = ``segment`` or ceil(sqrt(T)))."""
    if meta_grad == "unroll":
        return 0
    if meta_grad == "checkpointed":
        k = segment or max(1, math.ceil(math.sqrt(inner_steps)))
        return math.ceil(inner_steps / k) + k
    from farzi.distill.metagrad import REVERSE_ANCHOR

    k = segment or REVERSE_ANCHOR
    return math.ceil(inner_steps / k)


def _value(x: Any) -> str:
    return str(getattr(x, "value", x))
