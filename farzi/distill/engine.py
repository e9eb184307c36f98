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
import copy
import dataclasses
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
    Decoder,
    DistillConfig,
    Init,
    InnerOptimizerName,
    MetaGrad,
    Objective,
    StartWeighting,
    parse_budget,
)
from farzi.distill.init import init_record, initial_sparse_summary, initial_summary
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


def start_summary(
    cfg: DistillConfig,
    ds: PreparedDataset,
    teacher: Teacher,
    latent: Tensor,
    decoder: Tensor,
    support: Tensor | None = None,
) -> Summary:
    """The outer parameters from an initial summary: latent and decoder, and log tau / log inner lr when
    learned; a sparse one's candidates (``support``, else each position's ``cfg.support`` largest logits).
    ``--decoder tied-frozen``: the decoder is no outer parameter."""
    return Summary.create(
        latent,
        decoder,
        cfg.tau,
        [ds.vocab.pad_id],
        teacher.device,
        learn_tau=cfg.learn_tau,
        inner_lr=cfg.inner_lr if cfg.learn_inner_lr else None,
        support=support if support is not None else cfg.support,
        train_decoder=cfg.decoder is not Decoder.tied_frozen,
    )


def distill(
    ds: PreparedDataset,
    cfg: DistillConfig,
    out: Path,
    trajectories: Path | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    progress: ProgressFn | None = None,
    overwrite: bool = False,
    collective: Collective = LOCAL,
) -> DistillResult:
    """Distill ``ds`` into a farzi-data bundle at ``out`` (:class:`Distillation` runs it).

    A JSONL log of every outer step goes to ``out`` with suffix ``.log.jsonl``;
    with ``checkpoint_every`` the run state is saved to ``.state.safetensors``
    beside it, and ``resume=True`` continues from there (a finished run resumes to
    its bundle).

    ``out`` is claimed before any work (:func:`farzi._io.claim_output`): a second
    writer of the same bundle fails at once, and an existing file that is not a
    farzi-data bundle is refused unless ``overwrite``.

    With a ``collective`` of several ranks every rank calls this with the same arguments; they
    first compare a fingerprint of them (settings, dataset, trajectories) and all refuse to run
    when one differs or one rank met an error preparing. Only rank 0 touches ``out``.
    """
    run = Distillation(ds, cfg, out, trajectories, checkpoint_every, resume, overwrite, collective, progress)
    return run.run()


class Distillation:
    """The distillation recipe (torchtune's sense): :meth:`setup` builds the teacher, the initial
    summary, the outer optimizer, the meta-objective and the summary selection, or restores them from
    the saved run state; :meth:`step` runs one outer step (log, selection, state); :meth:`save` writes
    the bundle. :meth:`run` strings them together; ``farzi.plan`` times real steps of the same object.

    ``out=None`` is a run that writes nothing (the plan's probe): no claim, no log, no state.
    """

    def __init__(
        self,
        ds: PreparedDataset,
        cfg: DistillConfig,
        out: Path | None,
        trajectories: Path | None = None,
        checkpoint_every: int = 0,
        resume: bool = False,
        overwrite: bool = False,
        collective: Collective = LOCAL,
        progress: ProgressFn | None = None,
    ) -> None:
        self.ds, self.cfg, self.trajectories, self.collective = ds, cfg, trajectories, collective
        self.out = Path(out) if out is not None else None
        self.checkpoint_every, self.resume, self.overwrite, self.progress = (
            checkpoint_every,
            resume,
            overwrite,
            progress,
        )
        self.writer = collective.rank == 0 and self.out is not None  # rank 0 alone reads and writes the files
        self.log: RunLog | None = None
        self.selection: Selection | None = None
        self.state = RunState(step=0, log_lines=0)
        self.first_step, self.wall = 0, 0.0

    # ------------------------------------------------------------------ the run
    def run(self, until: int | None = None) -> DistillResult:
        """The whole run; ``until`` ends it after that many outer steps in total, as a kill would
        (the saved state stays as it was; tests of resumption use it)."""
        with contextlib.ExitStack() as claim:
            self._agree_to_start(claim, until)
            finished = self._finished()
            if finished is not None:
                return finished
            try:
                self._guarded(self.setup)
                if self.collective.world > 1:  # every rank starts from rank 0's summary and outer state
                    self.state = _share_state(self.collective, self.summary, self.outer, self.state)
                self.first_step, start = self.state.step, time.perf_counter()
                target = self.cfg.outer_steps if until is None else min(until, self.cfg.outer_steps)
                while self.state.step < target:
                    self.step()
                self.wall = time.perf_counter() - start
            finally:
                if self.log is not None:
                    self.log.close()
            if self.state.step < self.cfg.outer_steps or not self.writer:
                return self.result(self._current(), complete=self.state.step >= self.cfg.outer_steps)
            return self.save()

    def _agree_to_start(self, claim: contextlib.ExitStack, until: int | None) -> None:
        """Validate and claim the output; every rank stops when one could not (:func:`agree`)."""
        error, fingerprint = None, None
        try:
            self.cfg.validate(self.ds)
            if self.checkpoint_every < 0:
                raise ConfigError(f"--checkpoint-every {self.checkpoint_every} must be >= 0", "pass 0 to save no state")
            fingerprint = job_fingerprint(
                self.ds, self.cfg, self.trajectories, self.checkpoint_every, self.resume, until
            )
            if self.writer:
                assert self.out is not None
                claim.enter_context(claim_bundle(self.out, self.overwrite, self.ds.path, self.trajectories))
        except FarziError as exc:
            error = exc
        agree(self.collective, fingerprint, error, "settings or data")

    def _guarded(self, work: Any) -> None:
        """``work()``, then the ranks' handshake: an error on one rank stops every rank."""
        error = None
        try:
            work()
        except FarziError as exc:
            error = exc
        agree(self.collective, None, error, "")

    def setup(self, fit_steps: int | None = None) -> None:
        """Teacher, initial summary, outer optimizer, objective; then, for a run that writes, the saved
        state (``resume``), the selection and the log. ``fit_steps``: the teacher init's fitting steps
        (default: the run's; the plan times a few)."""
        self.load_teacher()
        self.start(fit_steps)
        if not self.writer:
            return
        assert self.out is not None
        log_path, state_path = run_paths(self.out)
        if self.resume:
            self.state = load_run_state(state_path, self.summary, self.outer, *self._fingerprints())
            if "support" in self.state.extra_tensors:  # the candidates in use when the state was saved
                self.summary.support = self.state.extra_tensors["support"].to(self.summary.latent.device)
        if self.cfg.select_every:
            self.selection = Selection.create(self.ds.task)
            self.selection.restore(self.state.extra_tensors, self.state.extra.get("selection", {}))
            if not self.selection.candidates:  # the initial summary is the first candidate
                self.selection.consider(0, self.summary, self._score())
        self.log = RunLog(log_path, self.state.log_lines if self.resume else None)

    def load_teacher(self) -> None:
        """The teacher and Omega (seeded by the run's seed)."""
        torch.manual_seed(self.cfg.seed)
        self.teacher = load_teacher(self.ds, self.cfg, self.trajectories)

    def start(self, fit_steps: int | None = None) -> None:
        """The initial summary (sparse with ``--support``), the outer optimizer and the meta-objective."""
        if self.cfg.support:
            latent, decoder, support = initial_sparse_summary(self.cfg, self.ds, self.teacher, fit_steps=fit_steps)
            self.summary = start_summary(self.cfg, self.ds, self.teacher, latent, decoder, support)
        else:
            latent, decoder = initial_summary(self.cfg, self.ds, self.teacher, fit_steps=fit_steps)
            self.summary = start_summary(self.cfg, self.ds, self.teacher, latent, decoder)
        self.outer = OuterOptimizer(self.summary, self.cfg.outer_lr, self.cfg.outer_weight_decay, self.cfg.grad_clip)
        self.objective = make_objective(self.cfg, self.ds, self.teacher)

    def variant(self, **changes: Any) -> Distillation:
        """This run with other settings (``meta_batch``, ``inner_steps``, ...) over the same teacher,
        summary and outer optimizer: what the plan times when the run's own step is too long."""
        other = copy.copy(self)
        other.cfg = dataclasses.replace(self.cfg, **changes)
        other.objective = make_objective(other.cfg, self.ds, self.teacher)
        return other

    def step(self) -> dict[str, Any]:
        """One outer step: the update, its log record, the selection when due, the saved state when due."""
        step, cfg = self.state.step + 1, self.cfg
        record = outer_step(step, self.summary, self.objective, self.outer, cfg, self.collective)
        if cfg.support and cfg.support_refresh and step % cfg.support_refresh == 0 and step < cfg.outer_steps:
            self.summary.refresh_support(cfg.support)  # every rank alike: their summaries are bitwise equal
        extra_tensors: dict[str, Tensor] = {}
        extra: dict[str, Any] = {}
        if self.selection is not None:
            if self.selection.due(cfg, step):
                record["selection"] = self.selection.consider(step, self.summary, self._score())
            extra_tensors, extra["selection"] = self.selection.state()
        if self.summary.support is not None:
            extra_tensors["support"] = self.summary.support.cpu()
        if self.log is not None:
            self.log.write(record)
        self.state = RunState(step, len(self.log) if self.log is not None else step, extra_tensors, extra)
        info = {"meta_loss": record["meta_loss"], "step_s": record["step_seconds"]}
        if self.log is not None and self.log.skipped:
            info["skipped"] = self.log.skipped
        report(self.progress, "distill", step, cfg.outer_steps, **info)
        if self.writer and self.checkpoint_every and step % self.checkpoint_every == 0:
            assert self.out is not None
            save_run_state(run_paths(self.out)[1], self.summary, self.outer, self.state, *self._fingerprints())
        return record

    def save(self) -> DistillResult:
        """The bundle of a finished run (the selected summary where there is selection), its run state deleted."""
        assert self.out is not None and self.log is not None
        summary, selection = self.summary, self.selection
        if not summary.is_finite():
            raise ConfigError(
                "the distillation diverged: the summary holds NaN or infinite values (no bundle written)",
                "lower --outer-lr or --inner-lr, or keep --grad-clip on",
            )
        latent, decoder = summary.latent.detach().cpu(), summary.decoder.detach().cpu()
        support = summary.support.cpu() if summary.support is not None else None
        if selection is not None and selection.best is not None:
            latent, decoder = selection.best
            support = selection.best_support
        vocab = self.ds.vocab
        save_bundle(
            self.out,
            latent,
            decoder,
            summary.current_tau() if selection is None else selection.best_tau,
            self.ds.task,
            vocab=list(vocab.tokens),
            vocab_sha256=vocab.sha256(),
            specials=dict(vocab.specials),
            masked_tokens=[vocab.pad_id],
            **_bundle_records(self.ds, self.cfg, self.teacher, self.trajectories),
            recipe=recipe(self.cfg, self.ds.task),
            history=self._history(),
            support=support,
        )
        run_paths(self.out)[1].unlink(missing_ok=True)
        return self.result(load_bundle(self.out), complete=True)

    def _history(self) -> dict[str, Any]:
        assert self.log is not None
        cfg, summary = self.cfg, self.summary
        history: dict[str, Any] = {
            "log": summarize_log(self.log.records),
            "init": init_record(cfg, self.ds, self.teacher),
        }
        learned = {"tau": summary.current_tau(), "inner_lr": summary.current_inner_lr()}
        if cfg.learn_tau or cfg.learn_inner_lr:
            history["learned"] = {k: v for k, v in learned.items() if v is not None}
        if self.selection is not None:
            history["selection"] = self.selection.history()
        return history

    # ------------------------------------------------------------------ finished runs and results
    def _finished(self) -> DistillResult | None:
        """With ``resume`` and no saved state: the finished bundle of this same run (rank 0 shares it
        with the others), else the refusal; None when there is something to run."""
        if not self.resume:
            return None
        finished, error = None, None
        if self.writer:
            assert self.out is not None
            if not run_paths(self.out)[1].is_file():
                finished = finished_bundle(self.out, self.cfg, self.ds)
                if finished is None:
                    state = run_paths(self.out)[1]
                    error = ConfigError(f"nothing to resume: {state} does not exist", "run without --resume to start")
        agree(self.collective, None, error, "")
        if not self.collective.gather(finished is not None)[0]:
            return None
        if self.collective.rank == 0:
            assert finished is not None
            share_tensors(self.collective, {"latent": finished.latent, "decoder": finished.decoder})
            return self.result(finished, complete=True, resumed_finished=True)
        shared, _ = share_tensors(self.collective, None)
        data = FarziData(shared["latent"], shared["decoder"], self.cfg.tau, {"task": self.ds.task})
        return self.result(data, complete=True)

    def _current(self) -> FarziData:
        return as_bundle(self.summary, self.ds.task, self.ds.vocab.pad_id, tau=self.cfg.tau)

    def result(self, data: FarziData, complete: bool, resumed_finished: bool = False) -> DistillResult:
        """The one result constructor: what this call ran, and the run's figures where this rank knows them."""
        log_path = run_paths(self.out)[0] if self.out is not None else Path()
        records = self.log.records if self.log is not None else _read_log(log_path) if resumed_finished else []
        steps = self.cfg.outer_steps if complete else self.state.step
        skipped = sum(1 for r in records if r.get("skipped"))
        final = float(records[-1]["meta_loss"]) if records else math.nan
        ran = self.state.step - self.first_step
        summary: dict[str, Any] = {"complete": complete}
        if not self.writer and self.collective.rank != 0:
            summary["rank"] = self.collective.rank
        elif complete:
            summary.update(
                steps=steps,
                skipped=skipped,
                wall_seconds=round(self.wall, 3),
                seconds_per_step=round(self.wall / ran, 4) if ran else None,
                final_meta_loss=final if records else None,
            )
            if resumed_finished:
                summary["resumed"] = "already complete"
            elif self.collective.world > 1:
                summary["ranks"] = self.collective.world
        return DistillResult(data, self.out or Path(), log_path, steps, skipped, self.wall, final, summary)

    def _fingerprints(self) -> tuple[str, str, dict[str, Any]]:
        return self.cfg.fingerprint(), self.ds.fingerprint(), self.cfg.settings()

    def _score(self) -> float:
        return _score(self.summary, self.ds, self.teacher, self.cfg)


def _score(summary: Summary, ds: PreparedDataset, teacher: Teacher, cfg: DistillConfig) -> float:
    """The selection's score of a summary: one student trained on it by the recipe (its best validation value)."""
    return student_score(as_bundle(summary, ds.task, ds.vocab.pad_id), ds, teacher, cfg)


def finished_bundle(out: Path, cfg: DistillConfig, ds: PreparedDataset) -> FarziData | None:
    """The bundle at ``out`` when it is this run's finished result: the same run (the settings'
    :meth:`DistillConfig.fingerprint`, the one definition of "same run") on the same data."""
    if not out.is_file():
        return None
    try:
        data = load_bundle(out)
        recorded = {k: v for k, v in data.meta["distill"].items() if k not in ("package_version", "threads")}
        same = DistillConfig.from_dict(recorded).fingerprint() == cfg.fingerprint()
    except (BundleError, ConfigError, TypeError):
        return None
    return data if same and data.meta["dataset"].get("fingerprint") == ds.fingerprint() else None


def job_fingerprint(
    ds: PreparedDataset,
    cfg: DistillConfig,
    trajectories: Path | None,
    checkpoint_every: int,
    resume: bool,
    until: int | None,
) -> str:
    """What every rank of one job must share: the run (settings), dataset, trajectory set, how it is kept."""
    manifest = Path(trajectories) / "manifest.json" if trajectories else None
    doc = {
        "config": cfg.fingerprint(),
        "dataset": ds.fingerprint(),
        "trajectories": hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest and manifest.is_file() else None,
        "checkpoint_every": checkpoint_every,
        "resume": resume,
        "stop_after": until,
        "package": __version__,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _share_state(collective: Collective, summary: Summary, outer: OuterOptimizer, state: RunState) -> RunState:
    """Rank 0's summary, outer Adam state and step count on every rank (bitwise)."""
    mine = None
    if collective.rank == 0:
        mine = {**dict(zip(summary.names, (p.detach() for p in summary.params), strict=True)), **outer.state_tensors()}
        if summary.support is not None:
            mine["support"] = summary.support
    tensors, meta = share_tensors(collective, mine, {"step": state.step, "log_lines": state.log_lines})
    if collective.rank != 0:
        with torch.no_grad():
            for name, p in zip(summary.names, summary.params, strict=True):
                p.copy_(tensors[name].to(p.device))
        outer.load_state_tensors({k: v.to(summary.latent.device) for k, v in tensors.items() if k.startswith("adam.")})
        if "support" in tensors:
            summary.support = tensors["support"].to(summary.latent.device)
        state = RunState(int(meta["step"]), int(meta["log_lines"]))
    return state


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
    "Distillation",
    "Init",
    "MetaGrad",
    "Objective",
    "distill",
    "parse_budget",
    "OBJECTIVES",
    "FarziError",
]
