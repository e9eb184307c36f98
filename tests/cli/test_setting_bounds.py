"""Values the CLI fuzz found ending in a traceback, a hang or a stray directory: each now one line or a clean run."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
from cli_runner import farzictl, farzictl_process

from farzi.evaluate import VALIDATION_METRICS, evaluate
from farzi.metrics import lm_metrics
from farzi.models import build_model, make_config

TINY = ["--d-model", "8", "--n-layers", "1", "--max-len", "16", "--batch-size", "8"]
DISTILL = ["--budget", "2x4", "--objective", "mm", "--inner-steps", "1", "--real-batch", "4", "--outer-steps", "1"]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("home")
    for source in ("synthetic-rec", "synthetic-lm"):
        farzictl("prepare", source, "--synthetic-vocab", "20", "--synthetic-sequences", "30", home=home).ok()
    return home


@pytest.mark.parametrize(
    ("dataset", "metric", "says"),
    [
        ("synthetic-lm", "xent", "'xent' is not a validation metric of a lm dataset"),
        ("synthetic-lm", "hr@10", "'hr@10' is not a validation metric of a lm dataset"),
        ("synthetic-rec", "ppl_corpus", "'ppl_corpus' is not a validation metric of a rec dataset"),
        ("synthetic-rec", "hr@99999999999999999999", "is not a validation metric of a rec dataset"),
    ],
)
@pytest.mark.parametrize("command", ["train-student", "trajectories"])
def test_an_unknown_metric_is_one_line(command: str, dataset: str, metric: str, says: str, home: Path) -> None:
    extra = ["--runs", "1", "--max-steps", "2"] if command == "trajectories" else ["--max-steps", "2"]
    args = [command, dataset, "--metric", metric, *extra, *TINY, "--out", home / "o"]
    line = farzictl(*args, home=home).one_error_line()
    assert says in line and "use one of:" in line
    assert not (home / "o").exists()


@pytest.mark.parametrize("task", ["rec", "lm"])
def test_the_metrics_named_are_those_validation_reports(task: str, home: Path) -> None:
    from farzi.data.prepared import load_prepared

    ds = load_prepared(home / "datasets" / f"synthetic-{task}")
    name = "sasrec" if task == "rec" else "transformer"
    model = build_model(name, make_config(name, ds.vocab_size, d_model=8, n_layers=1, max_len=16))
    reported = {k for k, v in evaluate(model, ds, "valid").items() if isinstance(v, float)}
    assert reported == set(VALIDATION_METRICS[task])


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["trajectories", "synthetic-rec", "--plan", "--weight-decay", "nan"], "weight decay nan must be a number"),
        (["train-student", "synthetic-rec", "--lr", "1e39"], "must be positive and at most 3.4e+38"),
        (["distill", "synthetic-lm", *DISTILL, "--outer-lr", "9" * 40], "--outer-lr 1e+40 is beyond float32's range"),
        (["distill", "synthetic-lm", *DISTILL, "--outer-weight-decay", "1e308"], "is beyond float32's range"),
        (["distill", "synthetic-rec", *DISTILL, "--max-len", str(2**63 - 1)], "must be at most 2147483647"),
        (["train-student", "synthetic-rec", "--plan", "--max-len", str(2**63 - 1)], "must be at most 2147483647"),
        (["trajectories", "synthetic-rec", "--d-model", str(2**31)], "--d-model 2147483648 must be at most"),
    ],
    ids=lambda a: a if isinstance(a, str) else " ".join(a[:1] + a[-2:]),
)
def test_values_beyond_what_torch_can_hold_are_one_line(args: list[str], says: str, home: Path) -> None:
    line = farzictl(*args, home=home).one_error_line()
    assert says in line, line


def test_a_diverged_language_model_has_an_infinite_perplexity_not_an_error() -> None:
    nll = [np.array([1000.0, 1000.0])]  # exp(1000) overflows a float
    out = lm_metrics(nll, [np.array([0, 0])])
    assert out["ppl_corpus"] == math.inf and out["ppl_sentence"] == math.inf


def test_a_job_whose_rank_0_refuses_ends_at_once(home: Path, tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    t0 = time.monotonic()
    args = ["trajectories", "synthetic-rec", "--runs", "2", "--max-steps", "2", *TINY, "--out", tmp_path / "link"]
    res = farzictl_process(*args, "--nproc", "2", "--rank-timeout", "120", home=home)
    assert res.returncode == 2 and "is a symbolic link" in res.stderr and res.stderr.count("error:") == 1
    assert time.monotonic() - t0 < 60  # not the rank timeout: the other rank is ended once rank 0 refused


def test_a_run_leaves_no_compile_cache_directory(home: Path, tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {"TMPDIR": str(tmp)}
    res = farzictl_process(
        "distill", "synthetic-lm", *DISTILL, *TINY[:6], "--out", tmp_path / "b.safetensors", home=home, env=env
    )
    assert res.returncode == 0, res.stderr
    assert os.listdir(tmp) == []
