"""A strict reader for safetensors headers: check before trusting a file.

The safetensors layout is: 8 bytes little-endian u64 N, then N bytes of UTF-8
JSON (the header), then the data buffer. The header maps tensor names to
``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the
buffer) and may hold ``"__metadata__"``: a str -> str map.

:func:`read_header` validates every size and offset against the file before any
tensor is read: a header that claims more bytes than the file has, overlapping
or gapped tensors, unknown dtypes or bad shapes are rejected with ``error_cls``.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the reference implementation's limit


def read_header(
    path: Path,
    error_cls: type[Exception],
    fix: str,
    max_file_bytes: int | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Validate ``path`` as safetensors; return (tensor entries, metadata)."""
    path = Path(path)

    def bad(problem: str) -> Exception:
        return error_cls(f"{path}: {problem}", fix)

    if not path.exists():
        raise error_cls(f"{path} does not exist", "check the path")
    if not path.is_file():
        raise error_cls(f"{path} is not a file", "pass a .safetensors file")
    size = path.stat().st_size
    if max_file_bytes is not None and size > max_file_bytes:
        raise bad(f"file is {size} bytes, over the limit of {max_file_bytes}")
    if size < 8:
        raise bad(f"file is {size} bytes, too short to be safetensors (truncated?)")
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise bad(f"header length {n} does not fit the file's {size} bytes (truncated or not safetensors)")
            raw = f.read(n)
    except OSError as exc:
        raise bad(f"cannot be read ({exc.strerror or exc.__class__.__name__})") from None
    if len(raw) != n:
        raise bad("file shrank while it was read (truncated)")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise bad("header is not valid UTF-8 JSON (corrupt file)") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise bad("__metadata__ is not a map of strings")
    buffer = size - 8 - n
    spans = []
    for name, entry in header.items():
        if not isinstance(entry, dict):
            raise bad(f"tensor {name!r} has no description")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in DTYPE_SIZES:
            raise bad(f"tensor {name!r} has unsupported dtype {dtype!r}")
        if not isinstance(shape, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
        ):
            raise bad(f"tensor {name!r} has an invalid shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        ):
            raise bad(f"tensor {name!r} has invalid data_offsets {offsets!r}")
        begin, end = offsets
        want = math.prod(shape) * DTYPE_SIZES[dtype]
        if begin < 0:
            raise bad(f"tensor {name!r} starts at byte {begin}, before the data section (a negative offset)")
        if end < begin:
            raise bad(f"tensor {name!r} ends at byte {end}, before it starts (byte {begin})")
        if end - begin != want:
            raise bad(f"tensor {name!r} claims {end - begin} bytes but its shape {shape} of {dtype} needs {want}")
        if end > buffer:
            raise bad(f"tensor {name!r} ends at byte {end}, past the data's {buffer} bytes (truncated)")
        spans.append((begin, end, name))
    spans.sort()
    pos = 0
    for begin, end, name in spans:
        if begin != pos:
            raise bad(f"tensor {name!r} starts at {begin}, expected {pos} (overlap or gap)")
        pos = end
    if pos != buffer:
        raise bad(f"data section has {buffer - pos} stray bytes after the last tensor")
    return header, meta


def load_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load every tensor (call :func:`read_header` first)."""
    return load_file(str(path), device=str(device))


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write safetensors whose bytes depend on the inputs alone.

    The reference writer emits ``__metadata__`` in hash-map order, which differs
    from call to call; the header is re-serialized with sorted keys (compact
    JSON, space-padded to a multiple of 8 bytes), the data section is kept.
    """
    blob = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        f.write(memoryview(blob)[8 + n :])
