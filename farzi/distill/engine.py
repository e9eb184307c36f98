"""The outer loop: learn the summary (latent, decoder) by meta-matching.

Each outer step: pick the inner start (a random checkpoint of Omega, or a random
init), compute the meta-gradient of the objective w.r.t. latent and decoder,
clip it, and take an Adam step on them. Objectives:

* ``farzi`` (default, paper Eq. 2): T inner steps on the summary from a checkpoint
  of Omega, then next-token cross-entropy of the result on a real batch;
* ``mm``: the same from random initializations (no Omega);
* ``dc``: gradient matching (Zhao et al. 2021): at a checkpoint of Omega, the
  per-tensor cosine distance between the gradient on the summary and on a real batch;
* ``mtt``: trajectory matching (Cazenavette et al. 2022): T inner steps from
  checkpoint i, normalized squared distance to checkpoint i + offset of the same run.

Every outer step draws its randomness from (seed, step) alone, so a run resumed
from a checkpoint ends bitwise where an uninterrupted run ends (on CPU).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from farzi._io import atomic_file
from farzi._safetensors import load_tensors, read_header, save_tensors
from farzi._version import __version__
from farzi.batching import pad_right
from farzi.data.prepared import PreparedDataset
from farzi.distill.bundle import FarziData, load_bundle, save_bundle
from farzi.distill.inner import SGD, Adam
from farzi.distill.metagrad import STRATEGIES, InnerLoop, meta_gradient
from farzi.distill.summary import (
    banned_mask,
    fit_summary,
    init_from_real,
    init_summary,
    materialize,
    principal_decoder,
    real_windows,
    teacher_targets,
)
from farzi.errors import ConfigError, FarziError
from farzi.models import SequenceModel, build_model, make_config, model_task, next_token_loss
from farzi.progress import ProgressFn, report
from farzi.trajectories import Omega, load_trajectories

OBJECTIVES = ("farzi", "mm", "dc", "mtt")
INNER_OPTIMIZERS = ("adam", "sgd")


@dataclass
class DistillConfig:
    mu: int = 50  # synthetic sequences
    xi: int = 50  # their length
    latent_dim: int = 8
    tau: float = 1.0
    inner_steps: int = 20
    inner_lr: float = 0.01
    inner_optimizer: str = "adam"
    inner_momentum: float = 0.9  # sgd only
    inner_weight_decay: float = 0.0
    outer_steps: int = 200
    outer_lr: float = 0.003  # the paper's 0.01 is for a random start; a teacher start wants small refinements
    outer_weight_decay: float = 0.0
    syn_batch: int = 0  # 0 = all mu sequences every inner step
    real_batch: int = 128
    meta_grad: str = "reverse"
    segment: int = 0  # 0 = the strategy's default anchor / checkpoint interval
    objective: str = "farzi"
    mtt_offset: int = 2  # mtt: target = this many saved checkpoints later
    omega_runs: int = 0  # use the checkpoints of the first N training runs only; 0 = all
    grad_clip: float = 1.0  # max norm of the meta-gradient; 0 = off
    init: str = "teacher"  # "teacher": real windows + teacher predictions; "real": smoothed real windows; "random"
    init_mix: float = 0.2  # teacher init: weight of the real token against the teacher's prediction
    init_scale: float = 1.0  # random init: logits start at about this scale
    init_sharpness: float = 10.0  # real init: logit of the real token over its unit-norm neighbours
    model: str = ""  # teacher model (from the trajectories when given)
    model_overrides: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self) -> str:
        """What must match for a run to be resumed (device excluded)."""
        d = self.to_dict()
        d.pop("device")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def parse_budget(text: str) -> tuple[int, int]:
    """'400x50' -> (400, 50)."""
    match = re.fullmatch(r"\s*([0-9]{1,9})\s*[xX*]\s*([0-9]{1,9})\s*", text)
    if match is None:
        raise ConfigError(f"budget {text!r} does not parse", "write it as MUxXI, e.g. --budget 50x50")
    mu, xi = int(match.group(1)), int(match.group(2))
    if mu < 1 or xi < 2:
        raise ConfigError(f"budget {text!r} is empty", "use at least 1 sequence of length 2, e.g. --budget 50x50")
    return mu, xi


def _check(cfg: DistillConfig, ds: PreparedDataset) -> None:
    if cfg.init not in ("random", "real", "teacher"):
        raise ConfigError(f"unknown init {cfg.init!r}", "use random, real or teacher")
    if cfg.objective not in OBJECTIVES:
        raise ConfigError(f"unknown objective {cfg.objective!r}", f"choose one of: {', '.join(OBJECTIVES)}")
    if cfg.meta_grad not in STRATEGIES:
        raise ConfigError(
            f"unknown meta-gradient strategy {cfg.meta_grad!r}", f"choose one of: {', '.join(STRATEGIES)}"
        )
    if cfg.inner_optimizer not in INNER_OPTIMIZERS:
        raise ConfigError(f"unknown inner optimizer {cfg.inner_optimizer!r}", "choose adam or sgd")
    n_train = len(ds.train)
    if cfg.mu > n_train:
        raise ConfigError(
            f"budget of {cfg.mu} sequences exceeds the {n_train} training sequences of {ds.name!r}",
            f"pick at most {n_train} sequences",
        )
    max_seq = int(ds.train.lengths.max())
    if cfg.xi > max_seq:
        raise ConfigError(
            f"budget length {cfg.xi} exceeds the longest training sequence of {ds.name!r} ({max_seq})",
            f"pick a length of at most {max_seq}",
        )
    for name, value in (
        ("--inner-steps", cfg.inner_steps),
        ("--outer-steps", cfg.outer_steps),
        ("--latent-dim", cfg.latent_dim),
        ("--real-batch", cfg.real_batch),
    ):
        if value < 1:
            raise ConfigError(f"{name} {value} must be at least 1", f"pass a positive {name}")
    for name, value in (("--tau", cfg.tau), ("--inner-lr", cfg.inner_lr), ("--outer-lr", cfg.outer_lr)):
        if not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"{name} {value} must be a positive number", f"pass a positive {name}")
    if cfg.syn_batch < 0:
        raise ConfigError(f"--syn-batch {cfg.syn_batch} must be >= 0", "pass 0 to use every sequence each step")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but CUDA is not available on this machine", "use --device cpu")
    if cfg.device not in ("cpu",) and not cfg.device.startswith("cuda"):
        raise ConfigError(f"unknown device {cfg.device!r}", "use cpu or cuda")


def _step_rng(seed: int, step: int) -> tuple[random.Random, torch.Generator]:
    digest = hashlib.sha256(f"farzi:{seed}:{step}".encode()).digest()
    n = int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
    return random.Random(n), torch.Generator().manual_seed(n)


def _real_batch(ds: PreparedDataset, size: int, max_len: int, gen: torch.Generator) -> Tensor:
    n = len(ds.train)
    idx = torch.randint(n, (size,), generator=gen).numpy()
    draws = torch.rand(size, generator=gen, dtype=torch.float64).numpy()
    seqs = []
    for j, r in zip(idx, draws, strict=True):
        s = ds.train[int(j)]
        room = max(len(s) - max_len, 0)
        start = int(np.floor(r * (room + 1)))
        seqs.append(s[start : start + max_len])
    return pad_right(seqs)


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


class _Run:
    """State of one distillation run (kept together for checkpoint/resume)."""

    def __init__(self, ds: PreparedDataset, cfg: DistillConfig, omega: Omega | None, teacher: SequenceModel) -> None:
        self.ds, self.cfg, self.omega, self.teacher = ds, cfg, omega, teacher
        self.device = torch.device(cfg.device)
        self.names = [n for n, _ in teacher.named_parameters()]
        gen = torch.Generator().manual_seed(cfg.seed)
        init = cfg.init
        if init == "teacher" and omega is None:
            init = "real"  # no trained teacher to ask: start from real windows alone
        if init == "teacher":
            tokens = real_windows(ds.train, cfg.mu, cfg.xi, gen)
            model = self._trained_model()
            with torch.no_grad():
                logits = model(tokens)  # [mu, xi, V]
            banned = banned_mask(ds.vocab_size, [ds.vocab.pad_id])
            targets = teacher_targets(tokens, logits, cfg.init_mix, banned)
            decoder0 = principal_decoder(model.token_embeddings(), cfg.latent_dim, [ds.vocab.pad_id])
            latent, decoder = fit_summary(targets, decoder0, cfg.tau, banned, gen=gen)
        elif init == "real":
            tokens = real_windows(ds.train, cfg.mu, cfg.xi, gen)
            emb = self._trained_model().token_embeddings()
            latent, decoder = init_from_real(
                tokens, emb, cfg.latent_dim, cfg.init_sharpness, cfg.tau, [ds.vocab.pad_id]
            )
        else:
            latent, decoder = init_summary(cfg.mu, cfg.xi, cfg.latent_dim, ds.vocab_size, gen, cfg.init_scale)
        self.latent = latent.to(self.device).requires_grad_()
        self.decoder = decoder.to(self.device).requires_grad_()
        self.opt = torch.optim.Adam([self.latent, self.decoder], lr=cfg.outer_lr, weight_decay=cfg.outer_weight_decay)
        self.banned = banned_mask(ds.vocab_size, [ds.vocab.pad_id], self.device)
        self.step = 0
        if cfg.inner_optimizer == "adam":
            self.inner = Adam(lr=cfg.inner_lr, weight_decay=cfg.inner_weight_decay)
        else:
            self.inner = SGD(lr=cfg.inner_lr, momentum=cfg.inner_momentum, weight_decay=cfg.inner_weight_decay)

    def _trained_model(self) -> SequenceModel:
        """The most trained checkpoint of Omega as a model (the teacher at its start if no Omega)."""
        model = build_model(self.teacher.name, self.teacher.config).eval()
        if self.omega is not None:
            last = max(range(len(self.omega)), key=lambda i: (self.omega.entry(i)["step"], -self.omega.entry(i)["run"]))
            params = self.omega.params(last)
            with torch.no_grad():
                for n, p in model.named_parameters():
                    p.copy_(params[n])
        else:
            model.load_state_dict(self.teacher.state_dict())
        return model

    # -- pieces of one outer step
    def syn(self, idx: Tensor | None) -> Tensor:
        return materialize(self.latent, self.decoder, self.cfg.tau, self.banned, idx)

    def start_weights(self, rng: random.Random, step: int) -> tuple[list[Tensor], int | None]:
        if self.omega is not None and self.cfg.objective != "mm":
            i = self.omega.sample(rng)
            p = self.omega.params(i)
            return [p[n].to(self.device) for n in self.names], i
        torch.manual_seed(rng.randrange(1 << 62))
        fresh = build_model(self.teacher.name, self.teacher.config)
        return [p.detach().to(self.device) for p in fresh.parameters()], None

    def real_loss(self, w: list[Tensor], x: Tensor) -> Tensor:
        logits = functional_call(self.teacher, dict(zip(self.names, w, strict=True)), (x,))
        return next_token_loss(logits, x)

    def one_step(self) -> dict[str, Any]:
        cfg = self.cfg
        self.step += 1
        rng, gen = _step_rng(cfg.seed, self.step)
        t0 = time.perf_counter()
        w0, ckpt = self.start_weights(rng, self.step)
        max_len = self.teacher.config.max_len
        x_real = _real_batch(self.ds, cfg.real_batch, max_len, gen).to(self.device)
        stats: dict[str, Any] = {"checkpoint": ckpt}
        if cfg.objective == "dc":
            meta_loss, grads = self._gradient_matching(w0, x_real)
        else:
            bsz = cfg.syn_batch
            batches = [
                None if not bsz or bsz >= cfg.mu else torch.randperm(cfg.mu, generator=gen)[:bsz].to(self.device)
                for _ in range(cfg.inner_steps)
            ]
            loop = InnerLoop(self.teacher, self.names, self.inner, self.syn, [self.latent, self.decoder], batches)
            if cfg.objective == "mtt":
                terminal, ckpt2 = self._mtt_terminal(w0, ckpt, rng)
                stats["target"] = ckpt2
            else:

                def terminal(w: list[Tensor]) -> Tensor:
                    return self.real_loss(w, x_real)

                with torch.no_grad():  # the real loss before the inner loop: meta_loss should end below it
                    stats["real_loss_start"] = float(terminal(w0))
            mg = meta_gradient(loop, w0, terminal, cfg.meta_grad, segment=cfg.segment or None)
            meta_loss, grads = mg.meta_loss, mg.grads
            stats.update(inner_loss_first=mg.inner_loss_first, inner_loss_last=mg.inner_loss_last, **mg.stats)
        norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))
        skipped = not math.isfinite(norm) or not math.isfinite(meta_loss)
        if not skipped:
            scale = min(1.0, cfg.grad_clip / (norm + 1e-12)) if cfg.grad_clip > 0 else 1.0
            self.latent.grad = grads[0] * scale
            self.decoder.grad = grads[1] * scale
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        return {
            "step": self.step,
            "meta_loss": meta_loss,
            "grad_norm": norm,
            "skipped": skipped,
            "step_seconds": round(time.perf_counter() - t0, 4),
            **stats,
        }

    def _gradient_matching(self, w0: list[Tensor], x_real: Tensor) -> tuple[float, list[Tensor]]:
        w = [p.detach().clone().requires_grad_() for p in w0]
        g_real = torch.autograd.grad(self.real_loss(w, x_real), w)
        x_syn = self.syn(None)
        g_syn = torch.autograd.grad(self.real_loss(w, x_syn), w, create_graph=True)
        loss = sum(
            1 - F.cosine_similarity(a.flatten(), b.detach().flatten(), dim=0, eps=1e-12)
            for a, b in zip(g_syn, g_real, strict=True)
        )
        grads = torch.autograd.grad(loss, [self.latent, self.decoder], allow_unused=True)
        return float(loss.detach()), [
            torch.zeros_like(p) if g is None else g for g, p in zip(grads, [self.latent, self.decoder], strict=True)
        ]

    def _mtt_terminal(self, w0: list[Tensor], i: int | None, rng: random.Random) -> tuple[Any, int]:
        assert self.omega is not None and i is not None
        j = self.omega.later(i, self.cfg.mtt_offset)
        tries = 0
        while j is None:  # start too close to the end of its run: draw again
            i = self.omega.sample(rng)
            j = self.omega.later(i, self.cfg.mtt_offset)
            tries += 1
            if tries > 1000:
                raise ConfigError("no run in the trajectories is long enough for --mtt-offset", "lower --mtt-offset")
        start = [self.omega.params(i)[n].to(self.device) for n in self.names]
        w0[:] = start
        target = [self.omega.params(j)[n].to(self.device) for n in self.names]
        denom = sum(float((a - b).pow(2).sum()) for a, b in zip(start, target, strict=True)) or 1.0

        def terminal(w: list[Tensor]) -> Tensor:
            return sum((a - b).pow(2).sum() for a, b in zip(w, target, strict=True)) / denom

        return terminal, j

    # -- checkpoint / resume
    def save(self, path: Path, log_lines: int) -> None:
        st = self.opt.state_dict()["state"]
        tensors = {"latent": self.latent.detach(), "decoder": self.decoder.detach()}
        for k, name in ((0, "latent"), (1, "decoder")):
            if k in st:
                tensors[f"adam.{name}.exp_avg"] = st[k]["exp_avg"]
                tensors[f"adam.{name}.exp_avg_sq"] = st[k]["exp_avg_sq"]
                tensors[f"adam.{name}.step"] = st[k]["step"].reshape(1).float()
        meta = {
            "format": "farzi-distill-state",
            "version": "1",
            "step": str(self.step),
            "config": self.cfg.fingerprint(),
            "dataset": self.ds.fingerprint(),
            "log_lines": str(log_lines),
        }
        with atomic_file(path) as tmp:
            save_tensors(tmp, tensors, meta)

    def load(self, path: Path) -> int:
        fix = "delete it to start over, or resume with the settings it was made with"
        _, meta = read_header(path, ConfigError, fix)
        if meta.get("format") != "farzi-distill-state":
            raise ConfigError(f"{path} is not a distillation checkpoint", fix)
        if meta.get("config") != self.cfg.fingerprint() or meta.get("dataset") != self.ds.fingerprint():
            raise ConfigError(f"{path} was made with other settings or another dataset", fix)
        t = load_tensors(path, self.device)
        with torch.no_grad():
            self.latent.copy_(t["latent"])
            self.decoder.copy_(t["decoder"])
        state: dict[int, dict[str, Tensor]] = {}
        for k, name in ((0, "latent"), (1, "decoder")):
            if f"adam.{name}.exp_avg" in t:
                state[k] = {
                    "step": t[f"adam.{name}.step"].reshape(()).cpu(),
                    "exp_avg": t[f"adam.{name}.exp_avg"],
                    "exp_avg_sq": t[f"adam.{name}.exp_avg_sq"],
                }
        sd = self.opt.state_dict()
        sd["state"] = state
        self.opt.load_state_dict(sd)
        self.step = int(meta["step"])
        return int(meta["log_lines"])


def _teacher(ds: PreparedDataset, cfg: DistillConfig, trajectories: Path | None) -> tuple[SequenceModel, Omega | None]:
    omega = None
    if trajectories is not None:
        omega = load_trajectories(Path(trajectories), ds, model_name=cfg.model or None)
        if cfg.omega_runs:
            omega = omega.first_runs(cfg.omega_runs)
        model = build_model(omega.model_name, omega.config)
    else:
        if cfg.objective in ("dc", "mtt"):
            raise ConfigError(
                f"objective {cfg.objective!r} needs --trajectories", "train them with farzictl trajectories"
            )
        name = cfg.model or ("sasrec" if ds.task == "rec" else "transformer")
        if model_task(name) != ds.task:
            raise ConfigError(
                f"model {name!r} is for {model_task(name)}, dataset {ds.name!r} is {ds.task}",
                "pick a model for this task",
            )
        model = build_model(name, make_config(name, ds.vocab_size, **cfg.model_overrides))
    if model.config.max_len < cfg.xi:
        raise ConfigError(
            f"the teacher's context ({model.config.max_len}) is shorter than the budget length {cfg.xi}",
            "pick a shorter budget or a teacher with a longer max_len",
        )
    return model.eval(), omega


def distill(
    ds: PreparedDataset,
    cfg: DistillConfig,
    out: Path,
    trajectories: Path | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    progress: ProgressFn | None = None,
    stop_after: int | None = None,
) -> DistillResult:
    """Distill ``ds`` into a farzi-data bundle at ``out``.

    A JSONL log of every outer step goes to ``out`` with suffix ``.log.jsonl``;
    with ``checkpoint_every`` the run state is saved to ``.state.safetensors``
    beside it, and ``resume=True`` continues from there. ``stop_after`` ends the
    call after that many outer steps in total (for tests of resumption).
    """
    _check(cfg, ds)
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"--out {out} must end in .safetensors", "name the bundle e.g. ptb-400x50.safetensors")
    torch.manual_seed(cfg.seed)
    teacher, omega = _teacher(ds, cfg, trajectories)
    teacher.to(cfg.device)
    run = _Run(ds, cfg, omega, teacher)
    log_path = out.with_suffix(".log.jsonl")
    state_path = out.with_suffix(".state.safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    if resume and state_path.is_file():
        keep = run.load(state_path)
        if log_path.is_file():
            lines = log_path.read_text(encoding="utf-8").splitlines()[:keep]
    elif resume:
        raise ConfigError(f"nothing to resume: {state_path} does not exist", "run without --resume to start")
    with open(log_path, "w", encoding="utf-8") as log:
        for line in lines:
            log.write(line + "\n")
        start = time.perf_counter()
        skipped = sum(1 for line in lines if json.loads(line).get("skipped"))
        last: dict[str, Any] = {}
        target = cfg.outer_steps if stop_after is None else min(stop_after, cfg.outer_steps)
        while run.step < target:
            last = run.one_step()
            skipped += int(last["skipped"])
            log.write(json.dumps(last, sort_keys=True) + "\n")
            log.flush()
            report(
                progress,
                "distill",
                run.step,
                cfg.outer_steps,
                meta_loss=last["meta_loss"],
                step_s=last["step_seconds"],
                **({"skipped": skipped} if skipped else {}),
            )
            if checkpoint_every and run.step % checkpoint_every == 0:
                run.save(state_path, run.step)
    wall = time.perf_counter() - start
    teacher_rec = {
        "model": teacher.name,
        "config": teacher.config.to_dict(),
        "trajectories": str(trajectories) if trajectories else None,
        "checkpoints": len(omega) if omega else 0,
    }
    dataset_rec = {
        "name": ds.name,
        "fingerprint": ds.fingerprint(),
        "path": str(ds.path) if ds.path else None,
        "train_sequences": len(ds.train),
        "train_tokens": int(ds.train.num_tokens),
    }
    if run.step < cfg.outer_steps:  # stop_after: like a kill, the saved state stays as it was
        data = FarziData(run.latent.detach().cpu(), run.decoder.detach().cpu(), cfg.tau, {"task": ds.task})
        meta_loss = float(last.get("meta_loss", math.nan))
        return DistillResult(data, out, log_path, run.step, skipped, wall, meta_loss, {"complete": False})
    if not (torch.isfinite(run.latent).all() and torch.isfinite(run.decoder).all()):
        raise ConfigError(
            "the distillation diverged: the summary holds NaN or infinite values (no bundle written)",
            "lower --outer-lr or --inner-lr, or keep --grad-clip on",
        )
    save_bundle(
        out,
        run.latent.detach().cpu(),
        run.decoder.detach().cpu(),
        cfg.tau,
        ds.task,
        vocab=list(ds.vocab.tokens),
        vocab_sha256=ds.vocab.sha256(),
        specials=dict(ds.vocab.specials),
        masked_tokens=[ds.vocab.pad_id],
        dataset=dataset_rec,
        teacher=teacher_rec,
        distill={**cfg.to_dict(), "package_version": __version__},
    )
    state_path.unlink(missing_ok=True)
    data = load_bundle(out)
    summary = {
        "complete": True,
        "steps": run.step,
        "skipped": skipped,
        "wall_seconds": round(wall, 3),
        "seconds_per_step": round(wall / max(1, run.step - len(lines)), 4) if run.step > len(lines) else None,
        "final_meta_loss": float(last.get("meta_loss", math.nan)) if last else None,
    }
    return DistillResult(
        data,
        out,
        log_path,
        run.step,
        skipped,
        wall,
        float(last.get("meta_loss", math.nan)) if last else math.nan,
        summary,
    )


__all__ = ["DistillConfig", "DistillResult", "distill", "parse_budget", "OBJECTIVES", "FarziError"]
