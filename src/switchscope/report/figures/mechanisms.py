"""Figures of the ``mechanisms`` stage: the detector maps and, for every named neuron, a strip
(the measure's map, the neuron's map, its generated loops when the interpret stage made them);
drawn from ``mechanism_*`` and ``generated_<channel>`` in the results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ._common import plot_maps, plt, save

_DETECTORS = ("mechanism_three_state", "mechanism_hardening", "mechanism_c_like")


def _strip(ds: xr.Dataset, ch: str, rows: list[tuple[int, str, float]], path: Path) -> Path:
    emb = ds[f"embedding_{ch}"].transpose("row", "col", "neuron").values
    gen = ds.get(f"generated_{ch}")
    ncols = 3 if gen is not None else 2
    fig, axes = plt.subplots(len(rows), ncols, figsize=(3.0 * ncols, 2.5 * len(rows) + 0.3), squeeze=False)
    voltage = np.asarray(ds["voltage"].values, dtype=float)
    for (j, measure, rho), ax in zip(rows, axes):
        for a, img, title in ((ax[0], ds[measure].values, measure), (ax[1], emb[..., j], f"{ch} neuron {j}")):
            a.imshow(np.asarray(img, dtype=float), cmap="viridis", interpolation="nearest")
            a.set_title(title, fontsize=8)
            a.set_xticks([])
            a.set_yticks([])
        ax[1].set_xlabel(f"rho = {rho:+.2f}", fontsize=8)
        if gen is not None:
            curves = gen.transpose("neuron", "level", "step").values[j]
            cmap = plt.get_cmap("viridis")
            for li in range(curves.shape[0]):
                ax[2].plot(voltage, curves[li], color=cmap(li / max(1, curves.shape[0] - 1)), lw=0.8)
            ax[2].set_title(f"generated, neuron {j}", fontsize=8)
            ax[2].tick_params(labelsize=7)
    fig.suptitle(f"{ch}: named neurons", fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def draw(ds: xr.Dataset, figdir: Path, **_: Any) -> list[tuple[str, Path]]:
    """``mechanism_maps.png`` and ``mechanism_named_<channel>.png``."""
    out: list[tuple[str, Path]] = []
    maps = [(f"{v.removeprefix('mechanism_')} ({ds[v].attrs.get('units', '')})"[:40], ds[v].values)
            for v in _DETECTORS if v in ds and ds[v].dims == ("row", "col")]
    if maps:
        out.append(("measured", plot_maps(maps, figdir / "mechanism_maps.png", title="mechanism detectors",
                                          ncols=3)))
    if "mechanism_named" in ds and "mechanism_rho" in ds and "voltage" in ds.coords:
        named = ds["mechanism_named"].transpose("mechanism_channel", "neuron").values
        rho = ds["mechanism_rho"].transpose("mechanism_channel", "neuron", "measure").values
        measures = [str(m) for m in ds["measure"].values]
        for c, ch in enumerate(str(x) for x in ds["mechanism_channel"].values):
            rows = [(int(j), measures[named[c, j]], float(rho[c, j, named[c, j]]))
                    for j in np.flatnonzero(named[c] >= 0)
                    if measures[named[c, j]] in ds and f"embedding_{ch}" in ds]
            if rows:
                out.append(("measured", _strip(ds, ch, rows, figdir / f"mechanism_named_{ch}.png")))
    return out
