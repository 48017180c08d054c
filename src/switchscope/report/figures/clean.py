"""Figure of the ``clean`` stage: raw against cleaned curve of the most repaired pixel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..._dataset import channels_in
from ..._grid import flatten
from ._common import plt, save


def draw(ds: xr.Dataset, figdir: Path, **_: Any) -> list[tuple[str, Path]]:
    """``clean.png``: for each cleaned channel, the pixel whose cleaning changed it most."""
    fig = figure(ds)
    return [] if fig is None else [("cleaning", save(fig, figdir / "clean.png", dpi=110))]


def figure(ds: xr.Dataset) -> Any:
    """The open Figure of :func:`draw` (None without a cleaned channel)."""
    names = [c for c in channels_in(ds) if f"{c}_clean" in ds]
    if not names:
        return None
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.0), squeeze=False)
    voltage = ds["voltage"].values if "voltage" in ds.coords else None
    grid = (ds.sizes["row"], ds.sizes["col"])
    for ax, name in zip(axes[0], names):
        X, _ = flatten(ds, name)
        C, _ = flatten(ds, f"{name}_clean")
        finite = np.isfinite(X)
        # The pixel whose cleaning changed it most shows what the recipe does.
        change = np.where(finite & np.isfinite(C), np.abs(X - C), 0.0).max(axis=1)
        i = int(np.lexsort((change, (~finite).sum(axis=1)))[-1])
        x = voltage if voltage is not None else np.arange(X.shape[1])
        ax.plot(x, np.where(finite[i], X[i], np.nan), "o", ms=2.5, color="0.6", label="raw")
        ax.plot(x, C[i], "-", lw=1.0, color="C0", label="cleaned")
        ax.set_title(f"{name}, most repaired pixel:\n(row, col) = ({i // grid[1]}, {i % grid[1]})", fontsize=8)
        ax.set_xlabel("voltage (V)" if voltage is not None else "step")
        units = str(ds[f"{name}_clean"].attrs.get("units", ""))
        ax.set_ylabel(units if units not in ("", "1") else "")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
