"""Omega: checkpoints of several training runs of a model on the real data.

Format ``farzi-trajectories`` v1 (formats/trajectories-v1.md): a directory with
``manifest.json`` and one ``run{R}-step{S}.safetensors`` model checkpoint
(format farzi-model v1) per saved point. Runs start from independent random
initializations (seed + run); a checkpoint is saved at the initialization (step
0), every ``every`` steps, and at the end of each run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from farzi._io import Claim, Companion, atomic_dir, claim_output, read_json, write_json
from farzi._version import __version__
from farzi.batching import SequenceTrainSet, batching_record
from farzi.checkpoint import (
    check_dataset,
    dataset_record,
    load_checkpoint,
    read_checkpoint_info,
    save_checkpoint,
)
from farzi.data.prepared import PreparedDataset
from farzi.device import resolve_device
from farzi.distill.parallel import LOCAL, Collective
from farzi.distributed import agree
from farzi.errors import CheckpointError, ConfigError, FarziError, setting_differences
from farzi.models import MODEL_OPTIONS, build_model, make_config, model_task
from farzi.moments import AdamMoments, adam_moments, load_moments, save_moments
from farzi.progress import ProgressFn
from farzi.settings import group, setting
from farzi.train import TrainConfig, check_model_sizes, check_training_memory, train_model

FORMAT_NAME = "farzi-trajectories"
FORMAT_VERSION = 1


@dataclass
class TrajectoriesConfig:
    """The settings of ``farzictl trajectories``: the model, how many runs, how often a checkpoint, and
    how each run trains (:class:`~farzi.train.TrainConfig`, its options without a prefix)."""

    model: str = setting("", "Model: sasrec, gru4rec, fmlp (rec); transformer, rnn (lm).")
    runs: int = setting(5, "Training runs from independent random initializations.")
    every: int = setting(50, "Save a checkpoint every this many steps (and at the end).")
    model_overrides: dict[str, Any] = setting(
        factory=dict,
        help="Model settings (--max-len, --d-model, --n-layers, --n-heads, --dropout).",
        keys=tuple(MODEL_OPTIONS),
    )
    train: TrainConfig = group(lambda: TrainConfig(max_steps=500, patience=0), prefix="")
    device: str = setting("cpu", "cpu, cuda or cuda:N (checked before any work).")


def train_trajectories(
    ds: PreparedDataset,
    model_name: str,
    runs: int,
    every: int,
    config: TrainConfig,
    out: Path,
    model_overrides: dict[str, Any] | None = None,
    device: str = "cpu",
    progress: ProgressFn | None = None,
    overwrite: bool = False,
    resume: bool = False,
    collective: Collective = LOCAL,
) -> dict[str, Any]:
    """Train ``runs`` models and write Omega to ``out`` (atomically).

    ``out`` is claimed before training (:func:`farzi._io.claim_output`): it may be absent,
    an empty directory or an earlier trajectory set; anything else is a ``ConfigError``
    unless ``overwrite``, and so is a second writer of the same ``out``.

    Each run is written on its own, atomically, into ``.NAME.runs/runR`` beside ``out`` as soon
    as it ends; the set is assembled into ``out`` when every run is there. An interrupted job
    keeps its finished runs, and ``resume=True`` trains only the missing ones (a run made with
    other settings is refused). With a ``collective`` of several ranks, rank r trains runs
    r, r + N, r + 2N ... (all ranks need ``out`` on a file system they share); rank 0 claims and
    assembles ``out``, and returns the manifest (the other ranks: the runs they trained).
    """
    out = Path(out)
    parts = _parts_dir(out)
    writer = collective.rank == 0
    with contextlib.ExitStack() as claim:
        error, fingerprint = None, None
        try:
            resolve_device(device)  # ConfigError for a device this machine lacks, before any work
            if runs < 1:
                raise ConfigError(f"--runs {runs} must be at least 1", "pass e.g. --runs 5")
            if every < 1:
                raise ConfigError(f"--every {every} must be at least 1", "pass e.g. --every 50")
            if model_task(model_name) != ds.task:
                raise ConfigError(
                    f"model {model_name!r} is for {model_task(model_name)} but {ds.name!r} is a {ds.task} dataset",
                    "pick a model for this task",
                )
            cfg = make_config(model_name, ds.vocab_size, **(model_overrides or {}))
            check_model_sizes(cfg)
            check_training_memory("a trajectory run", model_name, cfg, config, ds, device=device)
            record = dataset_record(ds)
            key = _run_key(model_name, cfg.to_dict(), config, record, every)
            settings = _run_settings(model_name, cfg.to_dict(), config, every)
            fingerprint = _digest({"run": key, "runs": runs, "resume": resume, "package": __version__})
            if writer:
                claim.enter_context(claim_omega(out, overwrite, ds.path))
                _prepare_parts(parts, resume, key, settings)
        except FarziError as exc:
            error = exc
        agree(collective, fingerprint, error, "settings or data")
        patient = collective.patient()  # made while the ranks are together: they part ways now
        start = time.perf_counter()
        mine = [run for run in range(collective.rank, runs, collective.world)]
        try:
            for run in mine:
                if resume and _finished_run(parts, run, key) is not None:
                    continue
                _train_run(ds, model_name, cfg, config, run, runs, every, record, key, parts, device, progress)
        except FarziError as exc:
            error = exc
        agree(patient, None, error, "")  # the ranks with fewer or shorter runs wait here
        if not writer:
            return {"rank": collective.rank, "runs": mine}
        points: list[dict[str, Any]] = []
        summaries = []
        with atomic_dir(out) as tmp:
            for run in range(runs):
                info = _finished_run(parts, run, key)
                if info is None:
                    raise CheckpointError(
                        f"run {run} is missing from {parts} after every rank finished",
                        "ranks on several machines need --out on a file system they all share",
                    )
                for f in sorted((parts / f"run{run}").iterdir()):
                    if f.name != RUN_RECORD:
                        _link_or_copy(f, tmp / f.name)
                points.extend(info["points"])
                summaries.append(info["summary"])
            manifest = {
                "format": FORMAT_NAME,
                "version": FORMAT_VERSION,
                "model": model_name,
                "config": cfg.to_dict(),
                "dataset": record,
                "runs": runs,
                "every": every,
                "train": {**config.to_dict(), "batching": batching_record(SequenceTrainSet(ds.train, cfg.max_len))},
                "checkpoints": points,
                "summaries": summaries,
                "package": {"name": "farzi", "version": __version__},
                "threads": torch.get_num_threads(),  # torch intra-op threads the runs trained with
                "wall_seconds": round(time.perf_counter() - start, 3),
            }
            write_json(tmp / "manifest.json", manifest)
        shutil.rmtree(parts, ignore_errors=True)
    return manifest


RUN_RECORD = "run.json"
RUN_FORMAT = "farzi-trajectory-run"


def _parts_dir(out: Path) -> Path:
    """Where finished runs wait for the others: ``.NAME.runs`` beside ``out``."""
    return out.parent / f".{out.name}.runs"


def _own_parts(parts: Path) -> bool:
    """Whether ``parts`` holds only what :func:`train_trajectories` writes there: ``runR`` directories
    (and the dot-named temporaries of a run killed while it was written)."""
    try:
        entries = list(parts.iterdir()) if parts.is_dir() and not parts.is_symlink() else None
    except OSError:
        return False
    return entries is not None and all(
        p.name.startswith(".") or (re.fullmatch(r"run\d+", p.name) is not None and p.is_dir()) for p in entries
    )


def claim_omega(
    out: Path, overwrite: bool = False, dataset: Path | None = None
) -> contextlib.AbstractContextManager[Claim]:
    """The claim :func:`train_trajectories` holds on ``out`` and the finished runs beside it (a caller
    such as the CLI takes it before any costly work, and training joins it): a second writer, a
    directory there that is not a trajectory set, and a ``.NAME.runs`` that is not farzi's are refused
    unless ``overwrite``; even with it, a directory holding the dataset read."""
    parts = Companion(_parts_dir(Path(out)), "the finished runs of a trajectory job", _own_parts)
    return claim_output(out, "trajectories", overwrite, companions=(parts,), inputs=(dataset,))


def _digest(doc: Any) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _run_key(model_name: str, cfg: dict[str, Any], config: TrainConfig, record: dict[str, Any], every: int) -> str:
    """What a finished run must have been made with to be kept by ``resume`` (its seed is seed + run)."""
    return _digest({"model": model_name, "config": cfg, "train": config.to_dict(), "dataset": record, "every": every})


def _run_settings(model_name: str, cfg: dict[str, Any], config: TrainConfig, every: int) -> dict[str, Any]:
    """The settings of :func:`_run_key` by option name (a run's record keeps them, so that a refused
    resume names those that differ)."""
    return {**cfg, **config.to_dict(), "model": model_name, "every": every}


def _prepare_parts(parts: Path, resume: bool, key: str, settings: dict[str, Any] | None = None) -> None:
    """A fresh start removes earlier runs; a resume keeps those made with the same settings (and
    drops what a killed run left half-written)."""
    if not resume:
        shutil.rmtree(parts, ignore_errors=True)
        return
    if not parts.is_dir():
        return
    for p in parts.iterdir():
        if p.name.startswith("."):  # a run killed while it was written
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        elif p.is_dir() and (p / RUN_RECORD).is_file():
            rec = _read_run_record(p)
            if rec is None or rec.get("key") != key:
                differ = setting_differences(rec.get("settings") if rec else None, settings)
                raise ConfigError(
                    f"the finished run {p} was made with other settings{differ or ' or another dataset'}",
                    "resume with the settings it was made with, or run without --resume to start over",
                )


def _read_run_record(run_dir: Path) -> dict[str, Any] | None:
    try:
        rec = read_json(run_dir / RUN_RECORD)
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and rec.get("format") == RUN_FORMAT else None


def _finished_run(parts: Path, run: int, key: str) -> dict[str, Any] | None:
    rec = _read_run_record(parts / f"run{run}")
    if rec is None or rec.get("key") != key or rec.get("run") != run:
        return None
    if not all((parts / f"run{run}" / p["file"]).is_file() for p in rec.get("points", [])):
        return None
    return rec


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _train_run(
    ds: PreparedDataset,
    model_name: str,
    cfg: Any,
    config: TrainConfig,
    run: int,
    runs: int,
    every: int,
    record: dict[str, Any],
    key: str,
    parts: Path,
    device: str,
    progress: ProgressFn | None,
) -> None:
    """Train run ``run`` and write it, with its record, atomically to ``parts/runR``."""
    points: list[dict[str, Any]] = []
    with atomic_dir(parts / f"run{run}") as tmp:
        torch.manual_seed(config.seed + run)
        model = build_model(model_name, cfg)
        run_cfg = TrainConfig(**{**config.to_dict(), "seed": config.seed + run})
        recorder = _Recorder(tmp, run, every, record, points)
        recorder(0, model, None)  # the initialization is the first point of the trajectory

        train_set = SequenceTrainSet(ds.train, cfg.max_len)
        result = train_model(
            model,
            train_set,
            ds,
            run_cfg,
            device=device,
            progress=progress,
            task_name=f"trajectory run {run + 1}/{runs}",
            on_step=recorder,
        )
        recorder.finish(model, result.steps)
        summary = {"run": run, **result.summary()}
        write_json(
            tmp / RUN_RECORD,
            {
                "format": RUN_FORMAT,
                "run": run,
                "key": key,
                "settings": _run_settings(model_name, cfg.to_dict(), config, every),
                "points": points,
                "summary": summary,
            },
        )


class _Recorder:
    """The ``on_step`` hook of one run: saves a checkpoint every ``every`` steps."""

    def __init__(self, directory: Path, run: int, every: int, record: dict[str, Any], points: list) -> None:
        self.directory, self.run, self.every, self.record, self.points = directory, run, every, record, points
        self.validation: dict[str, Any] = {}
        self.unsaved: dict[str, torch.Tensor] | None = None
        self.unsaved_moments: AdamMoments | None = None

    def __call__(
        self, step: int, model: Any, validation: dict[str, Any] | None, optimizer: torch.optim.Optimizer | None = None
    ) -> None:
        if validation is not None:
            self.validation = dict(validation)
        if step % self.every:
            self.unsaved = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self.unsaved_moments = adam_moments(model, optimizer)
        else:
            self.unsaved = None
            self._save(model, step, adam_moments(model, optimizer))

    def finish(self, model: Any, step: int) -> None:
        """Save the trajectory's end point as trained (train_model restores the best state)."""
        if self.unsaved is not None:
            model.load_state_dict(self.unsaved)
            self._save(model, step, self.unsaved_moments)

    def _save(self, model: Any, step: int, moments: AdamMoments | None = None) -> None:
        name = f"run{self.run}-step{step}.safetensors"
        save_checkpoint(self.directory / name, model, self.record, run=self.run, step=step, validation=self.validation)
        numbers = {k: v for k, v in self.validation.items() if isinstance(v, int | float)}
        point = {"run": self.run, "step": step, "file": name, "validation": numbers}
        if moments is not None:
            point["optimizer"] = save_moments(self.directory / f"run{self.run}-step{step}.adam.safetensors", moments)
        self.points.append(point)


@dataclass
class Omega:
    """A loaded trajectory set; checkpoints are read lazily and cached."""

    path: Path
    manifest: dict[str, Any]
    _cache: dict[int, dict[str, torch.Tensor]]
    _moments: dict[int, AdamMoments | None] = field(default_factory=dict)

    @property
    def model_name(self) -> str:
        return str(self.manifest["model"])

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.manifest["config"])

    def __len__(self) -> int:
        return len(self.manifest["checkpoints"])

    def entry(self, i: int) -> dict[str, Any]:
        return self.manifest["checkpoints"][i]

    def moments(self, i: int) -> AdamMoments | None:
        """The training run's Adam state at checkpoint ``i`` (None where the set has none, e.g. step 0)."""
        if i not in self._moments:
            name = self.entry(i).get("optimizer")
            ok = isinstance(name, str) and Path(name).name == name
            self._moments[i] = load_moments(self.path / name, list(self.params(i))) if ok else None
        return self._moments[i]

    def params(self, i: int) -> dict[str, torch.Tensor]:
        if i not in self._cache:
            ckpt = load_checkpoint(self.path / self.entry(i)["file"])
            self._cache[i] = {k: v.detach() for k, v in ckpt.model.named_parameters()}
        return self._cache[i]

    def first_runs(self, n: int) -> Omega:
        """The checkpoints of runs 0 .. n-1 only."""
        runs = sorted({int(e["run"]) for e in self.manifest["checkpoints"]})
        if n > len(runs):
            raise ConfigError(
                f"--omega-runs {n} exceeds the {len(runs)} runs in {self.path}", f"pass at most {len(runs)}"
            )
        keep = [e for e in self.manifest["checkpoints"] if int(e["run"]) < n]
        return Omega(path=self.path, manifest={**self.manifest, "checkpoints": keep, "runs": n}, _cache={})

    def sample(self, rng: random.Random) -> int:
        return rng.randrange(len(self))

    def later(self, i: int, offset: int) -> int | None:
        """Index of the checkpoint ``offset`` saves after ``i`` in the same run (for MTT)."""
        run = self.entry(i)["run"]
        same = [j for j, e in enumerate(self.manifest["checkpoints"]) if e["run"] == run]
        pos = same.index(i)
        return same[pos + offset] if pos + offset < len(same) else None


def load_trajectories(path: Path, ds: PreparedDataset | None = None, model_name: str | None = None) -> Omega:
    """Read and check Omega; with ``ds``/``model_name``, refuse a set made for others."""
    path = Path(path)
    mpath = path / "manifest.json"
    fix = "train them with farzictl trajectories"
    if not mpath.is_file():
        raise CheckpointError(f"no trajectories at {path} (manifest.json missing)", fix)
    try:
        manifest = read_json(mpath)
    except (ValueError, OSError):
        raise CheckpointError(f"{mpath} is not valid JSON", fix) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path} is not a farzi trajectory set", fix)
    version = manifest.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path} has an invalid format version {version!r:.20}", fix)
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} is trajectories v{version}, newer than this farzi reads", "upgrade farzi")
    points = manifest.get("checkpoints")
    if not isinstance(points, list) or not points:
        raise CheckpointError(f"{path} lists no checkpoints", fix)
    for e in points:
        if (
            not isinstance(e, dict)
            or not isinstance(e.get("file"), str)
            or Path(e["file"]).name != e["file"]  # a file of this directory, nothing else
            or not all(isinstance(e.get(k), int) and not isinstance(e.get(k), bool) for k in ("run", "step"))
        ):
            raise CheckpointError(f"{path}: malformed checkpoint entry {e!r:.80} in the manifest", fix)
    if not isinstance(manifest.get("dataset", {}), dict):
        raise CheckpointError(f"{path}: the manifest's dataset record is not an object", fix)
    if model_name is not None and manifest.get("model") != model_name:
        raise CheckpointError(
            f"trajectories at {path} are of model {manifest.get('model')!r}, not {model_name!r}",
            f"train trajectories of {model_name!r}, or pass --model {manifest.get('model')}",
        )
    if ds is not None:
        check_dataset(manifest.get("dataset", {}), ds, "trajectory set")
    for e in points:
        f = path / e["file"]
        if not f.is_file():
            raise CheckpointError(f"checkpoint {f} listed in the manifest is missing", fix)
    # validate the first checkpoint's header up front (the rest when used)
    info, _ = read_checkpoint_info(path / points[0]["file"])
    if json.dumps(info.get("config"), sort_keys=True) != json.dumps(manifest.get("config"), sort_keys=True):
        raise CheckpointError(f"{path}: checkpoints do not match the manifest's model config", fix)
    return Omega(path=path, manifest=manifest, _cache={})
