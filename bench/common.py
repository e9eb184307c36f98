"""What every experiment shares: the protocols' settings, the dataset, Omega and bundles (cached under the
work directory by the settings that made them), machine facts, result files, and work split between
processes that share a work directory."""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import farzi
from farzi.data.prepare import PrepareOptions, prepare
from farzi.distill.config import DistillConfig
from farzi.distill.engine import distill
from farzi.errors import ConfigError
from farzi.presets import PROTOCOLS
from farzi.train import TrainConfig
from farzi.trajectories import train_trajectories

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
REPO = BENCH.parent
SHARED = REPO.parent / "shared" / "datasets"

# toy size for the smoke tests: synthetic data, seconds per experiment
_SMOKE: dict[str, Any] = dict(budgets=[4], distill_seeds=2, n_boot=100, xi=8, claim_budget=4)
_SMOKE["prepare"] = {"synthetic_vocab": 30, "synthetic_sequences": 60}
_SMOKE["trajectories"] = {"runs": 1, "every": 3, "train": {"lr": 2e-3, "batch_size": 16, "max_steps": 6}}
_SMOKE["distill"] = dict(latent_dim=4, inner_steps=2, outer_steps=2, syn_batch=0, real_batch=8, init="teacher")
_SMOKE["student"] = {"lr": 2e-3, "batch_size": 16, "max_steps": 6, "patience": 0, "eval_every": 3}
_REC = dict(source="synthetic-rec", model="sasrec", metrics=["hr@10", "hr@100", "ndcg@10", "ndcg@100", "auc"])
_REC["model_overrides"] = {"max_len": 16, "d_model": 8, "n_layers": 1, "dropout": 0.1}
_LM = dict(source="synthetic-lm", model="transformer", metrics=["ppl_corpus", "ppl_sentence", "accuracy"])
_LM["model_overrides"] = {"max_len": 32, "d_model": 8, "n_layers": 1, "n_heads": 2, "d_ff": 16, "dropout": 0.1}
SETTINGS: dict[str, dict[str, Any]] = {"smoke-rec": _SMOKE | _REC, "smoke-lm": _SMOKE | _LM}
SETTINGS |= PROTOCOLS  # one source: farzi.presets


def settings(
    task: str, protocol: str = "cpu", smoke: bool = False, runs: int | None = None, dataset: str = ""
) -> dict[str, Any]:
    """A copy of the protocol's settings for ``task`` (rec or lm; ``dataset`` "beauty": beauty-cpu); ``runs``:
    that many trajectory runs."""
    if protocol == "paper" and (task == "lm" or dataset) and not smoke:
        why = "the paper protocol is defined for ML-100k only (the full PTB is not available offline)"
        raise ConfigError(why, "run it with --protocol cpu")
    s = copy.deepcopy(
        SETTINGS[f"smoke-{task}" if smoke else (dataset or {"rec": "ml100k", "lm": "ptb"}[task]) + f"-{protocol}"]
    )
    s["trajectories"]["runs"] = runs if runs and not smoke else s["trajectories"]["runs"]
    return s


def prepare_dataset(s: dict[str, Any], work: Path):
    """The settings' dataset under ``work`` (None where its source is not under ../shared/datasets)."""
    if "source_dir" in s:
        src = SHARED / s["source_dir"]
        return prepare(s["source"], PrepareOptions(source=src), home=work) if src.is_dir() else None
    return prepare(s["source"], PrepareOptions(**s.get("prepare", {})), home=work)


REUSED: list[str] = []  # artifacts this process took from the work directory (each result lists them)


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def trajectories(ds, s: dict[str, Any], work: Path, changes: dict[str, Any] | None = None) -> Path:
    """Omega for the settings, with ``changes``: "model" and "overrides" (the teacher), "runs", and "train"
    (changes to its TrainConfig); trained once per work directory (one process trains, others wait)."""
    changes, tr = changes or {}, s["trajectories"]
    tr = {**tr, "runs": changes.get("runs", tr["runs"]), "train": {**tr["train"], **changes.get("train", {})}}
    model, overrides = changes.get("model", s["model"]), {**s["model_overrides"], **changes.get("overrides", {})}
    out = work / "trajectories" / f"{model}-{_key(ds.fingerprint(), model, overrides, tr['runs'], tr)}"
    with exclusive(work / ".setup.lock"):
        if (out / "manifest.json").is_file():
            REUSED.append(f"trajectories {out.name}")
            return out
        train_cfg = TrainConfig(patience=0, seed=100, **tr["train"])
        train_trajectories(ds, model, tr["runs"], tr["every"], train_cfg, out, overrides, device=s.get("device", "cpu"))
    return out


def distill_config(s: dict[str, Any], mu: int, seed: int = 0, **changes: Any) -> DistillConfig:
    """The settings' distillation at budget ``mu`` with ``changes`` (flat record names: ``recipe_lr``, ...)."""
    record = {"mu": mu, "xi": s["xi"], "model": s["model"], "seed": seed, "device": s.get("device", "cpu")}
    return DistillConfig.from_dict({**record, **s["distill"], **changes})


def bundle(ds, s: dict[str, Any], work: Path, traj: Path | None, cfg: DistillConfig) -> tuple[Path, dict[str, Any]]:
    """The bundle of ``cfg`` from ``traj``, distilled once per work directory (others wait for it)."""
    out = work / "bundles" / f"b-{_key(cfg.fingerprint(), cfg.device, str(traj))}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    summary_file = out.with_suffix(".summary.json")
    with exclusive(out.with_suffix(".lock")):
        if out.is_file() and summary_file.is_file():
            REUSED.append(f"bundle {out.name}")
            return out, json.loads(summary_file.read_text())
        summary = distill(ds, cfg, out, trajectories=traj, overwrite=True).summary
        summary_file.write_text(json.dumps(summary, default=str))
    return out, summary


# ----------------------------------------------------------------------------- machine and results
def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    info = {}
    for path, key in (("/proc/cpuinfo", "model name"), ("/proc/meminfo", "MemTotal")):
        with contextlib.suppress(OSError, StopIteration):
            lines = Path(path).read_text().splitlines()
            info[key] = next(x.split(":", 1)[1].strip() for x in lines if x.startswith(key))
    m = dict(cpu=info.get("model name", platform.processor() or ""), cores=os.cpu_count())
    m |= dict(torch_threads=torch.get_num_threads(), python=platform.python_version(), torch=torch.__version__)
    m["memory_gib"] = round(int(info["MemTotal"].split()[0]) / 1024**2, 1) if "MemTotal" in info else None
    m["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return m | dict(farzi=farzi.__version__, platform=platform.platform(), load_average=load_average())


def load_average() -> list[float] | None:
    """The machine's 1, 5 and 15 minute load averages (other people's work included), where the OS has them."""
    with contextlib.suppress(AttributeError, OSError):
        return [round(x, 2) for x in os.getloadavg()]
    return None


def write_result(name: str, payload: dict[str, Any], results: Path = RESULTS) -> Path:
    results.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    payload = {"experiment": name, "machine": machine(), "finished": stamp, **payload}
    path, tmp = results / f"{name}.json", results / f"{name}.json.tmp"
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def run_json(cmd: list[str], timeout: float | None = None, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a command that prints one JSON document (its last line) on stdout; return it."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- work several processes share
@contextlib.contextmanager
def exclusive(path: Path):
    """Hold an exclusive lock on ``path`` (created if missing) for the block: other processes wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def held_elsewhere(path: Path) -> bool:
    """Whether another process holds :func:`exclusive`'s lock on ``path`` now (without waiting)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock, fcntl.LOCK_UN)
        return False


def _claim(path: Path) -> bool:
    """Take a job for this process: False when another live process holds it."""
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = int(path.read_text() or "0")
                if holder:
                    os.kill(holder, 0)
                    return False  # alive
            except PermissionError:  # alive, someone else's
                return False
            except (OSError, ValueError):  # gone (or an unreadable claim)
                pass
            path.unlink(missing_ok=True)  # left by a killed run: take it over
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        return True
    return False


def as_json(x: Any) -> Any:
    """``x`` as read back from JSON (keys sorted, tuples as lists, other objects as strings): as settings compare."""
    return json.loads(json.dumps(x, sort_keys=True, default=str))


def shared_jobs(
    store: Path,
    jobs: list[tuple[str, Callable[[], dict[str, Any]]]],
    on_done: Callable[[str, dict[str, Any]], None] | None = None,
    poll: float = 5.0,
    settings: Any = None,
) -> dict[str, dict[str, Any]]:
    """Run ``jobs`` (key, function returning a JSON-able dict), sharing them with other processes.

    Each finished job is kept as ``STORE/KEY.json``; a job that another live process holds (``STORE/KEY.claim`` with its
    pid) is left to it and waited for, and one whose holder died is taken over. So ``python -m bench run X --work DIR``
    started twice on one ``DIR`` splits the jobs between the two (one core each with ``--threads 1``), and a rerun after
    a kill redoes only what is missing. ``settings`` (JSON-able): what the results depend on beyond their keys, kept as
    ``STORE/settings.json``; a store kept for other settings is refused. Returns every job's result.
    """
    store.mkdir(parents=True, exist_ok=True)
    if settings is not None:
        wanted, kept = as_json(settings), store / "settings.json"
        if not kept.is_file():
            tmp = store / f".settings.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(wanted, sort_keys=True))
            with contextlib.suppress(FileExistsError):  # the first process's settings win; a second one compares
                os.link(tmp, kept)
            tmp.unlink()
        if json.loads(kept.read_text()) != wanted:
            why = f"{store} holds jobs of other settings than these; pass another --work (or remove {store})"
            raise ValueError(why)
    done: dict[str, dict[str, Any]] = {}
    while True:
        for key, fn in (job for job in jobs if job[0] not in done):
            result_file, claim_file = store / f"{key}.json", store / f"{key}.claim"
            if result_file.is_file():
                done[key] = json.loads(result_file.read_text())
            elif _claim(claim_file):
                text = json.dumps(fn(), default=str)
                tmp = store / f".{key}.json.tmp"
                tmp.write_text(text)
                tmp.replace(result_file)
                claim_file.unlink(missing_ok=True)
                done[key] = json.loads(text)  # as a kept job reads back (JSON types)
                if on_done is not None:
                    on_done(key, done[key])
        if len(done) == len(jobs):
            return {key: done[key] for key, _ in jobs}
        time.sleep(poll)
