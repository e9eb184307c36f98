"""One training loop for full data, samples of it, and Farzi Data.

Adam with (L2) weight decay, dropout as configured in the model, mini-batches,
validation every ``eval_every`` steps with early stopping on the validation
metric (the best state is kept), deterministic on CPU for a given seed.

The loop is three parts: ``batch_stream`` (epochs of batches, without end),
``train_step`` (one optimizer step on the fast loss, ``model.loss``) and
``EarlyStopping`` (the validation state: best value, step and weights, patience
and target); ``train_model`` strings them together.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from farzi._seed import seed_everything
from farzi.batching import TrainSet
from farzi.data.prepared import PreparedDataset
from farzi.errors import ConfigError
from farzi.evaluate import check_metric, default_metric, evaluate, metric_is_higher_better
from farzi.limits import FLOAT32_MAX
from farzi.models import SequenceModel
from farzi.progress import ProgressFn, report
from farzi.settings import setting

MAX_MODEL_SETTING = 2**31 - 1


@dataclass
class TrainConfig:
    """How a model trains (full data, a sample, Farzi Data, or a trajectory run)."""

    lr: float = setting(1e-3, "Adam learning rate.")
    weight_decay: float = setting(0.0, "Adam (L2) weight decay.")
    batch_size: int = setting(128, "Sequences per batch.")
    max_steps: int = setting(2000, "Most optimizer steps.")
    eval_every: int = setting(0, "Steps between validations (0 = once per epoch, at least 10).")
    patience: int = setting(10, "Validations without improvement before stopping (0 = never).")
    metric: str = setting("", "Validation metric for early stopping (default: xent / ppl_corpus).")
    grad_clip: float = setting(0.0, "Max gradient norm (0 = off).", cli=False)
    seed: int = setting(0, "Random seed (0 to 2**63-1); same seed, same result on CPU.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self, task: str | None = None) -> None:
        """Check every field; with ``task`` (rec or lm) also that ``metric`` is one validation reports."""
        if self.lr <= 0 or not math.isfinite(self.lr) or self.lr > FLOAT32_MAX:
            raise ConfigError(
                f"learning rate {self.lr} must be positive and at most {FLOAT32_MAX:.3g} (float32)",
                "pass e.g. --lr 1e-3",
            )
        if self.batch_size < 1:
            raise ConfigError(f"batch size {self.batch_size} must be positive", "pass e.g. --batch-size 128")
        if self.max_steps < 1:
            raise ConfigError(f"max steps {self.max_steps} must be positive", "pass e.g. --max-steps 2000")
        if self.patience < 0:
            raise ConfigError(
                f"patience {self.patience} must be >= 0", "pass e.g. --patience 10 (0 = never stop early)"
            )
        if self.eval_every < 0:
            raise ConfigError(
                f"eval every {self.eval_every} must be >= 0", "pass e.g. --eval-every 50 (0 = once per epoch)"
            )
        if not (0 <= self.weight_decay <= FLOAT32_MAX):  # NaN fails too
            raise ConfigError(
                f"weight decay {self.weight_decay} must be a number >= 0 and at most {FLOAT32_MAX:.3g} (float32)",
                "pass e.g. --weight-decay 0",
            )
        if task is not None:
            check_metric(self.metric, task)


def check_model_sizes(cfg: Any) -> None:
    """Refuse model sizes torch would reject with a traceback (or train nothing with).

    Every integer setting of a model config (widths, depths, heads) must be at
    least 1, and ``max_len`` at least 2: a window of one token has no target. None may pass
    ``MAX_MODEL_SETTING`` (2**31 - 1), beyond which torch's size arithmetic overflows before any
    memory check could count the model (a model that large never fits anyway).
    """
    for key, value in cfg.to_dict().items():
        if key == "vocab_size" or isinstance(value, bool) or not isinstance(value, int):
            continue
        least = 2 if key == "max_len" else 1
        flag = "--" + key.replace("_", "-")
        if value < least:
            raise ConfigError(f"{flag} {value} must be at least {least}", f"pass e.g. {flag} {max(least, 8)}")
        if value > MAX_MODEL_SETTING:
            raise ConfigError(f"{flag} {value} must be at most {MAX_MODEL_SETTING}", f"pass e.g. {flag} 64")


def check_training_memory(
    command: str,
    model_name: str,
    cfg: Any,
    config: TrainConfig,
    ds: PreparedDataset,
    train_set: TrainSet | None = None,
    device: Any = None,
) -> None:
    """Refuse, before anything is allocated, a training run whose memory estimate
    (:func:`farzi.limits.training_needs`) is above what this machine has available.

    A batch holds at most ``batch_size`` of the training set's sequences (the dataset's training split
    where ``train_set`` is not built yet), each at most ``max_len`` (and the longest sequence) long; a
    soft training set (Farzi Data) also materializes its batch's distributions.
    """
    from farzi import limits

    longest = max(1, min(int(cfg.max_len), int(ds.train.lengths.max()) if len(ds.train) else 1))
    sequences = len(ds.train) if train_set is None else int(train_set.num_sequences)
    rows = max(1, min(config.batch_size, sequences))
    length, soft_rows = longest, 0
    summary = getattr(train_set, "summary", None)
    if summary is not None:  # Farzi Data: batches of [xi, |V|] distributions (sampled to ids with --discrete)
        length = int(summary.xi)
        soft_rows = min(rows, int(train_set.chunk))  # type: ignore[union-attr]
    needs = limits.training_needs(model_name, cfg, ds.vocab_size, rows, length, soft_rows, eval_length=longest)
    limits.check_needs(command, needs, device)


@dataclass
class TrainResult:
    model: SequenceModel  # holds the best state
    best_metric: float
    best_step: int
    metric: str
    steps: int
    sequences_seen: int
    wall_seconds: float
    curve: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False

    @property
    def sequences_per_second(self) -> float:
        return self.sequences_seen / max(self.wall_seconds, 1e-9)

    def summary(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "best_metric": self.best_metric,
            "best_step": self.best_step,
            "steps": self.steps,
            "sequences_seen": self.sequences_seen,
            "wall_seconds": round(self.wall_seconds, 3),
            "sequences_per_second": round(self.sequences_per_second, 2),
            "stopped_early": self.stopped_early,
        }


StepHook = Callable[[int, SequenceModel, dict[str, Any] | None, torch.optim.Optimizer], None]


def batch_stream(train_set: TrainSet, batch_size: int, gen: torch.Generator, device: torch.device) -> Iterator[Tensor]:
    """Batches epoch after epoch, without end (each epoch draws its order from ``gen``)."""
    while True:
        yield from train_set.batches(batch_size, gen, device)


def train_step(model: SequenceModel, opt: torch.optim.Optimizer, batch: Tensor, grad_clip: float = 0.0) -> float:
    """One optimizer step on ``batch`` (ids [B, L] or distributions [B, L, V]); returns the loss.

    The loss is ``model.loss`` (farzi.models.loss): only positions with a target
    are scored, a chunk at a time, so no [B, L, V] logits are held.
    """
    loss = model.loss(batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return float(loss.detach())


@dataclass
class EarlyStopping:
    """Validation bookkeeping: the best value so far, its step and state, and when to stop.

    Patience counts validations without improvement (0 = never stop early); a
    ``target`` stops the run as soon as a validation reaches it.
    """

    higher: bool
    patience: int
    target: float | None = None
    best: float = math.nan
    best_step: int = 0
    best_state: dict[str, Tensor] = field(default_factory=dict)
    bad: int = 0
    evaluations: int = 0
    stopped_early: bool = False

    def __post_init__(self) -> None:
        if math.isnan(self.best):
            self.best = -math.inf if self.higher else math.inf

    def update(self, step: int, value: float, model: SequenceModel) -> bool:
        """Record one validation; True when training should stop now."""
        improved = value > self.best if self.higher else value < self.best
        if improved or self.evaluations == 0:  # the first validation is the best so far, even if nan
            self.best, self.best_step, self.bad = value, step, 0
            self.best_state = copy.deepcopy(model.state_dict())
        else:
            self.bad += 1
        self.evaluations += 1
        if self.patience and self.bad >= self.patience:
            self.stopped_early = True
            return True
        return self.target is not None and (value >= self.target if self.higher else value <= self.target)


def eval_interval(config: TrainConfig, num_sequences: int) -> int:
    """Steps between validations: ``eval_every``, or 0 = once per epoch and at least every 10 steps."""
    return config.eval_every or max(max(1, math.ceil(num_sequences / config.batch_size)), 10)


def train_model(
    model: SequenceModel,
    train_set: TrainSet,
    dataset: PreparedDataset,
    config: TrainConfig,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
    task_name: str = "train",
    on_step: StepHook | None = None,
    target_metric: float | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``train_set``, validating on ``dataset``'s valid split.

    ``on_step(step, model, validation, optimizer)`` runs after every optimizer step
    (``validation`` is the metrics dict at validation steps, else None; ``optimizer``
    the Adam whose state a trajectory checkpoint keeps).
    With ``target_metric`` the run stops as soon as validation reaches it.
    """
    config.validate(dataset.task)
    if train_set.num_sequences < 1:  # no batch would ever come: the stream below would never yield
        raise ConfigError("there are no training sequences", "train on a non-empty dataset or sample")
    metric = config.metric or default_metric(dataset.task)
    gen = seed_everything(config.seed)
    device = torch.device(device)
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, math.ceil(train_set.num_sequences / config.batch_size))
    eval_every = eval_interval(config, train_set.num_sequences)
    stopper = EarlyStopping(
        metric_is_higher_better(metric), config.patience, target_metric, best_state=copy.deepcopy(model.state_dict())
    )
    curve: list[dict[str, Any]] = []
    losses: list[float] = []
    seen = step = 0
    start = time.perf_counter()
    batches = itertools.islice(batch_stream(train_set, config.batch_size, gen, device), config.max_steps)
    for step, batch in enumerate(batches, start=1):
        loss = train_step(model, opt, batch, config.grad_clip)
        seen += batch.shape[0]
        losses.append(loss)
        validation, stop = None, False
        if step % eval_every == 0 or step == config.max_steps:
            validation = evaluate(model, dataset, "valid", device=device)
            value = float(validation[metric])
            curve.append(
                {
                    "step": step,
                    "epoch": round(step / steps_per_epoch, 3),
                    "sequences_seen": seen,
                    "train_loss": sum(losses) / len(losses),
                    metric: value,
                    "elapsed": round(time.perf_counter() - start, 3),
                }
            )
            losses = []
            stop = stopper.update(step, value, model)
        report(
            progress, task_name, step, config.max_steps, loss=loss, **({f"val {metric}": stopper.best} if curve else {})
        )
        if on_step is not None:
            on_step(step, model, validation, opt)
        if stop:
            break
    model.load_state_dict(stopper.best_state)
    model.eval()
    wall = time.perf_counter() - start
    report(progress, task_name, step, config.max_steps, done=True)
    return TrainResult(
        model=model,
        best_metric=stopper.best,
        best_step=stopper.best_step,
        metric=metric,
        steps=step,
        sequences_seen=seen,
        wall_seconds=wall,
        curve=curve,
        stopped_early=stopper.stopped_early,
    )
