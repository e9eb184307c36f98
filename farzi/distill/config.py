"""``DistillConfig``: every setting of a distillation run, in one place.

The dataclass is the single source of truth (:mod:`farzi.settings`): each field declares its
default, help and bounds; the CLI's ``distill`` options are built from the fields
(``farzictl/options.py``), the bundle records ``to_dict()`` (``formats/farzi-data-v1.md`` section
4.1 is checked against the fields), presets are partial records, and :meth:`DistillConfig.validate`
checks every field before any work starts. The student recipe is a nested config
(:class:`RecipeConfig`), recorded flat as ``recipe_lr``, ``recipe_weight_decay``, ...
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, fields
from enum import Enum
from typing import TYPE_CHECKING, Any

from farzi._seed import check_seed
from farzi.device import resolve_device
from farzi.errors import ConfigError
from farzi.settings import check_fields, coerce_enums, from_record, group, setting, to_record

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


class InnerSoftmax(str, Enum):
    """Over what the inner loss's softmax runs on a sparse summary."""

    full = "full"  # the whole vocabulary (exact cross-entropy)
    candidates = "candidates"  # the union of the step's batch's candidates: O(|union| d) a position
    sampled = "sampled"  # each position's candidates plus inner_negatives shared uniform negatives (logQ corrected)


class MetaSoftmax(str, Enum):
    """Over what the meta-loss's softmax on the real batch runs (objectives farzi and mm)."""

    full = "full"  # the whole vocabulary (exact cross-entropy, fused)
    sampled = "sampled"  # each position's target plus meta_negatives shared uniform negatives (logQ corrected)


class StartWeighting(str, Enum):
    """How the start points of one outer step are weighted when their meta-gradients are averaged."""

    none = "none"  # plain mean: a start with a large meta-gradient (an early checkpoint) dominates
    normalize = "normalize"  # each start's meta-gradient scaled to unit norm first: every start counts alike


class Decoder(str, Enum):
    """What the summary's decoder [d, V] is (TD3's tied item factor)."""

    free = "free"  # its own parameters, d = --latent-dim (the paper)
    tied = "tied"  # starts as the teacher's token embedding transposed (d = its d_model), then trained
    tied_frozen = "tied-frozen"  # the teacher's token embedding transposed, never updated


class MetaGrad(str, Enum):
    """How the meta-gradient through the inner loop is computed (farzi/distill/metagrad.py)."""

    reverse = "reverse"  # exact reverse-mode Adam, memory flat in T
    checkpointed = "checkpointed"  # store every K-th state, recompute segments
    unroll = "unroll"  # plain autograd (reference; memory grows with T)
    paper = "paper"  # Algorithm 1 as printed (approximation, for the ablation)


# Limits checked before anything is allocated (the bundle reader has its own, for files).
MAX_SUMMARY_ELEMENTS = 2**31 - 1  # latent mu x xi x d, and decoder d x |V|: one tensor each
MAX_TAU, MIN_TAU = 1e3, 1e-3  # outside this the initial summary over- or underflows float32
MAX_INNER_STEPS = 100_000
MODEL_FLAGS = ("max_len", "d_model", "n_layers", "n_heads")  # model_overrides the CLI offers


@dataclass
class RecipeConfig:
    """The training recipe the data is for: how a student will train on the bundle (``train-student``
    follows it, summary selection trains by it). Flat names ``recipe_lr``, ``recipe_weight_decay``, ..."""

    lr: float = setting(1e-3, "Recipe the data is for: the student's Adam learning rate.", positive=True)
    weight_decay: float = setting(0.0, "Recipe the data is for: the student's Adam (L2) weight decay.", least=0)
    steps: int = setting(
        600, "Recipe the data is for: the student's most steps.", least=1, fix="e.g. --recipe-steps 300"
    )
    batch: int = setting(
        0,
        "Recipe the data is for: sequences per step (0 = all mu).",
        least=0,
        fix="0 trains on every sequence each step",
    )


@dataclass
class DistillConfig:
    """Settings of one distillation run (defaults: the ML-100k/PTB cpu protocol)."""

    mu: int = setting(
        50,
        "Synthetic sequences (the budget's MU).",
        least=1,
        fix="e.g. --budget 50x50",
        label="--budget sequences (MU)",
    )
    xi: int = setting(
        50,
        "Length of each synthetic sequence (the budget's XI).",
        least=2,
        fix="e.g. --budget 50x50",
        label="--budget length (XI)",
    )
    latent_dim: int = setting(8, "Latent dimension d of the factorization.", least=1, fix="e.g. --latent-dim 8")
    decoder: Decoder = setting(
        Decoder.free,
        "The decoder: its own parameters (free), or the teacher's token embedding transposed, so that logits "
        "are latent x embedding^T and the latent is as wide as the teacher's d_model (--latent-dim unused), "
        "trained from there (tied) or never updated (tied-frozen).",
        word="decoder",
    )
    tau: float = setting(
        1.0,
        "Softmax temperature of the decoder.",
        positive=True,
        within=(MIN_TAU, MAX_TAU, True),
        outside="{flag} {value:g} is outside [{lo:g}, {hi:g}]: the summary's logits would over- or underflow float32",
        fix="pass a temperature such as --tau 1",
    )
    inner_steps: int = setting(
        10, "Inner training steps T per outer step.", least=1, most=MAX_INNER_STEPS, fix="e.g. --inner-steps 20"
    )
    inner_lr: float = setting(0.01, "Inner optimizer learning rate.", positive=True)
    inner_optimizer: InnerOptimizerName = setting(
        InnerOptimizerName.adam, "Inner optimizer (sgd uses --inner-momentum).", word="inner optimizer"
    )
    # measured (bench fidelity-levers, validation xent): omega beat fresh by -0.089 [-0.112, -0.067]
    inner_state: InnerState = setting(
        InnerState.omega,
        "Inner Adam continues the trajectory run's moments where the checkpoint has them (omega), "
        "or starts from zero moments (fresh, the paper).",
        word="inner optimizer start",
    )
    inner_momentum: float = setting(0.9, "SGD momentum in the inner loop.", within=(0, 1, False), fix="pass e.g. 0.9")
    inner_weight_decay: float = setting(0.0, "Inner optimizer (L2) weight decay.", least=0)
    outer_steps: int = setting(
        100, "Outer (meta) steps; 0 = the initial summary alone.", least=0, fix="0 writes the initial summary"
    )
    # the paper's 0.01 is for a random start; a teacher start wants small refinements
    outer_lr: float = setting(0.01, "Adam learning rate on latent and decoder.", positive=True)
    outer_weight_decay: float = setting(0.0, "Adam weight decay on latent and decoder.", least=0)
    syn_batch: int = setting(
        16, "Synthetic sequences per inner step (0 = all).", least=0, fix="0 uses every sequence each step"
    )
    real_batch: int = setting(
        128, "Real sequences in the meta-objective's batch.", least=1, fix="e.g. --real-batch 128"
    )
    meta_batch: int = setting(
        1,
        "Start points (Omega checkpoint + real batch) averaged per outer step, per process.",
        least=1,
        fix="e.g. --meta-batch 4",
    )
    meta_grad: MetaGrad = setting(MetaGrad.reverse, "Meta-gradient strategy.", word="meta-gradient strategy")
    segment: int = setting(
        0,
        "Anchor / checkpoint interval of the meta-gradient (0 = the strategy's default).",
        least=0,
        fix="0 uses the strategy's default",
    )
    objective: Objective = setting(Objective.farzi, "Meta-objective.")
    mtt_offset: int = setting(
        2, "mtt: target checkpoint = this many saved checkpoints later.", least=1, fix="e.g. --mtt-offset 2"
    )
    start_weighting: StartWeighting = setting(
        StartWeighting.normalize, "How a step's start points are weighted in the average."
    )
    feature_align: float = setting(
        0.0,
        "Objectives farzi and mm: add this weight times the squared difference between the inner-trained "
        "model's last hidden states and a full-data model's on the real batch, averaged over its real tokens "
        "and the features (0 = off). The full-data "
        "model: the last checkpoint of the start point's trajectory run (mm: the most trained checkpoint; "
        "without trajectories: the teacher as built).",
        least=0,
    )
    omega_runs: int = setting(
        0, "Use the checkpoints of the first N trajectory runs (0 = all).", least=0, fix="0 uses every run"
    )
    omega_min_step: int = setting(
        0,
        "Start inner loops only from checkpoints at or after this training step.",
        least=0,
        fix="0 uses every checkpoint",
    )
    omega_max_step: int = setting(
        0,
        "Start inner loops only from checkpoints at or before this training step (0 = no limit).",
        least=0,
        fix="0 uses every checkpoint",
        doc="Start inner loops only from checkpoints at or before this training step (0 = no limit). "
        "Absent in bundles written before it: read as `0`.",
    )
    grad_clip: float = setting(1.0, "Clip the meta-gradient's norm (0 = off).", least=0)
    init: Init = setting(Init.teacher, "How the summary starts.")
    init_windows: InitWindows = setting(
        InitWindows.auto,
        "teacher / real init: windows within long sequences, joined sequences, or auto.",
        word="init windows",
        doc="teacher / real init: the real windows it starts from. `within`: a random window inside a random "
        "sequence at least `xi` tokens long; `joined`: random sequences joined end to end from a sequence's "
        "start (one `<eos>` between sentences); `auto`: `within` where the sequences at least `xi` long hold "
        "at least half of the training tokens, else `joined`. Absent in bundles written before it, which took "
        "`within`.",
    )
    init_mix: float = setting(
        0.2,
        "teacher init: weight of the real token against the teacher's prediction.",
        within=(0, 1, True),
        fix="pass e.g. --init-mix 0.2",
    )
    init_scale: float = setting(1.0, "random init: logits start at about this scale.", positive=True)
    init_sharpness: float = setting(
        10.0, "real init: logit of the real token over its unit-norm neighbours.", positive=True
    )
    learn_tau: bool = setting(False, "Learn the temperature as an outer parameter.")
    learn_inner_lr: bool = setting(False, "Learn the inner learning rate as an outer parameter (from --inner-lr).")
    support: int = setting(
        0,
        "Candidate tokens per synthetic position: a sparse summary over each position's K largest "
        "logits, refreshed as the outer loop goes (0 = dense, the whole vocabulary).",
        least=0,
        fix="0 keeps the whole vocabulary",
    )
    inner_softmax: InnerSoftmax = setting(
        InnerSoftmax.full,
        "Sparse summary: the inner loss's softmax over the whole vocabulary (full), over the candidates "
        "the step's batch holds (candidates), or over each position's candidates plus --inner-negatives "
        "shared uniform negatives, logQ corrected (sampled: O((K + S) d) a position).",
        word="inner softmax",
    )
    inner_negatives: int = setting(
        512,
        "--inner-softmax sampled: negatives shared by the inner step's positions, drawn uniformly anew "
        "each inner step (the same ones replayed by the reverse pass).",
        least=1,
        fix="e.g. --inner-negatives 512",
    )
    meta_softmax: MetaSoftmax = setting(
        MetaSoftmax.full,
        "The meta-loss on the real batch: softmax over the whole vocabulary (full) or each position's "
        "target plus --meta-negatives shared uniform negatives, logQ corrected (sampled).",
        word="meta softmax",
    )
    meta_negatives: int = setting(
        2048,
        "--meta-softmax sampled: negatives shared by the real batch's positions, drawn anew each outer step.",
        least=1,
        fix="e.g. --meta-negatives 2048",
    )
    # 0 by measurement: the sparse fit leaves non-candidates' logits unconstrained, so a refresh (the dense
    # summary's top K) swapped in items the fit never saw; on Amazon Beauty (bench sample-efficiency-beauty,
    # refresh 10) the meta-loss rose from 9.0 to 11.7 at the first refresh and ended at 10.3 after 60 steps
    support_refresh: int = setting(
        0,
        "Sparse summary: outer steps between refreshes of the candidates to the dense summary's top K "
        "(0 = never, the default: the first candidates are kept).",
        least=0,
        fix="0 keeps the first candidates",
    )
    recipe: RecipeConfig = group(RecipeConfig)
    select_every: int = setting(
        0,
        "Every N outer steps (and at 0 and the end) train a student with the recipe on the summary and "
        "keep the best on validation (0 = off).",
        least=0,
        fix="0 turns selection off",
    )
    model: str = setting("", "Teacher model (default: the trajectories', else the task's).")
    model_overrides: dict[str, Any] = setting(
        factory=dict,
        help="Teacher model settings (--max-len, --d-model, --n-layers, --n-heads).",
        keys=MODEL_FLAGS,
    )
    seed: int = setting(0, "Random seed (0 to 2**63-1); same seed, same result on CPU.", check=check_seed)
    device: str = setting("cpu", "cpu or cuda (cuda:N).", check=resolve_device)

    def __post_init__(self) -> None:
        coerce_enums(self)  # plain strings (library callers, JSON); an unknown one is reported by validate()

    def to_dict(self) -> dict[str, Any]:
        """The flat record (what a bundle keeps): every setting by its flat name, enums as strings."""
        return to_record(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> DistillConfig:
        """From a flat record (a setting it lacks takes its default); an unknown name is refused."""
        return from_record(cls, raw, "distill settings")

    def settings(self) -> dict[str, Any]:
        """What must match for a run to be resumed or found finished: every setting but the device."""
        d = self.to_dict()
        d.pop("device")
        return d

    def fingerprint(self) -> str:
        """A digest of :meth:`settings`: two runs are the same run when theirs are equal."""
        return hashlib.sha256(json.dumps(self.settings(), sort_keys=True).encode()).hexdigest()

    # ------------------------------------------------------------------ validation
    def validate(self, ds: PreparedDataset | None = None) -> None:
        """Check every field (and, with ``ds``, the fit to the dataset); raise :class:`ConfigError`."""
        check_fields(self)  # each setting's type and bounds, as its field declares them
        if self.omega_max_step and self.omega_max_step < self.omega_min_step:
            raise ConfigError(
                f"--omega-max-step {self.omega_max_step} is below --omega-min-step {self.omega_min_step}",
                "raise --omega-max-step or lower --omega-min-step",
            )
        if self.feature_align and self.objective in (Objective.dc, Objective.mtt):
            raise ConfigError(
                f"--feature-align applies to objectives farzi and mm, not {self.objective.value}",
                "pass --feature-align 0, or --objective farzi",
            )
        self._validate_model()
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
        if self.support > ds.vocab_size - 1:
            raise ConfigError(
                f"--support {self.support} exceeds the {ds.vocab_size - 1} tokens a position of {ds.name!r} can take",
                f"pass at most --support {ds.vocab_size - 1}, or 0 for a dense summary",
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


def parse_budget(text: str) -> tuple[int, int]:
    """'400x50' -> (400, 50)."""
    match = re.fullmatch(r"\s*([0-9]{1,9})\s*[xX*]\s*([0-9]{1,9})\s*", text)
    if match is None:
        raise ConfigError(f"budget {text!r} does not parse", "write it as MUxXI, e.g. --budget 50x50")
    mu, xi = int(match.group(1)), int(match.group(2))
    if mu < 1 or xi < 2:
        raise ConfigError(f"budget {text!r} is empty", "use at least 1 sequence of length 2, e.g. --budget 50x50")
    return mu, xi
