"""Torch device names, checked before any work, and torch loaded only where it is used."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
from typing import Any, Callable

import numpy as np

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


# -- torch only where it is used -----------------------------------------------------------------
# The CPU paths of the fits (numba kernels) never touch torch, so torch (~180 MB and ~1 s per
# process) is imported by the functions that use it, not by the modules: a dask worker or a CLI
# command that only fits SHO spectra and loops on the CPU never loads it.
_GPU_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")


def resolve_device(name: str) -> str:
    """``"auto"`` as ``"cuda"`` where torch finds a CUDA (or ROCm) GPU, else ``"cpu"``; any other
    name unchanged. Without a GPU driver's device node, and torch not loaded, the answer is
    ``"cpu"`` without importing torch."""
    if name != "auto":
        return name
    if "torch" not in sys.modules and not any(os.path.exists(p) for p in _GPU_NODES):
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_threads() -> int:
    """Threads of the CPU kernels: torch's setting when torch is loaded (``torch.set_num_threads``
    is how a caller sets it), else ``OMP_NUM_THREADS``, else the CPUs this process may use."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return int(torch.get_num_threads())
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextlib.contextmanager
def numba_threads(n: int | None = None):
    """numba's kernels on ``n`` threads (default :func:`cpu_threads`; at most
    ``NUMBA_NUM_THREADS``) for the duration, restored after."""
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(max(1, min(cpu_threads() if n is None else n, numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        numba.set_num_threads(before)


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op threads set to ``n`` for the duration, restored after (small batched
    operations side by side on threads of their own, or on a loaded machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def is_tensor(x: Any) -> bool:
    """Whether ``x`` is a torch tensor (never imports torch: without it, nothing is a tensor)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def float_dtype(dtype: Any, what: str) -> str:
    """``"float32"`` or ``"float64"`` from a torch or numpy float type or its name; a one-line
    :class:`ConfigError` for anything else."""
    name = str(dtype).removeprefix("torch.")
    if name not in ("float32", "float64"):
        try:
            # (numpy reads None as float64: refused here, not guessed)
            name = np.dtype(dtype).name if dtype is not None and not isinstance(dtype, str) else name
        except TypeError:
            pass
    if name not in ("float32", "float64"):
        raise ConfigError(f"{what}: dtype must be float32 or float64 (torch.float32, numpy.float64 or "
                          f"'float64'), got {printable(repr(dtype), 60)}")
    return name


def inference_mode(fn: Callable) -> Callable:
    """``fn`` under ``torch.inference_mode()`` when torch is loaded (no autograd bookkeeping for
    the thousands of small tensor operations of a fit). Before torch is loaded no tensor exists,
    so whatever ``fn`` creates from numpy arrays records no graph either, and ``fn`` runs as it is."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        torch = sys.modules.get("torch")
        if torch is None:
            return fn(*args, **kwargs)
        with torch.inference_mode():
            return fn(*args, **kwargs)

    return wrapper


def fit_device(device: Any, in_device: Any = None) -> tuple[bool, Any]:
    """Where a fit runs: ``(on_cpu, device)`` from the ``device`` argument (a name or a
    ``torch.device``), else the input tensor's device, else the CPU. ``device`` is a
    ``torch.device``, or None for the CPU when naming it needs no torch."""
    if (device is None and in_device is None) or (isinstance(device, str) and device == "cpu"):
        return True, None
    import torch

    dev = torch.device(device) if device is not None else in_device
    return dev.type == "cpu", dev
