"""`farzictl export` through the real entry point: output, refusals, and the round trip
export -> prepare -> train-student for both tasks, on bundles distilled from the tiny fixtures."""

from __future__ import annotations

import fcntl
import json
import math
import os
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from farzi._safetensors import load_tensors, read_header, save_tensors
from farzi.data.prepared import load_prepared
from farzi.distill.engine import DistillConfig, distill
from farzi.errors import BundleError
from tests.cli_runner import farzictl

TINY_DISTILL = dict(mu=4, xi=8, latent_dim=4, inner_steps=2, outer_steps=2, real_batch=8, seed=3)
TINY_MODEL = {"d_model": 8, "n_layers": 1, "max_len": 16}
TINY_STUDENT = ["--max-steps", "2", "--d-model", "8", "--n-layers", "1", "--max-len", "16", "--batch-size", "8"]


@pytest.fixture(scope="module")
def bundles(tiny_lm, tiny_rec, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real bundles: 4 x 8 Farzi Data distilled from each fixture (2 outer steps, no trajectories)."""
    where = tmp_path_factory.mktemp("bundles")
    out = {}
    for task, ds, model in (("lm", tiny_lm, "transformer"), ("rec", tiny_rec, "sasrec")):
        cfg = DistillConfig(**TINY_DISTILL, model=model, model_overrides=TINY_MODEL)
        out[task] = distill(ds, cfg, where / f"{task}.safetensors").path
    return out


def test_export_json_summary(bundles: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "rec.csv"
    res = farzictl("export", bundles["rec"], "--to", "csv", "--out", out, "--json").ok()
    info = json.loads(res.stdout)
    assert info["path"] == str(out) and info["sidecar"] == str(out) + ".json"
    assert info["task"] == "rec" and info["export"]["decode"] == "argmax"
    assert info["counts"]["sequences"] == 4 and info["counts"]["rows"] == 32
    assert json.loads(Path(info["sidecar"]).read_text()) == {
        k: v for k, v in info.items() if k not in ("path", "sidecar")
    }
    assert pl.read_csv(out).shape == (32, 3)
    assert res.stderr == ""


def test_export_table_names_the_read_back_command(bundles: dict[str, Path], tmp_path: Path) -> None:
    res = farzictl("export", bundles["lm"], "--to", "txt", "--out", tmp_path / "lm.txt").ok()
    assert "read back" in res.stdout and "prepare text --train" in res.stdout
    assert "sentences" in res.stdout
    # the default output lies beside the bundle
    res = farzictl("export", bundles["lm"], "--to", "jsonl").ok()
    assert bundles["lm"].with_suffix(".jsonl").is_file()


def _bare(bundle: Path, dst: Path) -> Path:
    _, meta = read_header(bundle, BundleError, "")
    save_tensors(dst, load_tensors(bundle), {k: v for k, v in meta.items() if k != "vocab"})
    return dst


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--to", "xml"], ("unknown export format 'xml'", "jsonl, txt, csv, parquet")),
        (["--decode", "beam"], ("unknown decoding 'beam'", "--decode sample")),
        (["--decode", "sample", "--samples", "0"], ("--samples 0 is out of range",)),
        (["--samples", "3"], ("identical copies", "--decode sample")),
        (["--out", "{bundle}"], ("is the bundle itself", "--out")),
        (["--out", "{tmp}/notes.txt", "--to", "txt"], ("exists and is not a previous farzi export", "--overwrite")),
        (["--to", "csv", "--out", "{tmp}/x.parquet"], ("suffix of the parquet format",)),
        (["--dataset", "nosuch"], ("no prepared dataset named 'nosuch'", "farzictl prepare")),
        (["--bare"], ("holds no vocabulary", "--dataset")),
        (["--missing"], ("does not exist",)),
    ],
    ids=lambda v: "-".join(v).replace("{", "").replace("}", "").replace("/", "") if isinstance(v, list) else None,
)
def test_bad_input_is_one_line(
    bundles: dict[str, Path], tmp_path: Path, args: list[str], expected: tuple[str, ...]
) -> None:
    (tmp_path / "notes.txt").write_text("mine\n")
    target = bundles["rec"]
    if args == ["--bare"]:
        target, args = _bare(bundles["rec"], tmp_path / "bare.safetensors"), []
    elif args == ["--missing"]:
        target, args = tmp_path / "missing.safetensors", []
    argv = [a.replace("{bundle}", str(target)).replace("{tmp}", str(tmp_path)) for a in args]
    before = sorted(p.name for p in tmp_path.iterdir())
    line = farzictl("export", target, *argv, home=tmp_path / "home").one_error_line()
    for text in expected:
        assert text in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    assert (tmp_path / "notes.txt").read_text() == "mine\n"


def test_a_second_export_to_the_same_path_fails_at_once(bundles: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "rec.csv"
    fd = os.open(tmp_path / ".rec.csv.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        fcntl.flock(fd, fcntl.LOCK_EX)  # as the first export's claim holds it
        line = farzictl("export", bundles["rec"], "--to", "csv", "--out", out).one_error_line()
    finally:
        os.close(fd)
    assert f"rec.csv is being written by another farzi process (pid {os.getpid()})" in line, line
    assert "another --out" in line
    assert not out.exists() and not (tmp_path / "rec.csv.json").exists()


def test_export_removes_what_a_killed_export_left(bundles: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "rec.csv"
    stale = [tmp_path / ".rec.csv.tmp-deadbeef", tmp_path / ".rec.csv.json.tmp-deadbeef"]
    for path in stale:
        path.write_bytes(b"\0" * 4096)
    farzictl("export", bundles["rec"], "--to", "csv", "--out", out).ok()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec.csv", "rec.csv.json"]


def test_export_never_clobbers_a_users_file_at_the_sidecar_path(bundles: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "rec.csv"
    side = tmp_path / "rec.csv.json"
    side.write_text('{"my": "settings"}\n')
    line = farzictl("export", bundles["rec"], "--to", "csv", "--out", out).one_error_line()
    assert "rec.csv.json exists and is not an export sidecar" in line and "--overwrite" in line, line
    assert side.read_text() == '{"my": "settings"}\n' and sorted(p.name for p in tmp_path.iterdir()) == ["rec.csv.json"]
    farzictl("export", bundles["rec"], "--to", "csv", "--out", out, "--overwrite").ok()
    assert json.loads(side.read_text())["format"] == "farzi-export"


# ------------------------------------------------------------------ round trip
def test_round_trip_text(bundles: dict[str, Path], tmp_path: Path) -> None:
    """export --to txt -> prepare text --train -> train-student: the corpus prepare reads is the export."""
    home = tmp_path / "home"
    out = tmp_path / "syn.txt"
    farzictl(
        "export", bundles["lm"], "--to", "txt", "--decode", "sample", "--samples", "3", "--seed", "1", "--out", out
    ).ok()
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) >= 3 and all(line.strip() for line in lines)
    farzictl("prepare", "text", "--train", out, "--name", "syn-lm", home=home).ok()
    ds = load_prepared(home / "datasets" / "syn-lm")
    words = ds.vocab.tokens
    seen = Counter()
    for split in ds.splits.values():
        for seq in split:
            assert seq[0] == seq[-1] == ds.vocab.eos_id
            seen[" ".join(words[t] for t in seq[1:-1])] += 1
    assert seen == Counter(lines)  # every exported sentence, and nothing else, <unk> included
    res = farzictl("train-student", "syn-lm", *TINY_STUDENT, "--json", home=home).ok()
    result = json.loads(res.stdout)["result"]
    assert result["steps"] == 2 and math.isfinite(result["best_metric"])


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_round_trip_interactions(bundles: dict[str, Path], tmp_path: Path, fmt: str) -> None:
    """export --to csv|parquet -> prepare interactions -> train-student: users and items survive."""
    home = tmp_path / "home"
    out = tmp_path / f"syn.{fmt}"
    # 4 sequences x 5 samples = 20 users: enough for prepare's 80/10/10 split
    farzictl("export", bundles["rec"], "--to", fmt, "--decode", "sample", "--samples", "5", "--out", out).ok()
    rows = pl.read_parquet(out) if fmt == "parquet" else pl.read_csv(out, schema_overrides={"item": pl.Utf8})
    exported = {u: list(g.sort("position")["item"]) for (u,), g in rows.group_by("user", maintain_order=True)}
    assert len(exported) == 20
    farzictl(
        "prepare", "interactions", "--path", out, "--user-col", "user", "--item-col", "item",
        "--time-col", "position", "--name", f"syn-rec-{fmt}", home=home,
    ).ok()  # fmt: skip
    ds = load_prepared(home / "datasets" / f"syn-rec-{fmt}")
    items = ds.vocab.tokens
    prepared = {
        uid: [items[t] for t in seq] for split in ds.splits.values() for uid, seq in zip(split.ids, split, strict=True)
    }
    assert prepared == exported  # the same users, each with the same items in the same order
    res = farzictl("train-student", f"syn-rec-{fmt}", *TINY_STUDENT, "--json", home=home).ok()
    result = json.loads(res.stdout)["result"]
    assert result["steps"] == 2 and math.isfinite(result["best_metric"])
