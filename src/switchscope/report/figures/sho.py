"""Figures of the ``sho`` and ``project`` stages: SHO parameter maps, fit quality, projection.

Drawn from ``amplitude``, ``resonance``, ``quality_factor``, ``phase``, ``sho_r2`` and
``sho_status`` on ``(row, col, step)`` and the ``projection_angle`` / ``projection_offset`` maps;
nothing is refitted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ._common import plot_maps, plt, save

#: (variable, label) of the mapped SHO parameters, in the order of the page.
SHO_MAPS = (("amplitude", "A"), ("resonance", "w0"), ("quality_factor", "Q"), ("phase", "phi"), ("sho_r2", "R²"))


def remanent_steps(ds: xr.Dataset) -> list[tuple[str, int]]:
    """``(branch, step)`` of the step nearest 0 V on the descending and on the ascending sweep.

    At 0 V each branch holds one remanent polarization state, so the two maps show the domains
    written by the negative and by the positive half of the waveform (without a voltage: the
    middle step)."""
    from ...waveform import descending_steps

    n = int(ds.sizes.get("step", 0))
    if "voltage" not in ds.coords or n == 0:
        return [("middle step", n // 2)]
    v = np.asarray(ds["voltage"].values, float)
    down = descending_steps(v)
    out = []
    for name, mask in (("descending", down), ("ascending", ~down)):
        idx = np.flatnonzero(mask & np.isfinite(v))
        if idx.size:
            out.append((name, int(idx[np.argmin(np.abs(v[idx]))])))
    return out or [("middle step", n // 2)]


def _units(ds: xr.Dataset, var: str) -> str:
    u = str(ds[var].attrs.get("units", "")).strip()
    return "" if u in ("", "1") else f" ({u})"


def draw(ds: xr.Dataset, figdir: Path, **_: Any) -> list[tuple[str, Path]]:
    """``sho_maps.png``, ``sho_r2.png`` and (after ``project``) ``sho_projection.png``."""
    if "sho_r2" not in ds:
        return []
    out = [("sho", maps_figure(ds, figdir / "sho_maps.png")), ("sho", quality_figure(ds, figdir / "sho_r2.png"))]
    proj = projection_figure(ds, figdir / "sho_projection.png")
    if proj is not None:
        out.append(("sho", proj))
    return out


def maps_figure(ds: xr.Dataset, path: Path | None) -> Any:
    """One row per branch (the step nearest 0 V), one column per SHO parameter and R²."""
    names = [(v, label) for v, label in SHO_MAPS if v in ds]
    maps = []
    for branch, step in remanent_steps(ds):
        volt = (f"{float(ds['voltage'].values[step]):.3g} V, " if "voltage" in ds.coords else "")
        for var, label in names:
            img = ds[var].transpose("row", "col", "step").values[..., step].astype(float)
            if var == "sho_r2":  # good fits differ in the ninth digit: show how far from 1
                with np.errstate(all="ignore"):
                    img = np.log10(np.clip(1.0 - img, 1e-16, None))
                label = "log10(1 - R²)"
            maps.append((f"{label}{_units(ds, var)}\n{branch}: {volt}step {step}", img))
    return plot_maps(maps, path, ncols=len(names))


def quality_figure(ds: xr.Dataset, path: Path | None) -> Any:
    """Histogram of ``1 - R²`` of every spectrum (log axis: good fits differ in the ninth digit)
    and the map of each pixel's worst R² over the steps."""
    r2 = ds["sho_r2"].transpose("row", "col", "step").values.astype(float)
    fig, (ax, axm) = plt.subplots(1, 2, figsize=(8.4, 3.2), gridspec_kw={"width_ratios": [1.5, 1]})
    finite = np.isfinite(r2)
    resid = np.clip(1.0 - r2[finite], 1e-12, None)
    if resid.size:
        lo, hi = np.log10(resid.min()), np.log10(max(resid.max(), resid.min() * 10))
        ax.hist(resid, bins=np.logspace(lo, hi, 40), color="C0")
        ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("1 - R² (clipped at 1e-12)")
    ax.set_ylabel("spectra")
    n_bad = int((~finite).sum())
    ax.set_title(f"{int(finite.sum())} fitted spectra" + (f", {n_bad} without R²" if n_bad else ""), fontsize=9)
    with np.errstate(all="ignore"):
        worst = np.where(finite.any(-1), np.nanmin(np.where(finite, r2, np.nan), axis=-1), np.nan)
    with np.errstate(all="ignore"):
        worst = np.log10(np.clip(1.0 - worst, 1e-16, None))
    fin = np.isfinite(worst)
    lo, hi = (np.percentile(worst[fin], [1, 99]) if fin.any() else (0.0, 1.0))
    im = axm.imshow(worst, cmap="viridis", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
    axm.set_title("log10(1 - R²), worst step of each pixel", fontsize=9)
    axm.set_xticks([])
    axm.set_yticks([])
    bar = fig.colorbar(im, ax=axm, fraction=0.046, pad=0.03)
    bar.ax.tick_params(labelsize=7)
    bar.set_label("1-99 % range", fontsize=6)
    fig.tight_layout()
    return save(fig, path)


def projection_figure(ds: xr.Dataset, path: Path | None) -> Any:
    """The angle (degrees) and offset of each pixel's axis of switching (None before ``project``)."""
    if "projection_angle" not in ds:
        return None
    maps = [("projection angle (deg)", np.rad2deg(ds["projection_angle"].transpose("row", "col").values))]
    if "projection_offset" in ds:
        maps.append((f"projection offset{_units(ds, 'projection_offset')}",
                     ds["projection_offset"].transpose("row", "col").values))
    return plot_maps(maps, path, ncols=2)
