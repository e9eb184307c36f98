"""Train a student from scratch on full data, a sample of it, or Farzi Data.

Data specs:

* ``full``: every training sequence;
* ``random:N``: N training sequences drawn uniformly at random (seeded);
* ``head:N``: the N longest training sequences (the paper's head sampling;
  ties keep dataset order);
* a path to a ``*.safetensors`` Farzi Data bundle: soft inputs and targets
  ``softmax(latent @ decoder / tau)``; with ``discrete=True``, token ids
  sampled from those distributions instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from farzi._io import Claim, atomic_dir, claim_output, write_json
from farzi.batching import DistributionTrainSet, SequenceTrainSet, TrainSet, batching_record
from farzi.checkpoint import dataset_record, save_checkpoint
from farzi.data.prepared import PreparedDataset
from farzi.device import resolve_device
from farzi.distill.bundle import FarziData, load_bundle, read_bundle_meta
from farzi.errors import ConfigError
from farzi.models import MODEL_OPTIONS, build_model, make_config, model_task
from farzi.progress import ProgressFn
from farzi.settings import group, setting
from farzi.train import TrainConfig, TrainResult, check_model_sizes, check_training_memory, train_model


@dataclass
class DataSpec:
    kind: str  # full | random | head | bundle
    n: int | None = None
    path: Path | None = None

    def label(self) -> str:
        if self.kind == "bundle":
            return f"farzi:{self.path.name if self.path else ''}"
        return self.kind if self.n is None else f"{self.kind}:{self.n}"


def parse_spec(text: str) -> DataSpec:
    if text == "full":
        return DataSpec("full")
    if text.endswith(".safetensors"):
        return DataSpec("bundle", path=Path(text))
    kind, _, num = text.partition(":")
    if kind in ("random", "head"):
        if not (num.strip().isascii() and num.strip().isdigit()):  # int() refuses e.g. '²'
            raise ConfigError(f"--data {text!r}: {kind} needs a count", f"write it as {kind}:N, e.g. {kind}:50")
        n = int(num)
        if n < 1:
            raise ConfigError(f"--data {text!r} is an empty sample", f"ask for at least one sequence, e.g. {kind}:50")
        return DataSpec(kind, n=n)
    raise ConfigError(
        f"--data {text!r} is not a data spec",
        "use full, random:N, head:N, or the path of a Farzi Data bundle (*.safetensors)",
    )


def student_recipe(data: str) -> dict[str, Any] | None:
    """The training recipe the bundle ``data`` names records (None for full data and samples, and for a
    bundle written without one): what ``train-student`` takes for the settings not given."""
    spec = parse_spec(data)
    if spec.kind != "bundle":
        return None
    assert spec.path is not None
    recipe = read_bundle_meta(spec.path)[0].get("recipe")  # the header alone (validated as load_bundle does)
    return dict(recipe) if isinstance(recipe, dict) else None


def claim_model(
    out: Path, overwrite: bool = False, dataset: Path | None = None, data: str = "full"
) -> contextlib.AbstractContextManager[Claim]:
    """The claim :func:`train_student` holds on its model directory (the CLI takes it before the cost
    probe, and training joins it); even ``overwrite`` never replaces the dataset or bundle it reads."""
    spec = parse_spec(data)
    return claim_output(out, "model", overwrite, inputs=(dataset, spec.path))


def select_sequences(ds: PreparedDataset, spec: DataSpec, seed: int) -> np.ndarray:
    n_train = len(ds.train)
    if spec.kind == "full":
        return np.arange(n_train)
    assert spec.n is not None
    if spec.n > n_train:
        raise ConfigError(
            f"--data {spec.label()} asks for more sequences than the {n_train} training sequences of {ds.name!r}",
            f"pick at most {n_train}, or use full",
        )
    if spec.kind == "random":
        return np.sort(np.random.default_rng(seed).choice(n_train, size=spec.n, replace=False))
    lengths = ds.train.lengths
    return np.sort(np.argsort(-lengths, kind="stable")[: spec.n])


def training_set(
    ds: PreparedDataset, spec: DataSpec, max_len: int, seed: int, discrete: bool = False, device: str = "cpu"
) -> tuple[TrainSet, dict[str, Any]]:
    """The training set for ``spec`` and a description of it (for the model's metadata)."""
    if spec.kind == "bundle":
        assert spec.path is not None
        bundle: FarziData = load_bundle(spec.path, device=device)
        bundle.check_vocabulary(ds.vocab_size, ds.vocab.sha256(), ds.name)
        if bundle.task != ds.task:
            raise ConfigError(
                f"bundle {spec.path} is for {bundle.task}, dataset {ds.name!r} is {ds.task}",
                "use a bundle distilled from this dataset",
            )
        if bundle.xi < 2:  # the format allows it, but a lone token has no next token to learn
            raise ConfigError(
                f"bundle {spec.path} holds sequences of {bundle.xi} token, too short to train on",
                "distill with a budget of at least 2 tokens per sequence, e.g. --budget 50x50",
            )
        if bundle.xi > max_len:
            raise ConfigError(
                f"bundle sequences have length {bundle.xi}, longer than the model's max_len {max_len}",
                f"pass --max-len {bundle.xi} or more",
            )
        info = {
            "kind": "farzi",
            "bundle": str(spec.path),
            "mu": bundle.mu,
            "xi": bundle.xi,
            "tau": bundle.tau,
            "discrete": discrete,
            "tokens": bundle.mu * bundle.xi,
        }
        return DistributionTrainSet(bundle, discrete=discrete), info
    idx = select_sequences(ds, spec, seed)
    seqs = ds.train.subset(idx)
    info = {"kind": spec.kind, "n": len(idx), "tokens": int(seqs.num_tokens)}
    return SequenceTrainSet(seqs, max_len), info


@dataclass
class StudentConfig:
    """The settings of ``farzictl train-student``: the model, how a bundle is read, and how the student
    trains (:class:`~farzi.train.TrainConfig`, its options without a prefix; on a bundle, the settings
    not given come from the recipe it records)."""

    model: str = setting("", "Model: sasrec, gru4rec, fmlp (rec); transformer, rnn (lm).")
    discrete: bool = setting(False, "Bundle: train on token ids sampled from it, not on distributions.")
    model_overrides: dict[str, Any] = setting(
        factory=dict,
        help="Model settings (--max-len, --d-model, --n-layers, --n-heads, --dropout).",
        keys=tuple(MODEL_OPTIONS),
    )
    train: TrainConfig = group(TrainConfig, prefix="")
    device: str = setting("cpu", "cpu, cuda or cuda:N (checked before any work).")


RECIPE_FIELDS = ("lr", "weight_decay", "batch_size", "max_steps", "eval_every", "patience", "metric")


def apply_recipe(
    config: TrainConfig, recipe: dict[str, Any] | None, fills: Collection[str]
) -> tuple[TrainConfig, list[str]]:
    """``config`` with the fields in ``fills`` taken from a bundle's ``recipe`` (where it has them)."""
    if not recipe:
        return config, []
    taken = [k for k in RECIPE_FIELDS if k in fills and k in recipe]
    values = {k: type(getattr(config, k))(recipe[k]) for k in taken}
    return dataclasses.replace(config, **values), taken


def train_student(
    ds: PreparedDataset,
    model_name: str,
    spec_text: str,
    config: TrainConfig,
    out: Path,
    model_overrides: dict[str, Any] | None = None,
    discrete: bool = False,
    device: str = "cpu",
    progress: ProgressFn | None = None,
    target_metric: float | None = None,
    overwrite: bool = False,
    recipe_fills: Collection[str] = (),
) -> tuple[TrainResult, dict[str, Any]]:
    """Train ``model_name`` from scratch on ``spec_text`` data; save to ``out`` (a directory).

    On a bundle that records the recipe it was distilled for, the fields of ``config`` named in
    ``recipe_fills`` (the CLI passes those the user did not set) are taken from the recipe; the
    model's info records which.

    ``out`` is claimed before training (:func:`farzi._io.claim_output`): it may be absent,
    an empty directory or a model directory written here before; anything else is a
    ``ConfigError`` unless ``overwrite``, and so is a second writer of the same ``out``.
    """
    if model_task(model_name) != ds.task:
        raise ConfigError(
            f"model {model_name!r} is for {model_task(model_name)} but {ds.name!r} is a {ds.task} dataset",
            "pick a model for this task",
        )
    spec = parse_spec(spec_text)
    resolve_device(device)  # ConfigError for a device this machine lacks, before any work
    cfg = make_config(model_name, ds.vocab_size, **(model_overrides or {}))
    check_model_sizes(cfg)
    with claim_model(out, overwrite, ds.path, spec_text):
        return _train_and_save(
            ds, model_name, spec, cfg, config, Path(out), discrete, device, progress, target_metric, recipe_fills
        )


def _train_and_save(
    ds: PreparedDataset,
    model_name: str,
    spec: DataSpec,
    cfg: Any,
    config: TrainConfig,
    out: Path,
    discrete: bool,
    device: str,
    progress: ProgressFn | None,
    target_metric: float | None,
    recipe_fills: Collection[str] = (),
) -> tuple[TrainResult, dict[str, Any]]:
    train_set, data_info = training_set(ds, spec, cfg.max_len, config.seed, discrete, device)
    taken: list[str] = []
    if isinstance(train_set, DistributionTrainSet):
        config, taken = apply_recipe(config, train_set.summary.meta.get("recipe"), recipe_fills)
    check_training_memory("training", model_name, cfg, config, ds, train_set, device)
    torch.manual_seed(config.seed)
    model = build_model(model_name, cfg)
    start = time.perf_counter()
    result = train_model(
        model,
        train_set,
        ds,
        config,
        device=device,
        progress=progress,
        task_name=f"train {model_name} on {spec.label()}",
        target_metric=target_metric,
    )
    info = {
        "data": data_info,
        "train": {**config.to_dict(), "batching": batching_record(train_set), "from_recipe": taken},
        "result": result.summary(),
        "curve": result.curve,
        "wall_seconds_total": round(time.perf_counter() - start, 3),
        "threads": torch.get_num_threads(),  # torch intra-op threads it trained with
    }
    with atomic_dir(out) as tmp:
        save_checkpoint(tmp / "model.safetensors", result.model, dataset_record(ds), **info)
        write_json(
            tmp / "model.json", {"model": model_name, "config": cfg.to_dict(), "dataset": dataset_record(ds), **info}
        )
    return result, info
