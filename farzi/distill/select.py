"""Summary selection and the recipe: what the distilled data is for, and which summary serves it best.

The *recipe* is how a student will train on the bundle (Adam at ``recipe_lr`` with L2 weight decay
``recipe_weight_decay``, batches of ``recipe_batch`` sequences, ``recipe_steps`` steps, validation
along the way); the bundle records it and ``train-student`` follows it unless flags say otherwise.

With ``select_every`` = N, the initial summary and the summary after every N outer steps (and the
last) are *candidates*: each trains one student with the recipe (same seed, so the candidates are
compared on the same student initialization and batches), scored by its best validation value
(next-item cross-entropy over every validation user's items, or corpus perplexity). The bundle is
the best candidate, and its history says which step that was. The outer loop can then never make
the data worse than its start on validation — it can only fail to improve it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from farzi.batching import DistributionTrainSet
from farzi.data.prepared import PreparedDataset
from farzi.distill.bundle import FarziData
from farzi.distill.config import DistillConfig
from farzi.distill.summary import Summary
from farzi.distill.teacher import Teacher
from farzi.evaluate import metric_is_higher_better
from farzi.models import build_model
from farzi.student import RECIPE_FIELDS, apply_recipe
from farzi.train import TrainConfig, train_model

SELECT_METRIC = {"rec": "xent", "lm": "ppl_corpus"}  # chosen by measurement: bench/REPORT.md, selection metric


def recipe(cfg: DistillConfig, task: str) -> dict[str, Any]:
    """The training recipe the bundle is for (what train-student follows on it)."""
    steps = cfg.recipe.steps
    return {
        "optimizer": "adam",
        "lr": cfg.recipe.lr,
        "weight_decay": cfg.recipe.weight_decay,
        "batch_size": cfg.recipe.batch or cfg.mu,
        "max_steps": steps,
        "eval_every": max(1, steps // 15),
        "patience": 0,
        "metric": SELECT_METRIC[task],
    }


def recipe_config(rec: dict[str, Any], seed: int) -> TrainConfig:
    """The student config a recipe names (a field it lacks, e.g. weight decay in older bundles: the default)."""
    return apply_recipe(TrainConfig(seed=seed), rec, RECIPE_FIELDS)[0]


def as_bundle(summary: Summary, task: str, pad: int, tau: float | None = None) -> FarziData:
    """A detached CPU copy of the summary (its candidates too, for a sparse one), as the training sets
    read bundles; ``tau``: another temperature than the summary's current one."""
    return FarziData(
        summary.latent.detach().cpu().clone(),
        summary.decoder.detach().cpu().clone(),
        summary.current_tau() if tau is None else tau,
        {"task": task, "masked_tokens": [pad]},
        support=summary.support.cpu().clone() if summary.support is not None else None,
    )


def student_score(data: FarziData, ds: PreparedDataset, teacher: Teacher, cfg: DistillConfig) -> float:
    """The best validation value of one student (the teacher's architecture, fresh) trained by the recipe."""
    rec = recipe(cfg, ds.task)
    torch.manual_seed(cfg.seed)
    model = build_model(teacher.model.name, teacher.model.config)
    result = train_model(model, DistributionTrainSet(data), ds, recipe_config(rec, cfg.seed), device=teacher.device)
    return float(result.best_metric)


@dataclass
class Selection:
    """The candidates so far and the best one (kept on the CPU, saved with the run state)."""

    metric: str
    higher: bool
    candidates: list[dict[str, Any]] = field(default_factory=list)
    best_step: int | None = None
    best_value: float = math.nan
    best: tuple[Tensor, Tensor] | None = None  # (latent, decoder) of the best candidate
    best_tau: float = math.nan  # its temperature (learned or not)
    best_support: Tensor | None = None  # its candidates (a sparse summary)

    @classmethod
    def create(cls, task: str) -> Selection:
        metric = SELECT_METRIC[task]
        return cls(metric, metric_is_higher_better(metric))

    def due(self, cfg: DistillConfig, step: int) -> bool:
        every = cfg.select_every
        return bool(every) and (step % every == 0 or step == cfg.outer_steps)

    def consider(self, step: int, summary: Summary, value: float) -> dict[str, Any]:
        better = value > self.best_value if self.higher else value < self.best_value
        if self.best_step is None or (math.isfinite(value) and (better or not math.isfinite(self.best_value))):
            self.best_step, self.best_value = step, value
            self.best = (summary.latent.detach().cpu().clone(), summary.decoder.detach().cpu().clone())
            self.best_tau = summary.current_tau()
            self.best_support = summary.support.detach().cpu().clone() if summary.support is not None else None
        record = {"step": step, "value": value}
        self.candidates.append(record)
        return {**record, "metric": self.metric, "best_step": self.best_step}

    def history(self) -> dict[str, Any]:
        return {"metric": self.metric, "candidates": list(self.candidates), "selected_step": self.best_step}

    # -- resumable
    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        tensors = {} if self.best is None else {"best.latent": self.best[0], "best.decoder": self.best[1]}
        if self.best_support is not None:
            tensors["best.support"] = self.best_support
        meta = {"candidates": self.candidates, "best_step": self.best_step, "best_value": self.best_value}
        return tensors, {**meta, "best_tau": self.best_tau}

    def restore(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        self.candidates = list(meta.get("candidates", []))
        self.best_step = meta.get("best_step")
        self.best_value = float(meta.get("best_value", math.nan))
        self.best_tau = float(meta.get("best_tau", math.nan))
        if "best.latent" in tensors:
            self.best = (tensors["best.latent"].cpu(), tensors["best.decoder"].cpu())
        if "best.support" in tensors:
            self.best_support = tensors["best.support"].cpu()
