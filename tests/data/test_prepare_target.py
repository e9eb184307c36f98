"""Where `prepare` writes: HOME/datasets/NAME or --out, replacing only prepared datasets."""

from __future__ import annotations

from pathlib import Path

import pytest

from farzi.data.prepare import PrepareOptions, prepare
from farzi.data.prepared import load_prepared
from farzi.errors import ConfigError

TINY = PrepareOptions(synthetic_vocab=5, synthetic_sequences=16)


def test_default_target_and_name(tmp_path: Path) -> None:
    ds = prepare("synthetic-lm", TINY, home=tmp_path, name="small")
    assert ds.path == tmp_path / "datasets" / "small"
    assert load_prepared(ds.path).name == "small"
    assert [p.name for p in (tmp_path / "datasets").iterdir()] == ["small"]


def test_out_may_replace_an_earlier_dataset_or_fill_an_empty_directory(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    first = prepare("synthetic-lm", TINY, home=tmp_path, out=out)
    second = prepare(
        "synthetic-rec",
        PrepareOptions(synthetic_vocab=20, synthetic_sequences=10),
        home=tmp_path,
        out=out,
    )
    assert first.path == second.path == out
    assert load_prepared(out).task == "rec"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing in HOME/datasets


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_out_refuses_to_replace_something_else(tmp_path: Path, kind: str) -> None:
    out = tmp_path / "precious"
    if kind == "file":
        out.write_text("keep me\n")
    else:
        out.mkdir()
        (out / "notes.txt").write_text("keep me\n")
    with pytest.raises(ConfigError, match="is not a prepared dataset"):
        prepare("synthetic-lm", TINY, home=tmp_path, out=out)
    kept = out if kind == "file" else out / "notes.txt"
    assert kept.read_text() == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious"]


def test_invalid_names_and_options_are_rejected_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown dataset 'nope'"):
        prepare("nope", home=tmp_path)
    with pytest.raises(ConfigError, match="not a valid workspace name"):
        prepare("synthetic-lm", TINY, home=tmp_path, name="../x")
    with pytest.raises(ConfigError, match="--vocab-size 0"):
        prepare("text", PrepareOptions(vocab_size=0), home=tmp_path)
    with pytest.raises(ConfigError, match="--min-length 1"):
        prepare("interactions", PrepareOptions(min_length=1), home=tmp_path)
    assert list(tmp_path.iterdir()) == []
