"""Construction and checks of the switchscope data model (DESIGN section 3).

A measurement is an ``xarray.Dataset`` with dims ``(row, col, step)``, one variable per channel,
a ``voltage`` coordinate on ``step`` and units in attrs.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import xarray as xr

from ._errors import DataError

#: Channel names and their units.
CHANNELS: dict[str, str] = {
    "piezoresponse": "a.u.",
    "amplitude": "a.u.",
    "phase": "deg",
    "resonance": "kHz",
    "quality_factor": "1",
}


def check_channel(name: str) -> str:
    if name not in CHANNELS:
        raise DataError(f"unknown channel {name!r}; valid channels are: {', '.join(CHANNELS)}")
    return name


#: Largest DC voltage magnitude accepted (BEPS waveforms stay within a few hundred volts).
MAX_ABS_VOLTAGE = 10_000.0


def check_voltage(voltage: Any, n_steps: int) -> np.ndarray:
    """Voltage as a finite 1-D float array of length ``n_steps``."""
    v = np.asarray(voltage)
    if v.dtype.kind not in "iuf":
        raise DataError(f"the voltage holds {v.dtype} values, not numbers; give one voltage in volts per step")
    v = v.astype(float).ravel()
    if v.size != n_steps:
        raise DataError(
            f"the voltage has {v.size} values but the data has {n_steps} steps; "
            "give one voltage per step"
        )
    if not np.all(np.isfinite(v)):
        raise DataError("the voltage holds NaN or Inf values; give a finite voltage for every step")
    if v.size and float(np.abs(v).max()) > MAX_ABS_VOLTAGE:
        raise DataError(f"the voltage reaches {float(np.abs(v).max()):.3g} V, beyond the {MAX_ABS_VOLTAGE:.0f} V "
                        "of any BEPS waveform; give volts (data in mV: divide by 1000)")
    return v


def make_dataset(channels: Mapping[str, Any], voltage: Any, *, attrs: Mapping[str, Any] | None = None,
                 channel_attrs: Mapping[str, Mapping[str, Any]] | None = None) -> xr.Dataset:
    """Build a Dataset from ``{channel: array (rows, cols, steps)}`` and a voltage per step.

    Parameters
    ----------
    channels : mapping of str to array of shape (rows, cols, steps)
        Channel arrays; names from :data:`CHANNELS`.
    voltage : array of shape (steps,)
        DC voltage at each step, in volts.
    attrs : mapping, optional
        Dataset attributes (source file, notes).
    channel_attrs : mapping, optional
        Extra attributes per channel (e.g. ``{"resonance": {"normalized": 1}}``).
    """
    if not channels:
        raise DataError("no channel found in the data; give at least one of: " + ", ".join(CHANNELS))
    shape = None
    data_vars = {}
    for name, arr in channels.items():
        check_channel(name)
        arr = np.asarray(arr, dtype=float)
        if arr.ndim != 3:
            raise DataError(
                f"channel {name!r} has shape {arr.shape}; expected (rows, cols, steps) "
                "(give --grid ROWSxCOLS for (pixels, steps) data)"
            )
        if shape is None:
            shape = arr.shape
        elif arr.shape != shape:
            raise DataError(f"channel {name!r} has shape {arr.shape} but another has {shape}; "
                            "all channels must share one grid")
        a = {"units": CHANNELS[name], "long_name": name.replace("_", " ")}
        a.update((channel_attrs or {}).get(name, {}))
        data_vars[name] = xr.DataArray(arr, dims=("row", "col", "step"), attrs=a)
    assert shape is not None
    v = check_voltage(voltage, shape[2])
    ds = xr.Dataset(
        data_vars,
        coords={
            "row": np.arange(shape[0]),
            "col": np.arange(shape[1]),
            "step": np.arange(shape[2]),
            "voltage": ("step", v, {"units": "V", "long_name": "DC voltage"}),
        },
        attrs=dict(attrs or {}),
    )
    return ds


#: Largest magnitude of a channel value switchscope computes with: squares and sums of squares of
#: the values must stay far from float64's range (and float32's, ~3e38, in the float32 paths).
MAX_ABS_VALUE = 1e12


def check_values(ds: xr.Dataset) -> None:
    """Refuse channels whose values are not numbers, or so large that fits overflow."""
    for name in channels_in(ds):
        da = ds[name]
        if da.dtype.kind not in "iuf":
            raise DataError(f"channel {name!r} holds {da.dtype} values, not numbers; give numeric data")
        if da.chunks is not None:  # read lazily (a Zarr store): one pass over the chunks, nothing held
            import dask.array as dsk

            x = da.data.astype(float)
            big = float(dsk.nanmax(dsk.where(dsk.isfinite(x), abs(x), np.nan)).compute())
            big = big if np.isfinite(big) else 0.0
        else:
            vals = np.asarray(da.values, dtype=float)
            finite = vals[np.isfinite(vals)]
            big = float(np.abs(finite).max()) if finite.size else 0.0
        if big > MAX_ABS_VALUE:
            exponent = int(np.floor(np.log10(big)))
            raise DataError(
                f"channel {name!r} holds values up to {big:.3g}, beyond the {MAX_ABS_VALUE:.0e} switchscope "
                f"computes with; check its units, or divide it by 1e{exponent} before the analysis"
            )


def channels_in(ds: xr.Dataset) -> list[str]:
    """Measurement channels present in ``ds``, in the canonical order."""
    return [c for c in CHANNELS if c in ds.data_vars]
