"""The ML-100k setup shared by the ablation experiments (cpu protocol), and their toy version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.experiments.sample_efficiency import SETTINGS, prepare_dataset
from farzi.data.prepared import PreparedDataset
from farzi.distill.engine import DistillConfig, distill
from farzi.train import TrainConfig
from farzi.trajectories import train_trajectories


def base_settings(smoke: bool) -> dict[str, Any]:
    """The ML-100k cpu setting, with 2 trajectories instead of 3 so that every ablation fits in minutes."""
    if smoke:
        return dict(SETTINGS["smoke-rec"])
    s = dict(SETTINGS["ml100k-cpu"])
    s["trajectories"] = {**s["trajectories"], "runs": 2}
    return s


def dataset(s: dict[str, Any], work: Path) -> PreparedDataset | None:
    return prepare_dataset(s, work)


def omega(
    ds: PreparedDataset,
    s: dict[str, Any],
    work: Path,
    model: str,
    overrides: dict[str, Any],
    runs: int | None = None,
    name: str | None = None,
) -> Path:
    tr = s["trajectories"]
    out = work / "trajectories" / (name or model)
    train_trajectories(
        ds, model, runs or tr["runs"], tr["every"], TrainConfig(patience=0, seed=100, **tr["train"]), out, overrides
    )
    return out


def bundle(
    ds: PreparedDataset,
    s: dict[str, Any],
    work: Path,
    traj: Path | None,
    mu: int,
    tag: str,
    model: str | None = None,
    **changes: Any,
) -> tuple[Path, dict[str, Any]]:
    params = {**s["distill"], **changes}
    cfg = DistillConfig(mu=mu, xi=s["xi"], model=model or s["model"], seed=0, **params)
    out = work / "bundles" / f"{tag}.safetensors"
    res = distill(ds, cfg, out, trajectories=traj)
    return out, res.summary
