"""The one pair of helpers that turns a grid into ``(n_pixels, n_steps)`` and back.

Every stage works on a 2-D array of pixels by steps; these helpers are the only place that knows
how a ``(row, col, step)`` grid maps onto it (row-major, the same order as ``numpy.reshape``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from ._errors import DataError

GRID_DIMS = ("row", "col")


def flatten(data: Any, channel: str | None = None) -> tuple[np.ndarray, tuple[int, ...] | None]:
    """Return ``(X, grid)`` with ``X`` of shape ``(n_pixels, n_steps)``.

    Parameters
    ----------
    data : xarray.Dataset, xarray.DataArray or array-like
        A Dataset (then ``channel`` names the variable), a DataArray with dims ``(row, col, step)``
        or ``(pixel, step)``, or an array of shape ``(rows, cols, steps)`` or ``(n_pixels, n_steps)``.
    channel : str, optional
        Variable of a Dataset to take.

    Returns
    -------
    X : ndarray of shape (n_pixels, n_steps)
    grid : tuple of int or None
        ``(rows, cols)`` of the grid, or None when ``data`` was already 2-D.
    """
    if isinstance(data, xr.Dataset):
        if channel is None:
            raise DataError("a Dataset was given without a channel name; pass channel=<variable name>")
        if channel not in data:
            raise DataError(
                f"channel {channel!r} is not in the data (has: {', '.join(map(str, data.data_vars))}); "
                "choose one of those"
            )
        data = data[channel]
    if isinstance(data, xr.DataArray):
        if data.dims[: len(GRID_DIMS)] == GRID_DIMS:
            arr = np.asarray(data.values)
        elif data.ndim == 3:
            raise DataError(f"expected dims (row, col, step), got {data.dims}; transpose the DataArray")
        else:
            arr = np.asarray(data.values)
    else:
        arr = np.asarray(data)
    if arr.ndim == 3:
        rows, cols = arr.shape[:2]
        return arr.reshape(rows * cols, arr.shape[2]), (rows, cols)
    if arr.ndim == 2:
        return arr, None
    raise DataError(
        f"expected an array of shape (rows, cols, steps) or (n_pixels, n_steps), got shape {arr.shape}"
    )


def unflatten(values: np.ndarray, grid: tuple[int, ...] | None) -> np.ndarray:
    """Inverse of :func:`flatten`: ``(n_pixels, ...)`` -> ``(rows, cols, ...)``.

    With ``grid=None`` the array is returned unchanged.
    """
    values = np.asarray(values)
    if grid is None:
        return values
    rows, cols = grid
    if values.shape[0] != rows * cols:
        raise DataError(
            f"cannot place {values.shape[0]} pixels on a {rows}x{cols} grid; "
            "the number of pixels must equal rows*cols"
        )
    return values.reshape(rows, cols, *values.shape[1:])


def pixel_dataarray(values: np.ndarray, like: xr.Dataset, extra_dim: str | None = None,
                    coords: dict | None = None, attrs: dict | None = None) -> xr.DataArray:
    """Wrap a per-pixel result ``(n_pixels[, k])`` as a DataArray on the grid of ``like``."""
    grid = (like.sizes["row"], like.sizes["col"])
    arr = unflatten(values, grid)
    dims: tuple[str, ...] = GRID_DIMS if arr.ndim == 2 else (*GRID_DIMS, extra_dim or "component")
    return xr.DataArray(arr, dims=dims, coords=coords or {}, attrs=attrs or {})
