"""The outer optimizer (Adam on the summary) and the run state that makes a run resumable.

:class:`OuterOptimizer` takes the averaged meta-gradient of one outer step, skips
the step when it is not finite, clips its global norm and steps Adam. Its state,
the summary and the step count are saved together as a ``farzi-distill-state``
safetensors file (:func:`save_run_state` / :func:`load_run_state`), written
atomically, so a run killed at any point resumes from its last save and ends
bitwise where an uninterrupted run ends (on CPU).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from farzi._io import atomic_file
from farzi._safetensors import load_tensors, read_header, save_tensors
from farzi.distill.summary import Summary
from farzi.errors import ConfigError, setting_differences

STATE_FORMAT = "farzi-distill-state"
STATE_VERSION = "1"


@dataclass
class OuterStep:
    grad_norm: float  # before clipping
    skipped: bool  # the meta-gradient or meta-loss was not finite: nothing changed


class OuterOptimizer:
    """Adam over the summary's parameters, with global-norm clipping and a non-finite guard."""

    def __init__(self, summary: Summary, lr: float, weight_decay: float, grad_clip: float) -> None:
        self.params = summary.params
        self.names = summary.names
        self.grad_clip = grad_clip
        self.adam = torch.optim.Adam(self.params, lr=lr, weight_decay=weight_decay)

    def step(self, grads: list[Tensor], grad_norm: float, finite_loss: bool = True) -> OuterStep:
        skipped = not (math.isfinite(grad_norm) and finite_loss)
        if not skipped:
            scale = min(1.0, self.grad_clip / (grad_norm + 1e-12)) if self.grad_clip > 0 else 1.0
            for p, g in zip(self.params, grads, strict=True):
                p.grad = g * scale
            self.adam.step()
            self.adam.zero_grad(set_to_none=True)
        return OuterStep(grad_norm, skipped)

    def state_tensors(self) -> dict[str, Tensor]:
        """Adam's moments and step counts, named by parameter (absent before the first step)."""
        st = self.adam.state_dict()["state"]
        out: dict[str, Tensor] = {}
        for k, name in enumerate(self.names):
            if k in st:
                out[f"adam.{name}.exp_avg"] = st[k]["exp_avg"]
                out[f"adam.{name}.exp_avg_sq"] = st[k]["exp_avg_sq"]
                out[f"adam.{name}.step"] = st[k]["step"].reshape(1).float()
        return out

    def load_state_tensors(self, t: dict[str, Tensor]) -> None:
        state: dict[int, dict[str, Tensor]] = {}
        for k, name in enumerate(self.names):
            if f"adam.{name}.exp_avg" in t:
                state[k] = {
                    "step": t[f"adam.{name}.step"].reshape(()).cpu(),
                    "exp_avg": t[f"adam.{name}.exp_avg"],
                    "exp_avg_sq": t[f"adam.{name}.exp_avg_sq"],
                }
        sd = self.adam.state_dict()
        sd["state"] = state
        self.adam.load_state_dict(sd)


@dataclass
class RunState:
    step: int  # outer steps done
    log_lines: int  # lines of the log that belong to those steps
    # what else the run keeps (summary selection): tensors named "best.*", and a JSON document
    extra_tensors: dict[str, Tensor] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def save_run_state(
    path: Path,
    summary: Summary,
    outer: OuterOptimizer,
    state: RunState,
    config_fp: str,
    dataset_fp: str,
    settings: dict[str, Any] | None = None,
) -> None:
    """Write the run state; ``settings`` (the config the fingerprint is of) lets a refused resume name
    the settings that differ."""
    tensors = {
        **({"decoder": summary.decoder.detach()} if summary.frozen_decoder else {}),  # kept for the shape check
        **{n: p.detach() for n, p in zip(summary.names, summary.params, strict=True)},
        **outer.state_tensors(),
        **state.extra_tensors,
    }
    meta = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "step": str(state.step),
        "config": config_fp,
        "dataset": dataset_fp,
        "log_lines": str(state.log_lines),
        "extra": json.dumps(state.extra, sort_keys=True),
        **({"settings": json.dumps(settings, sort_keys=True)} if settings is not None else {}),
    }
    with atomic_file(path) as tmp:
        save_tensors(tmp, tensors, meta)


def load_run_state(
    path: Path,
    summary: Summary,
    outer: OuterOptimizer,
    config_fp: str,
    dataset_fp: str,
    settings: dict[str, Any] | None = None,
) -> RunState:
    """Restore ``summary`` and ``outer`` from ``path``; refuse a state made with other settings (named,
    where the state records them and ``settings`` is given) or another dataset."""
    fix = "delete it to start over, or resume with the settings it was made with"
    header, meta = read_header(path, ConfigError, fix)
    if meta.get("format") != STATE_FORMAT:
        raise ConfigError(f"{path} is not a distillation checkpoint", fix)
    if meta.get("dataset") != dataset_fp:
        raise ConfigError(f"{path} was made from another dataset (or another version of it)", fix)
    if meta.get("config") != config_fp:
        differ = setting_differences(meta.get("settings"), settings)
        raise ConfigError(f"{path} was made with other settings{differ}", fix)
    counts = (meta.get("step", ""), meta.get("log_lines", ""))
    if not all(c.isascii() and c.isdigit() and len(c) <= 12 for c in counts):
        raise ConfigError(f"{path} has a corrupt step count", fix)
    for name, p in (("latent", summary.latent), ("decoder", summary.decoder)):
        entry = header.get(name)
        if entry is None or list(entry["shape"]) != list(p.shape):
            raise ConfigError(f"{path}: tensor {name!r} is missing or has the wrong shape", fix)
    for name in summary.names:  # log tau, log inner lr where learned
        if name not in header:
            raise ConfigError(f"{path}: tensor {name!r} is missing", fix)
    t = load_tensors(path, summary.latent.device)
    with torch.no_grad():
        for name, p in zip(summary.names, summary.params, strict=True):
            p.copy_(t[name])
    outer.load_state_tensors(t)
    try:
        extra = json.loads(meta.get("extra", "{}"))
    except ValueError:
        raise ConfigError(f"{path} has a corrupt run record", fix) from None
    if not isinstance(extra, dict):
        raise ConfigError(f"{path} has a corrupt run record", fix)
    extra_tensors = {k: v for k, v in t.items() if k.startswith("best.") or k == "support"}
    if summary.support is not None:
        entry = header.get("support")
        if entry is None or list(entry["shape"]) != list(summary.support.shape):
            raise ConfigError(f"{path}: tensor 'support' is missing or has the wrong shape", fix)
    return RunState(int(counts[0]), int(counts[1]), extra_tensors, extra)
