"""``distill()``: the outer loop that learns the summary by meta-matching, as orchestration only.

The parts, each in its own module:

* :mod:`farzi.distill.config` — :class:`DistillConfig`, every setting and its validation;
* :mod:`farzi.distill.teacher` — the teacher architecture and Omega, its checkpoints;
* :mod:`farzi.distill.init` — the initial summary (``--init``);
* :mod:`farzi.distill.objectives` — one object per meta-objective (farzi, mm, dc, mtt), each mapping
  (summary, the step's random draws) to (meta-loss, meta-gradient, stats);
* :mod:`farzi.distill.outer` — the outer Adam with clipping, and the resumable run state.

Each outer step draws its randomness from (seed, step) alone, so a run resumed
from a checkpoint ends bitwise where an uninterrupted run ends (on CPU).

Several processes (``collective``, :mod:`farzi.distributed`) split an outer step's
start points: rank r computes the global start points ``r * meta_batch ...``, the
meta-gradients are summed in one flat buffer and every rank takes the same outer
step, so N ranks act like one process with a meta-batch N times larger. Rank 0
alone writes the log, the run state and the bundle.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor

from farzi._io import Claim, Companion, atomic_file, claim_output, jsonl_log, safetensors_of
from farzi._version import __version__
from farzi.data.prepared import PreparedDataset
from farzi.distill.bundle import FarziData, load_bundle, save_bundle
from farzi.distill.config import (
    DistillConfig,
    Init,
    InnerOptimizerName,
    MetaGrad,
    Objective,
    StartWeighting,
    parse_budget,
)
from farzi.distill.init import init_record, initial_summary
from farzi.distill.objectives import Contribution, MetaObjective, grad_norm, make_objective, step_draws
from farzi.distill.outer import STATE_FORMAT, OuterOptimizer, RunState, load_run_state, save_run_state
from farzi.distill.parallel import LOCAL, Collective, start_indices
from farzi.distill.select import Selection, as_bundle, recipe, student_score
from farzi.distill.summary import Summary
from farzi.distill.teacher import Teacher, load_teacher
from farzi.distributed import agree, share_tensors
from farzi.errors import BundleError, ConfigError, FarziError
from farzi.progress import ProgressFn, report

Tensors = list[Tensor]
OBJECTIVES = tuple(o.value for o in Objective)
INNER_OPTIMIZERS = tuple(o.value for o in InnerOptimizerName)


@dataclass
class DistillResult:
    bundle: FarziData
    path: Path
    log_path: Path
    steps: int
    skipped: int
    wall_seconds: float
    final_meta_loss: float
    summary: dict[str, Any]


def run_paths(out: Path) -> tuple[Path, Path]:
    """The JSONL log and the resumable state beside a bundle path."""
    return out.with_suffix(".log.jsonl"), out.with_suffix(".state.safetensors")


def claim_bundle(
    out: Path, overwrite: bool = False, dataset: Path | None = None, trajectories: Path | None = None
) -> contextlib.AbstractContextManager[Claim]:
    """The claim :func:`distill` holds on a bundle path, the log and the run state beside it; a caller
    (the CLI) takes it first, before any costly work such as the cost probe, and distill joins it.

    Refused at once (``ConfigError``): a path that does not end in ``.safetensors``, a second writer,
    a file there that is not a bundle, and a log or run state beside it that is not farzi's, unless
    ``overwrite``; even with it, the dataset and trajectories read (``dataset``, ``trajectories``)."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"--out {out} must end in .safetensors", "name the bundle e.g. ptb-400x50.safetensors")
    log_path, state_path = run_paths(out)
    companions = (
        Companion(log_path, "a distillation log", jsonl_log("step")),
        Companion(state_path, "a distillation run state", safetensors_of(STATE_FORMAT)),
    )
    return claim_output(out, "bundle", overwrite, companions=companions, inputs=(dataset, trajectories))


def outer_step(
    step: int,
    summary: Summary,
    objective: MetaObjective,
    outer: OuterOptimizer,
    cfg: DistillConfig,
    collective: Collective = LOCAL,
) -> dict[str, Any]:
    """One outer step: the objective at each of the step's start points, their meta-gradients
    averaged (over the meta-batch and the processes), then the outer update. Returns the log record.

    A start point whose meta-loss or meta-gradient is not finite is left out of the average; the
    step is skipped when none is left.
    """
    t0 = time.perf_counter()
    contributions = [
        objective(summary, step_draws(cfg.seed, step, i)) for i in start_indices(collective, cfg.meta_batch)
    ]
    normalize = cfg.start_weighting is StartWeighting.normalize
    grads, used = average_meta_gradients(contributions, collective, normalize=normalize)
    norm = grad_norm(grads) if used else math.nan
    result = outer.step(grads, norm, finite_loss=used > 0)
    record: dict[str, Any] = {"step": step}
    starts = [s for part in collective.gather([_start_record(c) for c in contributions]) for s in part]
    if len(starts) == 1:  # one start point per step: its figures are the step's
        record.update({k: v for k, v in starts[0].items() if k != "finite"})
    else:
        finite = [s["meta_loss"] for s in starts if s["finite"]]
        record["meta_loss"] = sum(finite) / len(finite) if finite else math.nan
        record["starts"] = starts
    record.update(grad_norm=result.grad_norm, skipped=result.skipped)
    if collective.world > 1:
        record["ranks"] = collective.world
    record["step_seconds"] = round(time.perf_counter() - t0, 4)
    return record


def _start_record(c: Contribution) -> dict[str, Any]:
    rec = {"meta_loss": c.meta_loss, **c.stats}
    if "real_loss_start" in c.stats:
        rec["real_loss_delta"] = c.meta_loss - c.stats["real_loss_start"]
    rec["finite"] = _finite(c)
    return rec


def _finite(c: Contribution) -> bool:
    return math.isfinite(c.meta_loss) and math.isfinite(grad_norm(c.grads))


def average_meta_gradients(
    contributions: list[Contribution], collective: Collective = LOCAL, normalize: bool = False
) -> tuple[Tensors, int]:
    """The mean meta-gradient over every finite contribution of every process, and how many there were.

    With ``normalize`` each contribution is scaled to unit norm first (``--start-weighting normalize``).
    One process with one contribution and no normalization returns its gradients as they are
    (bitwise); otherwise the local sum and count travel in one flat buffer through ``collective.sum``.
    """
    if collective.world == 1 and len(contributions) == 1 and not normalize:
        c = contributions[0]
        return c.grads, int(_finite(c))
    like = contributions[0].grads
    total = torch.zeros(sum(g.numel() for g in like) + 1, dtype=torch.float64, device=like[0].device)
    for c in contributions:
        if _finite(c):
            flat = torch.cat([g.reshape(-1).double() for g in c.grads])
            total[:-1] += flat / flat.norm().clamp_min(1e-30) if normalize else flat
            total[-1] += 1
    total = collective.sum(total)
    used = int(total[-1].item())
    mean = total[:-1] / max(used, 1)
    grads, offset = [], 0
    for g in like:
        grads.append(mean[offset : offset + g.numel()].view_as(g).to(g.dtype))
        offset += g.numel()
    return grads, used


class RunLog:
    """The JSON-lines log of a run: one record per outer step.

    On resume the lines that belong to the saved state are kept and the rest dropped,
    by writing them to a temporary file renamed over the log: a run killed at any point,
    even during this rewrite, never loses the history its state accounts for.
    """

    def __init__(self, path: Path, keep: int | None) -> None:
        self.path = path
        lines: list[str] = []
        if keep is not None and path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines()[:keep]
        if len(lines) != (keep or 0):
            raise ConfigError(
                f"the log {path} holds {len(lines)} of the {keep} steps its run state accounts for",
                "delete the .state.safetensors file beside it to start over",
            )
        with atomic_file(path) as tmp:
            tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        self.records = [json.loads(line) for line in lines]
        self._file: IO[str] = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()
        self.records.append(record)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def skipped(self) -> int:
        return sum(1 for r in self.records if r.get("skipped"))

    def close(self) -> None:
        self._file.close()


def _bundle_records(
    ds: PreparedDataset, cfg: DistillConfig, teacher: Teacher, trajectories: Path | None
) -> dict[str, dict[str, Any]]:
    """The provenance a bundle carries: dataset, teacher, distill settings."""
    return {
        "dataset": {
            "name": ds.name,
            "fingerprint": ds.fingerprint(),
            "path": str(ds.path) if ds.path else None,
            "train_sequences": len(ds.train),
            "train_tokens": int(ds.train.num_tokens),
        },
        "teacher": {
            "model": teacher.model.name,
            "config": teacher.model.config.to_dict(),
            "trajectories": str(trajectories) if trajectories else None,
            "checkpoints": len(teacher.omega) if teacher.omega else 0,
        },
        # threads: torch intra-op threads of the run (how it ran, not a setting of the result)
        "distill": {**cfg.to_dict(), "package_version": __version__, "threads": torch.get_num_threads()},
    }


def _finished_bundle(out: Path, cfg: DistillConfig, ds: PreparedDataset) -> FarziData | None:
    """The bundle at ``out`` when it is this run's finished result (same settings, same data)."""
    if not out.is_file():
        return None
    try:
        data = load_bundle(out)
    except BundleError:
        return None
    recorded = {k: v for k, v in data.meta["distill"].items() if k not in ("package_version", "device", "threads")}
    wanted = {k: v for k, v in cfg.to_dict().items() if k != "device"}
    same_data = data.meta["dataset"].get("fingerprint") == ds.fingerprint()
    return data if recorded == wanted and same_data else None


def start_summary(
    cfg: DistillConfig, ds: PreparedDataset, teacher: Teacher, latent: Tensor, decoder: Tensor
) -> Summary:
    """The outer parameters from an initial summary: latent and decoder, and log tau / log inner lr when learned."""
    return Summary.create(
        latent,
        decoder,
        cfg.tau,
        [ds.vocab.pad_id],
        teacher.device,
        learn_tau=cfg.learn_tau,
        inner_lr=cfg.inner_lr if cfg.learn_inner_lr else None,
    )


def distill(
    ds: PreparedDataset,
    cfg: DistillConfig,
    out: Path,
    trajectories: Path | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    progress: ProgressFn | None = None,
    stop_after: int | None = None,
    overwrite: bool = False,
    collective: Collective = LOCAL,
) -> DistillResult:
    """Distill ``ds`` into a farzi-data bundle at ``out``.

    A JSONL log of every outer step goes to ``out`` with suffix ``.log.jsonl``;
    with ``checkpoint_every`` the run state is saved to ``.state.safetensors``
    beside it, and ``resume=True`` continues from there (a finished run resumes to
    its bundle). ``stop_after`` ends the call after that many outer steps in total
    (for tests of resumption).

    ``out`` is claimed before any work (:func:`farzi._io.claim_output`): a second
    writer of the same bundle fails at once, and an existing file that is not a
    farzi-data bundle is refused unless ``overwrite``.

    With a ``collective`` of several ranks every rank calls this with the same arguments; they
    first compare a fingerprint of them (settings, dataset, trajectories) and all refuse to run
    when one differs or one rank met an error preparing. Only rank 0 touches ``out``.
    """
    out = Path(out)
    with contextlib.ExitStack() as claim:
        error, fingerprint = None, None
        try:
            cfg.validate(ds)
            if checkpoint_every < 0:
                raise ConfigError(f"--checkpoint-every {checkpoint_every} must be >= 0", "pass 0 to save no state")
            fingerprint = job_fingerprint(ds, cfg, trajectories, checkpoint_every, resume, stop_after)
            if collective.rank == 0:
                claim.enter_context(claim_bundle(out, overwrite, ds.path, trajectories))
        except FarziError as exc:
            error = exc
        agree(collective, fingerprint, error, "settings or data")
        return _distill(ds, cfg, out, trajectories, checkpoint_every, resume, progress, stop_after, collective)


def job_fingerprint(
    ds: PreparedDataset,
    cfg: DistillConfig,
    trajectories: Path | None,
    checkpoint_every: int,
    resume: bool,
    stop_after: int | None,
) -> str:
    """What every rank of one job must share: settings, dataset, trajectory set, how the run is kept."""
    manifest = Path(trajectories) / "manifest.json" if trajectories else None
    doc = {
        "config": cfg.fingerprint(),
        "dataset": ds.fingerprint(),
        "trajectories": hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest and manifest.is_file() else None,
        "checkpoint_every": checkpoint_every,
        "resume": resume,
        "stop_after": stop_after,
        "package": __version__,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _distill(
    ds: PreparedDataset,
    cfg: DistillConfig,
    out: Path,
    trajectories: Path | None,
    checkpoint_every: int,
    resume: bool,
    progress: ProgressFn | None,
    stop_after: int | None,
    collective: Collective = LOCAL,
) -> DistillResult:
    log_path, state_path = run_paths(out)
    writer = collective.rank == 0  # rank 0 alone reads and writes the run's files
    finished, error = None, None
    if resume and writer and not state_path.is_file():
        finished = _finished_bundle(out, cfg, ds)
        if finished is None:
            error = ConfigError(f"nothing to resume: {state_path} does not exist", "run without --resume to start")
    agree(collective, None, error, "")
    if collective.gather(finished is not None)[0]:
        if writer:
            assert finished is not None
            share_tensors(collective, {"latent": finished.latent, "decoder": finished.decoder})
            return _result(finished, out, log_path, _read_log(log_path), wall=0.0, ran=0, resumed_finished=True)
        shared, _ = share_tensors(collective, None)
        data = FarziData(shared["latent"], shared["decoder"], cfg.tau, {"task": ds.task})
        return DistillResult(data, out, log_path, cfg.outer_steps, 0, 0.0, math.nan, {"complete": True})
    log: RunLog | None = None
    try:
        try:
            torch.manual_seed(cfg.seed)
            teacher = load_teacher(ds, cfg, trajectories)
            latent, decoder = initial_summary(cfg, ds, teacher)
            summary = start_summary(cfg, ds, teacher, latent, decoder)
            outer = OuterOptimizer(summary, cfg.outer_lr, cfg.outer_weight_decay, cfg.grad_clip)
            objective = make_objective(cfg, ds, teacher)
            fingerprints = (cfg.fingerprint(), ds.fingerprint(), cfg.settings())
            state = RunState(step=0, log_lines=0)
            if resume and writer:
                state = load_run_state(state_path, summary, outer, *fingerprints)
            selection = Selection.create(ds.task) if cfg.select_every and writer else None
            if selection is not None:
                selection.restore(state.extra_tensors, state.extra.get("selection", {}))
                if not selection.candidates:  # the initial summary is the first candidate
                    selection.consider(0, summary, _score(summary, ds, teacher, cfg))
            if writer:
                log = RunLog(log_path, state.log_lines if resume else None)
        except FarziError as exc:
            error = exc
        agree(collective, None, error, "")
        if collective.world > 1:  # every rank starts from rank 0's summary and outer state
            state = _share_state(collective, summary, outer, state)
        first_step = state.step
        start = time.perf_counter()
        target = cfg.outer_steps if stop_after is None else min(stop_after, cfg.outer_steps)
        while state.step < target:
            step = state.step + 1
            record = outer_step(step, summary, objective, outer, cfg, collective)
            extra_tensors: dict[str, Tensor] = {}
            extra: dict[str, Any] = {}
            if selection is not None:
                if selection.due(cfg, step):
                    record["selection"] = selection.consider(step, summary, _score(summary, ds, teacher, cfg))
                extra_tensors, extra["selection"] = selection.state()
            if log is not None:
                log.write(record)
            state = RunState(step, len(log) if log is not None else step, extra_tensors, extra)
            info = {"meta_loss": record["meta_loss"], "step_s": record["step_seconds"]}
            if log is not None and log.skipped:
                info["skipped"] = log.skipped
            report(progress, "distill", state.step, cfg.outer_steps, **info)
            if writer and checkpoint_every and state.step % checkpoint_every == 0:
                save_run_state(state_path, summary, outer, state, *fingerprints)
    finally:
        if log is not None:
            log.close()
    wall = time.perf_counter() - start
    records = log.records if log is not None else []
    if state.step < cfg.outer_steps or not writer:  # stop_after: like a kill, the saved state stays as it was
        data = FarziData(summary.latent.detach().cpu(), summary.decoder.detach().cpu(), cfg.tau, {"task": ds.task})
        last = records[-1] if records else {}
        return DistillResult(
            data,
            out,
            log_path,
            state.step,
            sum(1 for r in records if r.get("skipped")),
            wall,
            float(last.get("meta_loss", math.nan)),
            {"complete": state.step >= cfg.outer_steps, **({"rank": collective.rank} if not writer else {})},
        )
    assert log is not None
    if not summary.is_finite():
        raise ConfigError(
            "the distillation diverged: the summary holds NaN or infinite values (no bundle written)",
            "lower --outer-lr or --inner-lr, or keep --grad-clip on",
        )
    latent, decoder = summary.latent.detach().cpu(), summary.decoder.detach().cpu()
    if selection is not None and selection.best is not None:
        latent, decoder = selection.best
    history: dict[str, Any] = {"log": summarize_log(log.records), "init": init_record(cfg, ds, teacher)}
    learned = {"tau": summary.current_tau(), "inner_lr": summary.current_inner_lr()}
    if cfg.learn_tau or cfg.learn_inner_lr:
        history["learned"] = {k: v for k, v in learned.items() if v is not None}
    if selection is not None:
        history["selection"] = selection.history()
    save_bundle(
        out,
        latent,
        decoder,
        summary.current_tau() if selection is None else selection.best_tau,
        ds.task,
        vocab=list(ds.vocab.tokens),
        vocab_sha256=ds.vocab.sha256(),
        specials=dict(ds.vocab.specials),
        masked_tokens=[ds.vocab.pad_id],
        **_bundle_records(ds, cfg, teacher, trajectories),
        recipe=recipe(cfg, ds.task),
        history=history,
    )
    state_path.unlink(missing_ok=True)
    result = _result(load_bundle(out), out, log_path, log.records, wall, ran=state.step - first_step)
    if collective.world > 1:
        result.summary["ranks"] = collective.world
    return result


def _share_state(collective: Collective, summary: Summary, outer: OuterOptimizer, state: RunState) -> RunState:
    """Rank 0's summary, outer Adam state and step count on every rank (bitwise)."""
    mine = None
    if collective.rank == 0:
        mine = {**dict(zip(summary.names, (p.detach() for p in summary.params), strict=True)), **outer.state_tensors()}
    tensors, meta = share_tensors(collective, mine, {"step": state.step, "log_lines": state.log_lines})
    if collective.rank != 0:
        with torch.no_grad():
            for name, p in zip(summary.names, summary.params, strict=True):
                p.copy_(tensors[name].to(p.device))
        outer.load_state_tensors({k: v.to(summary.latent.device) for k, v in tensors.items() if k.startswith("adam.")})
        state = RunState(int(meta["step"]), int(meta["log_lines"]))
    return state


def _score(summary: Summary, ds: PreparedDataset, teacher: Teacher, cfg: DistillConfig) -> float:
    return student_score(as_bundle(summary, ds.task, ds.vocab.pad_id), ds, teacher, cfg)


def summarize_log(records: list[dict[str, Any]]) -> dict[str, Any]:
    """What the bundle keeps of its log: how many inner loops continued Omega's Adam moments (of how
    many), and per stage of the start checkpoint (its training step, in quarters of the latest), how
    often T inner steps on the summary made the real loss worse, by how much on average, and the
    step's meta-gradient norm."""
    out: dict[str, Any] = {"outer_steps": len(records), "skipped": sum(1 for r in records if r.get("skipped"))}
    starts = [s for r in records for s in (r.get("starts") or [r]) if "moments" in s]
    if starts:  # how many inner loops continued Omega's Adam moments (the rest started fresh)
        out["starts_with_moments"] = [sum(1 for s in starts if s["moments"]), len(starts)]
    staged = []
    for r in records:
        for s in r.get("starts") or [r]:
            if isinstance(s.get("checkpoint_step"), int) and "real_loss_delta" in s:
                staged.append((s["checkpoint_step"], float(s["real_loss_delta"]), float(r.get("grad_norm", math.nan))))
    if not staged:
        return out
    top = max(step for step, _, _ in staged) or 1
    stages = []
    for q in range(4):
        lo, hi = q * top / 4, (q + 1) * top / 4
        group = [(d, n) for step, d, n in staged if lo <= step < hi or (q == 3 and step == top)]
        if not group:
            continue
        deltas = [d for d, _ in group]
        norms = sorted(n for _, n in group)
        stages.append(
            {
                "checkpoint_steps": [round(lo), round(hi)],
                "starts": len(group),
                "real_loss_delta_mean": round(sum(deltas) / len(deltas), 5),
                "worse_share": round(sum(d > 0 for d in deltas) / len(deltas), 4),
                "grad_norm_median": round(norms[len(norms) // 2], 5),
            }
        )
    out["stages"] = stages
    return out


def _result(
    data: FarziData,
    out: Path,
    log_path: Path,
    records: list[dict[str, Any]],
    wall: float,
    ran: int,
    resumed_finished: bool = False,
) -> DistillResult:
    """The result of a finished run; ``ran`` outer steps were run by this call (in ``wall`` seconds)."""
    steps = int(data.meta["distill"].get("outer_steps", len(records)))
    skipped = sum(1 for r in records if r.get("skipped"))
    final = float(records[-1]["meta_loss"]) if records else math.nan
    summary: dict[str, Any] = {
        "complete": True,
        "steps": steps,
        "skipped": skipped,
        "wall_seconds": round(wall, 3),
        "seconds_per_step": round(wall / ran, 4) if ran else None,
        "final_meta_loss": final if records else None,
    }
    if resumed_finished:
        summary["resumed"] = "already complete"
    return DistillResult(data, out, log_path, steps, skipped, wall, final, summary)


def _read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            break
    return out


__all__ = [
    "DistillConfig",
    "DistillResult",
    "Init",
    "MetaGrad",
    "Objective",
    "distill",
    "parse_budget",
    "OBJECTIVES",
    "FarziError",
]
