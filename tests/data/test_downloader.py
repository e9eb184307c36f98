"""Downloads with checksums, fully offline against a local http.server."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from farzi.data import prepare as prepare_mod
from farzi.data.download import fetch, verify_checksum
from farzi.data.prepare import PrepareOptions, prepare
from farzi.data.prepared import load_prepared
from farzi.errors import ChecksumError, DataError

PAYLOAD = b"the quick brown fox\njumps over the lazy dog\n"
MD5 = hashlib.md5(PAYLOAD).hexdigest()
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


def leftovers(directory: Path) -> list[str]:
    """Temporary or partial files fetch might have left behind."""
    if not directory.exists():
        return []
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------- verify_checksum


def test_verify_checksum(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    path.write_bytes(PAYLOAD)
    assert verify_checksum(path) == SHA256
    assert verify_checksum(path, md5=MD5.upper(), sha256=SHA256.upper()) == SHA256
    with pytest.raises(ChecksumError, match=f"md5 {MD5}, expected 0+"):
        verify_checksum(path, md5="0" * 32)
    with pytest.raises(ChecksumError, match="sha256"):
        verify_checksum(path, sha256="0" * 64)


# ---------------------------------------------------------------- fetch


@pytest.mark.parametrize("digest", ["md5", "sha256"])
def test_fetch_with_the_right_checksum(tmp_path: Path, http_server, digest: str) -> None:
    url = http_server.put("data.txt", PAYLOAD)
    dest = tmp_path / "cache" / "data.txt"
    kwargs = {"md5": MD5} if digest == "md5" else {"sha256": SHA256}
    events = []
    assert fetch([url], dest, progress=events.append, **kwargs) == dest
    assert dest.read_bytes() == PAYLOAD
    assert leftovers(dest.parent) == []
    assert events and events[-1].done and events[-1].completed == len(PAYLOAD)


def test_checksum_mismatch_leaves_no_file(tmp_path: Path, http_server) -> None:
    url = http_server.put("data.txt", PAYLOAD + b"tampered\n")
    dest = tmp_path / "cache" / "data.txt"
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        fetch([url], dest, md5=MD5)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []


def test_checksum_mismatch_is_not_retried_on_another_mirror(tmp_path: Path, http_server) -> None:
    bad = http_server.put("bad.txt", b"tampered\n")
    good = http_server.put("good.txt", PAYLOAD)
    with pytest.raises(ChecksumError):
        fetch([bad, good], tmp_path / "data.txt", sha256=SHA256)
    assert list(tmp_path.iterdir()) == [tmp_path / "www"]


def test_unreachable_url_is_a_data_error(tmp_path: Path, closed_port_url: str) -> None:
    dest = tmp_path / "cache" / "data.txt"
    with pytest.raises(DataError, match="could not download data.txt") as err:
        fetch([closed_port_url], dest, md5=MD5, timeout=5)
    assert not isinstance(err.value, ChecksumError)
    assert "127.0.0.1" in str(err.value)
    assert list(dest.parent.iterdir()) == []


def test_http_404_falls_through_to_the_next_mirror(tmp_path: Path, http_server) -> None:
    http_server.put("data.txt", PAYLOAD)
    dest = tmp_path / "data.txt"
    fetch([http_server.url + "missing.txt", http_server.url + "data.txt"], dest, md5=MD5)
    assert dest.read_bytes() == PAYLOAD
    with pytest.raises(DataError, match="missing.txt: File not found"):
        fetch([http_server.url + "missing.txt"], tmp_path / "other.txt", md5=MD5)
    assert leftovers(tmp_path) == []


def test_cached_file_with_the_right_checksum_is_reused(tmp_path: Path, closed_port_url: str) -> None:
    dest = tmp_path / "data.txt"
    dest.write_bytes(PAYLOAD)
    # nothing listens at the URL: success proves no download was attempted
    assert fetch([closed_port_url], dest, md5=MD5, sha256=SHA256) == dest
    assert dest.read_bytes() == PAYLOAD


def test_cached_file_with_a_wrong_checksum_is_downloaded_again(tmp_path: Path, http_server) -> None:
    url = http_server.put("data.txt", PAYLOAD)
    dest = tmp_path / "data.txt"
    dest.write_bytes(b"stale\n")
    fetch([url], dest, md5=MD5)
    assert dest.read_bytes() == PAYLOAD


# ---------------------------------------------------------------- prepare ptb from a mirror

FAKE_PTB = {
    "ptb.train.txt": " the cat sat \n the dog sat on the mat \n a cat \n",
    "ptb.valid.txt": " the cat \n a dog sat \n",
    "ptb.test.txt": " the bird sat \n",
}


@pytest.fixture
def fake_ptb(http_server, monkeypatch) -> str:
    for name, content in FAKE_PTB.items():
        http_server.put(name, content.encode())
    files = {
        split: (name, hashlib.md5(FAKE_PTB[name].encode()).hexdigest())
        for split, name in (
            ("train", "ptb.train.txt"),
            ("valid", "ptb.valid.txt"),
            ("test", "ptb.test.txt"),
        )
    }
    monkeypatch.setattr(prepare_mod, "PTB_FILES", files)
    return http_server.url


def test_prepare_ptb_downloads_from_the_mirror(tmp_path: Path, fake_ptb: str) -> None:
    home = tmp_path / "home"
    ds = prepare("ptb", PrepareOptions(mirror=fake_ptb.rstrip("/")), home=home)
    assert sorted(p.name for p in (home / "downloads" / "ptb").iterdir()) == sorted(FAKE_PTB)
    loaded = load_prepared(home / "datasets" / "ptb")
    assert loaded.fingerprint() == ds.fingerprint()
    # train counts: the 4, sat 2, cat 2, a 1, dog 1, mat 1, on 1
    assert loaded.vocab.tokens == [
        "<pad>",
        "<unk>",
        "<eos>",
        "the",
        "cat",
        "sat",
        "a",
        "dog",
        "mat",
        "on",
    ]
    assert [s.tolist() for s in loaded.test] == [[2, 3, 1, 5, 2]]  # "bird" is unknown
    stats = loaded.statistics()
    assert stats["sentences"] == 6 and stats["vocabulary"] == 7
    assert [f["name"] for f in loaded.source["files"]] == [
        "ptb.train.txt",
        "ptb.valid.txt",
        "ptb.test.txt",
    ]
    # a second run reuses the cache (the server is not needed any more)
    prepare("ptb", PrepareOptions(mirror="http://127.0.0.1:9/"), home=home, name="ptb-again")
    assert load_prepared(home / "datasets" / "ptb-again").fingerprint() == ds.fingerprint()


def test_prepare_ptb_with_a_tampered_file_writes_nothing(tmp_path: Path, fake_ptb: str, http_server) -> None:
    http_server.put("ptb.test.txt", b" the bird sat on a hacked mat \n")
    home = tmp_path / "home"
    with pytest.raises(ChecksumError, match="ptb.test.txt"):
        prepare("ptb", PrepareOptions(mirror=fake_ptb), home=home)
    assert not (home / "datasets").exists()
    downloads = home / "downloads" / "ptb"
    assert sorted(p.name for p in downloads.iterdir()) == ["ptb.train.txt", "ptb.valid.txt"]


# ---------------------------------------------------------------- ml-100k archive


def test_ml100k_archive_with_the_wrong_udata_is_rejected(tmp_path: Path, http_server) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ml-100k/u.data", "".join(f"{u}\t{i}\t5\t{i}\n" for u in range(10) for i in range(3)))
        zf.writestr("ml-100k/u.item", "1|Toy Story (1995)|\n")
    url = http_server.put("ml-100k.zip", buf.getvalue())
    home = tmp_path / "home"
    with pytest.raises(ChecksumError, match="u.data"):
        prepare("ml-100k", PrepareOptions(mirror=url), home=home)
    assert not (home / "datasets").exists()
    cache = home / "downloads" / "ml-100k"
    assert not (cache / "u.data").exists() and not (cache / "ml-100k.zip").exists()
    assert leftovers(cache) == []
