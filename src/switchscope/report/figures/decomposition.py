"""Figures of the linear baselines: PCA, NMF and cluster maps with their mean loops.

Every function reads the variables that :func:`switchscope.decomposition.decompose_dataset` added
to a Dataset and draws them; nothing is refitted here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..._errors import DataError
from ._common import matplotlib, plt, save

__all__ = ["draw", "plot_all", "plot_clusters", "plot_nmf", "plot_pca"]


def _need(ds: xr.Dataset, names: list[str]) -> None:
    missing = [n for n in names if n not in ds]
    if missing:
        raise DataError(f"the Dataset lacks {', '.join(missing)}; run switchscope.decomposition."
                        "decompose_dataset first")


def _x_axis(ds: xr.Dataset) -> tuple[np.ndarray, str]:
    if "voltage" in ds.coords:
        return np.asarray(ds["voltage"].values, dtype=float), "voltage (V)"
    return np.arange(ds.sizes["step"], dtype=float), "step"


def _segments(x: np.ndarray) -> list[slice]:
    """Pieces of the waveform where the voltage runs one way (a shaded band per branch), cut at
    each turning point; repeated voltages (a dwell at a peak) stay with the sweep they lie on."""
    from ...waveform import descending_steps

    if x.size < 3:
        return [slice(0, x.size)]
    down = descending_steps(x)  # down[i]: the direction of the step that leaves point i
    cuts = [0, *(np.flatnonzero(down[1:-1] != down[:-2]) + 1).tolist(), x.size - 1]
    return [slice(a, b + 1) for a, b in zip(cuts[:-1], cuts[1:])]


def _map(ax: Any, img: np.ndarray, title: str, cmap: str = "viridis", **kw: Any) -> Any:
    im = ax.imshow(img, cmap=cmap, interpolation="nearest", **kw)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def _save(fig: Any, path: Path | None) -> Any:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    return save(fig, path, dpi=110)


def _grid(da: xr.DataArray) -> bool:
    return da.dims[:2] == ("row", "col")


def plot_pca(ds: xr.Dataset, path: str | Path | None, *, suffix: str = "", n_show: int = 8) -> Any:
    """Score maps with each component beside it, and the explained variance.

    Parameters
    ----------
    ds : xarray.Dataset
        With ``pca_scores`` (row, col, pca_component), ``pca_components`` (pca_component, step),
        ``pca_explained_variance_ratio`` (pca_component).
    path : path
        PNG file to write.
    suffix : str
        Variable suffix of an extra channel (``"_resonance"``).
    n_show : int
        Components to draw.
    """
    names = [f"pca_scores{suffix}", f"pca_components{suffix}", f"pca_explained_variance_ratio{suffix}"]
    _need(ds, names)
    scores, comps, ratio = (ds[n] for n in names)
    if not _grid(scores):
        raise DataError("pca_scores has no (row, col) grid; maps need gridded data")
    x, xlabel = _x_axis(ds)
    k = min(n_show, comps.sizes["pca_component"])
    ncol = 4  # two (map, curve) pairs per row
    nrow = int(np.ceil(k / 2)) + 1
    fig = plt.figure(figsize=(10, 2.1 * nrow))
    gs = fig.add_gridspec(nrow, ncol)
    ax = fig.add_subplot(gs[0, :])
    r = np.asarray(ratio.values)
    ax.bar(np.arange(r.size), r, color="0.6", label="per component")
    ax.plot(np.arange(r.size), np.cumsum(r), "o-", color="C3", ms=3, label="cumulative")
    ax.set_xlabel("component")
    ax.set_ylabel("variance fraction")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.set_title(f"PCA of {scores.attrs.get('channel', '')}: explained variance", fontsize=9)
    for i in range(k):
        row, col = 1 + i // 2, 2 * (i % 2)
        s = np.asarray(scores.values[..., i])
        lim = np.nanpercentile(np.abs(s), 99) or 1.0
        im = _map(fig.add_subplot(gs[row, col]), s, f"score {i} ({100 * r[i]:.1f}%)", "RdBu_r",
                  vmin=-lim, vmax=lim)
        bar = fig.colorbar(im, ax=im.axes, fraction=0.046, pad=0.02)
        bar.ax.tick_params(labelsize=6)
        bar.set_label("to 99 % of |score|", fontsize=5)
        axc = fig.add_subplot(gs[row, col + 1])
        axc.plot(x, np.asarray(comps.values[i]), color="C0", lw=1)
        axc.axhline(0, color="0.7", lw=0.5)
        axc.set_title(f"component {i}", fontsize=8)
        axc.tick_params(labelsize=6)
        if row == nrow - 1:
            axc.set_xlabel(xlabel, fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_nmf(ds: xr.Dataset, path: str | Path | None, *, suffix: str = "") -> Any:
    """NMF abundance maps, each above its endmember curve.

    Parameters
    ----------
    ds : xarray.Dataset
        With ``nmf_abundances`` (row, col, nmf_component) and ``nmf_components`` (nmf_component, step).
    path : path
        PNG file to write.
    suffix : str
        Variable suffix of an extra channel.
    """
    names = [f"nmf_abundances{suffix}", f"nmf_components{suffix}"]
    _need(ds, names)
    ab, comps = ds[names[0]], ds[names[1]]
    if not _grid(ab):
        raise DataError("nmf_abundances has no (row, col) grid; maps need gridded data")
    x, xlabel = _x_axis(ds)
    k = comps.sizes["nmf_component"]
    fig, axes = plt.subplots(2, k, figsize=(2.6 * k, 5.0), squeeze=False)
    for i in range(k):
        im = _map(axes[0, i], np.asarray(ab.values[..., i]), f"abundance {i}")
        fig.colorbar(im, ax=axes[0, i], fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
        axes[1, i].plot(x, np.asarray(comps.values[i]), color=f"C{i}")
        axes[1, i].set_title(f"endmember {i}", fontsize=8)
        axes[1, i].set_xlabel(xlabel, fontsize=7)
        axes[1, i].tick_params(labelsize=6)
    fig.suptitle(f"NMF of {ab.attrs.get('channel', '')} (relative error "
                 f"{ab.attrs.get('relative_error', float('nan')):.3f})", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _curves(ds: xr.Dataset, channel: str) -> tuple[np.ndarray, str]:
    name = f"{channel}_clean" if f"{channel}_clean" in ds else channel
    if name not in ds:
        raise DataError(f"channel {channel!r} is not in the Dataset; give one of its channels")
    da = ds[name]
    return np.asarray(da.values, dtype=float).reshape(-1, da.sizes["step"]), str(da.attrs.get("units", ""))


def plot_clusters(ds: xr.Dataset, path: str | Path | None, *, name: str = "divisive", channel: str | None = None,
                  suffix: str = "") -> Path:
    """Cluster map and the mean loop (± one standard deviation) of each cluster in its colour.

    For a divisive clustering the top-level map is drawn too.

    Parameters
    ----------
    ds : xarray.Dataset
        With ``cluster_<name><suffix>`` (row, col) and the curves of ``channel``.
    path : path
        PNG file to write.
    name : str
        ``"divisive"`` or ``"kmeans_pca"``.
    channel : str, optional
        Curves to average (default: the channel the clusters were found on, then piezoresponse).
    suffix : str
        Variable suffix of an extra channel.
    """
    var = f"cluster_{name}{suffix}"
    _need(ds, [var])
    lab_da = ds[var]
    if not _grid(lab_da):
        raise DataError(f"{var} has no (row, col) grid; maps need gridded data")
    channel = channel or str(lab_da.attrs.get("channel") or "piezoresponse")
    curves, units = _curves(ds, channel)
    labels = np.asarray(lab_da.values).astype(int)
    flat = labels.ravel()
    k = int(flat.max()) + 1
    cmap = plt.get_cmap("tab10" if k <= 10 else "tab20", max(k, 2))
    colors = [cmap(i) for i in range(k)]
    top_var = f"cluster_{name}_top{suffix}"
    has_top = top_var in ds
    x, xlabel = _x_axis(ds)
    ncols = 3 if has_top else 2
    fig, axes = plt.subplots(1, ncols, figsize=(4.2 * ncols, 4.0), squeeze=False)
    axes = axes[0]
    col = 0
    if has_top:
        top = np.asarray(ds[top_var].values).astype(int)
        kt = int(top.max()) + 1
        _map(axes[0], top, "top-level split (0 = larger loops)",
             matplotlib.colors.ListedColormap(["0.25", "0.8", "C1", "C2"][:max(kt, 2)]),
             vmin=-0.5, vmax=max(kt, 2) - 0.5)
        col = 1
    _map(axes[col], labels, f"{name} clusters", matplotlib.colors.ListedColormap(colors),
         vmin=-0.5, vmax=k - 0.5)
    ax = axes[col + 1]
    segs = _segments(x)
    for i in range(k):
        members = curves[flat == i]
        if members.size == 0:
            continue
        mean, std = members.mean(axis=0), members.std(axis=0)
        ax.plot(x, mean, color=colors[i], lw=1.3, label=f"{i} (n={members.shape[0]})")
        for s in segs:
            ax.fill_between(x[s], (mean - std)[s], (mean + std)[s], color=colors[i], alpha=0.15, lw=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{channel} ({units})" if units else channel)
    ax.set_title("mean loop ± 1 std per cluster", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return _save(fig, path)


def plot_all(ds: xr.Dataset, folder: str | Path, *, suffix: str = "") -> list[Path]:
    """Every decomposition figure whose variables ``ds`` holds: ``pca``, ``nmf``,
    ``clusters_divisive``, ``clusters_kmeans_pca`` (``<name><suffix>.png``). Returns the written paths."""
    folder = Path(folder)
    jobs = []
    if f"pca_scores{suffix}" in ds:
        jobs.append(lambda: plot_pca(ds, folder / f"pca{suffix}.png", suffix=suffix))
    if f"nmf_abundances{suffix}" in ds:
        jobs.append(lambda: plot_nmf(ds, folder / f"nmf{suffix}.png", suffix=suffix))
    for name in ("divisive", "kmeans_pca"):
        if f"cluster_{name}{suffix}" in ds:
            jobs.append(lambda name=name: plot_clusters(ds, folder / f"clusters_{name}{suffix}.png", name=name,
                                                        suffix=suffix))
    out = []
    for job in jobs:
        try:
            out.append(job())
        except DataError:  # results of a partial run: a figure whose variables are missing is left out
            continue
    return out


def draw(ds: xr.Dataset, figdir: Path, **_: Any) -> list[tuple[str, Path]]:
    """:func:`plot_all` for the main channel and each extra channel (``pca_scores_<channel>``)."""
    suffixes = [""] + sorted({m[1] for v in ds.data_vars if (m := re.fullmatch(r"pca_scores(_\w+)", str(v)))})
    out: list[tuple[str, Path]] = []
    for suffix in suffixes:
        if f"pca_scores{suffix}" in ds or f"cluster_divisive{suffix}" in ds:
            out += [("decomposition", p) for p in plot_all(ds, figdir, suffix=suffix)]
    return out
