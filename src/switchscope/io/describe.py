"""``describe``: a plain-text summary of a Dataset for ``switchscope info``."""

from __future__ import annotations

import numpy as np
import xarray as xr

from .._dataset import channels_in
from .._text import printable


def _stats(values: np.ndarray) -> str:
    n_nan = int(np.isnan(values).sum())
    n_inf = int(np.isinf(values).sum())
    finite = values[np.isfinite(values)]
    rng = f"min {finite.min():.6g}  max {finite.max():.6g}" if finite.size else "min n/a  max n/a"
    return f"NaN {n_nan}  Inf {n_inf}  {rng}"


def _line(name: str, da: xr.DataArray) -> str:
    units = printable(da.attrs.get("units", ""), 40)
    dims = ", ".join(f"{printable(d, 40)}={n}" for d, n in zip(da.dims, da.shape))
    text = f"  {printable(name, 80)} {tuple(da.shape)} ({dims})"
    if units:
        text += f" [{units}]"
    if da.dtype.kind in "iuf":
        text += "  " + _stats(np.asarray(da.values, dtype=float))
    elif da.dtype.kind == "b":
        text += f"  true {int(np.asarray(da.values).sum())} of {da.size}"
    if da.attrs.get("normalized"):
        text += "  (normalized)"
    return text


def describe(ds: xr.Dataset) -> str:
    """Multi-line text describing ``ds``: grid, voltage, each channel and result, attributes.

    Each channel line gives its shape, units, NaN count, Inf count, min and max (over finite
    values), e.g. for the paper's file::

        piezoresponse (60, 60, 96) (row=60, col=60, step=96) [a.u.]  NaN 3  Inf 0  min ...  max ...

    Parameters
    ----------
    ds : xarray.Dataset
        A switchscope Dataset.

    Returns
    -------
    str
    """
    lines: list[str] = []
    src = ds.attrs.get("source")
    if src is not None:
        fmt = ds.attrs.get("format")
        lines.append(f"source: {printable(src, 200)}" + (f" ({printable(fmt, 40)})" if fmt else ""))
    if {"row", "col"} <= set(ds.sizes):
        grid = f"grid: {ds.sizes['row']} rows x {ds.sizes['col']} cols"
        if "step" in ds.sizes:
            grid += f", {ds.sizes['step']} steps"
        lines.append(grid)
    if "voltage" in ds.coords:
        v = np.asarray(ds["voltage"].values, dtype=float)
        units = printable(ds["voltage"].attrs.get("units", "V"), 20)
        if v.size:
            lines.append(f"voltage: {v.min():g}..{v.max():g} {units}, {v.size} steps "
                         f"(first {v[0]:g} {units}, last {v[-1]:g} {units})")
    chans = channels_in(ds)
    if chans:
        lines.append("channels:")
        lines.extend(_line(c, ds[c]) for c in chans)
    others = [str(n) for n in ds.data_vars if n not in chans]
    if others:
        lines.append("other variables:")
        lines.extend(_line(n, ds[n]) for n in others)
    attrs = {k: v for k, v in ds.attrs.items() if k not in ("source", "format")}
    if attrs:
        lines.append("attrs:")
        lines.extend(f"  {printable(k, 80)}: {printable(v, 200)}" for k, v in attrs.items())
    return "\n".join(lines)
