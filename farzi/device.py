"""One place that turns a ``--device`` string into a usable ``torch.device``.

Every command that takes ``--device`` calls :func:`resolve_device`, so the same
bad value gets the same one-line error everywhere, before any work is done.
"""

from __future__ import annotations

import torch

from farzi.errors import ConfigError

DEVICE_CHOICES = ("cpu", "cuda", "cuda:N")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N`` as a device that exists on this machine.

    Raises :class:`ConfigError` naming the problem and the fix for an unknown
    device type, a malformed index, CUDA asked for where there is none, or a GPU
    index past the last one.
    """
    text = "cpu" if device is None else str(device)
    try:
        dev = torch.device(text)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"unknown device {text!r}", "use --device cpu or --device cuda") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {text!r}", "use --device cpu or --device cuda")
    if dev.type == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"--device {text} was asked for but CUDA is not available on this machine", "use --device cpu"
        )
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        raise ConfigError(f"device {text!r} does not exist (this machine has {count} GPU(s))", "use --device cuda")
    return dev
