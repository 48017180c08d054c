"""Torch device names, checked before any work."""

from __future__ import annotations

import re

from ._errors import ConfigError
from ._text import printable

_FORM = re.compile(r"^(auto|cpu|mps|cuda(:\d{1,3})?)$")


def check_device(device: object, what: str = "--device") -> str:
    """``device`` if it names a device this machine has; a one-line :class:`ConfigError` otherwise.

    Accepted: ``auto`` (a CUDA GPU when present, else the CPU), ``cpu``, ``cuda``, ``cuda:N``, ``mps``.
    """
    if not isinstance(device, str) or not _FORM.match(device):
        raise ConfigError(f"{what} must be one of auto, cpu, cuda, cuda:N, mps, got {printable(repr(device), 80)}")
    if device in ("auto", "cpu"):
        return device
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"{what} is {device!r} but this machine has no CUDA GPU (or torch was built "
                              "without CUDA); use --device cpu or auto")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"{what} is {device!r} but this machine has {torch.cuda.device_count()} CUDA "
                              "GPU(s); choose cuda:0 or auto")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"{what} is 'mps' but this machine has no Apple GPU; use --device cpu or auto")
    return device
