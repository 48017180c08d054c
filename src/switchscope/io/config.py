"""The ``[data]`` section of a run configuration and the parsers the CLI uses for it."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .._config import StageConfig, register
from .._dataset import CHANNELS
from .._errors import ConfigError, DataError
from ._load import load


def parse_grid(text: str | tuple[int, int] | list[int] | None) -> tuple[int, int] | None:
    """``"60x60"`` (or ``[60, 60]`` from TOML) -> ``(60, 60)``."""
    if text is None:
        return None
    if isinstance(text, str):
        m = re.fullmatch(r"\s*(\d+)\s*[xX*,]\s*(\d+)\s*", text)
        if not m:
            raise ConfigError(f"grid must look like ROWSxCOLS (e.g. 60x60), got {text!r}")
        rows, cols = int(m[1]), int(m[2])
    else:
        try:
            rows, cols = text
        except (TypeError, ValueError):
            raise ConfigError(f"grid must be two integers [rows, cols], got {text!r}") from None
        if not all(isinstance(g, int) and not isinstance(g, bool) for g in (rows, cols)):
            raise ConfigError(f"grid must be two integers [rows, cols], got {text!r}")
    if rows < 1 or cols < 1:
        raise ConfigError(f"grid rows and cols must be >= 1, got {rows}x{cols}")
    return rows, cols


def parse_voltage(text: str | None) -> np.ndarray | str | None:
    """The CLI's ``--voltage``: ``paper``, a ``.npy`` file, a text/CSV file of volts, or
    comma-separated volts."""
    if text is None or text == "paper":
        return text
    path = Path(text)
    if path.exists() and not path.is_file():
        raise DataError(f"the voltage file '{path}' is not a regular file; give a .npy array or a text file of volts")
    if path.is_file():
        if path.stat().st_size > 50_000_000:
            raise DataError(f"the voltage file '{path}' is {path.stat().st_size} bytes, far more than one voltage "
                            "per step; give the right file")
        try:
            if path.suffix.lower() == ".npy":
                v = np.asarray(np.load(path, allow_pickle=False))
            else:
                v = np.asarray(np.loadtxt(path, delimiter="," if "," in path.read_text(errors="replace") else None))
        except Exception as exc:  # noqa: BLE001 - numpy raises many types for files that are not arrays
            raise DataError(f"cannot read the voltage file '{path}' ({' '.join(str(exc).split())}); "
                            "give a .npy array or a text file of numbers") from None
        if v.dtype.kind not in "iuf":
            raise DataError(f"the voltage file '{path}' holds {v.dtype} values, not volts; give real numbers")
        return v.astype(float).ravel()
    try:
        return np.array([float(x) for x in text.split(",")])
    except ValueError:
        raise ConfigError(f"voltage must be 'paper', a file of volts or comma-separated numbers, "
                          f"got {text!r}") from None


@register("data")
@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig(StageConfig):
    """Where the measurement comes from (``[data]`` in a TOML config; CLI ``--data`` and friends).

    Attributes
    ----------
    path : str or None
        Data file; None means the embedded synthetic dataset.
    channel : str or None
        Channel of a single-array file (default piezoresponse), or the one channel to load.
    voltage : str or None
        ``"paper"``, a file of volts, or None to use the file's voltage.
    grid : str or list of int or None
        ``"60x60"`` or ``[60, 60]`` for (pixels, steps) data.
    normalized : bool
        The data are already normalized.
    keys : dict or None
        ``{file variable: channel or "voltage"}`` for files with other names.
    """

    path: str | None = None
    channel: str | None = None
    voltage: str | None = None
    grid: Any = None
    normalized: bool = False
    keys: dict[str, str] | None = None

    def validate(self) -> None:
        if self.path is not None and not isinstance(self.path, str):
            self._fail("path", "a file path string or None", self.path)
        if self.channel is not None:
            self.check_choice("channel", tuple(CHANNELS))
        if self.voltage is not None and not isinstance(self.voltage, str):
            self._fail("voltage", "'paper', a file of volts or None", self.voltage)
        try:
            parse_grid(self.grid)
        except ConfigError:
            self._fail("grid", "ROWSxCOLS text or [rows, cols] of positive integers", self.grid)
        if not isinstance(self.normalized, bool):
            self._fail("normalized", "true or false", self.normalized)
        if self.keys is not None and not (
            isinstance(self.keys, dict) and all(isinstance(k, str) and isinstance(v, str)
                                                for k, v in self.keys.items())
        ):
            self._fail("keys", "a table of {file variable = channel}", self.keys)


def load_data(config: DataConfig) -> xr.Dataset:
    """Load the measurement a :class:`DataConfig` names (``config.path`` must be set)."""
    if config.path is None:
        raise ConfigError("[data] path is not set; give a data file (--data FILE) or use the synthetic data")
    return load(config.path, channel=config.channel, voltage=parse_voltage(config.voltage),
                grid=parse_grid(config.grid), normalized=config.normalized, keys=config.keys)
