"""``inspect_bundle``: a report on a valid bundle, and a verdict (never an exception)
on a file that cannot be used."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from farzi._safetensors import read_header
from farzi.data.prepare import PrepareOptions, prepare
from farzi.data.prepared import PreparedDataset
from farzi.distill.bundle import MAX_SEQUENCE_ELEMENTS, FarziData, load_bundle, save_bundle
from farzi.distill.inspect import CHUNK_BYTES, MATERIALIZE_CHUNK_BYTES, _chunks, inspect_bundle
from farzi.errors import BundleError


def write(path: Path, ds: PreparedDataset, mu: int = 3, xi: int = 5, d: int = 4, **dataset: object) -> Path:
    gen = torch.Generator().manual_seed(0)
    record = {
        "name": ds.name,
        "fingerprint": ds.fingerprint(),
        "path": str(ds.path),
        "train_sequences": len(ds.train),
        "train_tokens": int(ds.train.num_tokens),
        **dataset,
    }
    return save_bundle(
        path,
        torch.randn(mu, xi, d, generator=gen) * 3,
        torch.randn(d, ds.vocab_size, generator=gen),
        1.0,
        ds.task,
        vocab=list(ds.vocab.tokens),
        vocab_sha256=ds.vocab.sha256(),
        specials=dict(ds.vocab.specials),
        masked_tokens=[ds.vocab.pad_id],
        dataset=record,
        teacher={"model": "transformer", "config": {}, "trajectories": None, "checkpoints": 0},
        distill={"mu": mu, "xi": xi},
    )


@pytest.fixture(scope="module")
def titled(tmp_path_factory: pytest.TempPathFactory) -> PreparedDataset:
    """A tiny MovieLens-100k look-alike: u.data plus u.item with titles."""
    src = tmp_path_factory.mktemp("ml-src")
    rows = [f"{u}\t{1 + (u + k) % 5}\t4\t{100 * u + k}" for u in range(1, 13) for k in range(3)]
    (src / "u.data").write_text("\n".join(rows) + "\n", encoding="latin-1")
    titles = "".join(f"{i}|Film number {i} (1999)|01-Jan-1999||\n" for i in range(1, 6))
    (src / "u.item").write_text(titles, encoding="latin-1")
    return prepare("ml-100k", PrepareOptions(source=src), name="titled", home=tmp_path_factory.mktemp("ml-home"))


def test_report_on_a_valid_bundle(tiny_lm: PreparedDataset, tmp_path: Path) -> None:
    path = write(tmp_path / "b.safetensors", tiny_lm, mu=4, xi=6)
    report = inspect_bundle(path, tiny_lm, top_k=3, sequences=2, positions=4)
    json.dumps(report, allow_nan=False)  # the CLI prints it as JSON
    assert report["valid"] is True and report["dataset_match"] is True
    assert report["verdict"] == "valid farzi-data v1 bundle"
    assert report["format"] == "farzi-data v1" and report["task"] == "lm"
    assert report["budget"] == "4x6"
    V = tiny_lm.vocab_size
    assert report["shapes"] == {"latent": [4, 6, 4], "decoder": [4, V]}
    assert report["dataset"]["name"] == tiny_lm.name and report["teacher"]["model"] == "transformer"
    assert report["share"]["sequences"] == pytest.approx(4 / len(tiny_lm.train))
    assert report["share"]["tokens"] == pytest.approx(24 / tiny_lm.train.num_tokens)

    ent = report["entropy"]
    assert len(ent["per_position"]) == 6 and len(ent["per_sequence"]) == 4
    assert ent["max_possible"] == round(math.log(V - 1), 4)  # <pad> is masked
    assert all(0 <= h <= ent["max_possible"] + 1e-4 for h in ent["per_position"] + ent["per_sequence"])
    assert min(ent["per_sequence"]) - 1e-4 <= ent["mean"] <= max(ent["per_sequence"]) + 1e-4

    assert len(report["examples"]) == 2
    for seq in report["examples"]:
        assert len(seq) == 4
        for top in seq:
            assert len(top) == 3
            assert [t["p"] for t in top] == sorted((t["p"] for t in top), reverse=True)
            for t in top:
                assert t["token"] == tiny_lm.vocab.tokens[t["id"]] and t["id"] != 0


def test_item_titles_label_the_examples(titled: PreparedDataset, tmp_path: Path) -> None:
    assert titled.vocab.titles is not None and titled.vocab.titles[1] == "Film number 1 (1999)"
    path = write(tmp_path / "b.safetensors", titled, mu=2, xi=3)
    report = inspect_bundle(path, titled, top_k=2)
    assert report["valid"] and report["dataset_match"] and report["task"] == "rec"
    assert report["entropy"]["max_possible"] == round(math.log(titled.vocab_size - 1), 4)
    tokens = [t for seq in report["examples"] for top in seq for t in top]
    assert tokens and all(t["token"] == titled.vocab.titles[t["id"]] for t in tokens)
    assert all(t["token"].startswith("Film number") for t in tokens)
    # without the dataset the bundle's own vocabulary (item ids) labels them
    bare = inspect_bundle(path, top_k=2)
    assert "dataset_match" not in bare
    assert all(t["token"] == titled.vocab.tokens[t["id"]] for seq in bare["examples"] for top in seq for t in top)


def test_a_bundle_of_another_dataset(tiny_lm: PreparedDataset, tiny_rec: PreparedDataset, tmp_path: Path) -> None:
    report = inspect_bundle(write(tmp_path / "b.safetensors", tiny_lm), tiny_rec)
    assert report["valid"] is True and report["dataset_match"] is False
    assert report["verdict"].startswith("valid bundle, but not for dataset 'synthetic-rec'")
    assert "different vocabulary" in report["verdict"]
    assert report["examples"][0][0][0]["token"] in tiny_lm.vocab.tokens  # labels from the bundle


def test_an_odd_dataset_record_does_not_break_the_report(tiny_lm: PreparedDataset, tmp_path: Path) -> None:
    for odd in ("many", {"n": 1}, -3, True, None):
        path = write(tmp_path / "b.safetensors", tiny_lm, train_sequences=odd, train_tokens=odd)
        report = inspect_bundle(path)
        assert report["valid"] is True and "share" not in report


def _broken(tmp: Path, tiny_lm: PreparedDataset) -> dict[str, Path]:
    good = write(tmp / "good.safetensors", tiny_lm)
    data = good.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    files: dict[str, Path] = {}
    for name, blob in {
        "empty": b"",
        "garbage": b"this is not a bundle at all",
        "cut-in-header": data[: 8 + n // 2],
        "cut-in-data": data[:-5],
        "huge-header-length": struct.pack("<Q", 2**40) + data[8:],
    }.items():
        files[name] = tmp / f"{name}.safetensors"
        files[name].write_bytes(blob)
    meta = read_header(good, BundleError, "")[1]
    tensors = {"latent": torch.zeros(3, 5, 4), "decoder": torch.zeros(4, tiny_lm.vocab_size)}
    for name, change in {"newer": {"version": "3"}, "other-format": {"format": "farzi-trajectories"}}.items():
        files[name] = tmp / f"{name}.safetensors"
        save_file(tensors, str(files[name]), metadata={**meta, **change})
    files["directory"] = tmp / "dir.safetensors"
    files["directory"].mkdir()
    files["missing"] = tmp / "missing.safetensors"
    return files


def test_broken_files_give_an_invalid_verdict(tiny_lm: PreparedDataset, tmp_path: Path) -> None:
    for name, path in _broken(tmp_path, tiny_lm).items():
        report = inspect_bundle(path, tiny_lm)
        assert report["valid"] is False, name
        assert report["path"] == str(path)
        verdict = report["verdict"]
        assert verdict.startswith("invalid: ") and "\n" not in verdict, (name, verdict)
        assert set(report) == {"path", "valid", "verdict"}
    assert "upgrade farzi" in inspect_bundle(tmp_path / "newer.safetensors")["verdict"]
    assert "not a Farzi Data bundle" in inspect_bundle(tmp_path / "other-format.safetensors")["verdict"]
    assert "does not exist" in inspect_bundle(tmp_path / "missing.safetensors")["verdict"]


# ------------------------------------------------------------------ memory: chunk by chunk


def test_uniform_distributions_have_the_maximal_entropy(tiny_lm: PreparedDataset, tmp_path: Path) -> None:
    path = write(tmp_path / "b.safetensors", tiny_lm, mu=3, xi=5)
    data = load_bundle(path)
    save_bundle(  # the same bundle with a zero latent: every logit 0, every distribution uniform
        path, torch.zeros(3, 5, 4), data.decoder, 1.0, "lm", list(tiny_lm.vocab.tokens), tiny_lm.vocab.sha256(),
        dict(tiny_lm.vocab.specials), [0], data.meta["dataset"], data.meta["teacher"], data.meta["distill"],
    )  # fmt: skip
    ent = inspect_bundle(path)["entropy"]
    expected = round(math.log(tiny_lm.vocab_size - 1), 4)  # <pad> is masked
    assert ent["per_position"] == [expected] * 5 and ent["per_sequence"] == [expected] * 3
    assert ent["mean"] == ent["max_possible"] == expected


@pytest.mark.parametrize("chunk_bytes", [1, 4 * 33, 4 * 33 * 7, 10**9])
def test_the_report_does_not_depend_on_the_chunk_size(
    tiny_lm: PreparedDataset, tmp_path: Path, chunk_bytes: int
) -> None:
    path = write(tmp_path / "b.safetensors", tiny_lm, mu=4, xi=6)
    assert tiny_lm.vocab_size == 33
    reference = inspect_bundle(path, tiny_lm, top_k=3, sequences=4, positions=6)
    assert inspect_bundle(path, tiny_lm, top_k=3, sequences=4, positions=6, chunk_bytes=chunk_bytes) == reference


@pytest.mark.parametrize("chunk_bytes", [1, 4 * 33, 4 * 33 * 7 + 3, MATERIALIZE_CHUNK_BYTES])
def test_chunks_never_exceed_their_bytes(tiny_lm: PreparedDataset, tmp_path: Path, chunk_bytes: int) -> None:
    data = load_bundle(write(tmp_path / "b.safetensors", tiny_lm, mu=4, xi=6))
    rows = data.latent.reshape(-1, data.latent_dim)  # [24, d]
    chunks = list(_chunks(data, rows, chunk_bytes))
    per_row = 4 * data.vocab_size
    assert all(c.dtype == torch.float32 and c.shape[1] == data.vocab_size for c in chunks)
    assert all(c.nelement() * 4 <= max(chunk_bytes, per_row) for c in chunks)  # at least one position a chunk
    assert [len(c) for c in chunks][:-1] == [max(1, chunk_bytes // per_row)] * (len(chunks) - 1)
    torch.testing.assert_close(torch.cat(chunks), data.materialize().reshape(24, -1))
    assert MATERIALIZE_CHUNK_BYTES == 4 * MAX_SEQUENCE_ELEMENTS  # any accepted position fits in one chunk


@pytest.mark.parametrize("chunk_bytes", [1, 4 * 33 * 5, CHUNK_BYTES])
def test_the_entropy_is_built_a_chunk_at_a_time(
    tiny_lm: PreparedDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk_bytes: int
) -> None:
    path = write(tmp_path / "b.safetensors", tiny_lm, mu=4, xi=6)  # 24 positions of V 33
    reference = inspect_bundle(path, tiny_lm, chunk_bytes=MATERIALIZE_CHUNK_BYTES)
    built: list[int] = []
    positions = FarziData.positions

    def spy(self: FarziData, chunk_elements: int):
        for start, p in positions(self, chunk_elements):
            built.append(p.nelement())
            yield start, p

    monkeypatch.setattr(FarziData, "positions", spy)
    assert inspect_bundle(path, tiny_lm, chunk_bytes=chunk_bytes) == reference
    assert sum(built) == 24 * 33 and max(built) * 4 <= max(chunk_bytes, 4 * 33)  # at least a position
    assert CHUNK_BYTES == 4 * 1024**2 <= MATERIALIZE_CHUNK_BYTES  # the default: cache-sized


def test_the_4_tb_bundle_gets_a_verdict_not_an_allocation(tiny_lm: PreparedDataset, tmp_path: Path) -> None:
    """latent [1, 1e6, 1] x decoder [1, 1e6]: 8 MB on disk, 4 TB of distributions."""
    good = write(tmp_path / "good.safetensors", tiny_lm)
    meta = {k: v for k, v in read_header(good, BundleError, "")[1].items() if k != "vocab"}
    meta["vocab_size"] = str(10**6)
    header = {
        "__metadata__": meta,
        "decoder": {"dtype": "F32", "shape": [1, 10**6], "data_offsets": [0, 4 * 10**6]},
        "latent": {"dtype": "F32", "shape": [1, 10**6, 1], "data_offsets": [4 * 10**6, 8 * 10**6]},
    }
    text = json.dumps(header).encode()
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + bytes(8 * 10**6))
    report = inspect_bundle(path)
    assert report["valid"] is False
    assert "xi x |V| = 1000000 x 1000000 = 1000000000000 values, over the limit of 16777216" in report["verdict"]
    assert "distill a shorter budget" in report["verdict"]
