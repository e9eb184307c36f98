"""The farzi-data v1 bundle: round trip, reproducible metadata, and a reader that
rejects every bad file with one BundleError line (formats/farzi-data-v1.md)."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import re
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch
from cli_runner import farzictl as cli_farzictl
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
    position_spans,
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
    path = rewrite(write(tmp_path / "b.safetensors"), {"version": "3"})
    rejection(path, "farzi-data v3", "upgrade farzi")


def _support(path: Path, dtype: torch.dtype = torch.int32, low: int = 1) -> torch.Tensor:
    data = load_bundle(path)
    return torch.randint(low, data.vocab_size, (data.mu, data.xi, 2), dtype=torch.int64).to(dtype)


def test_a_v2_bundle_with_support_is_sparse(tmp_path: Path) -> None:
    path = write(tmp_path / "b.safetensors")
    support = _support(path)
    data = load_bundle(rewrite(path, {"version": "2"}, support=support))
    assert data.sparse and torch.equal(data.support, support.long())
    assert torch.allclose(data.materialize().sum(-1), torch.ones(data.mu, data.xi))


@pytest.mark.parametrize(
    ("version", "dtype", "low", "expected"),
    [
        ("1", torch.int32, 1, "expected tensors 'latent' and 'decoder'"),  # support needs v2
        ("2", torch.float32, 1, "tensor 'support' has dtype F32, expected I32 or I64"),
        ("2", torch.int64, 0, "ids outside the vocabulary or masked tokens"),  # <pad> is masked
    ],
)
def test_a_bad_support_is_refused(tmp_path: Path, version: str, dtype: torch.dtype, low: int, expected: str) -> None:
    path = write(tmp_path / "b.safetensors")
    support = _support(path, dtype, low)
    if low == 0:
        support[0, 0, 0] = 0
    rejection(rewrite(path, {"version": version}, support=support), expected)


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


@pytest.mark.parametrize(("n", "rows"), [(1, 1), (1, 5), (10, 3), (24, 24), (25, 24), (1000, 7), (7, 0)])
def test_position_spans_cut_in_order_into_near_equal_spans(n: int, rows: int) -> None:
    spans = position_spans(n, rows)
    assert spans[0][0] == 0 and spans[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    lengths = [end - start for start, end in spans]
    assert len(spans) == -(-n // max(1, rows)) and max(lengths) <= max(1, rows)
    assert max(lengths) - min(lengths) <= 1  # no sliver at the end
    assert position_spans(25, 24) == [(0, 12), (12, 25)]


@pytest.mark.parametrize("chunk", [1, 7, 7 * 5, 7 * 5 + 6, 7 * 12, 10**9])
def test_positions_are_the_distributions_chunk_by_chunk(tmp_path: Path, chunk: int) -> None:
    data = load_bundle(write(tmp_path / "b.safetensors", mu=4, xi=6))  # 24 positions, V 7
    full = data.materialize().reshape(24, 7)  # [mu * xi, V]
    got = list(data.positions(chunk))
    starts = [start for start, _ in got]
    assert starts == [0] + list(itertools.accumulate(len(p) for _, p in got))[:-1]
    assert all(p.nelement() <= max(chunk, 7) and p.shape[1] == 7 and p.dtype == torch.float32 for _, p in got)
    assert max(len(p) for _, p in got) - min(len(p) for _, p in got) <= 1
    # the product of a few rows takes other BLAS kernels: equal up to float32 rounding
    torch.testing.assert_close(torch.cat([p for _, p in got]), full, rtol=1e-6, atol=1e-7)
    assert all(bool((p[:, 0] == 0).all()) for _, p in got)  # the masked token: exactly 0
    if chunk >= 24 * 7:  # one chunk: materialize's own product, bit for bit
        assert torch.equal(got[0][1], full)


# ------------------------------------------------------------------ fuzzing: the reader, inspect and a student
#
# Mutated bundles go through load_bundle, `farzictl inspect` and `farzictl train-student --max-steps 1`
# (in-process) under a real memory limit: the soft RLIMIT_DATA of this process is set to its data size
# plus FUZZ_HEADROOM_BYTES, so any allocation past it fails (torch: RuntimeError "can't allocate memory",
# Python: MemoryError) and shows as a traceback or an error line about memory, both of which fail.
# The default suite runs FUZZ_EXAMPLES of them; test_fuzz_1000_bundles_in_a_child_process (slow) runs
# 1000 in a fresh process and reports the counts, the limit and the peak.

FUZZ_EXAMPLES = 150
FUZZ_HEADROOM_BYTES = 512 * 1024**2  # what one bundle's load + inspect + student step may allocate
FUZZ_STUDENT = ["--d-model", "8", "--n-layers", "1", "--n-heads", "1", "--max-len", "8", "--batch-size", "4"]


def _split(blob: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def _join(header: dict[str, Any], data: bytes, length_delta: int = 0) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", max(0, len(text) + length_delta)) + text + data


def fuzz_base(ds: Any) -> bytes:
    """A valid rec bundle (mu 2, xi 3, d 2) over ``ds``'s vocabulary: a student can train on it."""
    with tempfile.TemporaryDirectory() as tmp, mock.patch.dict(os.environ, {"SOURCE_DATE_EPOCH": "1700000000"}):
        gen = torch.Generator().manual_seed(0)
        path = save_bundle(
            Path(tmp) / "base.safetensors",
            torch.randn(2, 3, 2, generator=gen),
            torch.randn(2, ds.vocab_size, generator=gen),
            0.5,
            ds.task,
            vocab=list(ds.vocab.tokens),
            vocab_sha256=ds.vocab.sha256(),
            specials=dict(ds.vocab.specials),
            masked_tokens=[ds.vocab.pad_id],
            dataset={"name": ds.name, "fingerprint": ds.fingerprint(), "train_sequences": 80, "train_tokens": 640},
            teacher={"model": "sasrec", "config": {}, "trajectories": None, "checkpoints": 0},
            distill={"mu": 2, "xi": 3},
        )
        return path.read_bytes()


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
            "1e300",
            "1e-300",
            "3.5e38",
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
            "\ud800",
        ]
    ),
    st.text(max_size=12),
)
ODD_NUMBERS = st.one_of(
    st.integers(-3, 60), st.sampled_from([2**31, 2**62, 2**64, 10**30, 1.5, -0.0, "2", None, True, [], {}])
)
# consistent shapes (latent, decoder) that pass the per-tensor checks: over and at the size limits
# (mu x xi x V), and small ones over the dataset's vocabulary, some short enough to train on
BIG_SHAPES = [
    ((1, 10**6, 1), (1, 10**6)),  # the issue's: 8 MB on disk (F32), 4 TB of distributions
    ((1, 257, 1), (1, 2**16)),  # just over xi x V
    ((1, 256, 1), (1, 2**16)),  # at xi x V's limit: accepted, inspect materializes all 64 MiB of it
    ((2**12, 2**8, 1), (1, 2**13)),  # every sequence under, all of them over mu x xi x V
    ((2**16 + 1, 1, 1), (1, 2**16)),  # just over mu x xi x V
]


def _shapes(vocab_size: int) -> st.SearchStrategy[tuple[tuple[int, ...], tuple[int, ...]]]:
    small = st.builds(
        lambda mu, xi, d, v: ((mu, xi, d), (d, v)),
        st.integers(1, 40),
        st.integers(1, 12),
        st.integers(1, 6),
        st.one_of(st.just(vocab_size), st.integers(1, 3000)),
    )
    return st.one_of(st.sampled_from(BIG_SHAPES), small, small)


# the header is most of this small file: weigh the mutations that keep it well-formed JSON
KINDS = ["flip", "flip-data", "flip-data", "overwrite", "truncate", "insert", "meta", "meta", "number", "entry"]
KINDS += ["shape", "shape", "shape"]  # consistent files of other sizes: what reaches inspect and the student


Step = tuple[Any, ...]  # one mutation: its kind and every value drawn for it


def _draw_step(draw: st.DrawFn, blob: bytes, vocab_size: int) -> Step:
    """Draw one mutation of ``blob``: its kind, and where and what it changes."""
    kind = draw(st.sampled_from(KINDS))
    if kind in ("flip", "flip-data"):
        start = 8 + struct.unpack("<Q", blob[:8])[0] if kind == "flip-data" and len(blob) >= 8 else 0
        flips = []
        for _ in range(draw(st.integers(1, 8))):
            if start < len(blob):  # flips in the data section make NaN, infinite or huge floats
                flips.append((draw(st.integers(start, len(blob) - 1)), draw(st.integers(0, 7))))
        return ("flip", tuple(flips))
    if kind in ("overwrite", "insert"):
        return (kind, draw(st.integers(0, len(blob))), draw(st.binary(min_size=1, max_size=16)))
    if kind == "truncate":
        return ("truncate", draw(st.integers(0, max(0, len(blob) - 1))))
    try:  # mutations of a well-formed JSON header
        header, _ = _split(blob)
    except (ValueError, RecursionError, struct.error):
        return ("none",)
    if not isinstance(header, dict):
        return ("none",)
    meta = header.get("__metadata__")
    tensors = sorted(k for k, v in header.items() if k != "__metadata__" and isinstance(v, dict))
    change: Step = ()
    if kind == "meta" and isinstance(meta, dict) and meta:
        key = draw(st.sampled_from(sorted(meta)))
        action = draw(st.sampled_from(["replace", "delete", "non-string"]))
        value = draw(ODD_VALUES) if action == "replace" else draw(st.sampled_from([1, None, [], 1.5]))
        change = ("meta", key, action, value)
    elif kind == "number" and tensors:
        name = draw(st.sampled_from(tensors))
        field = draw(st.sampled_from(["shape", "data_offsets"]))
        if isinstance(header[name].get(field), list) and header[name][field]:
            change = ("number", name, field, draw(st.integers(0, len(header[name][field]) - 1)), draw(ODD_NUMBERS))
    elif kind == "entry" and tensors:
        name = draw(st.sampled_from(tensors))
        action = draw(st.sampled_from(["dtype", "rename", "drop-field", "shape-swap"]))
        if action == "dtype":
            value = draw(st.sampled_from(["F16", "BF16", "F64", "I32", "U8", "BOOL", "F8", 4]))
        elif action == "rename":
            value = draw(st.sampled_from(["latent", "decoder", "extra", "__metadata__"]))
        elif action == "drop-field":
            value = draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
        else:
            value = None
        change = ("entry", name, action, value)
    elif kind == "shape":  # a consistent file of other shapes: sizes the per-tensor checks let through
        latent, decoder = draw(_shapes(vocab_size))
        dtype = draw(st.sampled_from(["F32", "F16"]))
        scale = draw(st.sampled_from([0.0, 1.0, 1.0, 30.0, 1e20]))
        change = ("shape", latent, decoder, dtype, scale, draw(st.integers(0, 2**32 - 1)), vocab_size)
    return ("header", change, draw(st.sampled_from([0, 0, 0, -1, 1])))


def _apply(blob: bytes, step: Step) -> bytes:
    """``blob`` with the mutation ``step`` made: a function of its arguments alone."""
    kind = step[0]
    if kind == "flip":
        out = bytearray(blob)
        for at, bit in step[1]:
            out[at] ^= 1 << bit
        return bytes(out)
    if kind == "overwrite":
        _, at, chunk = step
        return blob[:at] + chunk + blob[at + len(chunk) :]
    if kind == "insert":
        _, at, chunk = step
        return blob[:at] + chunk + blob[at:]
    if kind == "truncate":
        return blob[: step[1]]
    if kind == "none":
        return blob
    _, change, length_delta = step
    header, data = _split(blob)
    meta = header.get("__metadata__")
    if change and change[0] == "meta":
        _, key, action, value = change
        if action == "delete":
            del meta[key]
        else:
            meta[key] = value
    elif change and change[0] == "number":
        _, name, field, i, value = change
        header[name][field][i] = value
    elif change and change[0] == "entry":
        _, name, action, value = change
        entry = header[name]
        if action == "dtype":
            entry["dtype"] = value
        elif action == "rename":
            header[value] = header.pop(name)
        elif action == "drop-field":
            entry.pop(value, None)
        elif isinstance(entry.get("shape"), list):
            entry["shape"] = entry["shape"][::-1]
    elif change and change[0] == "shape":
        _, latent, decoder, dtype, scale, seed, vocab_size = change
        rng = np.random.default_rng(seed)
        np_dtype = np.float32 if dtype == "F32" else np.float16
        with np.errstate(over="ignore"):
            dec = (rng.standard_normal(math.prod(decoder)) * scale).astype(np_dtype).tobytes()
            lat = (rng.standard_normal(math.prod(latent)) * scale).astype(np_dtype).tobytes()
        header = {k: v for k, v in header.items() if k not in ("latent", "decoder")}
        header["decoder"] = {"dtype": dtype, "shape": list(decoder), "data_offsets": [0, len(dec)]}
        header["latent"] = {"dtype": dtype, "shape": list(latent), "data_offsets": [len(dec), len(dec) + len(lat)]}
        if isinstance(meta, dict):
            meta["vocab_size"] = str(decoder[1])
            if decoder[1] != vocab_size:
                meta.pop("vocab", None)  # optional: it would list vocab_size tokens
        data = dec + lat
    return _join(header, data, length_delta)


def build(base: bytes, steps: tuple[Step, ...]) -> bytes:
    blob = base
    for step in steps:
        blob = _apply(blob, step)
    return blob


@st.composite
def mutations(draw: st.DrawFn, base: bytes, vocab_size: int) -> tuple[Step, ...]:
    """1 to 3 mutations of ``base``, as a recipe: hypothesis keeps what a strategy returns (measured: every
    value, for the whole run), so it gets the few drawn values and :func:`build` makes the bytes."""
    blob, steps = base, []
    for _ in range(draw(st.integers(1, 3))):
        steps.append(_draw_step(draw, blob, vocab_size))
        blob = _apply(blob, steps[-1])
    return tuple(steps)


def _vm(key: str) -> int:
    """A /proc/self/status figure in bytes (VmData: private writable memory, what RLIMIT_DATA counts)."""
    match = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    assert match, key
    return int(match.group(1)) * 1024


@contextlib.contextmanager
def memory_limit(headroom: int) -> Iterator[dict[str, int]]:
    """Lower this process's soft RLIMIT_DATA to its data size now plus ``headroom`` (restored after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    base = _vm("VmData")
    limit = base + headroom if hard == resource.RLIM_INFINITY else min(base + headroom, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    try:
        yield {"vm_data_before": base, "rlimit_data": limit, "headroom": headroom}
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def _no_memory_failure(line: str) -> str:
    assert not re.search(r"allocate|out of memory|MemoryError|Cannot allocate", line, re.IGNORECASE), line
    return line


def drive(blob: bytes, ds: Any, work: Path, n: int) -> tuple[str, str, str, int]:
    """One mutated bundle through load_bundle, `inspect` and `train-student --max-steps 1`: the three
    outcomes, and mu x xi x V of a bundle the reader accepted (else 0)."""
    path = work / "m.safetensors"
    path.write_bytes(blob)
    try:
        data = load_bundle(path)
        error = None
    except BundleError as exc:
        data, error = None, exc
        assert "\n" not in str(exc) and exc.fix, str(exc)
        _no_memory_failure(str(exc))
    if data is not None:  # what the reader promises of what it accepts
        assert data.latent.dtype == data.decoder.dtype == torch.float32
        assert data.latent.ndim == 3 and data.decoder.ndim == 2
        assert data.latent.shape[2] == data.decoder.shape[0]
        assert data.decoder.shape[1] == data.meta["vocab_size"] == data.vocab_size
        assert min(data.latent.shape) >= 1 and min(data.decoder.shape) >= 1
        assert torch.isfinite(data.latent).all() and torch.isfinite(data.decoder).all()
        assert data.tau > 0 and math.isfinite(data.tau)
        assert data.xi * data.vocab_size <= MAX_SEQUENCE_ELEMENTS and data.mu * data.xi * data.vocab_size <= 2**32
        p = data.materialize(torch.arange(min(data.mu, 2)))  # [<=2, xi, V]
        assert torch.isfinite(p).all() and (p >= 0).all()
        # float32 softmax over V terms: its normalizer's rounding grows with V (8.6e-5 seen at V = 65,536)
        total = p.double().sum(-1)  # [<=2, xi]
        torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=1e-5 + 1e-8 * data.vocab_size)
        values = data.mu * data.xi * data.vocab_size
        del p, data

    home = work / "home"
    shown = cli_farzictl("inspect", path, "--json", home=home)
    if error is None:
        report = json.loads(shown.ok().stdout)
        assert report["valid"] is True and len(report["entropy"]["per_sequence"]) == report["shapes"]["latent"][0]
        inspected = "report"
    else:
        assert _no_memory_failure(shown.one_error_line()) == f"error: invalid: {error}"
        inspected = "invalid"

    out = work / f"student{n}"
    student = ["train-student", ds.path, "--data", path, "--max-steps", "1", *FUZZ_STUDENT, "--out", out, "--json"]
    run = cli_farzictl(*student, home=home)
    if run.code == 0:
        assert error is None and json.loads(run.ok().stdout)["result"]["steps"] == 1
        trained = "trained"
    else:
        line = _no_memory_failure(run.one_error_line())
        if error is None:  # a valid bundle the student cannot use here: another vocabulary, or too long
            reasons = ("different vocabulary", "longer than the model's max_len", "too short to train on")
            assert any(r in line for r in reasons), line
        else:
            assert line == f"error: {error}", (line, str(error))
        trained = "refused"
    shutil.rmtree(out, ignore_errors=True)
    if error is None:
        return "loaded", inspected, trained, values
    if "(MAX_SEQUENCE_ELEMENTS)" in str(error) or "(MAX_TOTAL_ELEMENTS)" in str(error):
        inspected += " (size limit)"
    return "rejected", inspected, trained, 0


def run_fuzz(ds: Any, work: Path, examples: int, headroom: int = FUZZ_HEADROOM_BYTES) -> dict[str, Any]:
    """``examples`` mutated bundles through :func:`drive` under :func:`memory_limit`; counts and figures."""
    base = fuzz_base(ds)
    drive(base, ds, work, 0)  # warm-up outside the limit: imports, thread pools, the dataset's files
    counts: Counter[str] = Counter()
    seen: set[bytes] = set()

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(steps=mutations(base, ds.vocab_size))
    def one(steps: tuple[Step, ...]) -> None:
        blob = build(base, steps)
        counts["bundles"] += 1
        seen.add(hashlib.sha256(blob).digest())
        loaded, inspected, trained, values = drive(blob, ds, work, counts["bundles"])
        counts.update([loaded, f"inspect {inspected}", f"student {trained}"])
        counts["largest accepted mu*xi*V"] = max(counts["largest accepted mu*xi*V"], values)
        counts["vm_data_max"] = max(counts["vm_data_max"], _vm("VmData"))  # sampled after each bundle

    start = time.perf_counter()
    with memory_limit(headroom) as limits:
        one()
        after = _vm("VmData")
    return {
        **dict(counts),
        "distinct": len(seen),
        **limits,
        "vm_data_after": after,
        "peak_rss": _vm("VmHWM"),
        "seconds": round(time.perf_counter() - start, 1),
    }


needs_linux = pytest.mark.skipif(
    not Path("/proc/self/status").is_file(), reason="the memory limit reads /proc and sets RLIMIT_DATA (Linux)"
)


@needs_linux
def test_the_memory_limit_is_enforced() -> None:
    """What the fuzz relies on: past the limit an allocation fails at once, and the limit is lifted after."""
    with memory_limit(64 * 1024**2) as limits:
        assert limits["rlimit_data"] == limits["vm_data_before"] + 64 * 1024**2
        with pytest.raises(RuntimeError, match="can't allocate memory"):
            torch.empty(256 * 1024**2, dtype=torch.uint8)
        with pytest.raises(MemoryError):
            bytearray(256 * 1024**2)
        torch.empty(8 * 1024**2, dtype=torch.uint8)  # within it: fine
    assert torch.empty(256 * 1024**2, dtype=torch.uint8).numel() == 256 * 1024**2


@needs_linux
def test_mutated_bundles_through_the_reader_inspect_and_a_student(tiny_rec, tmp_path: Path) -> None:
    """FUZZ_EXAMPLES mutated bundles: each is loaded or refused with one line, and then
    `inspect` and one student step agree with the reader: no traceback, nothing over the memory limit."""
    stats = run_fuzz(tiny_rec, tmp_path, FUZZ_EXAMPLES)
    assert stats["bundles"] >= FUZZ_EXAMPLES
    assert stats["loaded"] + stats["rejected"] == stats["bundles"]
    assert stats["loaded"] >= 10 and stats["rejected"] >= 10 and stats["student trained"] >= 5  # both sides seen
    assert stats["vm_data_max"] <= stats["rlimit_data"]


CHILD = """
import json, sys, tempfile
from pathlib import Path
sys.path[:0] = ["tests", "tests/distill"]
import torch
torch.set_num_threads(1)
from farzi.data.prepare import PrepareOptions, prepare
import test_bundle
work = Path(tempfile.mkdtemp())
ds = prepare("synthetic-rec", PrepareOptions(synthetic_vocab=40, synthetic_sequences=100, seed=1), home=work / "ds")
print(json.dumps(test_bundle.run_fuzz(ds, work, int(sys.argv[1]))))
"""


@needs_linux
@pytest.mark.slow
def test_fuzz_1000_bundles_in_a_child_process() -> None:
    """The full fuzz in a fresh process (its peak is the fuzz's own): >= 1000 bundles, 0 tracebacks,
    0 allocations over the limit. Run: python -m pytest tests/distill/test_bundle.py -m slow -s"""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, "1400"], cwd=REPO, env=env, capture_output=True, text=True, timeout=3600
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    stats = json.loads(proc.stdout.splitlines()[-1])
    print("\nfuzz:", json.dumps(stats, sort_keys=True))
    assert stats["distinct"] >= 1000 and stats["loaded"] + stats["rejected"] == stats["bundles"]
    assert stats["student trained"] >= 20 and stats["inspect report"] == stats["loaded"]
    assert stats["inspect invalid (size limit)"] >= 20  # the limits were met, not only the small files
    assert stats["vm_data_max"] <= stats["rlimit_data"]


def test_a_bundle_of_one_token_sequences_is_read_but_refused_for_training(tiny_rec, tmp_path: Path) -> None:
    # found by the slow fuzz: xi 1 is a valid bundle (the format allows xi >= 1), but a student step on it
    # was a traceback (no position has a next token); now one line naming the fix
    path = tmp_path / "one.safetensors"
    path.write_bytes(fuzz_base(tiny_rec))
    data = load_bundle(path)
    save_bundle(
        path,
        data.latent[:, :1].contiguous(),
        data.decoder,
        data.tau,
        tiny_rec.task,
        vocab=list(tiny_rec.vocab.tokens),
        vocab_sha256=tiny_rec.vocab.sha256(),
        specials=dict(tiny_rec.vocab.specials),
        masked_tokens=[tiny_rec.vocab.pad_id],
        dataset=data.meta["dataset"],
        teacher=data.meta["teacher"],
        distill={"mu": 2, "xi": 1},
    )
    assert load_bundle(path).xi == 1
    student = ["train-student", tiny_rec.path, "--data", path, "--max-steps", "1", *FUZZ_STUDENT]
    line = cli_farzictl(*student, "--out", tmp_path / "s", home=tmp_path / "home").one_error_line()
    assert line.startswith("error: bundle ") and "1 token, too short to train on" in line and "--budget" in line
    assert not (tmp_path / "s").exists()
