"""``DistillConfig``: every setting of a distillation run, in one place.

The dataclass is the single source of truth: the CLI's ``distill`` options take
their defaults and help text from it (``farzictl/app.py``), the bundle records
``to_dict()`` (``formats/farzi-data-v1.md`` lists every field), and
:meth:`DistillConfig.validate` checks every field before any work starts. A test
keeps the three in step.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import TYPE_CHECKING, Any

from farzi._seed import check_seed
from farzi.device import resolve_device
from farzi.errors import ConfigError
from farzi.limits import FLOAT32_MAX

if TYPE_CHECKING:
    from farzi.data.prepared import PreparedDataset


class Objective(str, Enum):
    """What the outer loop minimizes."""

    farzi = "farzi"  # T inner steps from an Omega checkpoint, then real-data loss (paper Eq. 2)
    mm = "mm"  # the same from random initializations (no Omega)
    dc = "dc"  # gradient matching at an Omega checkpoint
    mtt = "mtt"  # trajectory matching: T inner steps towards a later checkpoint of the same run


class Init(str, Enum):
    """How the summary starts."""

    teacher = "teacher"  # real windows mixed with the trained teacher's predictions
    real = "real"  # real windows, smoothed over the teacher's embedding neighbourhood
    random = "random"  # random latent and decoder


class InitWindows(str, Enum):
    """Which real windows the ``teacher`` and ``real`` inits start from."""

    auto = "auto"  # within where sequences of at least xi tokens hold half the training tokens, else joined
    within = "within"  # a random window inside one sequence at least xi long (users' histories)
    joined = "joined"  # consecutive random sequences end to end, from a sequence's start (sentences)


class InnerOptimizerName(str, Enum):
    adam = "adam"
    sgd = "sgd"


class InnerState(str, Enum):
    """Where the inner optimizer starts."""

    fresh = "fresh"  # zero moments, step 0 (the paper)
    omega = "omega"  # the Adam moments and step count the trajectory run had at the checkpoint


class StartWeighting(str, Enum):
    """How the start points of one outer step are weighted when their meta-gradients are averaged."""

    none = "none"  # plain mean: a start with a large meta-gradient (an early checkpoint) dominates
    normalize = "normalize"  # each start's meta-gradient scaled to unit norm first: every start counts alike


class MetaGrad(str, Enum):
    """How the meta-gradient through the inner loop is computed (farzi/distill/metagrad.py)."""

    reverse = "reverse"  # exact reverse-mode Adam, memory flat in T
    checkpointed = "checkpointed"  # store every K-th state, recompute segments
    unroll = "unroll"  # plain autograd (reference; memory grows with T)
    paper = "paper"  # Algorithm 1 as printed (approximation, for the ablation)


_ENUMS: dict[str, type[Enum]] = {
    "objective": Objective,
    "init": Init,
    "init_windows": InitWindows,
    "inner_optimizer": InnerOptimizerName,
    "meta_grad": MetaGrad,
    "inner_state": InnerState,
    "start_weighting": StartWeighting,
}
_ENUM_WORDS = {
    "objective": "objective",
    "init": "init",
    "init_windows": "init windows",
    "inner_optimizer": "inner optimizer",
    "meta_grad": "meta-gradient strategy",
    "inner_state": "inner optimizer start",
    "start_weighting": "start weighting",
}

# Limits checked before anything is allocated (the bundle reader has its own, for files).
MAX_SUMMARY_ELEMENTS = 2**31 - 1  # latent mu x xi x d, and decoder d x |V|: one tensor each
MAX_TAU, MIN_TAU = 1e3, 1e-3  # outside this the initial summary over- or underflows float32
MAX_INNER_STEPS = 100_000
MODEL_FLAGS = ("max_len", "d_model", "n_layers", "n_heads")  # model_overrides the CLI offers


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class DistillConfig:
    """Settings of one distillation run (defaults: the ML-100k/PTB cpu protocol)."""

    mu: int = field(default=50, metadata=_help("Synthetic sequences (the budget's MU)."))
    xi: int = field(default=50, metadata=_help("Length of each synthetic sequence (the budget's XI)."))
    latent_dim: int = field(default=8, metadata=_help("Latent dimension d of the factorization."))
    tau: float = field(default=1.0, metadata=_help("Softmax temperature of the decoder."))
    inner_steps: int = field(default=10, metadata=_help("Inner training steps T per outer step."))
    inner_lr: float = field(default=0.01, metadata=_help("Inner optimizer learning rate."))
    inner_optimizer: InnerOptimizerName = field(
        default=InnerOptimizerName.adam, metadata=_help("Inner optimizer (sgd uses --inner-momentum).")
    )
    # measured (bench fidelity-levers, validation xent): omega beat fresh by -0.089 [-0.112, -0.067]
    inner_state: InnerState = field(
        default=InnerState.omega,
        metadata=_help(
            "Inner Adam continues the trajectory run's moments where the checkpoint has them (omega), "
            "or starts from zero moments (fresh, the paper)."
        ),
    )
    inner_momentum: float = field(default=0.9, metadata=_help("SGD momentum in the inner loop."))
    inner_weight_decay: float = field(default=0.0, metadata=_help("Inner optimizer (L2) weight decay."))
    outer_steps: int = field(default=100, metadata=_help("Outer (meta) steps; 0 = the initial summary alone."))
    # the paper's 0.01 is for a random start; a teacher start wants small refinements
    outer_lr: float = field(default=0.01, metadata=_help("Adam learning rate on latent and decoder."))
    outer_weight_decay: float = field(default=0.0, metadata=_help("Adam weight decay on latent and decoder."))
    syn_batch: int = field(default=16, metadata=_help("Synthetic sequences per inner step (0 = all)."))
    real_batch: int = field(default=128, metadata=_help("Real sequences in the meta-objective's batch."))
    meta_batch: int = field(
        default=1, metadata=_help("Start points (Omega checkpoint + real batch) averaged per outer step, per process.")
    )
    meta_grad: MetaGrad = field(default=MetaGrad.reverse, metadata=_help("Meta-gradient strategy."))
    segment: int = field(
        default=0, metadata=_help("Anchor / checkpoint interval of the meta-gradient (0 = the strategy's default).")
    )
    objective: Objective = field(default=Objective.farzi, metadata=_help("Meta-objective."))
    mtt_offset: int = field(default=2, metadata=_help("mtt: target checkpoint = this many saved checkpoints later."))
    start_weighting: StartWeighting = field(
        default=StartWeighting.normalize, metadata=_help("How a step's start points are weighted in the average.")
    )
    omega_runs: int = field(default=0, metadata=_help("Use the checkpoints of the first N trajectory runs (0 = all)."))
    omega_min_step: int = field(
        default=0, metadata=_help("Start inner loops only from checkpoints at or after this training step.")
    )
    omega_max_step: int = field(
        default=0,
        metadata=_help("Start inner loops only from checkpoints at or before this training step (0 = no limit)."),
    )
    grad_clip: float = field(default=1.0, metadata=_help("Clip the meta-gradient's norm (0 = off)."))
    init: Init = field(default=Init.teacher, metadata=_help("How the summary starts."))
    init_windows: InitWindows = field(
        default=InitWindows.auto,
        metadata=_help("teacher / real init: windows within long sequences, joined sequences, or auto."),
    )
    init_mix: float = field(
        default=0.2, metadata=_help("teacher init: weight of the real token against the teacher's prediction.")
    )
    init_scale: float = field(default=1.0, metadata=_help("random init: logits start at about this scale."))
    init_sharpness: float = field(
        default=10.0, metadata=_help("real init: logit of the real token over its unit-norm neighbours.")
    )
    learn_tau: bool = field(default=False, metadata=_help("Learn the temperature as an outer parameter."))
    learn_inner_lr: bool = field(
        default=False, metadata=_help("Learn the inner learning rate as an outer parameter (from --inner-lr).")
    )
    recipe_lr: float = field(default=1e-3, metadata=_help("Recipe the data is for: the student's Adam learning rate."))
    recipe_weight_decay: float = field(
        default=0.0, metadata=_help("Recipe the data is for: the student's Adam (L2) weight decay.")
    )
    recipe_steps: int = field(default=600, metadata=_help("Recipe the data is for: the student's most steps."))
    recipe_batch: int = field(default=0, metadata=_help("Recipe the data is for: sequences per step (0 = all mu)."))
    select_every: int = field(
        default=0,
        metadata=_help(
            "Every N outer steps (and at 0 and the end) train a student with the recipe on the summary and "
            "keep the best on validation (0 = off)."
        ),
    )
    model: str = field(default="", metadata=_help("Teacher model (default: the trajectories', else the task's)."))
    model_overrides: dict[str, Any] = field(
        default_factory=dict, metadata=_help("Teacher model settings (--max-len, --d-model, --n-layers, --n-heads).")
    )
    seed: int = field(default=0, metadata=_help("Random seed (0 to 2**63-1); same seed, same result on CPU."))
    device: str = field(default="cpu", metadata=_help("cpu or cuda (cuda:N)."))

    def __post_init__(self) -> None:
        # accept plain strings (library callers, JSON); an unknown one is reported by validate()
        for name, enum in _ENUMS.items():
            value = getattr(self, name)
            if not isinstance(value, enum):
                try:
                    setattr(self, name, enum(value))
                except ValueError:
                    pass

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: enums as their string values."""
        return {k: (v.value if isinstance(v, Enum) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> DistillConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"unknown distill settings {', '.join(unknown)}", f"use only: {', '.join(sorted(known))}")
        return cls(**raw)

    def settings(self) -> dict[str, Any]:
        """What must match for a run to be resumed: every field but the device."""
        d = self.to_dict()
        d.pop("device")
        return d

    def fingerprint(self) -> str:
        """A digest of :meth:`settings`."""
        return hashlib.sha256(json.dumps(self.settings(), sort_keys=True).encode()).hexdigest()

    # ------------------------------------------------------------------ validation
    def validate(self, ds: PreparedDataset | None = None) -> None:
        """Check every field (and, with ``ds``, the fit to the dataset); raise :class:`ConfigError`."""
        for name, enum in _ENUMS.items():
            value = getattr(self, name)
            if not isinstance(value, enum):
                flag = "--" + name.replace("_", "-")
                choices = ", ".join(e.value for e in enum)
                raise ConfigError(f"unknown {_ENUM_WORDS[name]} {value!r} ({flag})", f"choose one of: {choices}")
        _at_least("--budget sequences (MU)", self.mu, 1, "e.g. --budget 50x50")
        _at_least("--budget length (XI)", self.xi, 2, "e.g. --budget 50x50")
        _at_least("--latent-dim", self.latent_dim, 1, "e.g. --latent-dim 8")
        _at_least("--inner-steps", self.inner_steps, 1, "e.g. --inner-steps 20")
        _at_most("--inner-steps", self.inner_steps, MAX_INNER_STEPS)
        _at_least("--outer-steps", self.outer_steps, 0, "0 writes the initial summary")
        _at_least("--real-batch", self.real_batch, 1, "e.g. --real-batch 128")
        _at_least("--meta-batch", self.meta_batch, 1, "e.g. --meta-batch 4")
        _at_least("--syn-batch", self.syn_batch, 0, "0 uses every sequence each step")
        _at_least("--segment", self.segment, 0, "0 uses the strategy's default")
        _at_least("--mtt-offset", self.mtt_offset, 1, "e.g. --mtt-offset 2")
        _at_least("--omega-runs", self.omega_runs, 0, "0 uses every run")
        _at_least("--omega-min-step", self.omega_min_step, 0, "0 uses every checkpoint")
        _at_least("--omega-max-step", self.omega_max_step, 0, "0 uses every checkpoint")
        if self.omega_max_step and self.omega_max_step < self.omega_min_step:
            raise ConfigError(
                f"--omega-max-step {self.omega_max_step} is below --omega-min-step {self.omega_min_step}",
                "raise --omega-max-step or lower --omega-min-step",
            )
        _at_least("--recipe-steps", self.recipe_steps, 1, "e.g. --recipe-steps 300")
        _at_least("--recipe-batch", self.recipe_batch, 0, "0 trains on every sequence each step")
        _at_least("--select-every", self.select_every, 0, "0 turns selection off")
        check_seed(self.seed)
        for flag, value in (
            ("--tau", self.tau),
            ("--inner-lr", self.inner_lr),
            ("--outer-lr", self.outer_lr),
            ("--recipe-lr", self.recipe_lr),
        ):
            _positive(flag, value)
        for flag, value in (
            ("--init-scale", self.init_scale),
            ("--init-sharpness", self.init_sharpness),
        ):
            _positive(flag, value)
        if not MIN_TAU <= self.tau <= MAX_TAU:
            raise ConfigError(
                f"--tau {self.tau:g} is outside [{MIN_TAU:g}, {MAX_TAU:g}]: the summary's logits would over- or "
                "underflow float32",
                "pass a temperature such as --tau 1",
            )
        for flag, value in (
            ("--inner-weight-decay", self.inner_weight_decay),
            ("--outer-weight-decay", self.outer_weight_decay),
            ("--recipe-weight-decay", self.recipe_weight_decay),
            ("--grad-clip", self.grad_clip),
        ):
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{flag} {value} must be a number >= 0", f"pass e.g. {flag} 0")
        for f in fields(self):  # a rate or a decay above float32's range overflows the optimizers' steps
            value = getattr(self, f.name)
            if isinstance(value, float) and abs(value) > FLOAT32_MAX:
                flag = "--" + f.name.replace("_", "-")
                raise ConfigError(
                    f"{flag} {value:g} is beyond float32's range ({FLOAT32_MAX:.3g})", f"pass e.g. {flag} 1"
                )
        if not (0 <= self.inner_momentum < 1):
            raise ConfigError(f"--inner-momentum {self.inner_momentum} must lie in [0, 1)", "pass e.g. 0.9")
        if not (0 <= self.init_mix <= 1):
            raise ConfigError(f"--init-mix {self.init_mix} must lie in [0, 1]", "pass e.g. --init-mix 0.2")
        self._validate_model()
        resolve_device(self.device)
        if self.mu * self.xi * self.latent_dim > MAX_SUMMARY_ELEMENTS:
            raise ConfigError(
                f"the latent would hold {self.mu} x {self.xi} x {self.latent_dim} values, over the limit of "
                f"{MAX_SUMMARY_ELEMENTS}",
                "pick a smaller --budget or --latent-dim (the paper uses d = 8)",
            )
        if ds is not None:
            self._validate_for(ds)

    def _validate_model(self) -> None:
        from farzi.models import MODELS

        if self.model and self.model not in MODELS:
            raise ConfigError(f"unknown --model {self.model!r}", f"choose one of: {', '.join(MODELS)}")
        if not isinstance(self.model_overrides, dict):
            raise ConfigError("model_overrides must be a mapping of model settings", "pass e.g. {'d_model': 64}")
        known = [*MODEL_FLAGS, "dropout"]  # and, for a named model, every setting of its config (d_ff, ...)
        if self.model:
            known += [f.name for f in fields(MODELS[self.model][1]) if f.name not in (*known, "vocab_size")]
        for key, value in self.model_overrides.items():
            if key not in known:
                raise ConfigError(f"unknown teacher setting {key!r}", f"use only: {', '.join(known)}")
            if key in MODEL_FLAGS and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"teacher setting {key} {value!r} must be an integer", f"pass e.g. --{key} 64")

    def _validate_for(self, ds: PreparedDataset) -> None:
        from farzi.models import model_task

        n_train = len(ds.train)
        if self.mu > n_train:
            raise ConfigError(
                f"budget of {self.mu} sequences exceeds the {n_train} training sequences of {ds.name!r}",
                f"pick at most {n_train} sequences",
            )
        max_seq = int(ds.train.lengths.max())
        if self.xi > max_seq:
            raise ConfigError(
                f"budget length {self.xi} exceeds the longest training sequence of {ds.name!r} ({max_seq})",
                f"pick a length of at most {max_seq}",
            )
        if self.latent_dim * ds.vocab_size > MAX_SUMMARY_ELEMENTS:
            raise ConfigError(
                f"the decoder would hold {self.latent_dim} x {ds.vocab_size} values, over the limit of "
                f"{MAX_SUMMARY_ELEMENTS}",
                "pick a smaller --latent-dim (the paper uses d = 8)",
            )
        if self.model and model_task(self.model) != ds.task:
            raise ConfigError(
                f"model {self.model!r} is for {model_task(self.model)}, dataset {ds.name!r} is {ds.task}",
                "pick a model for this task",
            )
        self.check_memory(ds)

    def check_memory(self, ds: PreparedDataset, teacher: Any = None, checkpoints: int = 0) -> None:
        """Refuse, before anything is allocated, a run whose memory estimate (:func:`farzi.limits.distill_needs`)
        is above what this machine (or the GPU of ``device``) has available. ``teacher``: the teacher model
        once it is known (its name and config); by default the one ``model`` and ``model_overrides`` name
        (Omega's model takes their place in the run: the plan checks again with it)."""
        from farzi import limits
        from farzi.models import DEFAULT_MODEL, make_config
        from farzi.train import check_model_sizes

        if teacher is None:
            name = self.model or DEFAULT_MODEL[ds.task]
            try:
                model_cfg = make_config(name, ds.vocab_size, **self.model_overrides)
            except ConfigError:  # settings that model lacks: Omega's model takes them, or load_teacher says so
                return
        else:
            name, model_cfg = teacher.name, teacher.config
        check_model_sizes(model_cfg)
        longest = int(ds.train.lengths.max())
        needs = limits.distill_needs(self, ds.vocab_size, longest, name, model_cfg, checkpoints)
        limits.check_needs("the distillation", needs, self.device)


def _at_least(flag: str, value: int, least: int, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"{flag} {value} must be at least {least}", fix)


def _at_most(flag: str, value: int, most: int) -> None:
    if value > most:
        raise ConfigError(f"{flag} {value} exceeds the limit of {most}", f"pass at most {most}")


def _positive(flag: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{flag} {value} must be a positive number", f"pass a positive {flag}")


def parse_budget(text: str) -> tuple[int, int]:
    """'400x50' -> (400, 50)."""
    match = re.fullmatch(r"\s*([0-9]{1,9})\s*[xX*]\s*([0-9]{1,9})\s*", text)
    if match is None:
        raise ConfigError(f"budget {text!r} does not parse", "write it as MUxXI, e.g. --budget 50x50")
    mu, xi = int(match.group(1)), int(match.group(2))
    if mu < 1 or xi < 2:
        raise ConfigError(f"budget {text!r} is empty", "use at least 1 sequence of length 2, e.g. --budget 50x50")
    return mu, xi
