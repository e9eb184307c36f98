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


# ---------------------------------------------------------------- ml-1m archive (checksummed)


def _ml1m_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(
            "ml-1m/ratings.dat",
            "".join(f"{u}::{i}::5::{100 + t}\n" for u in range(1, 13) for t, i in enumerate((3, 1))),
        )
        zf.writestr("ml-1m/movies.dat", "1::Toy Story (1995)::Animation\n3::Grumpier Old Men (1995)::Comedy\n")
    return buf.getvalue()


def test_ml1m_checksums_are_pinned() -> None:
    assert prepare_mod.ML1M_ZIP_MD5 == "c4d9eecfca2ab87c1945afe126590906"
    assert len(prepare_mod.ML1M_ZIP_SHA256) == 64
    assert len(prepare_mod.AMAZON_MAGAZINE_SHA256) == 64


def test_ml1m_archive_with_the_wrong_checksum_leaves_nothing(tmp_path: Path, http_server) -> None:
    url = http_server.put("ml-1m.zip", _ml1m_zip())
    home = tmp_path / "home"
    cache = home / "downloads" / "ml-1m"
    cache.mkdir(parents=True)
    (cache / "ratings.dat").write_text("1::1::5::1\n")  # extracted from an earlier, now rejected, archive
    match = f"ml-1m.zip downloaded from {url}: sha256 .*expected {prepare_mod.ML1M_ZIP_SHA256}"
    with pytest.raises(ChecksumError, match=match):
        prepare("ml-1m", PrepareOptions(mirror=url), home=home)
    assert not (home / "datasets").exists()
    assert sorted(p.name for p in cache.iterdir()) == []  # no archive, no ratings.dat, no .part file


def test_ml1m_download_verifies_extracts_and_records_the_archive(tmp_path: Path, http_server, monkeypatch) -> None:
    data = _ml1m_zip()
    monkeypatch.setattr(prepare_mod, "ML1M_ZIP_MD5", hashlib.md5(data).hexdigest())
    monkeypatch.setattr(prepare_mod, "ML1M_ZIP_SHA256", hashlib.sha256(data).hexdigest())
    url = http_server.put("ml-1m.zip", data)
    home = tmp_path / "home"
    ds = prepare("ml-1m", PrepareOptions(mirror=url), home=home)
    assert ds.vocab.tokens == ["<pad>", "1", "3"] and ds.vocab.label(1) == "Toy Story (1995)"
    assert {tuple(s.tolist()) for split in ds.splits.values() for s in split} == {(2, 1)}  # 3 (t=100) then 1
    archive = load_prepared(ds.path).source["archive"]
    assert archive == {
        "name": "ml-1m.zip",
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "md5": hashlib.md5(data).hexdigest(),
        "checksum_pinned": True,
    }
    cache = home / "downloads" / "ml-1m"
    assert sorted(p.name for p in cache.iterdir()) == ["ml-1m.zip", "movies.dat", "ratings.dat"]
    # an edited extracted file is replaced from the verified archive on the next run (offline: cached zip)
    (cache / "ratings.dat").write_text("1::1::5::1\n")
    again = prepare("ml-1m", PrepareOptions(mirror="http://127.0.0.1:9/"), home=home, name="again")
    assert again.fingerprint() == ds.fingerprint()


def test_ml1m_from_source_has_no_archive_record(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with zipfile.ZipFile(io.BytesIO(_ml1m_zip())) as zf:
        for name in ("ratings.dat", "movies.dat"):
            (src / name).write_bytes(zf.read(f"ml-1m/{name}"))
    ds = prepare("ml-1m", PrepareOptions(source=src), home=tmp_path / "home")
    assert "archive" not in ds.source and [f["name"] for f in ds.source["files"]] == ["ratings.dat"]


# ---------------------------------------------------------------- amazon-magazine (checksummed)

MAGAZINE = "".join(f"B{i:03d},U{u},5.0,{1500000000 + t}\n" for u in range(12) for t, i in enumerate((7, 2)))


def test_amazon_magazine_with_the_wrong_checksum_leaves_nothing(tmp_path: Path, http_server) -> None:
    url = http_server.put("Magazine_Subscriptions.csv", MAGAZINE.encode())
    home = tmp_path / "home"
    with pytest.raises(ChecksumError, match=f"sha256 .*expected {prepare_mod.AMAZON_MAGAZINE_SHA256}"):
        prepare("amazon-magazine", PrepareOptions(mirror=url), home=home)
    assert not (home / "datasets").exists()
    assert list((home / "downloads" / "amazon-magazine").iterdir()) == []


def test_amazon_magazine_download_is_verified_and_recorded(tmp_path: Path, http_server, monkeypatch) -> None:
    digest = hashlib.sha256(MAGAZINE.encode()).hexdigest()
    monkeypatch.setattr(prepare_mod, "AMAZON_MAGAZINE_SHA256", digest)
    url = http_server.put("Magazine_Subscriptions.csv", MAGAZINE.encode())
    ds = prepare("amazon-magazine", PrepareOptions(mirror=url), home=tmp_path / "home")
    assert ds.vocab.tokens == ["<pad>", "B002", "B007"]
    assert ds.source["files"] == [
        {"name": "Magazine_Subscriptions.csv", "bytes": len(MAGAZINE), "sha256": digest, "sha256_pinned": True}
    ]


def test_amazon_magazine_from_source_records_an_unpinned_file(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "Magazine_Subscriptions.csv").write_text(MAGAZINE)
    ds = prepare("amazon-magazine", PrepareOptions(source=src), home=tmp_path / "home")
    (record,) = ds.source["files"]
    assert record["sha256"] == hashlib.sha256(MAGAZINE.encode()).hexdigest() and record["sha256_pinned"] is False


def test_ml100k_rejected_archive_leaves_no_extracted_titles(tmp_path: Path, http_server) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ml-100k/u.data", "1\t1\t5\t1\n")
        zf.writestr("ml-100k/u.item", "1|Toy Story (1995)|\n")
    url = http_server.put("ml-100k.zip", buf.getvalue())
    with pytest.raises(ChecksumError):
        prepare("ml-100k", PrepareOptions(mirror=url), home=tmp_path / "home")
    assert list((tmp_path / "home" / "downloads" / "ml-100k").iterdir()) == []


def test_unwritable_download_directory_is_one_error(tmp_path: Path, http_server) -> None:
    url = http_server.put("data.txt", PAYLOAD)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory\n")
    with pytest.raises(DataError, match="cannot write to .*file/cache .*; check that the workspace's downloads"):
        fetch([url], blocker / "cache" / "data.txt", md5=MD5)


def test_cli_ml1m_checksum_mismatch_is_one_error_line(tmp_path: Path, http_server) -> None:
    from cli_runner import farzictl

    url = http_server.put("ml-1m.zip", _ml1m_zip())
    home = tmp_path / "home"
    line = farzictl("prepare", "ml-1m", "--mirror", url, home=home).one_error_line()
    assert f"checksum mismatch for ml-1m.zip downloaded from {url}: sha256" in line
    assert not (home / "datasets").exists() and list((home / "downloads" / "ml-1m").iterdir()) == []
