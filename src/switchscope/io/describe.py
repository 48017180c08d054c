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


def _lazy_stats(da: xr.DataArray) -> str:
    """:func:`_stats` of a dask-backed variable (a Zarr store): one pass over its chunks."""
    import dask
    import dask.array as dsk

    x = da.data.astype(float)
    fin = dsk.where(dsk.isfinite(x), x, np.nan)
    n_nan, n_inf, lo, hi = dask.compute(dsk.isnan(x).sum(), dsk.isinf(x).sum(), dsk.nanmin(fin), dsk.nanmax(fin))
    rng = f"min {lo:.6g}  max {hi:.6g}" if np.isfinite(lo) else "min n/a  max n/a"
    return f"NaN {int(n_nan)}  Inf {int(n_inf)}  {rng}"


def _line(name: str, da: xr.DataArray) -> str:
    units = printable(da.attrs.get("units", ""), 40)
    dims = ", ".join(f"{printable(d, 40)}={n}" for d, n in zip(da.dims, da.shape))
    text = f"  {printable(name, 80)} {tuple(da.shape)} ({dims})"
    if units:
        text += f" [{units}]"
    if da.dtype.kind in "iuf" and da.chunks is not None:
        text += "  " + _lazy_stats(da)
    elif da.dtype.kind in "iuf":
        text += "  " + _stats(np.asarray(da.values, dtype=float))
    elif da.dtype.kind == "b":
        text += f"  true {int(np.asarray(da.values).sum())} of {da.size}"
    if da.attrs.get("normalized"):
        text += "  (normalized)"
    return text


def _run_lines(ds: xr.Dataset) -> list[str]:
    """The waveform, the fields and cycles, and what ``switchscope run`` would do with ``ds``."""
    from ..select import describe_selection
    from ..waveform import describe_waveform

    lines: list[str] = []
    if "voltage" in ds.coords:
        try:
            lines.append(f"waveform: {describe_waveform(np.asarray(ds['voltage'].values, float))}")
        except Exception as exc:  # noqa: BLE001 - info describes whatever is there
            lines.append(f"waveform: cannot be described ({printable(exc, 200)})")
    if "field" in ds.dims:
        lines.append("fields: " + ", ".join(printable(str(v), 40) for v in ds["field"].values))
    elif ds.attrs.get("field"):
        lines.append(f"fields: {printable(ds.attrs['field'], 40)} only")
    if "cycle" in ds.dims:
        lines.append(f"cycles: {ds.sizes['cycle']}")
    if ds.attrs.get("usid_groups"):
        lines.append(f"groups: {printable(ds.attrs['usid_groups'], 400)} (read: "
                     f"{printable(ds.attrs.get('usid_read', ''), 200)}; choose with --select group=NAME)")
    chans = channels_in(ds)
    if "spectrum" in ds.data_vars and not chans:
        todo = "raw band-excitation spectra: run fits the SHO model, then projects the loops"
    elif chans:
        loops = "piezoresponse" in chans
        todo = (f"analyses {', '.join(chans)}"
                + ("; loops are fitted on piezoresponse" if loops else "; no piezoresponse: no loop fits"))
    else:
        todo = "nothing run can analyse"
    lines.append(f"selection: {describe_selection(ds)}")
    lines.append(f"run: {todo}")
    return lines


def describe(ds: xr.Dataset, *, run: bool = False) -> str:
    """Multi-line text describing ``ds``: grid, voltage, each channel and result, attributes.

    Each channel line gives its shape, units, NaN count, Inf count, min and max (over finite
    values), e.g. for the paper's file::

        piezoresponse (60, 60, 96) (row=60, col=60, step=96) [a.u.]  NaN 3  Inf 0  min ...  max ...

    Parameters
    ----------
    ds : xarray.Dataset
        A switchscope Dataset.
    run : bool
        Add the waveform, the fields, cycles and groups, and what ``switchscope run`` would do.

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
    if run:
        lines.extend(_run_lines(ds))
    attrs = {k: v for k, v in ds.attrs.items() if k not in ("source", "format", "usid_groups", "usid_read")}
    if attrs:
        lines.append("attrs:")
        lines.extend(f"  {printable(k, 80)}: {printable(v, 200)}" for k, v in attrs.items())
    return "\n".join(lines)
