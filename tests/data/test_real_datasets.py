"""The real datasets in ../shared/datasets (skipped where a checkout has no ../shared)."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pytest
from cli_runner import farzictl
from shared_data import ML100K, PTB, REPO, needs_shared

from farzi.data.prepare import PrepareOptions, prepare
from farzi.data.prepared import load_prepared

pytestmark = needs_shared


ML100K_ARGS = ("prepare", "ml-100k", "--source", "../shared/datasets/ml-100k")
TEXT_ARGS = ("prepare", "text", "--train", "../shared/datasets/ptb/ptb.valid.txt")


def run_cli(args: tuple[str, ...], home: Path) -> dict:
    """The real entry point with --json, in-process from the repo root (the arguments' paths are relative)."""
    here = Path.cwd()
    os.chdir(REPO)
    try:
        out = farzictl(*args, "--json", home=home).ok()
    finally:
        os.chdir(here)
    assert out.stderr == ""
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """The CLI runs of this module."""
    runs = {"ml-100k-a": ML100K_ARGS, "ml-100k-b": ML100K_ARGS, "text": TEXT_ARGS}
    return {k: run_cli(a, tmp_path_factory.mktemp(k)) for k, a in runs.items()}


def test_ml100k_cli_statistics(cli: dict[str, dict]) -> None:
    out = cli["ml-100k-a"]
    stats = out["statistics"]
    assert (stats["users"], stats["items"], stats["interactions"]) == (943, 1682, 100000)
    assert stats["length_min"] == 20
    assert sum(s["sequences"] for s in stats["splits"].values()) == 943
    assert {s: v["sequences"] for s, v in stats["splits"].items()} == {
        "train": 755,
        "valid": 94,
        "test": 94,
    }
    assert sum(s["tokens"] for s in stats["splits"].values()) == 100000
    assert Path(out["path"]).parts[-2:] == ("datasets", "ml-100k")

    ds = load_prepared(out["path"])
    assert ds.fingerprint() == out["fingerprint"]
    assert ds.vocab.label(1) == "Toy Story (1995)"  # titles from u.item
    assert ds.source["files"][0]["sha256_pinned"] is True
    for split in ("valid", "test"):  # every held-out user has a context and a target
        assert ds.splits[split].lengths.min() >= 2


def test_ml100k_cli_reruns_are_byte_identical(cli: dict[str, dict]) -> None:
    first, second = Path(cli["ml-100k-a"]["path"]), Path(cli["ml-100k-b"]["path"])
    assert first != second
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_text_cli_on_the_ptb_validation_file(cli: dict[str, dict]) -> None:
    out = cli["text"]
    stats = out["statistics"]
    assert stats["sentences"] == 3370
    assert stats["vocabulary"] == 2000 and stats["specials"] == 3
    assert out["extra"]["valid_from_train"] and out["extra"]["test_from_train"]
    assert {s: v["sequences"] for s, v in stats["splits"].items()} == {
        "train": 2696,
        "valid": 337,
        "test": 337,
    }


def test_ptb_offline_protocol(tmp_path: Path) -> None:
    ds = prepare("ptb-offline", PrepareOptions(source=PTB), home=tmp_path)
    assert [len(ds.splits[s]) for s in ("train", "valid", "test")] == [3370, 1880, 1881]
    assert len(ds.vocab) == 2003
    assert ds.vocab.tokens[:3] == ["<pad>", "<unk>", "<eos>"]
    assert "not the paper's" in ds.extra["protocol"]
    assert [f["name"] for f in ds.source["files"]] == ["ptb.valid.txt", "ptb.test.txt"]
    for seq in ds.train:
        assert seq[0] == 2 and seq[-1] == 2
    assert load_prepared(tmp_path / "datasets" / "ptb-offline").fingerprint() == ds.fingerprint()


def test_ml100k_download_from_a_local_mirror(tmp_path: Path, http_server) -> None:
    with zipfile.ZipFile(http_server.root / "ml-100k.zip", "w") as zf:
        zf.write(ML100K / "u.data", "ml-100k/u.data")
        zf.write(ML100K / "u.item", "ml-100k/u.item")
    home = tmp_path / "home"
    ds = prepare("ml-100k", PrepareOptions(mirror=http_server.url + "ml-100k.zip"), home=home)
    assert ds.statistics()["users"] == 943
    local = prepare("ml-100k", PrepareOptions(source=ML100K), home=home, name="local")
    assert ds.fingerprint() == local.fingerprint()
