"""The farzi-data v1 bundle: round trip, reproducible metadata, and a reader that
rejects every bad file with one BundleError line (formats/farzi-data-v1.md)."""

from __future__ import annotations

import json
import math
import os
import re
import struct
import tempfile
from functools import cache
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import Tensor

import farzi
from farzi._safetensors import read_header
from farzi.batching import MAX_BATCH_BYTES, DistributionTrainSet
from farzi.distill.bundle import (
    MAX_SEQUENCE_ELEMENTS,
    MAX_TOTAL_ELEMENTS,
    REQUIRED_KEYS,
    FarziData,
    check_size,
    created_now,
    load_bundle,
    read_bundle_meta,
    save_bundle,
)
from farzi.errors import BundleError, ConfigError

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "formats" / "farzi-data-v1.schema.json"
VOCAB = ["<pad>", "<unk>", "<eos>", "a", "b", "c", "d"]
SHA = "0" * 64


def write(
    path: Path, mu: int = 3, xi: int = 4, d: int = 5, tau: float = 0.5, vocab: list[str] = VOCAB, seed: int = 0
) -> Path:
    gen = torch.Generator().manual_seed(seed)
    return save_bundle(
        path,
        torch.randn(mu, xi, d, generator=gen),
        torch.randn(d, len(vocab), generator=gen),
        tau,
        "lm",
        vocab=vocab,
        vocab_sha256=SHA,
        specials={"<pad>": 0, "<unk>": 1, "<eos>": 2},
        masked_tokens=[0],
        dataset={"name": "toy", "fingerprint": "f" * 64, "path": None, "train_sequences": 10, "train_tokens": 80},
        teacher={"model": "transformer", "config": {}, "trajectories": None, "checkpoints": 0},
        distill={"mu": mu, "xi": xi},
    )


def raw_meta(path: Path) -> dict[str, str]:
    return read_header(path, BundleError, "")[1]


def rewrite(path: Path, meta: dict[str, str] | None = None, **tensors: torch.Tensor) -> Path:
    """Re-save ``path`` with some metadata values and tensors replaced (None deletes a key)."""
    old = load_bundle(path)
    new_meta = {**raw_meta(path), **(meta or {})}
    new_meta = {k: v for k, v in new_meta.items() if v is not None}
    save_file({"latent": old.latent, "decoder": old.decoder, **tensors}, str(path), metadata=new_meta)
    return path


def rejection(path: Path, *expected: str, **kwargs: Any) -> str:
    with pytest.raises(BundleError) as info:
        load_bundle(path, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and msg == info.value.one_line()
    assert info.value.fix, msg  # every rejection says what to do
    for text in expected:
        assert text in msg, msg
    return msg


# ------------------------------------------------------------------ round trip


def test_round_trip(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(3)
    latent, decoder = torch.randn(3, 4, 5, generator=gen), torch.randn(5, 7, generator=gen)
    path = save_bundle(
        tmp_path / "b.safetensors",
        latent,
        decoder,
        0.5,
        "lm",
        vocab=VOCAB,
        vocab_sha256=SHA,
        specials={"<pad>": 0, "<unk>": 1, "<eos>": 2},
        masked_tokens=[0],
        dataset={"name": "toy"},
        teacher={"model": "transformer"},
        distill={"mu": 3},
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.safetensors"]  # no temporary file left
    data = farzi.load_bundle(path, device="cpu")
    assert isinstance(data, farzi.FarziData)
    assert torch.equal(data.latent, latent) and torch.equal(data.decoder, decoder)
    assert (data.mu, data.xi, data.latent_dim, data.vocab_size, data.tau, data.task) == (3, 4, 5, 7, 0.5, "lm")
    assert data.vocab == VOCAB
    assert data.meta["masked_tokens"] == [0] and data.meta["specials"]["<eos>"] == 2
    assert data.meta["package"] == {"name": "farzi", "version": farzi.__version__}
    assert data.path == path

    p = data.materialize(torch.tensor([2, 0]))
    assert p.shape == (2, 4, 7)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 4))
    assert (p[..., 0] == 0).all()  # the masked token has probability exactly 0
    assert (p[..., 1:] > 0).all()
    expected = torch.softmax((latent[[2, 0]] @ decoder / 0.5).masked_fill(torch.arange(7) == 0, -math.inf), -1)
    torch.testing.assert_close(p, expected)
    assert data.materialize().shape == (3, 4, 7)
    assert data.materialize(torch.tensor([1]), dtype=torch.float64).dtype == torch.float64


def test_created_honours_source_date_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    a = write(tmp_path / "a.safetensors")
    b = write(tmp_path / "b.safetensors")
    assert raw_meta(a)["created"] == "2023-11-14T22:13:20Z"
    assert a.read_bytes() == b.read_bytes()  # same inputs, same epoch: identical files
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    assert created_now() == "1970-01-01T00:00:00Z"


@pytest.mark.parametrize("bad", ["", "soon", "-5", "1.5", "\u00b2", "99999999999999999999999"])
def test_a_malformed_source_date_epoch_is_ignored(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", bad)
    assert re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z", created_now())
    assert not created_now().startswith("1970")


# ------------------------------------------------------------------ rejections


def test_wrong_format_name(tmp_path: Path) -> None:
    path = rewrite(write(tmp_path / "b.safetensors"), {"format": "farzi-distill-state"})
    rejection(path, "is not a Farzi Data bundle", "'farzi-distill-state'")
    plain = tmp_path / "plain.safetensors"
    save_file({"latent": torch.zeros(1, 2, 1), "decoder": torch.zeros(1, 3)}, str(plain))
    rejection(plain, "is not a Farzi Data bundle", "None")


def test_newer_version_asks_for_an_upgrade(tmp_path: Path) -> None:
    path = rewrite(write(tmp_path / "b.safetensors"), {"version": "2"})
    rejection(path, "farzi-data v2", "upgrade farzi")


@pytest.mark.parametrize("version", ["", "0", "one", "1.0", "-1", "1" * 13])
def test_invalid_version(tmp_path: Path, version: str) -> None:
    rejection(rewrite(write(tmp_path / "b.safetensors"), {"version": version}), "format version")


@pytest.mark.parametrize("key", [k for k in REQUIRED_KEYS if k not in ("format", "version")])
def test_missing_metadata_key(tmp_path: Path, key: str) -> None:
    rejection(rewrite(write(tmp_path / "b.safetensors"), {key: None}), f"metadata lacks {key}")


@pytest.mark.parametrize("tau", ["0", "-1", "nan", "abc", "inf", "1e-320", ""])
def test_bad_tau(tmp_path: Path, tau: str) -> None:
    rejection(rewrite(write(tmp_path / "b.safetensors"), {"tau": tau}), "tau")


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        ({"task": "vision"}, "unknown task 'vision'"),
        ({"vocab_size": "seven"}, "vocab_size"),
        ({"vocab_size": "8"}, "not vocab_size 8"),
        ({"specials": "not json"}, "'specials' is not valid JSON"),
        ({"specials": "[0]"}, "'specials' is not a JSON dict"),
        ({"specials": '{"<pad>": 7}'}, "special token ids"),
        ({"masked_tokens": "[7]"}, "masked_tokens"),
        ({"masked_tokens": "[true]"}, "masked_tokens"),
        ({"masked_tokens": json.dumps(list(range(7)))}, "masks the whole vocabulary"),
        ({"vocab": '["a", "b"]'}, "vocabulary lists 2 tokens"),
        ({"dataset": "[]"}, "'dataset' is not a JSON dict"),
    ],
)
def test_bad_metadata_values(tmp_path: Path, meta: dict[str, str], expected: str) -> None:
    rejection(rewrite(write(tmp_path / "b.safetensors"), meta), expected)


def test_latent_and_decoder_dims_must_agree(tmp_path: Path) -> None:
    path = rewrite(write(tmp_path / "b.safetensors", d=5), latent=torch.zeros(3, 4, 6))
    rejection(path, "latent dim 6 does not match the decoder's 5")


def test_decoder_columns_must_equal_vocab_size(tmp_path: Path) -> None:
    path = rewrite(write(tmp_path / "b.safetensors"), decoder=torch.zeros(5, 9))
    rejection(path, "decoder has 9 columns but vocab_size is 7")


def test_extra_tensor(tmp_path: Path) -> None:
    path = rewrite(write(tmp_path / "b.safetensors"), extra=torch.zeros(2))
    rejection(path, "expected tensors 'latent' and 'decoder'", "'extra'")


def test_missing_tensor(tmp_path: Path) -> None:
    path = write(tmp_path / "b.safetensors")
    save_file({"latent": torch.zeros(3, 4, 5)}, str(path), metadata=raw_meta(path))
    rejection(path, "expected tensors 'latent' and 'decoder'")


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.bool])
def test_integer_dtype(tmp_path: Path, dtype: torch.dtype) -> None:
    path = rewrite(write(tmp_path / "b.safetensors"), latent=torch.ones(3, 4, 5, dtype=dtype))
    rejection(path, "tensor 'latent' has dtype", "expected a float type")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes_are_read_as_float32(tmp_path: Path, dtype: torch.dtype) -> None:
    path = write(tmp_path / "b.safetensors")
    data = load_bundle(path)
    rewrite(path, latent=data.latent.to(dtype), decoder=data.decoder.to(dtype))
    again = load_bundle(path)
    assert again.latent.dtype == again.decoder.dtype == torch.float32
    torch.testing.assert_close(again.latent, data.latent.to(dtype).float())


@pytest.mark.parametrize("shape", [(3, 4), (3, 4, 5, 1), (0, 4, 5)])
def test_latent_rank_and_empty_dims(tmp_path: Path, shape: tuple[int, ...]) -> None:
    rejection(rewrite(write(tmp_path / "b.safetensors"), latent=torch.zeros(shape)), "tensor 'latent' has shape")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_values(tmp_path: Path, value: float) -> None:
    latent = torch.zeros(3, 4, 5)
    latent[1, 2, 3] = value
    rejection(rewrite(write(tmp_path / "b.safetensors"), latent=latent), "'latent' holds NaN or infinite values")
    decoder = torch.zeros(5, 7)
    decoder[4, 6] = value
    rejection(rewrite(write(tmp_path / "b.safetensors"), decoder=decoder), "'decoder' holds NaN or infinite")


def test_values_whose_logits_would_overflow(tmp_path: Path) -> None:
    latent = torch.zeros(3, 4, 5)
    latent[0, 0, :] = 3e38  # finite, but latent @ decoder is not
    rejection(rewrite(write(tmp_path / "b.safetensors"), latent=latent), "overflow")
    path = rewrite(write(tmp_path / "c.safetensors"), {"tau": "2e-38"})  # a tiny float32: logits near 1e39
    rejection(path, "overflow")


@pytest.mark.parametrize(("tau", "by"), [("1e+300", "infinity"), ("3.5e38", "infinity"), ("1e-300", "zero")])
def test_tau_outside_float32(tmp_path: Path, tau: str, by: str) -> None:
    """materialize divides float32 logits by tau: 1e300 is infinity there (every distribution uniform),
    1e-300 is zero (0 / 0 = NaN for a zero latent, which the overflow check alone let through)."""
    path = rewrite(write(tmp_path / "b.safetensors"), {"tau": tau}, latent=torch.zeros(3, 4, 5))
    msg = rejection(path, f"tau {float(tau):g} is outside float32's range", f"would divide by {by}", "--tau 1.0")
    assert "overflow" not in msg and "diverged" not in msg
    for i, edge in enumerate(("1.1754943508222875e-38", "3.4028234663852886e+38")):  # float32's extremes: accepted
        data = load_bundle(rewrite(write(tmp_path / f"e{i}.safetensors"), {"tau": edge}, latent=torch.zeros(3, 4, 5)))
        assert torch.isfinite(data.materialize()).all()


def test_truncated_file(tmp_path: Path) -> None:
    good = write(tmp_path / "good.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", good[:8])
    cuts = [0, 3, 8, 9, 8 + n // 2, 8 + n - 1, 8 + n, 8 + n + 1, len(good) - 4, len(good) - 1]
    for cut in cuts:
        path = tmp_path / f"cut{cut}.safetensors"
        path.write_bytes(good[:cut])
        rejection(path, str(path), "truncated")


def test_trailing_bytes(tmp_path: Path) -> None:
    path = write(tmp_path / "b.safetensors")
    path.write_bytes(path.read_bytes() + b"\0" * 4)
    rejection(path, "4 stray bytes")


def test_header_length_larger_than_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "b.safetensors")
    data = path.read_bytes()
    for n in (len(data), len(data) - 7, 2**63, 2**64 - 1):
        path.write_bytes(struct.pack("<Q", n) + data[8:])
        rejection(path, f"header length {n} does not fit the file's {len(data)} bytes")


@pytest.mark.parametrize(
    ("offsets", "expected"),
    [
        ((-240, 0), "tensor 'latent' starts at byte -240, before the data section (a negative offset)"),
        ((-1, 59), "tensor 'latent' starts at byte -1, before the data section"),
        ((200, 140), "tensor 'latent' ends at byte 140, before it starts (byte 200)"),
        ((140, 204), "tensor 'latent' claims 64 bytes but its shape [3, 4, 5] of F32 needs 240"),
    ],
)
def test_each_bad_offset_has_its_own_message(tmp_path: Path, offsets: tuple[int, int], expected: str) -> None:
    path = write(tmp_path / "b.safetensors")
    header, data = _split(path.read_bytes())
    header["latent"]["data_offsets"] = list(offsets)
    path.write_bytes(_join(header, data))
    msg = rejection(path, expected)
    assert "claims 240 bytes" not in msg  # the old message: "claims 240 bytes but its shape needs 240"


def test_garbage_header(tmp_path: Path) -> None:
    path = tmp_path / "b.safetensors"
    for header in (b"\xff\xfe{", b"not json", b"[1, 2]", b'{"__metadata__": {"format": 1}}', b"[" * 50_000):
        path.write_bytes(struct.pack("<Q", len(header)) + header)
        rejection(path)


def test_a_directory_instead_of_a_file(tmp_path: Path) -> None:
    (tmp_path / "dir.safetensors").mkdir()
    rejection(tmp_path / "dir.safetensors", "is not a file")


def test_nonexistent_path(tmp_path: Path) -> None:
    rejection(tmp_path / "nowhere.safetensors", "does not exist", "check the path")


def test_file_over_the_size_limit(tmp_path: Path) -> None:
    path = write(tmp_path / "b.safetensors")
    rejection(path, "over the limit of 100", max_bytes=100)


def sized(path: Path, latent: list[int], decoder: list[int], dtype: str = "F32") -> Path:
    """A well-formed bundle of the given shapes (all zeros), written byte by byte: nothing is allocated
    but the file's bytes, whatever mu x xi x V the shapes describe."""
    meta = raw_meta(write(path))
    meta = {k: v for k, v in meta.items() if k != "vocab"}  # optional; it would list V tokens
    meta["vocab_size"] = str(decoder[1])
    size = {"F32": 4, "F16": 2}[dtype]
    n_dec, n_lat = math.prod(decoder) * size, math.prod(latent) * size
    header = {
        "__metadata__": meta,
        "decoder": {"dtype": dtype, "shape": decoder, "data_offsets": [0, n_dec]},
        "latent": {"dtype": dtype, "shape": latent, "data_offsets": [n_dec, n_dec + n_lat]},
    }
    path.write_bytes(_join(header, bytes(n_dec + n_lat)))
    return path


def test_the_issue_bundle_is_refused_from_its_header(tmp_path: Path) -> None:
    """8 MB on disk, 4 TB of distributions: refused before a tensor is read, saying what is too large."""
    path = sized(tmp_path / "b.safetensors", [1, 10**6, 1], [1, 10**6])
    assert path.stat().st_size < 8_001_000
    expected = (
        f"{path}: one sequence's distributions are xi x |V| = 1000000 x 1000000 = 1000000000000 values, "
        "over the limit of 16777216 (MAX_SEQUENCE_ELEMENTS); distill a shorter budget (the XI of --budget MUxXI), "
        "fewer sequences (its MU), or over a smaller vocabulary (e.g. prepare --vocab-size)"
    )
    for read in (read_bundle_meta, load_bundle):
        with pytest.raises(BundleError) as info:
            read(path)
        assert str(info.value) == expected


@pytest.mark.parametrize(
    ("latent", "decoder", "over"),
    [
        ([1, 256, 1], [1, 2**16], None),  # xi x V = 2**24: at the limit
        ([1, 257, 1], [1, 2**16], "xi x |V| = 257 x 65536 = 16842752 values, over the limit of 16777216"),
        ([2**16, 1, 1], [1, 2**16], None),  # mu x xi x V = 2**32: at the limit
        ([2**16 + 1, 1, 1], [1, 2**16], "mu x xi x |V| = 65537 x 1 x 65536 = 4295032832 values, over the limit"),
        ([2**12, 2**8, 1], [1, 2**13], "mu x xi x |V| = 4096 x 256 x 8192 = 8589934592 values"),  # each under
    ],
)
def test_size_limits(tmp_path: Path, latent: list[int], decoder: list[int], over: str | None) -> None:
    path = sized(tmp_path / "b.safetensors", latent, decoder, dtype="F16")
    if over is None:
        meta, header = read_bundle_meta(path)
        assert header["latent"]["shape"] == latent and meta["vocab_size"] == decoder[1]
    else:
        with pytest.raises(BundleError, match=re.escape(over)):
            read_bundle_meta(path)


def test_the_limits_keep_every_real_use() -> None:
    assert (MAX_SEQUENCE_ELEMENTS, MAX_TOTAL_ELEMENTS) == (2**24, 2**32)  # as formats/farzi-data-v1.md states
    for mu, xi, vocab in [(500, 200, 17_770), (400, 50, 2_001), (50, 150, 1_683), (500, 200, 3_707)]:
        check_size(Path("real.safetensors"), mu, xi, vocab)  # Netflix, PTB, ML-100k, ML-1M at the paper's largest
    with pytest.raises(BundleError, match="xi x |V| = 1000 x 17770"):
        check_size(Path("b"), 1, 1000, 17_770)


def test_a_file_the_safetensors_library_refuses(tmp_path: Path) -> None:
    """A lone surrogate escape is JSON to Python (and to the header check) but not to safetensors."""
    path = write(tmp_path / "b.safetensors")
    header, data = _split(path.read_bytes())
    text = json.dumps(header).replace('"2', '"\\ud800', 1)  # the first digit of `created`
    path.write_bytes(struct.pack("<Q", len(text)) + text.encode() + data)
    assert read_header(path, BundleError, "")[1]["created"].startswith("\ud800")
    rejection(path, "cannot read tensors (SafetensorError)", "re-create it with farzictl distill")


@pytest.mark.parametrize("error", [MemoryError, KeyboardInterrupt, torch.OutOfMemoryError])
def test_running_out_of_memory_is_not_a_bad_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: type[BaseException]
) -> None:
    path = write(tmp_path / "b.safetensors")

    def load(*args: object, **kwargs: object) -> None:
        raise error("no memory left")  # what the allocator (or Ctrl-C) raises mid-read

    monkeypatch.setattr("farzi.distill.bundle.load_tensors", load)
    with pytest.raises(error):
        load_bundle(path)


def test_check_vocabulary(tmp_path: Path) -> None:
    data = load_bundle(write(tmp_path / "b.safetensors"))
    data.check_vocabulary(7, SHA, "toy")  # the same vocabulary: accepted
    with pytest.raises(BundleError, match="different vocabulary .*7 tokens, from dataset 'toy'.* 'other' .8 tokens"):
        data.check_vocabulary(8, SHA, "other")
    with pytest.raises(BundleError, match="different vocabulary") as info:
        data.check_vocabulary(7, "1" * 64, "other")
    assert "use a bundle distilled from 'other'" in str(info.value)


def test_cuda_without_cuda(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ConfigError) as info:  # the request is wrong, not the file: resolve_device's words
        load_bundle(write(tmp_path / "b.safetensors"), device="cuda")
    assert str(info.value) == "--device cuda was asked for but CUDA is not available on this machine; use --device cpu"


@pytest.mark.parametrize("device", ["gpu0", "tpu", "cuda:x", ""])
def test_unknown_device(tmp_path: Path, device: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_bundle(write(tmp_path / "b.safetensors"), device=device)
    assert str(info.value) == f"unknown device {device!r}; use --device cpu or --device cuda"


def test_a_bad_file_is_reported_before_a_bad_device(tmp_path: Path) -> None:
    rejection(tmp_path / "nowhere.safetensors", "does not exist", device="tpu")


def test_to_and_banned_follow_the_device(tmp_path: Path) -> None:
    data = load_bundle(write(tmp_path / "b.safetensors")).to("cpu")
    assert isinstance(data, FarziData) and data.banned.tolist() == [True] + [False] * 6


# ------------------------------------------------------------------ JSON Schema of the metadata


@pytest.fixture(scope="module")
def distilled(tiny_lm, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle written by the real engine (so the metadata is what distill writes)."""
    from farzi.distill.engine import DistillConfig, distill

    cfg = DistillConfig(
        mu=2,
        xi=6,
        latent_dim=4,
        inner_steps=1,
        outer_steps=1,
        real_batch=4,
        model_overrides={"d_model": 8, "n_layers": 1, "n_heads": 1, "max_len": 8},
    )
    return distill(tiny_lm, cfg, tmp_path_factory.mktemp("distilled") / "b.safetensors").path


def test_schema_names_every_required_key_and_its_patterns_match(distilled: Path) -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(schema["required"]) == set(REQUIRED_KEYS)
    meta = raw_meta(distilled)
    assert set(meta) <= set(schema["properties"])
    for key, value in meta.items():
        prop = schema["properties"][key]
        assert prop["type"] == "string"
        if "const" in prop:
            assert value == prop["const"], key
        if "enum" in prop:
            assert value in prop["enum"], key
        if "pattern" in prop:  # these patterns use only syntax Python's re shares with ECMA-262
            assert re.search(prop["pattern"], value), (key, value)
    tau = schema["properties"]["tau"]["pattern"]
    assert not any(re.search(tau, s) for s in ("0", "0.0", "-1.0", "nan", "inf", "0e5", "abc"))
    assert all(re.search(tau, s) for s in ("1.0", "0.5", "1e-05", "2.5e+20", "10"))


def test_metadata_validates_against_the_json_schema(distilled: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    meta = raw_meta(distilled)
    jsonschema.Draft202012Validator(schema).validate(meta)
    for key, prop in schema["properties"].items():  # contentSchema is an annotation: check it too
        if "contentSchema" in prop and key in meta:
            jsonschema.Draft202012Validator(prop["contentSchema"]).validate(json.loads(meta[key]))
    bad = {**meta, "tau": "0"}
    assert not jsonschema.Draft202012Validator(schema).is_valid(bad)


# ------------------------------------------------------------------ fuzzing


@cache
def _base() -> bytes:
    with tempfile.TemporaryDirectory() as tmp, mock.patch.dict(os.environ, {"SOURCE_DATE_EPOCH": "1700000000"}):
        return write(Path(tmp) / "base.safetensors", mu=2, xi=3, d=2, vocab=VOCAB[:5]).read_bytes()


def _split(blob: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def _join(header: dict[str, Any], data: bytes, length_delta: int = 0) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", max(0, len(text) + length_delta)) + text + data


ODD_VALUES = st.one_of(
    st.sampled_from(
        [
            "",
            "0",
            "1",
            "2",
            "-1",
            "nan",
            "inf",
            "1e-320",
            "1e309",
            "01",
            "null",
            "[]",
            "{}",
            "[-1]",
            "[5]",
            "[0, 1, 2, 3, 4]",
            '{"<pad>": 99}',
            '["a"]',
            '"x"',
            "[[[[[[[[]]]]]]]]",
            "lm",
            "rec",
            "farzi-data",
        ]
    ),
    st.text(max_size=12),
)
ODD_NUMBERS = st.one_of(
    st.integers(-3, 60), st.sampled_from([2**31, 2**62, 2**64, 10**30, 1.5, -0.0, "2", None, True, [], {}])
)


# the header is most of this small file: weigh the mutations that keep it well-formed JSON
KINDS = ["flip", "flip-data", "flip-data", "overwrite", "truncate", "insert", "meta", "meta", "number", "entry"]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    blob = _base()
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(KINDS))
        if kind in ("flip", "flip-data"):
            out = bytearray(blob)
            start = 8 + struct.unpack("<Q", blob[:8])[0] if kind == "flip-data" and len(blob) >= 8 else 0
            for _ in range(draw(st.integers(1, 8))):
                if start < len(out):  # flips in the data section make NaN, infinite or huge floats
                    out[draw(st.integers(start, len(out) - 1))] ^= 1 << draw(st.integers(0, 7))
            blob = bytes(out)
        elif kind == "overwrite":
            at = draw(st.integers(0, len(blob)))
            chunk = draw(st.binary(min_size=1, max_size=16))
            blob = blob[:at] + chunk + blob[at + len(chunk) :]
        elif kind == "truncate":
            blob = blob[: draw(st.integers(0, max(0, len(blob) - 1)))]
        elif kind == "insert":
            at = draw(st.integers(0, len(blob)))
            blob = blob[:at] + draw(st.binary(min_size=1, max_size=16)) + blob[at:]
        else:  # mutations of a well-formed JSON header
            try:
                header, data = _split(blob)
            except (ValueError, struct.error):
                continue
            if not isinstance(header, dict):
                continue
            meta = header.get("__metadata__")
            tensors = sorted(k for k, v in header.items() if k != "__metadata__" and isinstance(v, dict))
            if kind == "meta" and isinstance(meta, dict) and meta:
                key = draw(st.sampled_from(sorted(meta)))
                action = draw(st.sampled_from(["replace", "delete", "non-string"]))
                if action == "replace":
                    meta[key] = draw(ODD_VALUES)
                elif action == "delete":
                    del meta[key]
                else:
                    meta[key] = draw(st.sampled_from([1, None, [], 1.5]))
            elif kind == "number" and tensors:
                entry = header[draw(st.sampled_from(tensors))]
                field = draw(st.sampled_from(["shape", "data_offsets"]))
                if isinstance(entry.get(field), list) and entry[field]:
                    entry[field][draw(st.integers(0, len(entry[field]) - 1))] = draw(ODD_NUMBERS)
            elif kind == "entry" and tensors:
                name = draw(st.sampled_from(tensors))
                action = draw(st.sampled_from(["dtype", "rename", "drop-field", "shape-swap"]))
                entry = header[name]
                if action == "dtype":
                    entry["dtype"] = draw(st.sampled_from(["F16", "BF16", "F64", "I32", "U8", "BOOL", "F8", 4]))
                elif action == "rename":
                    header[draw(st.sampled_from(["latent", "decoder", "extra", "__metadata__"]))] = header.pop(name)
                elif action == "drop-field":
                    entry.pop(draw(st.sampled_from(["dtype", "shape", "data_offsets"])), None)
                elif isinstance(entry.get("shape"), list):
                    entry["shape"] = entry["shape"][::-1]
            blob = _join(header, data, draw(st.sampled_from([0, 0, 0, -1, 1])))
    return blob


@pytest.fixture(scope="module")
def fuzz_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "m.safetensors"


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(blob=mutated())
def test_mutated_bundles_load_or_raise_bundle_error(fuzz_path: Path, blob: bytes) -> None:
    fuzz_path.write_bytes(blob)
    try:
        data = load_bundle(fuzz_path)
    except BundleError as exc:
        assert "\n" not in str(exc)
        return
    assert data.latent.dtype == data.decoder.dtype == torch.float32
    assert data.latent.ndim == 3 and data.decoder.ndim == 2
    assert data.latent.shape[2] == data.decoder.shape[0]
    assert data.decoder.shape[1] == data.meta["vocab_size"] == data.vocab_size
    assert min(data.latent.shape) >= 1 and min(data.decoder.shape) >= 1
    assert torch.isfinite(data.latent).all() and torch.isfinite(data.decoder).all()
    assert data.tau > 0 and math.isfinite(data.tau)
    p = data.materialize(torch.arange(min(data.mu, 2)))
    assert torch.isfinite(p).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[:2]))


# ------------------------------------------------------------------ what users of a bundle allocate


def _order_batches(data: FarziData, batch: int, limit: int, discrete: bool = False) -> tuple[Tensor, list[Tensor]]:
    train = DistributionTrainSet(data, discrete=discrete, max_batch_bytes=limit)
    order = torch.randperm(data.mu, generator=torch.Generator().manual_seed(4))
    return order, list(train.batches(batch, torch.Generator().manual_seed(4), torch.device("cpu")))


def test_student_batches_respect_the_byte_limit(tmp_path: Path) -> None:
    data = load_bundle(write(tmp_path / "b.safetensors", mu=10, xi=4))  # one sequence: 4 x 7 x 4 = 112 bytes
    assert DistributionTrainSet(data).sequence_bytes == 112
    order, batches = _order_batches(data, batch=8, limit=MAX_BATCH_BYTES)
    assert [len(b) for b in batches] == [8, 2]  # under the limit: the batches asked for
    order, small = _order_batches(data, batch=8, limit=300)  # 300 bytes hold 2 sequences
    assert [len(b) for b in small] == [2] * 5 and all(b.nelement() * b.element_size() <= 300 for b in small)
    torch.testing.assert_close(torch.cat(small), data.materialize(order), rtol=0, atol=0)  # same data, same order
    assert len(_order_batches(data, batch=8, limit=1)[1]) == 10  # below one sequence: one at a time


def test_discrete_batches_keep_their_size_and_their_draws(tmp_path: Path) -> None:
    data = load_bundle(write(tmp_path / "b.safetensors", mu=10, xi=4))
    order, batches = _order_batches(data, batch=8, limit=MAX_BATCH_BYTES, discrete=True)
    gen = torch.Generator().manual_seed(4)
    torch.randperm(10, generator=gen)
    first = torch.multinomial(data.materialize(order[:8]).reshape(32, 7).double(), 1, generator=gen).view(8, 4)
    assert torch.equal(batches[0], first)  # under the limit: exactly the draws of one batch at a time
    _, chunked = _order_batches(data, batch=8, limit=3 * 112 * 3, discrete=True)  # 3 sequences per chunk
    assert [b.shape for b in chunked] == [(8, 4), (2, 4)]
    ids = torch.cat(chunked)
    assert ids.dtype == torch.int64 and 0 < int(ids.min()) and int(ids.max()) < 7  # <pad> (masked) never drawn
