"""Runs that say what they will cost: time a few real steps, project wall time and peak memory.

Each ``plan_*`` function builds what its command builds (model, training set, teacher, summary),
times a few real steps of it and one validation, and projects the whole run from them as a
:class:`Plan`. Nothing is written to the workspace: the probe's model and summary are thrown away.

How a training run is timed (:func:`measure_training`): batches are drawn from the run's own
stream (bucketed by length, so their shapes vary); one warm-up step runs on the largest of them
(its activations set the peak memory), then ``probe_steps`` steps on the batches closest to the
mean batch size (tokens x positions), more while they are cheap (up to ``PROBE_MAX_STEPS`` or
``PROBE_TARGET_SECONDS``); the median of their times per position, scaled to the mean over the drawn
batches, is the step's time, so one step slowed by other work on a shared machine does not set it.
One validation is timed on its own. A distillation times outer steps the same way (one warm-up,
then at least ``probe_steps``). Where the machine was busy while timing, the plan says so in a note
(the projection then holds only while the load stays as it was): busy means runnable work waited
for a CPU during at least ``BUSY_WAIT_SHARE`` of the probe (Linux's CPU pressure, ``/proc/pressure/cpu``,
measured over the probe itself), or, where the OS has no such counter, a load average above the cores.

The projection is an upper bound where a run can stop early (``--patience``); ``least_seconds``
is then the shortest the run can take (it cannot stop before ``patience`` validations after the
first), so the measured time lies between the two. The peak memory
is the process's peak resident set size (plus, on a GPU, the peak allocated there) after the probe,
plus the copies the run keeps that the probe does not (best weights, checkpoints in memory).
"""

from __future__ import annotations

import dataclasses
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from farzi.batching import DistributionTrainSet, SequenceTrainSet, TrainSet
from farzi.data.prepared import PreparedDataset
from farzi.device import resolve_device
from farzi.errors import ConfigError
from farzi.evaluate import evaluate
from farzi.models import SequenceModel, build_model, make_config, model_task
from farzi.train import TrainConfig, check_model_sizes, check_training_memory, eval_interval, train_step

LONG_SECONDS = 1800.0  # a projection above this names the flags that bring it down
DRAWN_BATCHES = 64  # batches drawn to learn the stream's mean and largest batch
DRAW_SECONDS = 3.0  # ... or fewer, when drawing them takes longer than this
SLOW_STEP_SECONDS = 60.0  # a warm-up step this slow stands for every step (no further timing)
PROBE_SECONDS = 10.0  # timed steps after the warm-up stop once they took this long (at least one runs)
PROBE_TARGET_SECONDS = 2.0  # ... and once they took this long and at least probe_steps ran
PROBE_SHARE = 0.02  # ... or this share of the run they project (a short run gets a short probe)
PROBE_MAX_STEPS = 25  # ... or once this many ran
BUSY_WAIT_SHARE = 0.1  # a probe during which work waited for a CPU this share of the time was on a busy machine
PROBE_INNER_STEPS = 10  # an outer step with more inner steps is timed at 1 and at this many, and extrapolated
PROBE_META_BATCH = 2  # ... one with a larger meta-batch at this many start points, and scaled to the meta-batch
CPU_PRESSURE = Path("/proc/pressure/cpu")
SPARSE_VOCAB = 8192  # a long distillation over at least this many tokens names --support among its levers


@dataclass
class Stage:
    """One kind of work in the run: ``count`` units of ``seconds_each``."""

    name: str
    count: int
    unit: str
    seconds_each: float

    @property
    def seconds(self) -> float:
        return self.count * self.seconds_each

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "count": self.count,
            "unit": self.unit,
            "seconds_each": round(self.seconds_each, 4),
            "seconds": round(self.seconds, 2),
        }


@dataclass
class Lever:
    """A flag the run's time grows with; ``suggested`` alone brings the projection to
    :data:`LONG_SECONDS` where a value can (None for flags whose effect is not linear)."""

    flag: str
    value: Any
    suggested: Any = None
    effect: str = "linear"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Plan:
    """The projected cost of a command: wall time by stage and peak memory."""

    command: str
    stages: list[Stage]
    peak_memory_bytes: int
    probe_seconds: float
    threads: int
    device: str
    levers: list[Lever] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    least_seconds: float | None = None  # the shortest an early-stopping run can take (None: no early stop)
    load: float | None = None  # the 1-minute load average after timing (None where the OS has none)
    cpu_wait: float | None = None  # share of the probe during which work waited for a CPU (None: unknown)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)

    @property
    def long(self) -> bool:
        return self.seconds > LONG_SECONDS

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "seconds": round(self.seconds, 3),
            "long": self.long,
            "long_seconds": LONG_SECONDS,
            "peak_memory_bytes": int(self.peak_memory_bytes),
            "probe_seconds": round(self.probe_seconds, 2),
            "threads": self.threads,
            "device": self.device,
            "stages": [s.to_dict() for s in self.stages],
            "levers": [lv.to_dict() for lv in self.levers] if self.long else [],
            "notes": list(self.notes),
            "least_seconds": None if self.least_seconds is None else round(self.least_seconds, 3),
            "load": None if self.load is None else round(self.load, 2),
            "cpu_wait": None if self.cpu_wait is None else round(self.cpu_wait, 3),
        }


# ------------------------------------------------------------------ measuring
def peak_rss_bytes() -> int:
    """The process's peak resident set size so far."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_peak(device: torch.device) -> int:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else 0


def _param_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


@dataclass
class TrainingCost:
    step_seconds: float  # mean optimizer step over the stream
    eval_seconds: float  # one validation
    steps_timed: int
    extra_bytes: int  # copies a run keeps that the probe does not hold (best state)


def _timed_steps(
    step: Callable[[int], float], probe_steps: int, run_seconds: Callable[[float], float], most: int = PROBE_MAX_STEPS
) -> float:
    """The median of ``step(k)``'s results over at least ``probe_steps`` calls (k = 0, 1, ...), more
    while they are cheap: until they took PROBE_TARGET_SECONDS or PROBE_SHARE of the run they project
    (``run_seconds(median)``), ``most`` calls in all, none after PROBE_SECONDS."""
    times: list[float] = []
    start = time.perf_counter()
    while True:
        times.append(step(len(times)))
        elapsed = time.perf_counter() - start
        if elapsed > PROBE_SECONDS or len(times) >= most:
            break
        target = min(PROBE_TARGET_SECONDS, PROBE_SHARE * run_seconds(statistics.median(times)))
        if len(times) >= probe_steps and elapsed >= target:
            break
    return statistics.median(times)


def _draw(train_set: TrainSet, batch_size: int, seed: int, device: torch.device) -> list[torch.Tensor]:
    """Up to DRAWN_BATCHES batches of the stream (epoch after epoch), fewer if drawing them is slow."""
    gen = torch.Generator().manual_seed(seed)
    out: list[torch.Tensor] = []
    start = time.perf_counter()
    for _ in range(DRAWN_BATCHES):
        for batch in train_set.batches(batch_size, gen, device):
            out.append(batch)
            if len(out) >= DRAWN_BATCHES or time.perf_counter() - start > DRAW_SECONDS:
                return out
        if train_set.kind == "soft" and len(out) >= 4:  # soft batches all have one shape
            return out
    return out


def _cells(batch: torch.Tensor) -> int:
    return int(batch.shape[0] * batch.shape[1])


def measure_training(
    model: SequenceModel,
    train_set: TrainSet,
    ds: PreparedDataset,
    config: TrainConfig,
    device: torch.device,
    probe_steps: int = 3,
) -> TrainingCost:
    """Time optimizer steps of ``model`` on ``train_set`` (at least ``probe_steps`` after a warm-up, their
    median per position) and one validation."""
    config.validate(ds.task)
    if train_set.num_sequences < 1:
        raise ConfigError("there are no training sequences", "train on a non-empty dataset or sample")
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    batches = _draw(train_set, config.batch_size, config.seed, device)
    mean_cells = sum(_cells(b) for b in batches) / len(batches)
    largest = max(range(len(batches)), key=lambda i: _cells(batches[i]))
    t0 = time.perf_counter()
    train_step(model, opt, batches[largest], config.grad_clip)
    _sync(device)
    warm = time.perf_counter() - t0
    if warm >= SLOW_STEP_SECONDS:  # one step this slow: its time (on the largest batch) stands for all
        step_seconds, timed = warm, 1
    else:
        near = sorted(range(len(batches)), key=lambda i: abs(_cells(batches[i]) - mean_cells))
        timed = 1

        def one(k: int) -> float:  # seconds per position of one step, on the k-th batch nearest the mean
            nonlocal timed
            batch = batches[near[k % len(near)]]
            t0 = time.perf_counter()
            train_step(model, opt, batch, config.grad_clip)
            _sync(device)
            timed += 1
            return (time.perf_counter() - t0) / _cells(batch)

        run = config.max_steps * mean_cells
        step_seconds = _timed_steps(one, max(1, probe_steps), lambda per_cell: per_cell * run) * mean_cells
    t0 = time.perf_counter()
    evaluate(model, ds, "valid", device=device)
    eval_seconds = time.perf_counter() - t0
    model.train()
    return TrainingCost(step_seconds, eval_seconds, timed, extra_bytes=_param_bytes(model))


def _validations(config: TrainConfig, num_sequences: int) -> int:
    every = eval_interval(config, num_sequences)
    return config.max_steps // every + (1 if config.max_steps % every else 0)


def _training_stages(label: str, cost: TrainingCost, config: TrainConfig, num_sequences: int, runs: int = 1):
    return [
        Stage(f"{label}: training", runs * config.max_steps, "step", cost.step_seconds),
        Stage(f"{label}: validation", runs * _validations(config, num_sequences), "validation", cost.eval_seconds),
    ]


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def cpu_stall_seconds() -> float | None:
    """Seconds (since boot) during which some runnable task waited for a CPU (None where the OS has
    no CPU pressure counter)."""
    try:
        first = CPU_PRESSURE.read_text().splitlines()[0]  # "some avg10=... total=MICROSECONDS"
        return int(first.rsplit("total=", 1)[1]) / 1e6
    except (OSError, IndexError, ValueError):
        return None


@dataclass
class _Started:
    """When a probe started: wall clock and the CPU pressure counter."""

    wall: float
    stall: float | None


def _start() -> _Started:
    return _Started(time.perf_counter(), cpu_stall_seconds())


def busy_note(load: float | None, cores: int, threads: int, cpu_wait: float | None = None) -> str | None:
    """A note for a plan timed while other work held the cores, else None: by the share of the probe
    during which work waited for a CPU where it is known, else by the load average against the cores."""
    if cpu_wait is not None:
        if cpu_wait < BUSY_WAIT_SHARE:
            return None
        why = f"work waited for a CPU {100 * min(cpu_wait, 1.0):.0f} % of the time"
        if load is not None:
            why += f", load {load:.1f} on {cores} cores"
    elif load is None or load <= cores + 0.5:
        return None
    else:
        why = f"load {load:.1f} on {cores} cores"
    note = f"the machine was busy while timing ({why}): the projection holds only while the load stays as it is"
    if threads > 1:
        note += f"; beside other work --threads 1 may be faster than {threads} threads"
    return note


def _finish(
    command: str, stages: list[Stage], device: torch.device, started: _Started, extra_bytes: int, notes: list[str]
) -> Plan:
    load, threads = load_average(), torch.get_num_threads()
    wall = time.perf_counter() - started.wall
    stall = cpu_stall_seconds()
    cpu_wait = (stall - started.stall) / wall if stall is not None and started.stall is not None and wall > 0 else None
    busy = busy_note(load, os.cpu_count() or 1, threads, cpu_wait) if device.type == "cpu" else None
    return Plan(
        command=command,
        stages=stages,
        peak_memory_bytes=peak_rss_bytes() + _device_peak(device) + extra_bytes,
        probe_seconds=wall,
        threads=threads,
        device=str(device),
        notes=[*notes, *([busy] if busy else [])],
        load=load,
        cpu_wait=cpu_wait,
    )


def _linear_lever(plan: Plan, flag: str, value: int, share: float, least: int = 1) -> Lever:
    """``flag`` (now ``value``) scales ``share`` seconds of the plan linearly."""
    suggested = None
    if share > 0 and plan.long:
        room = LONG_SECONDS - (plan.seconds - share)
        if room > 0:
            suggested = max(least, int(value * room / share))
            suggested = suggested if suggested < value else None
    return Lever(flag, value, suggested)


def earliest_stop(config: TrainConfig, num_sequences: int) -> tuple[int, int]:
    """(steps, validations) of the shortest run ``--patience`` allows: the first validation is the
    best so far, and ``patience`` validations after it without improvement end the run."""
    every = eval_interval(config, num_sequences)
    if not config.patience:
        return config.max_steps, _validations(config, num_sequences)
    steps = min(config.max_steps, (config.patience + 1) * every)
    return steps, _validations(dataclasses.replace(config, max_steps=steps), num_sequences)


def _early_stop(plan: Plan, config: TrainConfig, cost: TrainingCost, num_sequences: int, runs: int = 1) -> None:
    """Add the shortest a run with ``--patience`` can take to ``plan`` (its projection is the longest)."""
    steps, validations = earliest_stop(config, num_sequences)
    if not config.patience or steps >= config.max_steps:
        return
    trained = runs * (steps * cost.step_seconds + validations * cost.eval_seconds)
    plan.least_seconds = plan.seconds - sum(s.seconds for s in plan.stages[:2]) + trained
    plan.notes.append(
        f"an upper bound: with --patience {config.patience} the run may stop early, at step {steps} "
        f"at the earliest (about {round(plan.least_seconds)} s in all)"
    )


# ------------------------------------------------------------------ commands
def _check_model(ds: PreparedDataset, model_name: str, overrides: dict[str, Any] | None):
    if model_task(model_name) != ds.task:
        raise ConfigError(
            f"model {model_name!r} is for {model_task(model_name)} but {ds.name!r} is a {ds.task} dataset",
            "pick a model for this task",
        )
    cfg = make_config(model_name, ds.vocab_size, **(overrides or {}))
    check_model_sizes(cfg)
    return cfg


def plan_trajectories(
    ds: PreparedDataset,
    model_name: str,
    runs: int,
    every: int,
    config: TrainConfig,
    model_overrides: dict[str, Any] | None = None,
    device: str = "cpu",
    probe_steps: int = 3,
) -> Plan:
    """The cost of ``train_trajectories`` with these arguments."""
    started = _start()
    dev = resolve_device(device)
    if runs < 1:
        raise ConfigError(f"--runs {runs} must be at least 1", "pass e.g. --runs 5")
    if every < 1:
        raise ConfigError(f"--every {every} must be at least 1", "pass e.g. --every 50")
    cfg = _check_model(ds, model_name, model_overrides)
    config.validate(ds.task)
    check_training_memory("a trajectory run", model_name, cfg, config, ds, device=dev)
    torch.manual_seed(config.seed)
    model = build_model(model_name, cfg)
    train_set = SequenceTrainSet(ds.train, cfg.max_len)
    cost = measure_training(model, train_set, ds, config, dev, probe_steps)
    stages = _training_stages(f"{runs} runs", cost, config, train_set.num_sequences, runs)
    saves = runs * (config.max_steps // every + 2)
    stages.append(Stage("checkpoints", saves, "save", _time_save(model)))
    # a run keeps the best state, the latest unsaved state and its Adam moments beside the model
    plan = _finish("trajectories", stages, dev, started, 3 * cost.extra_bytes, [])
    _early_stop(plan, config, cost, train_set.num_sequences, runs)
    training = stages[0].seconds + stages[1].seconds
    plan.levers = [
        _linear_lever(plan, "--max-steps", config.max_steps, plan.seconds),  # steps, validations, saves
        _linear_lever(plan, "--runs", runs, plan.seconds),
        Lever("--max-len", cfg.max_len, effect="per step: attention grows with its square, the rest linearly"),
    ]
    if stages[1].seconds > 0.25 * training:
        plan.levers.append(Lever("--eval-every", config.eval_every, effect="fewer validations"))
    return plan


def _time_save(model: SequenceModel) -> float:
    """One checkpoint and its Adam moments written (to a temporary directory, deleted at once)."""
    from farzi.checkpoint import save_checkpoint  # here: checkpoint imports much of the package

    with tempfile.TemporaryDirectory(prefix="farzi-plan-") as tmp:
        t0 = time.perf_counter()
        save_checkpoint(Path(tmp) / "probe.safetensors", model, {"name": "probe"}, run=0, step=0, validation={})
        elapsed = time.perf_counter() - t0
    return 2 * elapsed  # the moments file is twice the weights, written as fast


def plan_student(
    ds: PreparedDataset,
    model_name: str,
    spec_text: str,
    config: TrainConfig,
    model_overrides: dict[str, Any] | None = None,
    discrete: bool = False,
    device: str = "cpu",
    recipe_fills: Any = (),
    probe_steps: int = 3,
) -> Plan:
    """The cost of ``train_student`` with these arguments (a bundle's recipe applied as it would be)."""
    from farzi.student import apply_recipe, parse_spec, training_set

    started = _start()
    spec = parse_spec(spec_text)
    dev = resolve_device(device)
    cfg = _check_model(ds, model_name, model_overrides)
    train_set, _ = training_set(ds, spec, cfg.max_len, config.seed, discrete, device)
    if isinstance(train_set, DistributionTrainSet):
        config, _ = apply_recipe(config, train_set.summary.meta.get("recipe"), recipe_fills)
    config.validate(ds.task)
    check_training_memory("training", model_name, cfg, config, ds, train_set, dev)
    torch.manual_seed(config.seed)
    model = build_model(model_name, cfg)
    cost = measure_training(model, train_set, ds, config, dev, probe_steps)
    stages = _training_stages(f"train {model_name} on {spec.label()}", cost, config, train_set.num_sequences)
    plan = _finish("train-student", stages, dev, started, cost.extra_bytes, [])
    _early_stop(plan, config, cost, train_set.num_sequences)
    plan.levers = [
        _linear_lever(plan, "--max-steps", config.max_steps, plan.seconds),
        Lever("--max-len", cfg.max_len, effect="per step: attention grows with its square, the rest linearly"),
    ]
    if stages[1].seconds > 0.25 * stages[0].seconds:
        plan.levers.append(Lever("--eval-every", config.eval_every, effect="fewer validations"))
    return plan


def plan_distill(
    ds: PreparedDataset,
    cfg: Any,
    trajectories: Path | None = None,
    probe_steps: int = 2,
    command: str = "distill",
    resume_from: Path | None = None,
) -> Plan:
    """The cost of ``distill(ds, cfg, ..., trajectories=trajectories)``: the initial summary, the outer
    steps (``probe_steps`` of them timed after one warm-up) and the summary selections, timed on the
    run's own :class:`~farzi.distill.engine.Distillation` (one that writes nothing). With
    ``resume_from`` (the bundle path of a ``--resume``), the outer steps its saved state holds are left out."""
    from farzi.distill.engine import Distillation
    from farzi.distill.select import as_bundle, recipe, recipe_config

    started = _start()
    cfg.validate(ds)
    run = Distillation(ds, cfg, None, trajectories)
    run.load_teacher()
    teacher = run.teacher
    checkpoints = len(teacher.omega) if teacher.omega is not None else 0
    cfg.check_memory(ds, teacher.model, checkpoints)  # with the teacher the run will have (Omega's model)
    stages = [Stage("initial summary", 1, "init", _time_init(run))]
    notes: list[str] = []
    extra = 0
    if cfg.outer_steps:
        each, probe = _time_outer_steps(run, probe_steps)
        left = max(0, cfg.outer_steps - _steps_done(resume_from))
        stages.append(Stage("outer steps", left, "outer step", each))
        if teacher.omega is not None:  # every checkpoint it starts from stays cached (and its moments)
            per = _param_bytes(teacher.model) * (3 if cfg.inner_state.value == "omega" else 1)
            extra += len(teacher.omega) * per
        if probe is not cfg:  # what the run holds beyond the probe's steps: more inner states, more start points
            extra += max(0, _distill_bytes(cfg, ds, teacher) - _distill_bytes(probe, ds, teacher))
            notes.append(
                f"outer steps timed with --inner-steps {probe.inner_steps} and --meta-batch {probe.meta_batch}, "
                f"projected to --inner-steps {cfg.inner_steps} and --meta-batch {cfg.meta_batch}"
            )
    if cfg.select_every:
        selections = 1 + sum(
            1 for s in range(1, cfg.outer_steps + 1) if s % cfg.select_every == 0 or s == cfg.outer_steps
        )
        rec = recipe_config(recipe(cfg, ds.task), cfg.seed)
        torch.manual_seed(cfg.seed)
        student = build_model(teacher.model.name, teacher.model.config)
        data = DistributionTrainSet(as_bundle(run.summary, ds.task, ds.vocab.pad_id))
        cost = measure_training(student, data, ds, rec, teacher.device)
        one = rec.max_steps * cost.step_seconds + _validations(rec, data.num_sequences) * cost.eval_seconds
        stages.append(Stage("summary selection (a student each)", selections, "selection", one))
    plan = _finish(command, stages, teacher.device, started, extra, notes)
    outer_s = stages[1].seconds if cfg.outer_steps else 0.0
    levers = [
        _linear_lever(plan, "--outer-steps", cfg.outer_steps, outer_s),
        _linear_lever(plan, "--inner-steps", cfg.inner_steps, outer_s),
    ]
    if cfg.syn_batch == 0 or cfg.syn_batch > 16:
        levers.append(Lever("--syn-batch", cfg.syn_batch or cfg.mu, effect="per inner step (0 = all mu sequences)"))
    if cfg.meta_batch > 1:
        levers.append(_linear_lever(plan, "--meta-batch", cfg.meta_batch, outer_s))
    if cfg.select_every:
        levers.append(_linear_lever(plan, "--select-every", cfg.select_every, 0.0))
        levers[-1].effect = "fewer selections (each trains a student)"
    levers.append(Lever("--real-batch", cfg.real_batch, effect="per outer step: the real-data loss"))
    plan.levers = [lv for lv in levers if lv.value]
    if not cfg.support and ds.vocab_size >= SPARSE_VOCAB:
        plan.levers.append(
            Lever("--support", 0, 64, effect="a sparse summary: each position over K candidates, O(K d) not O(|V| d)")
        )
    if ds.vocab_size >= SPARSE_VOCAB:  # the softmaxes over |V| that remain: the inner loss's and the meta-loss's
        inner = getattr(cfg.inner_softmax, "value", cfg.inner_softmax)
        if cfg.support and inner != "sampled":
            effect = "the inner loss over each position's K candidates and shared negatives, not |V| (an estimate)"
            plan.levers.append(Lever("--inner-softmax", inner, "sampled", effect=effect))
        meta = getattr(cfg.meta_softmax, "value", cfg.meta_softmax)
        if meta != "sampled" and cfg.objective.value in ("farzi", "mm"):
            effect = "the meta-loss over each real target and shared negatives, not |V| (an estimate)"
            plan.levers.append(Lever("--meta-softmax", meta, "sampled", effect=effect))
    return plan


def _time_outer_steps(run: Any, probe_steps: int) -> tuple[float, Any]:
    """Seconds of one outer step of the run, and the config it was timed on.

    An outer step is ``meta_batch`` start points of ``inner_steps`` inner steps each, so its cost is
    timed on a bounded piece whatever the counts: at most PROBE_META_BATCH start points (the time scaled
    to the meta-batch), and beyond PROBE_INNER_STEPS inner steps, timed at 1 and at PROBE_INNER_STEPS
    inner steps and extrapolated along the line through the two (a start point's fixed part, then a
    share per inner step; where timing noise hides the inner steps' share, each counts the whole step).
    """
    cfg = run.cfg
    mb = min(cfg.meta_batch, PROBE_META_BATCH)
    hi = min(cfg.inner_steps, PROBE_INNER_STEPS)
    probe = run if (mb, hi) == (cfg.meta_batch, cfg.inner_steps) else run.variant(meta_batch=mb, inner_steps=hi)
    scale = cfg.meta_batch / mb * cfg.inner_steps / hi  # about how much longer the run's step is
    each = _time_outer(probe, probe_steps, scale)
    if hi < cfg.inner_steps:
        one = _time_outer(probe.variant(inner_steps=1), probe_steps, scale)
        per = (each - one) / (hi - 1)
        if per <= 0:
            per = each / hi
        each = max(0.0, each - per * hi) + per * cfg.inner_steps
    return each * cfg.meta_batch / mb, probe.cfg


def _time_outer(run: Any, probe_steps: int, scale: float) -> float:
    """One warm-up outer step of ``run``, then the median of at least ``probe_steps`` more (while the
    run has that many)."""

    def one(_k: int) -> float:
        t0 = time.perf_counter()
        run.step()
        _sync(run.teacher.device)
        return time.perf_counter() - t0

    each = one(0)
    n = min(probe_steps, run.cfg.outer_steps - 1)
    if each < SLOW_STEP_SECONDS and n > 0:
        most = min(PROBE_MAX_STEPS, run.cfg.outer_steps - 1)
        each = _timed_steps(one, n, lambda e: e * scale * run.cfg.outer_steps, most=most)
    return each


def _distill_bytes(cfg: Any, ds: PreparedDataset, teacher: Any) -> int:
    """The memory estimate of a distillation (farzi.limits.distill_needs), in bytes."""
    from farzi import limits

    longest = int(ds.train.lengths.max())
    model = teacher.model
    return sum(n.nbytes for n in limits.distill_needs(cfg, ds.vocab_size, longest, model.name, model.config))


def _steps_done(out: Path | None) -> int:
    """Outer steps the saved run state beside bundle path ``out`` holds (0 without one)."""
    from farzi._safetensors import read_header
    from farzi.distill.engine import run_paths

    if out is None or not run_paths(Path(out))[1].is_file():
        return 0
    try:
        step = read_header(run_paths(Path(out))[1], ConfigError, "")[1].get("step", "0")
    except ConfigError:
        return 0  # the run itself reports a corrupt state
    return int(step) if step.isascii() and step.isdigit() and len(step) <= 12 else 0


def _time_init(run: Any) -> float:
    """The run's initial summary (set up on ``run``) and the seconds the run's own will take. The
    teacher init fits its latent and decoder in FIT_STEPS Adam steps: it runs here with one, and the
    fit's step is timed on its own (on random targets of the same shapes: its cost does not depend on them)."""
    from farzi.distill.config import Init
    from farzi.distill.init import FIT_STEPS, effective_init
    from farzi.distill.summary import banned_mask, fit_sparse_summary, fit_summary

    cfg, ds = run.cfg, run.ds
    if effective_init(cfg, run.teacher) is not Init.teacher:
        t0 = time.perf_counter()
        run.start()
        return time.perf_counter() - t0
    t0 = time.perf_counter()
    run.start(fit_steps=1)
    base = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(0)
    decoder0 = torch.randn(cfg.latent_dim, ds.vocab_size, generator=gen)
    if cfg.support:  # the fit over each position's candidates alone
        shape = (cfg.mu, cfg.xi, cfg.support)
        cand = torch.randint(1, ds.vocab_size, shape, generator=gen)
        weights = torch.softmax(torch.randn(shape, generator=gen), dim=-1)

        def fit() -> None:
            fit_sparse_summary(cand, weights, decoder0, cfg.tau, steps=1, gen=gen)
    else:
        targets = torch.softmax(torch.randn(cfg.mu, cfg.xi, ds.vocab_size, generator=gen), dim=-1)
        banned = banned_mask(ds.vocab_size, [ds.vocab.pad_id])

        def fit() -> None:
            fit_summary(targets, decoder0, cfg.tau, banned, steps=1, gen=gen)

    fit()  # warm-up
    steps, t0 = 0, time.perf_counter()
    while steps < 20 and (steps < 2 or time.perf_counter() - t0 < 2.0):
        fit()
        steps += 1
    per_step = (time.perf_counter() - t0) / steps
    return base + per_step * (FIT_STEPS - 1)


def plan_demo(seed: int = 0, tasks: tuple[str, ...] = ("lm", "rec"), progress: Callable | None = None) -> Plan:
    """The cost of ``run_demo(seed=seed, tasks=tasks)``, measured on the demo's own datasets prepared
    in a temporary directory (deleted): every stage's steps timed as its command's plan times them."""
    from farzi.data.prepare import PrepareOptions, prepare
    from farzi.demo import TASKS
    from farzi.distill.config import DistillConfig
    from farzi.trajectories import train_trajectories

    started = _start()
    stages: list[Stage] = []
    notes: list[str] = []
    peak = 0
    with tempfile.TemporaryDirectory(prefix="farzi-plan-demo-") as tmp:
        for name in tasks:
            spec = TASKS[name]
            t0 = time.perf_counter()
            ds = prepare(spec.source, PrepareOptions(seed=seed), home=Path(tmp))
            stages.append(Stage(f"{name}: prepare", 1, "dataset", time.perf_counter() - t0))
            steps = spec.trajectory_steps
            tcfg = TrainConfig(lr=2e-3, batch_size=64, max_steps=steps, patience=0, eval_every=steps // 3, seed=seed)
            part = plan_trajectories(
                ds, spec.model, spec.trajectory_runs, max(1, steps // 6), tcfg, spec.model_overrides
            )
            stages += [dataclasses.replace(s, name=f"{name}: trajectories {s.name}") for s in part.stages]
            mu, xi = spec.budget
            dcfg = DistillConfig.from_dict(
                {"mu": mu, "xi": xi, "model": spec.model, "model_overrides": spec.model_overrides, **spec.distill}
            )
            # a one-step Omega of the demo's teacher, so the distillation starts as the demo's does
            omega = Path(tmp) / "omega" / name
            one = TrainConfig(lr=2e-3, batch_size=64, max_steps=1, patience=0, eval_every=1, seed=seed)
            train_trajectories(ds, spec.model, 1, 1, one, omega, spec.model_overrides)
            part = plan_distill(ds, dcfg, omega)
            stages += [dataclasses.replace(s, name=f"{name}: distill {s.name}") for s in part.stages]
            stages.append(Stage(f"{name}: init-only summary", 1, "init", part.stages[0].seconds_each))
            scfg = TrainConfig(seed=seed, **spec.student)
            for data in (f"random:{mu}", f"head:{mu}", "full"):
                part = plan_student(ds, spec.model, data, scfg, spec.model_overrides)
                stages += [dataclasses.replace(s, name=f"{name}: student {s.name}") for s in part.stages]
            # the two students on Farzi Data: soft batches of the budget's shape
            student = build_model(spec.model, make_config(spec.model, ds.vocab_size, **spec.model_overrides))
            soft = _random_bundle(mu, xi, ds.vocab_size, ds.vocab.pad_id, ds.task)
            cost = measure_training(student, soft, ds, scfg, torch.device("cpu"))
            soft_stages = _training_stages(f"{name}: 2 students on Farzi Data", cost, scfg, mu, runs=2)
            stages += soft_stages
            peak = max(peak, part.peak_memory_bytes)
    notes.append("an upper bound: the students stop early (--patience)")
    plan = _finish("demo", stages, torch.device("cpu"), started, 0, notes)
    plan.peak_memory_bytes = max(peak, plan.peak_memory_bytes)
    plan.levers = [Lever("--task", "both", effect="one task (lm or rec) takes about half")]
    return plan


def _random_bundle(mu: int, xi: int, vocab: int, pad: int, task: str) -> DistributionTrainSet:
    from farzi.distill.bundle import FarziData

    gen = torch.Generator().manual_seed(0)
    latent = torch.randn(mu, xi, 8, generator=gen)
    decoder = torch.randn(8, vocab, generator=gen)
    return DistributionTrainSet(FarziData(latent, decoder, 1.0, {"task": task, "masked_tokens": [pad]}))
