"""A file that cannot be opened is reported as such, never as corrupt ("prepare it again").

Permissions are real here: the files are ``chmod 000`` and, since the tests run as root (which
ignores file modes), the code under test runs with the effective uid of ``nobody`` (see
``Unreadable`` in conftest.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cli_runner import farzictl

from farzi.data.prepare import PrepareOptions, prepare
from farzi.data.prepared import load_prepared
from farzi.errors import DataError


@pytest.fixture(scope="module", autouse=True)
def _warm_cli(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Run the CLI's error paths once as root: ``nobody`` cannot read this interpreter's stdlib (under /root),
    so every module a command imports lazily must already be imported when privileges are dropped."""
    home = tmp_path_factory.mktemp("warm")
    farzictl("prepare", "interactions", "--path", home / "missing.csv", home=home).one_error_line()
    farzictl("trajectories", home / "missing", home=home).one_error_line()


LOG = "user,item,time\n" + "".join(f"{u},{u % 4},{t}\n" for u in range(12) for t in range(2))
TINY = PrepareOptions(synthetic_vocab=20, synthetic_sequences=12)


def prepared(unreadable) -> Path:
    """A tiny prepared dataset that ``nobody`` may read (``prepare`` leaves its directory private, 0700)."""
    ds = prepare("synthetic-rec", TINY, out=unreadable.root / "ds", home=unreadable.root / "home")
    ds.path.chmod(0o755)
    for file in ds.path.iterdir():
        file.chmod(0o644)
    return ds.path


def permission_denied(line: str, path: Path) -> None:
    assert f"{path} cannot be read (permission denied); check its permissions" in line, line
    assert "again" not in line and "corrupt" not in line, line  # nothing tells the user to re-create the file


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_unreadable_interaction_log(unreadable, fmt: str) -> None:
    path = unreadable.root / f"log.{fmt}"
    if fmt == "csv":
        path.write_text(LOG)
    else:
        import polars as pl

        pl.read_csv(LOG.encode()).write_parquet(path)
    unreadable.revoke(path)
    home = unreadable.root / "home"
    with unreadable.enforced(path), pytest.raises(DataError) as err:
        prepare("interactions", PrepareOptions(path=path), home=home)
    permission_denied(str(err.value), path)
    assert not home.exists()


def test_log_in_a_directory_that_cannot_be_entered(unreadable) -> None:
    folder = unreadable.root / "private"
    folder.mkdir()
    (folder / "log.csv").write_text(LOG)
    unreadable.revoke(folder)
    home = unreadable.root / "home"
    with unreadable.enforced(folder):
        line = farzictl("prepare", "interactions", "--path", folder / "log.csv", home=home).one_error_line()
    permission_denied(line, folder / "log.csv")
    assert not home.exists()


def test_unreadable_text_corpus(unreadable) -> None:
    path = unreadable.root / "corpus.txt"
    path.write_text("a b c\nd e\nf g h\n")
    unreadable.revoke(path)
    with unreadable.enforced(path), pytest.raises(DataError) as err:
        prepare("text", PrepareOptions(train=path), home=unreadable.root / "home")
    permission_denied(str(err.value), path)


def test_unreadable_checksummed_source_file(unreadable) -> None:
    src = unreadable.root / "ptb"
    src.mkdir()
    for name in ("ptb.valid.txt", "ptb.test.txt"):
        (src / name).write_text(" a b \n")
    unreadable.revoke(src / "ptb.valid.txt")
    with unreadable.enforced(src / "ptb.valid.txt"), pytest.raises(DataError) as err:
        prepare("ptb-offline", PrepareOptions(source=src), home=unreadable.root / "home")
    permission_denied(str(err.value), src / "ptb.valid.txt")


def test_untraversable_source_directory(unreadable) -> None:
    src = unreadable.root / "ml-100k"
    src.mkdir()
    (src / "u.data").write_text("1\t1\t5\t1\n")
    unreadable.revoke(src)
    with unreadable.enforced(src), pytest.raises(DataError) as err:
        prepare("ml-100k", PrepareOptions(source=src), home=unreadable.root / "home")
    assert "cannot be read (permission denied); check its permissions" in str(err.value)
    assert str(src) in str(err.value) and "missing" not in str(err.value)


@pytest.mark.parametrize("name", ["manifest.json", "vocab.json", "train.parquet", "test.parquet", "."])
def test_unreadable_prepared_dataset_file(unreadable, name: str) -> None:
    root = prepared(unreadable)
    path = root / name if name != "." else root
    unreadable.revoke(path)
    with unreadable.enforced(path), pytest.raises(DataError) as err:
        load_prepared(root)
    line = str(err.value)
    if name == ".":  # the directory itself: whatever file is tried first is the one named
        assert f"{root}/manifest.json cannot be read (permission denied)" in line, line
        assert "again" not in line
    else:
        permission_denied(line, path)


def test_cli_unreadable_source_file(unreadable) -> None:
    path = unreadable.root / "log.csv"
    path.write_text(LOG)
    unreadable.revoke(path)
    home = unreadable.root / "home"
    with unreadable.enforced(path):
        out = farzictl("prepare", "interactions", "--path", path, home=home)
    permission_denied(out.one_error_line(), path)
    assert not home.exists()


def test_cli_unreadable_prepared_dataset(unreadable) -> None:
    root = prepared(unreadable)
    vocab = root / "vocab.json"
    unreadable.revoke(vocab)
    before = sorted(p.name for p in unreadable.root.rglob("*"))
    with unreadable.enforced(vocab):
        out = farzictl("trajectories", root, "--max-steps", "1", home=unreadable.root / "home")
    permission_denied(out.one_error_line(), vocab)
    assert sorted(p.name for p in unreadable.root.rglob("*")) == before  # nothing written


# ---------------------------------------------------------------- a directory where a file belongs


def test_a_directory_where_the_vocabulary_belongs(tmp_path: Path) -> None:
    ds = prepare("synthetic-rec", TINY, out=tmp_path / "ds", home=tmp_path / "home")
    (ds.path / "vocab.json").unlink()
    (ds.path / "vocab.json").mkdir()
    with pytest.raises(DataError, match=r"vocab.json is a directory, not a file; remove it and prepare the dataset"):
        load_prepared(ds.path)


def test_a_directory_where_a_split_belongs(tmp_path: Path) -> None:
    ds = prepare("synthetic-rec", TINY, out=tmp_path / "ds", home=tmp_path / "home")
    (ds.path / "test.parquet").unlink()
    (ds.path / "test.parquet").mkdir()
    with pytest.raises(DataError, match="test.parquet is missing"):
        load_prepared(ds.path)
    shutil.rmtree(ds.path / "test.parquet")


def test_a_directory_where_the_manifest_belongs(tmp_path: Path) -> None:
    ds = prepare("synthetic-rec", TINY, out=tmp_path / "ds", home=tmp_path / "home")
    (ds.path / "manifest.json").unlink()
    (ds.path / "manifest.json").mkdir()
    with pytest.raises(DataError, match="manifest.json missing"):
        load_prepared(ds.path)
