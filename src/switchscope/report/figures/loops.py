"""Figures of the ``loops`` stage: one map per switching parameter, and example pixels (data + fit).

These render a :class:`~switchscope.loops.LoopFitResult` (or the ``loop_*`` variables of the
results, through :func:`draw`); nothing is refitted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ...loops._fit import LoopFitResult
from ...loops._metrics import METRICS
from ._common import plt, save

__all__ = ["draw", "example_pixels", "plot_loop_examples", "plot_loop_maps"]


def plot_loop_maps(res: LoopFitResult, path: str | Path | None) -> Any:
    """One map per switching parameter plus R2, on the pixel grid.

    Parameters
    ----------
    res : LoopFitResult
        A fit of a grid (``res.grid`` not None); a plain list of pixels is drawn as one row.
    path : str or Path
        PNG file to write.
    """
    grid = res.grid or (1, res.r2.size)
    names = list(METRICS) + ["r2"]
    ncol = 4
    nrow = int(np.ceil(len(names) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 3.0 * nrow), squeeze=False)
    for ax, name in zip(axes.ravel(), names):
        values = res.r2 if name == "r2" else res.metrics[name]
        img = np.asarray(values, dtype=float).reshape(grid)
        finite = img[np.isfinite(img)]
        # robust colour limits: a few failed pixels must not wash out the map
        vmin, vmax = (np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0))
        im = ax.imshow(img, cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
        kind = "1" if name == "r2" else METRICS[name][1]
        unit = {"V": "V", "response": res.units, "area": f"{res.units}·V", "1": ""}[kind]
        ax.set_title(f"{name} [{unit}]" if unit else name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).set_label("1-99 % range", fontsize=6)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    fig.suptitle(f"loop fits ({res.model}): switching maps", fontsize=11)
    fig.tight_layout()
    return save(fig, path)


def example_pixels(r2: np.ndarray, n: int = 12) -> np.ndarray:
    """Indices of ``n`` pixels spread over the R2 range, the worst fitted pixel first."""
    r2 = np.asarray(r2, dtype=float)
    ok = np.flatnonzero(np.isfinite(r2))
    if ok.size == 0:
        return np.arange(min(n, r2.size))
    order = ok[np.argsort(r2[ok], kind="stable")]
    picks = np.unique(np.round(np.linspace(0, order.size - 1, min(n, order.size))).astype(int))
    return order[picks]


def plot_loop_examples(res: LoopFitResult, data: np.ndarray, path: str | Path | None,
                       n: int = 12) -> Path:
    """Data and fit of example pixels chosen across the R2 range, including the worst.

    Parameters
    ----------
    res : LoopFitResult
    data : ndarray of shape (n_pixels, n_steps)
        The fitted data, in the same pixel order as ``res``.
    path : str or Path
        PNG file to write.
    n : int
        Number of example pixels.
    """
    data = np.asarray(data, dtype=float).reshape(res.r2.size, -1)
    idx = example_pixels(res.r2, n)
    ncol = 4
    nrow = int(np.ceil(idx.size / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.6 * nrow), squeeze=False)
    v = res.voltage
    for ax, i in zip(axes.ravel(), idx):
        ax.plot(v, data[i], ".", ms=3, color="0.4", label="data")
        if np.isfinite(res.fit[i]).all():
            d = res.descending
            for mask, colour in ((d, "C3"), (~d, "C0")):
                # draw each sweep in its own colour, in voltage order
                o = np.argsort(v[mask])
                ax.plot(v[mask][o], res.fit[i][mask][o], "-", color=colour, lw=1.2)
        where = (f"({i // res.grid[1]}, {i % res.grid[1]})" if res.grid else f"#{i}")
        ax.set_title(f"pixel {where}  R2={res.r2[i]:.4f}  status {res.status[i]}", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[idx.size:]:
        ax.axis("off")
    fig.supxlabel("voltage [V]", fontsize=9)
    fig.suptitle(f"loop fits ({res.model}): examples from worst to best R2 "
                 "(red: descending sweep, blue: ascending)", fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def result_from_dataset(ds: xr.Dataset) -> LoopFitResult | None:
    """The :class:`LoopFitResult` that the ``loop_*`` variables of ``ds`` hold (None without them)."""
    if "loop_params" not in ds or "loop_r2" not in ds:
        return None
    from ...loops._models import sweep_masks

    grid = (ds.sizes["row"], ds.sizes["col"]) if {"row", "col"} <= set(ds["loop_r2"].dims) else None
    n = int(ds["loop_r2"].size)

    def flat(name: str, *extra: int) -> np.ndarray:
        return np.asarray(ds[name].values).reshape(n, *extra)

    v = np.asarray(ds["voltage"].values, dtype=float)
    n_par = ds["loop_params"].shape[-1]
    metrics = {m: flat(f"loop_{m}") for m in METRICS if f"loop_{m}" in ds}
    fit = flat("loop_fit", v.size) if "loop_fit" in ds else np.full((n, v.size), np.nan)
    return LoopFitResult(
        params=flat("loop_params", n_par), stderr=flat("loop_stderr", n_par) if "loop_stderr" in ds else
        np.full((n, n_par), np.nan), param_names=tuple(str(p) for p in ds["loop_params"].coords.get(
            "param", np.arange(n_par)).values), r2=flat("loop_r2"),
        converged=flat("loop_converged") if "loop_converged" in ds else np.isfinite(flat("loop_r2")),
        status=flat("loop_status") if "loop_status" in ds else np.zeros(n, int),
        n_iter=flat("loop_n_iter") if "loop_n_iter" in ds else np.zeros(n, int),
        fit=fit, metrics=metrics, voltage=v, descending=sweep_masks(v), starts=np.empty((n, 0, n_par)),
        model=str(ds["loop_params"].attrs.get(
            "model", "paper13")), grid=grid, units=str(ds["loop_fit"].attrs.get("units", "")) if "loop_fit" in ds
        else "")


def draw(ds: xr.Dataset, figdir: Path, **_: Any) -> list[tuple[str, Path]]:
    """``loop_maps.png`` and ``loop_examples.png`` from the ``loop_*`` variables."""
    res = result_from_dataset(ds)
    if res is None:
        return []
    out = [("loops", plot_loop_maps(res, figdir / "loop_maps.png"))]
    fitted = str(ds["loop_fit"].attrs.get("fitted_variable", "")) if "loop_fit" in ds else ""
    if fitted not in ds:
        fitted = "piezoresponse_clean" if "piezoresponse_clean" in ds else "piezoresponse"
    if fitted in ds:
        data = ds[fitted].transpose("row", "col", "step").values if res.grid else ds[fitted].values
        out.append(("loops", plot_loop_examples(res, data.reshape(res.r2.size, -1), figdir / "loop_examples.png")))
    return out
