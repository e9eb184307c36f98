"""A training run's Adam state beside a trajectory checkpoint (``runR-stepS.adam.safetensors``).

Omega's checkpoints say where a run's weights were; the Adam moments say how it was moving. With
them an inner loop continues the run's optimizer (``--inner-state omega``) instead of restarting
Adam from zero moments, whose first steps move every weight by about the learning rate whatever
its gradient. One safetensors file per checkpoint: tensors ``exp_avg.NAME`` and ``exp_avg_sq.NAME``
for every parameter, metadata ``format`` = ``farzi-adam-state``, ``version`` = ``1``, ``step`` (the
steps taken) and ``hyper`` (JSON: lr, betas, eps, weight_decay). Written atomically; never pickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from farzi._io import atomic_file
from farzi._safetensors import load_tensors, read_header, save_tensors
from farzi.errors import CheckpointError

FORMAT_NAME = "farzi-adam-state"
FORMAT_VERSION = "1"
_FIX = "train the trajectories again (farzictl trajectories)"


@dataclass
class AdamMoments:
    exp_avg: dict[str, Tensor]  # parameter name -> first moment
    exp_avg_sq: dict[str, Tensor]  # parameter name -> second moment
    step: int  # optimizer steps taken
    hyper: dict[str, Any]  # lr, betas, eps, weight_decay of the run's Adam


def adam_moments(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> AdamMoments | None:
    """A copy of ``optimizer``'s Adam state for ``model``'s parameters (None if it is not Adam or has no state)."""
    if not isinstance(optimizer, torch.optim.Adam):
        return None
    m, v, steps = {}, {}, set()
    for name, p in model.named_parameters():
        st = optimizer.state.get(p)
        if not st:
            return None
        m[name] = st["exp_avg"].detach().clone()
        v[name] = st["exp_avg_sq"].detach().clone()
        steps.add(int(st["step"]))
    group = optimizer.param_groups[0]
    hyper = {k: group[k] for k in ("lr", "eps", "weight_decay")}
    hyper["betas"] = list(group["betas"])
    return AdamMoments(m, v, steps.pop() if len(steps) == 1 else max(steps), hyper)


def save_moments(path: Path, moments: AdamMoments) -> str:
    tensors = {f"exp_avg.{k}": t.float() for k, t in moments.exp_avg.items()}
    tensors.update({f"exp_avg_sq.{k}": t.float() for k, t in moments.exp_avg_sq.items()})
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "step": str(moments.step),
        "hyper": json.dumps(moments.hyper, sort_keys=True),
    }
    with atomic_file(Path(path)) as tmp:
        save_tensors(tmp, tensors, meta)
    return Path(path).name


def load_moments(path: Path, names: list[str]) -> AdamMoments:
    """Read and check the Adam state at ``path`` for parameters ``names``."""
    header, meta = read_header(Path(path), CheckpointError, _FIX)
    if meta.get("format") != FORMAT_NAME or meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not a farzi Adam state (format {meta.get('format')!r})", _FIX)
    step = meta.get("step", "")
    if not (step.isascii() and step.isdigit() and len(step) <= 12):
        raise CheckpointError(f"{path} has an invalid step count {step[:20]!r}", _FIX)
    want = {f"{k}.{n}" for n in names for k in ("exp_avg", "exp_avg_sq")}
    if set(header) != want:
        raise CheckpointError(f"{path} does not hold the moments of this model's parameters", _FIX)
    try:
        hyper = json.loads(meta.get("hyper", ""))
    except ValueError:
        raise CheckpointError(f"{path} has corrupt optimizer settings", _FIX) from None
    t = load_tensors(path)
    for k, x in t.items():
        if not torch.isfinite(x).all() or (k.startswith("exp_avg_sq.") and (x < 0).any()):
            raise CheckpointError(f"{path}: moment {k!r} holds invalid values", _FIX)
    return AdamMoments(
        {n: t[f"exp_avg.{n}"] for n in names}, {n: t[f"exp_avg_sq.{n}"] for n in names}, int(step), hyper
    )
