"""The ``[data]`` section of a run configuration and the parsers the CLI uses for it."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .._config import StageConfig, register
from .._dataset import CHANNELS, channels_in
from .._errors import ConfigError, DataError
from .._text import printable
from ..select import apply_selection, parse_select
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
    try:
        exists = path.exists()
    except (OSError, ValueError):  # e.g. a long list of volts is no file name: read it as numbers below
        exists = False
    if exists and not path.is_file():
        raise DataError(f"the voltage file '{path}' is not a regular file; give a .npy array or a text file of volts")
    if exists and path.is_file():
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
    files : list of dict or None
        Several files merged into one dataset (``[[data.files]]`` tables), each with its own
        ``path`` and any of ``channel``, ``voltage``, ``grid``, ``normalized``, ``keys``. Their
        channels must share the grid and the voltage (to 1e-9 V), and no channel may come twice.
    select : str, list or dict or None
        Which field, cycle and group the stages analyse (:mod:`switchscope.select`), e.g.
        ``{field = "out-of-field", cycle = 2}``; default out-of-field and the mean over cycles.
    """

    path: str | None = None
    channel: str | None = None
    voltage: str | None = None
    grid: Any = None
    normalized: bool = False
    keys: dict[str, str] | None = None
    files: list[dict[str, Any]] | None = None
    select: Any = None

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
        if self.files is not None:
            if not isinstance(self.files, list) or not self.files:
                self._fail("files", "a list of [[data.files]] tables", self.files)
            if self.path is not None:
                raise ConfigError("[data] takes either path or [[data.files]], not both; move path into a "
                                  "[[data.files]] table")
            for i, entry in enumerate(self.files):
                file_config(entry, i)
        try:
            parse_select(self.select)
        except ConfigError as exc:
            raise ConfigError(f"[data] {exc}") from None

    def entries(self) -> list["DataConfig"]:
        """One config per file: the ``files`` tables, or this config itself."""
        if self.files is None:
            return [self]
        return [file_config(entry, i) for i, entry in enumerate(self.files)]


FILE_KEYS = ("path", "channel", "voltage", "grid", "normalized", "keys")


def file_config(entry: Any, i: int) -> DataConfig:
    """One ``[[data.files]]`` table as a :class:`DataConfig` (checked)."""
    if not isinstance(entry, dict):
        raise ConfigError(f"[[data.files]] entry {i + 1} must be a table with a path, got {entry!r:.60}")
    unknown = sorted(set(entry) - set(FILE_KEYS))
    if unknown:
        raise ConfigError(f"[[data.files]] entry {i + 1} has unknown option(s) {', '.join(unknown)}; "
                          f"valid options are: {', '.join(FILE_KEYS)}")
    if not isinstance(entry.get("path"), str):
        raise ConfigError(f"[[data.files]] entry {i + 1} needs a path = \"FILE\"")
    return DataConfig(**entry)


def data_paths(config: DataConfig | None) -> list[str]:
    """Every file a :class:`DataConfig` reads."""
    if config is None:
        return []
    return [e.path for e in config.entries() if e.path]


def load_data(config: DataConfig) -> xr.Dataset:
    """Load the measurement a :class:`DataConfig` names: its file, or its files merged into one
    Dataset, with the selection applied (``path`` or ``files`` must be set)."""
    entries = config.entries()
    if not any(e.path for e in entries):
        raise ConfigError("[data] path is not set; give a data file (--data FILE) or use the synthetic data")
    select = parse_select(config.select)
    group = {"group": select["group"]} if "group" in select else {}
    parts = []
    for e in entries:
        ds = load(e.path, channel=e.channel, voltage=parse_voltage(e.voltage), grid=parse_grid(e.grid),
                  normalized=e.normalized, keys=e.keys, select=select, **_group_for(e.path, group))
        parts.append(apply_selection(ds, select))
    return merge(parts)


def _group_for(path: str, group: dict[str, str]) -> dict[str, str]:
    """``group=`` only for the files whose reader takes it."""
    from ._load import find_reader

    return group if group and "group" in find_reader(path).options else {}


def merge(parts: list[xr.Dataset]) -> xr.Dataset:
    """Several files' Datasets as one: same grid and voltage (to 1e-9 V), each channel once."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    seen: dict[str, str] = {}
    for ds in parts:
        src = printable(ds.attrs.get("source", "?"), 80)
        for name in channels_in(ds):
            if name in seen:
                raise DataError(f"channel {name} is given twice ({seen[name]} and {src}); give each channel once, "
                                "or load one channel of a file with channel = ...")
            seen[name] = src
        if (ds.sizes.get("row"), ds.sizes.get("col")) != (first.sizes.get("row"), first.sizes.get("col")):
            raise DataError(f"{src} has a {ds.sizes.get('row')}x{ds.sizes.get('col')} grid but "
                            f"{printable(first.attrs.get('source', '?'), 80)} has {first.sizes.get('row')}x"
                            f"{first.sizes.get('col')}; merged files must share one grid")
        v0, v = first["voltage"].values, ds["voltage"].values
        if v.shape != v0.shape or not np.allclose(v, v0, rtol=0, atol=1e-9):
            worst = float(np.abs(v - v0).max()) if v.shape == v0.shape else None
            what = (f"differs by up to {worst:.3g} V" if worst is not None
                    else f"has {v.size} steps against {v0.size}")
            raise DataError(f"the voltage of {src} {what} from that of "
                            f"{printable(first.attrs.get('source', '?'), 80)}; merged files must share one "
                            "waveform (give voltage = ... for the file without one)")
    merged = xr.merge([ds.drop_vars([c for c in ("x", "y") if c in ds.coords and ds is not first])
                       .assign_coords(voltage=first["voltage"]) for ds in parts],
                      compat="override", combine_attrs="override")
    merged.attrs = dict(first.attrs)
    merged.attrs["source"] = " + ".join(str(ds.attrs.get("source", "?")) for ds in parts)
    merged.attrs["format"] = ", ".join(str(ds.attrs.get("format", "?")) for ds in parts)
    return merged
