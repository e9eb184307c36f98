"""Model checkpoints: format ``farzi-model`` v1 (see formats/model-checkpoint-v1.md).

One safetensors file: the model's state dict as tensors, and in the metadata
``format`` = ``farzi-model``, ``version`` = ``1`` and ``farzi`` = a JSON
document with the model name, its config, the dataset it was trained on (name,
fingerprint, vocabulary size and hash), training information and the package
version. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from farzi._io import atomic_file
from farzi._safetensors import load_tensors, read_header, save_tensors
from farzi._version import __version__
from farzi.data.prepared import PreparedDataset
from farzi.errors import CheckpointError, FarziError
from farzi.models import SequenceModel, build_model

FORMAT_NAME = "farzi-model"
FORMAT_VERSION = 1
_FIX = "train the model again (farzictl train-student / trajectories)"


def dataset_record(ds: PreparedDataset) -> dict[str, Any]:
    return {
        "name": ds.name,
        "task": ds.task,
        "fingerprint": ds.fingerprint(),
        "vocab_size": ds.vocab_size,
        "vocab_sha256": ds.vocab.sha256(),
    }


@dataclass
class Checkpoint:
    model: SequenceModel
    info: dict[str, Any]
    path: Path

    @property
    def model_name(self) -> str:
        return str(self.info["model"])

    @property
    def dataset(self) -> dict[str, Any]:
        return dict(self.info["dataset"])


def save_checkpoint(path: Path, model: SequenceModel, dataset: dict[str, Any], **info: Any) -> Path:
    """Write ``model`` with its config and provenance, atomically."""
    doc = {
        "model": model.name,
        "task": model.task,
        "config": model.config.to_dict(),
        "dataset": dataset,
        "package": {"name": "farzi", "version": __version__},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **info,
    }
    meta = {"format": FORMAT_NAME, "version": str(FORMAT_VERSION), "farzi": json.dumps(doc, sort_keys=True)}
    with atomic_file(Path(path)) as tmp:
        save_tensors(tmp, {k: v.float() for k, v in model.state_dict().items()}, meta)
    return Path(path)


def read_checkpoint_info(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Validate the file and its metadata without loading tensors."""
    header, meta = read_header(Path(path), CheckpointError, _FIX)
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path} is not a farzi model checkpoint (format {meta.get('format')!r})", _FIX)
    raw_version = meta.get("version", "")
    if not (raw_version.isascii() and raw_version.isdigit() and len(raw_version) <= 12 and int(raw_version) >= 1):
        raise CheckpointError(f"{path} has an invalid format version {raw_version[:20]!r}", _FIX)
    version = int(raw_version)
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} is farzi-model v{version}; this farzi reads up to v{FORMAT_VERSION}", "upgrade farzi"
        )

    def corrupt(what: str) -> CheckpointError:
        return CheckpointError(f"{path} has missing or corrupt model metadata ({what})", _FIX)

    if "farzi" not in meta:
        raise corrupt("no 'farzi' entry")
    try:
        info = json.loads(meta["farzi"])
    except (ValueError, RecursionError):
        raise corrupt("'farzi' is not valid JSON") from None
    if not isinstance(info, dict):
        raise corrupt("'farzi' is not a JSON object")
    for key, kind in (("model", str), ("config", dict), ("dataset", dict)):
        if key not in info:
            raise corrupt(f"no {key!r}")
        if not isinstance(info[key], kind):
            raise corrupt(f"{key!r} is not a JSON {'string' if kind is str else 'object'}")
    return info, header


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint` onto ``device``."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    info, header = read_checkpoint_info(path)
    # the config is checked on the meta device first (shapes, no storage): a config whose parameters
    # the file does not hold is refused before anything of its size is allocated
    try:
        with torch.device("meta"):
            shell = build_model(info["model"], info["config"])
    except FarziError as exc:
        raise CheckpointError(f"{path}: {exc.problem}", _FIX) from None
    except RuntimeError as exc:  # e.g. a negative size in the config: torch refuses the tensor
        msg = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: invalid model config ({msg})", _FIX) from None
    wanted = {k: list(v.shape) for k, v in shell.state_dict().items()}
    found = {k: entry["shape"] for k, entry in header.items()}
    if wanted != found:
        missing = sorted(set(wanted) - set(found))
        unexpected = sorted(set(found) - set(wanted))
        shapes = sorted(k for k in set(wanted) & set(found) if wanted[k] != found[k])
        parts = [f"{len(missing)} missing (e.g. {missing[0]!r})"] if missing else []
        parts += [f"{len(unexpected)} unexpected (e.g. {unexpected[0]!r})"] if unexpected else []
        parts += [f"{k!r} is {found[k]}, the model needs {wanted[k]}" for k in shapes[:1]]
        raise CheckpointError(f"{path}: tensors do not fit the model ({'; '.join(parts)})", _FIX)
    model = build_model(info["model"], info["config"])  # its size is now bounded by the file's
    try:
        state = load_tensors(path)
    except (SafetensorError, OSError, ValueError) as exc:  # not MemoryError: running out is not a bad file
        raise CheckpointError(f"{path}: cannot read tensors ({exc.__class__.__name__})", _FIX) from None
    try:
        model.load_state_dict(state, strict=True)  # copies into the model's tensors: allocates nothing
    except RuntimeError as exc:
        msg = str(exc).splitlines()[0][:200]
        raise CheckpointError(f"{path}: tensors do not fit the model ({msg})", _FIX) from None
    for name, tensor in state.items():
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"{path}: tensor {name!r} holds NaN or infinite values", _FIX)
    return Checkpoint(model=model.to(device), info=info, path=path)


def check_dataset(record: dict[str, Any], ds: PreparedDataset, what: str) -> None:
    """Fail clearly when ``record`` (a checkpoint's dataset) is not ``ds``."""
    if record.get("vocab_size") != ds.vocab_size:
        raise CheckpointError(
            f"{what} was trained on {record.get('name')!r} with a vocabulary of {record.get('vocab_size')}, "
            f"but dataset {ds.name!r} has {ds.vocab_size}",
            f"use a {what} trained on {ds.name!r}",
        )
    if record.get("fingerprint") != ds.fingerprint():
        raise CheckpointError(
            f"{what} was trained on dataset {record.get('name')!r} "
            f"(fingerprint {str(record.get('fingerprint'))[:12]}), "
            f"not on {ds.name!r} (fingerprint {ds.fingerprint()[:12]})",
            f"use a {what} trained on this dataset, or prepare the dataset exactly as before",
        )
