"""The ML-100k setup shared by the ablation experiments (cpu protocol), and their toy version.

Trajectories and bundles are cached under the work directory by the settings that made them, so
experiments run with the same ``--work`` share what they have in common (each still runs from
scratch on an empty one); every result records which artifacts it reused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from bench.common import keyed_config
from bench.experiments.sample_efficiency import SETTINGS, prepare_dataset
from farzi.data.prepared import PreparedDataset
from farzi.distill.engine import DistillConfig, distill
from farzi.train import TrainConfig
from farzi.trajectories import train_trajectories

REUSED: list[str] = []  # artifacts this process took from the cache (reported by the experiments)


def base_settings(smoke: bool) -> dict[str, Any]:
    """The ML-100k cpu setting, with 2 trajectories instead of 3 so that every ablation fits in minutes."""
    if smoke:
        return dict(SETTINGS["smoke-rec"])
    s = dict(SETTINGS["ml100k-cpu"])
    s["trajectories"] = {**s["trajectories"], "runs": 2}
    return s


def dataset(s: dict[str, Any], work: Path) -> PreparedDataset | None:
    return prepare_dataset(s, work)


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


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
    runs = runs or tr["runs"]
    out = work / "trajectories" / f"{name or model}-{_key(ds.fingerprint(), model, overrides, runs, tr)}"
    if (out / "manifest.json").is_file():
        REUSED.append(f"trajectories {out.name}")
        return out
    train_trajectories(ds, model, runs, tr["every"], TrainConfig(patience=0, seed=100, **tr["train"]), out, overrides)
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
    out = work / "bundles" / f"{tag}-{_key(keyed_config(cfg), str(traj))}.safetensors"
    summary_file = out.with_suffix(".summary.json")
    if out.is_file() and summary_file.is_file():
        REUSED.append(f"bundle {out.name}")
        return out, json.loads(summary_file.read_text())
    res = distill(ds, cfg, out, trajectories=traj)
    summary_file.write_text(json.dumps(res.summary, default=str))
    return out, res.summary
