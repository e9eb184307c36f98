"""``--nproc``: more ranks than the machine can hold are refused in one line before any rank starts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from cli_runner import farzictl

from farzi import limits
from farzi.errors import ConfigError
from farzictl import launch


@pytest.fixture
def two_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "usable_cores", lambda: 2)
    monkeypatch.setattr(launch, "oversubscribed_limit", lambda: 8)


def test_more_ranks_than_cores_are_refused_unless_oversubscribed(two_cores: None) -> None:
    launch.check_nproc(2)
    with pytest.raises(ConfigError) as err:
        launch.check_nproc(3)
    assert str(err.value) == (
        "--nproc 3 is more ranks than the 2 core(s) this process may use; "
        "pass --nproc 2 or fewer, or add --oversubscribe to run more ranks than cores"
    )
    launch.check_nproc(3, oversubscribe=True)
    with pytest.raises(ConfigError, match=r"--nproc 9 ranks would need about 3\.5 GiB .* pass --nproc 8 or fewer"):
        launch.check_nproc(9, oversubscribe=True)  # 9 x 400 MiB: memory bounds even --oversubscribe


def test_the_memory_bound_follows_the_memory_available(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "available_memory", lambda: 10 * launch.RANK_MEMORY + 1)
    assert launch.oversubscribed_limit() == 10


@pytest.mark.parametrize("nproc", ["64", "1000"])
@pytest.mark.parametrize("command", ["distill", "trajectories"])
def test_many_ranks_exit_2_before_anything_starts(command: str, nproc: str, tmp_path: Path, two_cores: None) -> None:
    before = set(os.listdir(os.environ.get("TMPDIR", "/tmp")))
    line = farzictl(command, "no-such-dataset", "--nproc", nproc, home=tmp_path).one_error_line()
    assert f"--nproc {nproc} is more ranks than the" in line and "--oversubscribe" in line
    assert not [n for n in set(os.listdir(os.environ.get("TMPDIR", "/tmp"))) - before if "farzi-ranks" in n]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_cuda_ranks_without_cuda_are_one_line(tmp_path: Path) -> None:
    line = farzictl("distill", "x", "--device", "cuda", "--nproc", "2", home=tmp_path).one_error_line()
    assert line == "error: --device cuda was asked for but CUDA is not available on this machine; use --device cpu"
