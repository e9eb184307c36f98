"""farzi.export: exact output on hand-built bundles, seeded sampling, every format parsed back, refusals."""

from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
import threading
from pathlib import Path

import polars as pl
import pytest
import torch

from farzi import export as export_mod
from farzi._io import claim_output, sha256_file
from farzi._safetensors import load_tensors, read_header, save_tensors
from farzi._version import __version__
from farzi.data.vocab import Vocabulary
from farzi.distill.bundle import load_bundle, save_bundle
from farzi.errors import BundleError, ConfigError
from farzi.export import ExportConfig, decode_sequences, export_bundle, split_sentences

LM_VOCAB = ["<pad>", "<unk>", "<eos>", "the", "cat", "sat"]
LM_SPECIALS = {"<pad>": 0, "<unk>": 1, "<eos>": 2}
LM_SEQS = [[2, 3, 4, 5, 2, 3, 1], [2, 5, 5, 2, 2, 4, 3]]
# item ids as the log named them: numbers, and one with a comma (CSV must quote it)
REC_VOCAB = ["<pad>", "1005", "42", "a,b", "7"]
REC_SEQS = [[1, 2, 3], [4, 4, 1]]
HIGH, LOW = 4.0, -4.0


def hand_bundle(
    path: Path, vocab: list[str], seqs: list[list[int]], task: str, masked: list[int] | None = None
) -> Path:
    """A bundle whose argmax is ``seqs``: decoder = identity, latent = HIGH at the token, LOW elsewhere."""
    V = len(vocab)
    latent = torch.full((len(seqs), len(seqs[0]), V), LOW)  # [mu, xi, V]
    for i, seq in enumerate(seqs):
        for j, t in enumerate(seq):
            latent[i, j, t] = HIGH
    specials = LM_SPECIALS if task == "lm" else {"<pad>": 0}
    voc = Vocabulary(list(vocab), dict(specials))
    return save_bundle(
        path,
        latent,
        torch.eye(V),
        1.0,
        task,
        list(vocab),
        voc.sha256(),
        dict(specials),
        [0] if masked is None else masked,
        {"name": "hand-built"},
        {"model": "none"},
        {},
    )


def dist_bundle(path: Path, probs: list[float], mu: int, xi: int) -> Path:
    """A rec bundle whose every position has the distribution ``probs`` over the items (pad masked)."""
    vocab = ["<pad>"] + [f"it{i}" for i in range(len(probs))]
    logp = torch.log(torch.tensor([1.0, *probs]))  # [V]; the pad entry is masked anyway
    latent = logp.expand(mu, xi, len(vocab)).clone()  # [mu, xi, V]
    voc = Vocabulary(vocab, {"<pad>": 0})
    return save_bundle(
        path, latent, torch.eye(len(vocab)), 1.0, "rec", vocab, voc.sha256(), {"<pad>": 0}, [0], {}, {}, {}
    )


def strip_vocab(src: Path, dst: Path) -> Path:
    """A copy of ``src`` written without the optional ``vocab`` metadata."""
    _, meta = read_header(src, BundleError, "")
    meta = {k: v for k, v in meta.items() if k != "vocab"}
    save_tensors(dst, load_tensors(src), meta)
    return dst


def p_one_hot(unmasked: int) -> float:
    """The probability of the HIGH token when ``unmasked`` tokens share the softmax."""
    return round(math.exp(HIGH) / (math.exp(HIGH) + (unmasked - 1) * math.exp(LOW)), 6)


@pytest.fixture
def lm_bundle(tmp_path: Path) -> Path:
    return hand_bundle(tmp_path / "lm.safetensors", LM_VOCAB, LM_SEQS, "lm")


@pytest.fixture
def rec_bundle(tmp_path: Path) -> Path:
    """Pad unmasked and the most probable token at sequence 1, position 0: it must still never appear."""
    path = hand_bundle(tmp_path / "rec.safetensors", REC_VOCAB, REC_SEQS, "rec", masked=[])
    tensors = load_tensors(path)
    _, meta = read_header(path, BundleError, "")
    tensors["latent"][1, 0, 0] = HIGH + 1.0
    save_tensors(path, tensors, meta)
    return path


# ------------------------------------------------------------------ text (lm)
def test_split_sentences() -> None:
    assert split_sentences([2, 3, 4, 2, 2, 5], 2) == [[3, 4], [5]]
    assert split_sentences([2, 2], 2) == []
    assert split_sentences([3, 4], None) == [[3, 4]]


def test_lm_jsonl_exact(lm_bundle: Path) -> None:
    res = export_bundle(lm_bundle, ExportConfig(to="jsonl"))
    assert res.path == lm_bundle.with_suffix(".jsonl")
    rows = [json.loads(x) for x in res.path.read_text(encoding="utf-8").splitlines()]
    p = p_one_hot(len(LM_VOCAB) - 1)
    assert rows == [
        {
            "name": "syn0-0",
            "sequence": 0,
            "sample": 0,
            "ids": LM_SEQS[0],
            "tokens": ["<eos>", "the", "cat", "sat", "<eos>", "the", "<unk>"],
            "p": [p] * 7,
            "sentences": [["the", "cat", "sat"], ["the", "<unk>"]],
        },
        {
            "name": "syn1-0",
            "sequence": 1,
            "sample": 0,
            "ids": LM_SEQS[1],
            "tokens": ["<eos>", "sat", "sat", "<eos>", "<eos>", "cat", "the"],
            "p": [p] * 7,
            "sentences": [["sat", "sat"], ["cat", "the"]],
        },
    ]


def test_lm_txt_exact(lm_bundle: Path) -> None:
    res = export_bundle(lm_bundle, ExportConfig(to="txt"))
    # one sentence per line, <eos> splits, empty sentences dropped, <unk> kept as the word <unk>
    assert res.path.read_text(encoding="utf-8") == "the cat sat\nthe <unk>\nsat sat\ncat the\n"
    assert res.provenance["counts"] == {
        "sequences": 2,
        "rows": 4,
        "tokens": 14,
        "distinct_tokens": 5,
        "sentences": 4,
        "unk_tokens": 1,
    }


def test_lm_csv_and_parquet_exact(lm_bundle: Path) -> None:
    csv_res = export_bundle(lm_bundle, ExportConfig(to="csv"))
    want = [
        (f"syn{i}-0", j, LM_VOCAB[t]) for i, seq in enumerate(LM_SEQS) for j, t in enumerate(seq)
    ]  # sequence, position, token: every token, <eos> included
    lines = csv_res.path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "sequence,position,token"
    assert lines[1:] == [f"{s},{j},{t}" for s, j, t in want]
    pq = export_bundle(lm_bundle, ExportConfig(to="parquet")).path
    frame = pl.read_parquet(pq)
    assert frame.columns == ["sequence", "position", "token"]
    assert frame.dtypes == [pl.Utf8, pl.Int32, pl.Utf8]
    assert list(frame.iter_rows()) == want
    assert pl.read_csv(csv_res.path).cast({"position": pl.Int32}).equals(frame)


# ------------------------------------------------------------------ recommendation
REC_ROWS = [("syn0-0", "1005", 0), ("syn0-0", "42", 1), ("syn0-0", "a,b", 2)] + [
    ("syn1-0", "7", 0),
    ("syn1-0", "7", 1),
    ("syn1-0", "1005", 2),
]


def test_rec_csv_exact_and_pad_never_emitted(rec_bundle: Path) -> None:
    data = load_bundle(rec_bundle)
    assert int(data.materialize()[1, 0].argmax()) == 0  # <pad> is the bundle's most probable token there
    res = export_bundle(rec_bundle, ExportConfig(to="csv"))
    assert res.path.read_text(encoding="utf-8") == (
        'user,item,position\nsyn0-0,1005,0\nsyn0-0,42,1\nsyn0-0,"a,b",2\nsyn1-0,7,0\nsyn1-0,7,1\nsyn1-0,1005,2\n'
    )
    back = pl.read_csv(res.path, schema_overrides={"item": pl.Utf8})
    assert list(back.iter_rows()) == REC_ROWS
    with open(res.path, newline="", encoding="utf-8") as f:
        assert [tuple(r) for r in csv.reader(f)][1:] == [(u, i, str(p)) for u, i, p in REC_ROWS]


def test_rec_txt_parquet_jsonl_exact(rec_bundle: Path) -> None:
    txt = export_bundle(rec_bundle, ExportConfig(to="txt")).path
    assert txt.read_text(encoding="utf-8") == "1005 42 a,b\n7 7 1005\n"
    frame = pl.read_parquet(export_bundle(rec_bundle, ExportConfig(to="parquet")).path)
    assert frame.columns == ["user", "item", "position"]
    assert list(frame.iter_rows()) == REC_ROWS
    rows = [json.loads(x) for x in export_bundle(rec_bundle, ExportConfig(to="jsonl")).path.read_text().splitlines()]
    assert [(r["name"], r["ids"], r["tokens"]) for r in rows] == [
        ("syn0-0", [1, 2, 3], ["1005", "42", "a,b"]),
        ("syn1-0", [4, 4, 1], ["7", "7", "1005"]),
    ]
    assert all("sentences" not in r for r in rows)
    # the chosen probabilities are the bundle's own (pad unmasked: 5 tokens share the softmax)
    e = math.exp
    runner_up = round(e(HIGH) / (e(HIGH + 1) + e(HIGH) + 3 * e(LOW)), 6)
    assert rows[1]["p"] == pytest.approx([runner_up, p_one_hot(5), p_one_hot(5)], abs=1e-6)


def test_rec_txt_refuses_items_with_whitespace(tmp_path: Path) -> None:
    bundle = hand_bundle(tmp_path / "b.safetensors", ["<pad>", "item one", "x"], [[1, 2]], "rec")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ConfigError, match="'item one' holds whitespace.*--to csv"):
        export_bundle(bundle, ExportConfig(to="txt"))
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no file, no temporary left behind
    assert list(pl.read_csv(export_bundle(bundle, ExportConfig(to="csv")).path)["item"]) == ["item one", "x"]


# ------------------------------------------------------------------ sampling
def test_sampling_is_seeded_and_follows_the_distribution(tmp_path: Path) -> None:
    bundle = dist_bundle(tmp_path / "d.safetensors", [0.7, 0.3], mu=2, xi=5)
    a = export_bundle(bundle, ExportConfig(to="csv", decode="sample", samples=400, seed=5), out=tmp_path / "a.csv")
    b = export_bundle(bundle, ExportConfig(to="csv", decode="sample", samples=400, seed=5), out=tmp_path / "b.csv")
    c = export_bundle(bundle, ExportConfig(to="csv", decode="sample", samples=400, seed=6), out=tmp_path / "c.csv")
    assert a.path.read_bytes() == b.path.read_bytes()
    assert a.path.read_bytes() != c.path.read_bytes()
    frame = pl.read_csv(a.path)
    assert frame.height == 2 * 400 * 5
    assert frame["user"].n_unique() == 800 and set(frame["item"]) == {"it0", "it1"}
    share = float((frame["item"] == "it0").mean())
    assert abs(share - 0.7) < 0.03  # 4000 draws: sd 0.007
    assert a.provenance["export"] == {
        "to": "csv",
        "decode": "sample",
        "samples": 400,
        "seed": 5,
        "columns": ["user", "item", "position"],
    }


def test_sampling_does_not_depend_on_chunking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = dist_bundle(tmp_path / "d.safetensors", [0.5, 0.3, 0.2], mu=5, xi=4)
    data = load_bundle(bundle)
    whole = [(d.index, d.sample, d.ids) for d in decode_sequences(data, "sample", 3, seed=2)]
    monkeypatch.setattr(export_mod, "CHUNK_ELEMENTS", 1)  # one sequence materialized at a time
    one_by_one = [(d.index, d.sample, d.ids) for d in decode_sequences(data, "sample", 3, seed=2)]
    assert whole == one_by_one
    assert [(i, k) for i, k, _ in whole] == [(i, k) for i in range(5) for k in range(3)]


def test_sampling_a_sharp_bundle_gives_its_argmax(lm_bundle: Path, tmp_path: Path) -> None:
    tensors = load_tensors(lm_bundle)
    _, meta = read_header(lm_bundle, BundleError, "")
    tensors["latent"] = tensors["latent"] * 10  # p(top) = 1 - 1e-34: a draw is the argmax
    save_tensors(lm_bundle, tensors, meta)
    draws = list(decode_sequences(load_bundle(lm_bundle), "sample", samples=4, seed=0))
    assert [d.ids for d in draws] == [s for s in LM_SEQS for _ in range(4)]
    assert [d.name for d in draws[:5]] == ["syn0-0", "syn0-1", "syn0-2", "syn0-3", "syn1-0"]


# the tokens farzi drew before export worked in chunks (one multinomial call per sequence): the same seed
# must keep giving them (torch's CPU sampler draws row after row, so any cut into rows gives the same stream)
PINNED_DRAWS = {
    1: [[2, 1, 1, 3], [1, 1, 2, 1], [1, 3, 3, 2]],
    2: [[1, 2, 2, 1], [3, 2, 1, 1], [3, 3, 2, 1], [1, 2, 1, 1], [3, 3, 1, 2], [1, 1, 3, 3]],
}


@pytest.mark.parametrize("chunk", [1, 3, 4 * 5, 1 << 20])  # elements: a position, chunks across sequences, all
@pytest.mark.parametrize("samples", [1, 2])
def test_sampling_keeps_the_draws_of_earlier_versions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, samples: int, chunk: int
) -> None:
    data = load_bundle(dist_bundle(tmp_path / "d.safetensors", [0.5, 0.3, 0.2], mu=3, xi=4))
    monkeypatch.setattr(export_mod, "CHUNK_ELEMENTS", chunk)
    assert [d.ids for d in decode_sequences(data, "sample", samples, seed=11)] == PINNED_DRAWS[samples]


@pytest.mark.parametrize(("decode", "samples"), [("argmax", 1), ("sample", 1), ("sample", 5)])
def test_decoding_does_not_depend_on_the_chunks(
    tiny_lm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, decode: str, samples: int
) -> None:
    """Chunks of one position, of a few positions across sequence boundaries, of fewer positions than the
    draws need, and of the whole bundle: the same tokens and probabilities, sequence after sequence."""
    gen = torch.Generator().manual_seed(4)
    V = tiny_lm.vocab_size
    bundle = save_bundle(
        tmp_path / "b.safetensors", torch.randn(5, 7, 6, generator=gen) * 2, torch.randn(6, V, generator=gen), 0.8,
        "lm", list(tiny_lm.vocab.tokens), tiny_lm.vocab.sha256(), dict(tiny_lm.vocab.specials), [0], {}, {}, {},
    )  # fmt: skip
    data = load_bundle(bundle)
    runs = []
    for chunk in (1, 3 * V, 3 * V + 1, 2, 10**6):  # 2: below one position, and fewer rows than 5 draws need
        monkeypatch.setattr(export_mod, "CHUNK_ELEMENTS", chunk)
        runs.append([(d.index, d.sample, d.ids, d.p) for d in decode_sequences(data, decode, samples, seed=3)])
    for run in runs[1:]:
        assert [(i, k, ids) for i, k, ids, _ in run] == [(i, k, ids) for i, k, ids, _ in runs[0]]
        # the product of a few rows takes other BLAS kernels: the last digit of a probability may differ
        assert [p for *_, p in run] == [pytest.approx(p, abs=1.1e-6) for *_, p in runs[0]]
    assert [(i, k) for i, k, _, _ in runs[0]] == [(i, k) for i in range(5) for k in range(samples)]
    assert all(len(ids) == 7 and 0 not in ids for _, _, ids, _ in runs[0])  # <pad> is masked


# ------------------------------------------------------------------ provenance
def test_sidecar_records_bundle_config_and_version(lm_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    res = export_bundle(lm_bundle, ExportConfig(to="txt", decode="sample", samples=2, seed=9))
    assert res.sidecar == lm_bundle.with_suffix(".txt.json")
    side = json.loads(res.sidecar.read_text())
    assert side == res.provenance
    assert side["format"] == "farzi-export" and side["version"] == 1 and side["task"] == "lm"
    assert side["bundle"]["path"] == str(lm_bundle.resolve())
    assert side["bundle"]["sha256"] == sha256_file(lm_bundle)
    assert side["bundle"]["budget"] == "2x7" and side["bundle"]["dataset"] == {"name": "hand-built"}
    assert side["file"] == {"name": "lm.txt", "sha256": sha256_file(res.path), "bytes": res.path.stat().st_size}
    assert side["export"] == {"to": "txt", "decode": "sample", "samples": 2, "seed": 9, "columns": None}
    assert side["package"] == {"name": "farzi", "version": __version__}
    assert side["vocabulary"]["source"] == "bundle" and side["created"] == "2023-11-14T22:13:20Z"


# ------------------------------------------------------------------ vocabulary
def test_bundle_without_vocabulary(tiny_lm, tiny_rec, tmp_path: Path) -> None:
    seqs = [[2, 5, 6, 2], [2, 7, 7, 1]]
    full = hand_bundle(tmp_path / "full.safetensors", list(tiny_lm.vocab.tokens), seqs, "lm")
    bare = strip_vocab(full, tmp_path / "bare.safetensors")
    assert load_bundle(bare).vocab is None
    with pytest.raises(BundleError, match="holds no vocabulary.*--dataset"):
        export_bundle(bare, ExportConfig(to="txt"))
    assert not (tmp_path / "bare.txt").exists()
    with pytest.raises(BundleError, match="different vocabulary"):
        export_bundle(bare, ExportConfig(to="txt"), dataset=tiny_rec)
    res = export_bundle(bare, ExportConfig(to="txt"), dataset=tiny_lm)
    words = tiny_lm.vocab.tokens
    assert res.path.read_text() == f"{words[5]} {words[6]}\n{words[7]} {words[7]} <unk>\n"
    assert res.provenance["vocabulary"]["source"] == f"dataset {tiny_lm.name}"
    assert res.path.read_text() == export_bundle(full, ExportConfig(to="txt")).path.read_text()


# ------------------------------------------------------------------ refusals
@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        (ExportConfig(to="xml"), "unknown export format 'xml'.*jsonl, txt, csv, parquet"),
        (ExportConfig(decode="beam"), "unknown decoding 'beam'"),
        (ExportConfig(decode="sample", samples=0), "--samples 0 is out of range"),
        (ExportConfig(decode="argmax", samples=3), "identical copies.*--decode sample"),
    ],
)
def test_bad_config(lm_bundle: Path, cfg: ExportConfig, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        export_bundle(lm_bundle, cfg)
    assert sorted(p.name for p in lm_bundle.parent.iterdir()) == ["lm.safetensors"]


def test_existing_outputs(lm_bundle: Path, tmp_path: Path) -> None:
    mine = tmp_path / "notes.txt"
    mine.write_text("my notes\n")
    with pytest.raises(ConfigError, match="exists and is not a previous farzi export.*--overwrite"):
        export_bundle(lm_bundle, ExportConfig(to="txt"), out=mine)
    assert mine.read_text() == "my notes\n" and not (tmp_path / "notes.txt.json").exists()
    export_bundle(lm_bundle, ExportConfig(to="txt", overwrite=True), out=mine)
    assert mine.read_text().startswith("the cat sat\n")
    # a previous export in the same format is replaced without --overwrite
    export_bundle(lm_bundle, ExportConfig(to="txt", decode="sample", samples=2), out=mine)
    assert json.loads((tmp_path / "notes.txt.json").read_text())["export"]["samples"] == 2
    # ... one in another format is not
    odd = tmp_path / "export.data"
    export_bundle(lm_bundle, ExportConfig(to="csv"), out=odd)
    with pytest.raises(ConfigError, match="previous export in another format"):
        export_bundle(lm_bundle, ExportConfig(to="jsonl"), out=odd)
    assert odd.read_text().startswith("sequence,position,token\n")


def test_a_foreign_sidecar_is_not_replaced(lm_bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "x.csv.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"x\.csv\.json exists and is not an export sidecar"):
        export_bundle(lm_bundle, ExportConfig(to="csv"), out=tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists() and (tmp_path / "x.csv.json").read_text() == "{}"


def test_output_paths_refused(lm_bundle: Path, tmp_path: Path) -> None:
    before = lm_bundle.read_bytes()
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match="is the bundle itself"):
            export_bundle(lm_bundle, ExportConfig(to="csv", overwrite=overwrite), out=lm_bundle)
    assert lm_bundle.read_bytes() == before
    with pytest.raises(ConfigError, match="suffix of the parquet format.*x.csv"):
        export_bundle(lm_bundle, ExportConfig(to="csv"), out=tmp_path / "x.parquet")
    (tmp_path / "d").mkdir()
    with pytest.raises(ConfigError, match="is a directory"):
        export_bundle(lm_bundle, ExportConfig(to="csv"), out=tmp_path / "d")


def test_a_bad_bundle_is_a_bundle_error(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        export_bundle(tmp_path / "missing.safetensors", ExportConfig())
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 7)
    with pytest.raises(BundleError, match="too short"):
        export_bundle(tmp_path / "junk.safetensors", ExportConfig())


def test_jsonl_is_one_object_per_line_with_text_safe_tokens(tmp_path: Path) -> None:
    vocab = ["<pad>", "<unk>", "<eos>", 'say "hi"', "naïve"]
    bundle = hand_bundle(tmp_path / "u.safetensors", vocab, [[3, 4, 2]], "lm")
    text = export_bundle(bundle, ExportConfig(to="jsonl")).path.read_text(encoding="utf-8")
    assert len(text.splitlines()) == 1
    assert json.load(io.StringIO(text))["sentences"] == [['say "hi"', "naïve"]]


# ------------------------------------------------------------------ the output is claimed
def test_an_export_in_progress_makes_a_second_fail_at_once(lm_bundle: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out.jsonl"
    export_bundle(lm_bundle, ExportConfig(to="jsonl"), out=out)
    before = out.read_bytes()

    def never(*args, **kwargs):
        raise AssertionError("the second export loaded the bundle: it must fail before any work")

    monkeypatch.setattr(export_mod, "load_bundle", never)
    fd = os.open(tmp_path / ".out.jsonl.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # what the first export's claim holds
        with pytest.raises(ConfigError, match="out.jsonl is being written by another farzi process"):
            export_bundle(lm_bundle, ExportConfig(to="jsonl"), out=out)
    finally:
        os.close(fd)
    assert out.read_bytes() == before
    # from another thread of this process, through claim_output itself
    with claim_output(out, "export"):
        errors: list[BaseException] = []

        def second() -> None:
            try:
                export_bundle(lm_bundle, ExportConfig(to="jsonl"), out=out)
            except ConfigError as exc:
                errors.append(exc)

        t = threading.Thread(target=second)
        t.start()
        t.join()
    assert len(errors) == 1 and "is being written by another farzi process" in str(errors[0])
    assert out.read_bytes() == before


def test_what_a_killed_export_left_is_removed_by_the_next(lm_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    stale = [tmp_path / ".out.jsonl.tmp-deadbeef", tmp_path / ".out.jsonl.json.tmp-0badf00d"]
    for path in stale:
        path.write_bytes(b"x" * 1000)  # a killed export's temporaries: the file's and the sidecar's
    other = tmp_path / ".out.jsonl.other.tmp-deadbeef"  # another target's: kept
    other.write_text("not ours")
    res = export_bundle(lm_bundle, ExportConfig(to="jsonl"), out=out)
    assert not any(path.exists() for path in stale)
    assert other.read_text() == "not ours"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".out.jsonl.other.tmp-deadbeef", "lm.safetensors", "out.jsonl", "out.jsonl.json"]
    )  # no lock, no temporary
    assert res.provenance["counts"]["sequences"] == 2


def test_a_users_file_at_the_sidecar_path_is_never_clobbered(lm_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.jsonl"
    side = tmp_path / "x.jsonl.json"
    for mine in ('{"format": "my-notes"}\n', '{"format": "farzi-export"}\n', "not json\n"):
        side.write_text(mine)
        with pytest.raises(ConfigError, match=r"x\.jsonl\.json exists and is not an export sidecar.*--overwrite"):
            export_bundle(lm_bundle, ExportConfig(to="jsonl"), out=out)
        assert side.read_text() == mine and not out.exists()
    # a symbolic link there is not an export sidecar either, even to one
    real = export_bundle(lm_bundle, ExportConfig(to="jsonl"), out=tmp_path / "real.jsonl").sidecar
    side.unlink()
    side.symlink_to(real)
    with pytest.raises(ConfigError, match="is not an export sidecar"):
        export_bundle(lm_bundle, ExportConfig(to="jsonl"), out=out)
    assert side.is_symlink() and not out.exists()
    side.unlink()
    side.write_text("mine\n")
    export_bundle(lm_bundle, ExportConfig(to="jsonl", overwrite=True), out=out)  # --overwrite: replaced
    assert json.loads(side.read_text())["format"] == "farzi-export"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_file_that_appears_during_the_export_is_not_replaced(lm_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.csv"
    for where, match in (("x.csv.json", "not an export sidecar"), ("x.csv", "appeared while this run was working")):

        def progress(*args, where: str = where, **kwargs) -> None:
            (tmp_path / where).write_text("mine\n")

        with pytest.raises(ConfigError, match=match):
            export_bundle(lm_bundle, ExportConfig(to="csv"), out=out, progress=progress)
        assert (tmp_path / where).read_text() == "mine\n"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["lm.safetensors", where]  # nothing else written
        (tmp_path / where).unlink()
