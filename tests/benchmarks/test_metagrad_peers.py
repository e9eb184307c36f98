"""The metagrad-cost experiment's peer rows (issue 11.5): TorchOpt and higher, given the same problem as farzi's
strategies, agree with the float64 reference at toy size; without the libraries their rows say so.

The peers are an optional extra (`pip install -e '.[bench]'`): their tests skip with that reason when absent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.common import REPO
from bench.experiments.metagrad_cost import cost_table
from bench.metagrad_worker import build_problem, rel_error, solve

TINY = {"vocab": 50, "xi": 8, "mu": 8, "syn_batch": 4, "d_model": 8, "real_batch": 4}
TINY_ARGS = ["--vocab", "50", "--xi", "8", "--mu", "8", "--syn-batch", "4", "--d-model", "8", "--real-batch", "4"]
T = 6


def _solve(strategy: str) -> list[torch.Tensor]:
    return solve(build_problem(T, **TINY), strategy)[0]  # a fresh problem: new leaves for every strategy


@pytest.fixture(scope="module")
def reference() -> list[torch.Tensor]:
    return _solve("reference")


def test_the_reference_is_plain_float64_autograd(reference: list[torch.Tensor]) -> None:
    assert rel_error(_solve("unroll-f64"), reference) < 1e-12


def test_higher_matches_the_float64_reference(reference: list[torch.Tensor]) -> None:
    pytest.importorskip("higher", reason="higher is not installed (pip install -e '.[bench]')")
    farzi = rel_error(_solve("unroll"), reference)
    peer = rel_error(_solve("higher"), reference)
    # float32 either way: higher's Adam with the per-step eps override is farzi's Adam
    assert peer < 1e-5 and farzi < 1e-5, (peer, farzi)


def test_torchopt_is_nan_by_default_and_matches_with_a_tiny_eps_root(reference: list[torch.Tensor]) -> None:
    pytest.importorskip("torchopt", reason="torchopt is not installed (pip install -e '.[bench]')")
    default = _solve("torchopt")
    # what the report says: eps_root=0 differentiates sqrt(v) at v = 0 (zero-gradient rows) -> NaN everywhere
    assert not all(bool(torch.isfinite(g).all()) for g in default)
    # ~1.4e-5 here, above farzi's float32 ~1e-6: TorchOpt forms 1 - beta2^t in float32 (1.3e-5 off at t=1);
    # eps_root 1e-16 gives ~7e-5
    assert rel_error(_solve("torchopt-eps-root-tiny"), reference) < 3e-5


def test_a_peer_that_is_not_installed_gives_a_row_that_says_so(tmp_path: Path) -> None:
    # a `torchopt` first on the path that fails to import, as an absent one does
    (tmp_path / "torchopt").mkdir()
    (tmp_path / "torchopt" / "__init__.py").write_text("raise ModuleNotFoundError('absent', name='torchopt')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "bench.metagrad_worker", "--strategy", "torchopt", "--steps", "2", *TINY_ARGS]
    proc = subprocess.run([*cmd, "--threads", "1"], capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr
    row = json.loads(proc.stdout)
    assert row == {"strategy": "torchopt", "steps": 2, "not_installed": "torchopt"}
    result = {
        "settings": {
            "shape": TINY_ARGS,
            "steps": [2],
            "model": "1-layer Transformer LM",
            "inner_optimizer": "adam lr 0.01",
            "peers": {"torchopt": None, "higher": None},
        },
        "rows": [row, {"strategy": "higher", "steps": 2, "not_installed": "higher"}],
    }
    text = cost_table(result)
    assert "| torchopt | 2 | not installed |" in text and "| higher | 2 | not installed |" in text
