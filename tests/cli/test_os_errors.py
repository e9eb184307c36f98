"""What the file system or the memory says about a user's input is one line and exit 2, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cli_runner import farzictl

from farzictl import ui

LONG = "a" * 300  # longer than a file name may be (255 bytes): ENAMETOOLONG
TOO_LONG_HINT = "(name too long); pass a shorter path"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("home")
    farzictl("prepare", "synthetic-rec", "--synthetic-vocab", "20", "--synthetic-sequences", "20", home=home).ok()
    return home


@pytest.mark.parametrize(
    "args",
    [
        ["inspect", f"{LONG}.safetensors"],
        ["eval", f"{LONG}/model"],
        ["train-student", "synthetic-rec", "--data", f"{LONG}.safetensors"],
        ["distill", f"./{LONG}"],
        ["distill", "synthetic-rec", "--budget", "2x4", "--trajectories", LONG, "--objective", "mtt"],
        ["export", f"{LONG}.safetensors"],
        ["export", "b.safetensors", "--dataset", f"./{LONG}"],
        ["prepare", "synthetic-rec", "--out", f"{LONG}/x"],
    ],
    ids=lambda a: " ".join(x[:12] for x in a),
)
def test_an_over_long_path_is_one_line(args: list[str], home: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    line = farzictl(*args, home=home).one_error_line()
    assert "name too long" in line and "shorter path" in line, line


def test_export_to_an_over_long_out_is_one_line(home: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "b.safetensors"
    farzictl(
        *["distill", "synthetic-rec", "--budget", "2x4", "--objective", "mm", "--inner-steps", "1"],
        *["--real-batch", "4", "--outer-steps", "1", "--d-model", "8", "--n-layers", "1", "--out", bundle],
        home=home,
    ).ok()
    line = farzictl("export", bundle, "--out", tmp_path / f"{LONG}.jsonl", home=home).one_error_line()
    assert "name too long" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.log.jsonl", "b.safetensors"]


def test_an_allocation_that_fails_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    @ui.handle_errors
    def command() -> None:
        torch.empty(2**62, dtype=torch.uint8)  # more than any machine has: torch's allocator refuses

    with pytest.raises(Exception) as exc:  # typer.Exit
        command()
    assert getattr(exc.value, "exit_code", None) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: out of memory: the run asked for more memory")


def test_other_runtime_errors_are_not_taken_for_memory() -> None:
    assert ui.out_of_memory(MemoryError())
    assert not ui.out_of_memory(RuntimeError("shape mismatch"))

    @ui.handle_errors
    def command() -> None:
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):  # a real bug still shows its traceback
        command()
