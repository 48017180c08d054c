"""Figures and movies of the interpretation and of the report's own overview panels.

Everything here renders arrays that are already in the Dataset; nothing is refitted. Figures are
PNG files written with matplotlib's Agg backend; movies are GIF (imageio + pillow) and MP4
(imageio + imageio-ffmpeg).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterable, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: never open a window, and work on headless machines

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from .._dataset import CHANNELS  # noqa: E402

__all__ = [
    "interpretation_figures",
    "interpretation_movies",
    "overview_figures",
    "plot_generated",
    "plot_maps",
    "write_movie",
]

DPI = 80


def _active(emb: np.ndarray) -> np.ndarray:
    from ..interpret import active_neurons

    return np.flatnonzero(active_neurons(emb.reshape(-1, emb.shape[-1])))


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_maps(maps: Sequence[tuple[str, np.ndarray]], path: Path, *, title: str = "",
              cmap: str = "viridis", ncols: int = 4) -> Path:
    """A grid of images, one per ``(title, array (rows, cols))``; written to ``path`` (PNG)."""
    n = len(maps)
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.5 * nrows + 0.4), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (name, img) in zip(axes.flat, maps):
        img = np.asarray(img, dtype=float)
        finite = np.isfinite(img)
        lo, hi = (np.percentile(img[finite], [1, 99]) if finite.any() else (0.0, 1.0))
        im = ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def plot_generated(curves: np.ndarray, levels: np.ndarray, voltage: np.ndarray, neurons: Iterable[int],
                   path: Path, *, title: str, units: str = "") -> Path:
    """One panel per neuron with its generated curves coloured by activation level.

    Parameters
    ----------
    curves : ndarray of shape (n_neurons, n_levels, n_steps)
    levels : ndarray of shape (n_neurons, n_levels)
    voltage : ndarray of shape (n_steps,)
    """
    neurons = list(neurons)
    n = max(1, len(neurons))
    ncols = min(4, n)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.0 * ncols, 2.4 * nrows + 0.4), squeeze=False)
    for ax in axes.flat[len(neurons):]:
        ax.axis("off")
    cmap = plt.get_cmap("viridis")
    for ax, j in zip(axes.flat, neurons):
        n_lv = curves.shape[1]
        for li in range(n_lv):
            ax.plot(voltage, curves[j, li], color=cmap(li / max(1, n_lv - 1)), lw=0.9)
        ax.set_title(f"neuron {j} (0 to {levels[j, -1]:.3g})", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("voltage (V)", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel(units, fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def _units(ds: xr.Dataset, var: str, channel: str) -> str:
    return str(ds[var].attrs.get("units", CHANNELS.get(channel, ""))) if var in ds else CHANNELS.get(channel, "")


def interpretation_figures(ds: xr.Dataset, figdir: Path, *, overwrite: bool = True) -> list[Path]:
    """Embedding maps, generated loops per neuron and cross-channel loops found in ``ds``.

    Writes ``embedding_<channel>.png``, ``generated_<channel>.png`` and
    ``generated_piezoresponse_from_resonance.png`` into ``figdir`` (existing files are kept
    when ``overwrite`` is false). Returns the paths written or kept.
    """
    figdir = Path(figdir)
    figdir.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    voltage = np.asarray(ds["voltage"].values, dtype=float) if "voltage" in ds.coords else None
    for ch in CHANNELS:
        emb_name = f"embedding_{ch}"
        if emb_name in ds:
            path = figdir / f"embedding_{ch}.png"
            if overwrite or not path.exists():
                emb = ds[emb_name].transpose("row", "col", ...).values
                act = _active(emb)
                if act.size:
                    plot_maps([(f"neuron {j}", emb[..., j]) for j in act], path,
                              title=f"{ch} embedding: active neurons ({act.size} of {emb.shape[-1]})")
            if path.exists():
                out.append(path)
        for gen_name, label in ((f"generated_{ch}", f"{ch}: generated loops per neuron"),
                                (f"generated_{ch}_from_resonance",
                                 f"{ch} of the pixels selected by the resonance generator")):
            if gen_name not in ds or voltage is None:
                continue
            path = figdir / f"{gen_name}.png"
            if overwrite or not path.exists():
                curves = ds[gen_name].transpose("neuron", "level", "step").values
                levels = ds[f"{gen_name}_level"].values
                neurons = np.flatnonzero(np.isfinite(curves).any(axis=(1, 2)))
                if neurons.size:
                    plot_generated(curves, levels, voltage, neurons, path, title=label,
                                   units=str(ds[gen_name].attrs.get("units", "")))
            if path.exists():
                out.append(path)
    return out


def reconstruction_error(ds: xr.Dataset, channel: str) -> np.ndarray | None:
    """Per-pixel mean squared error ``(rows, cols)`` of ``reconstruction_<channel>``.

    In normalized units (divided by ``norm_std**2`` of ``<channel>_clean`` when known), so it is
    comparable with the training loss; None when the variables are absent.
    """
    rec, ref = f"reconstruction_{channel}", f"{channel}_clean"
    if rec not in ds or ref not in ds:
        return None
    diff = ds[rec].transpose("row", "col", "step").values - ds[ref].transpose("row", "col", "step").values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels stay NaN
        mse = np.nanmean(diff**2, axis=-1)
    std = ds[ref].attrs.get("norm_std")
    if std is not None and np.isfinite(float(np.ravel(std)[0])) and float(np.ravel(std)[0]) > 0:
        mse = mse / float(np.ravel(std)[0]) ** 2
    return mse


def overview_figures(ds: xr.Dataset, figdir: Path, existing: Sequence[str]) -> list[Path]:
    """The report's own panels: reconstruction error maps, and map overviews of loop fits and
    linear baselines when no helper wrote figures for them (``existing``: PNG names present)."""
    figdir = Path(figdir)
    figdir.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    errs = [(f"{ch} MSE", e) for ch in CHANNELS if (e := reconstruction_error(ds, ch)) is not None]
    if errs:
        out.append(plot_maps(errs, figdir / "reconstruction_error.png",
                             title="autoencoder reconstruction error per pixel (normalized units)", cmap="magma"))
    grid = ("row", "col")
    if not any(n.startswith("loop") for n in existing):
        maps = [(v, ds[v].values) for v in ds.data_vars
                if str(v).startswith("loop_") and ds[v].dims == grid and ds[v].dtype.kind in "fiub"]
        if maps:
            out.append(plot_maps(maps[:16], figdir / "loops_overview.png", title="loop-fit maps"))
    if not any(n.startswith(("decomposition", "pca", "nmf", "cluster", "kmeans")) for n in existing):
        maps = []
        if "pca_scores" in ds:
            s = ds["pca_scores"].transpose("row", "col", ...).values
            maps += [(f"PCA score {k}", s[..., k]) for k in range(min(4, s.shape[-1]))]
        if "nmf_abundances" in ds:
            a = ds["nmf_abundances"].transpose("row", "col", ...).values
            maps += [(f"NMF abundance {k}", a[..., k]) for k in range(min(4, a.shape[-1]))]
        maps += [(v, ds[v].values) for v in ds.data_vars if str(v).startswith("cluster_") and ds[v].dims == grid]
        if maps:
            out.append(plot_maps(maps, figdir / "decomposition_overview.png", title="linear baselines"))
    return out


# ---------------------------------------------------------------------------------------------
# movies
# ---------------------------------------------------------------------------------------------
class _Blitter:
    """Renders frames by redrawing only the changing artists over a cached background.

    A full matplotlib redraw (axes, ticks, labels) costs ~0.1-0.3 s per frame; blitting the few
    changing artists is an order of magnitude cheaper.
    """

    def __init__(self, fig: plt.Figure, artists: Sequence) -> None:
        self.fig, self.artists = fig, list(artists)
        for a in self.artists:
            a.set_animated(True)
        fig.canvas.draw()
        self.background = fig.canvas.copy_from_bbox(fig.bbox)

    def frame(self) -> np.ndarray:
        canvas = self.fig.canvas
        canvas.restore_region(self.background)
        for a in self.artists:
            self.fig.draw_artist(a)
        return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def write_movie(frames: Sequence[np.ndarray], stem: Path, *, fps: float = 4.0) -> list[Path]:
    """Write ``frames`` (each (height, width, 3) uint8) as ``stem.gif`` and ``stem.mp4``.

    The GIF is written by imageio's pillow plugin; the MP4 (H.264) by imageio-ffmpeg, skipped with
    a warning when that package is not installed. Frames are padded to a multiple of 16 pixels,
    the macro-block size of H.264.
    """
    import imageio.v2 as iio2
    import imageio.v3 as iio

    stem = Path(stem)
    h = max(f.shape[0] for f in frames)
    w = max(f.shape[1] for f in frames)
    H, W = -(-h // 16) * 16, -(-w // 16) * 16
    padded = np.full((len(frames), H, W, 3), 255, dtype=np.uint8)
    for i, f in enumerate(frames):
        padded[i, : f.shape[0], : f.shape[1]] = f
    gif = stem.with_suffix(".gif")
    iio.imwrite(gif, padded, plugin="pillow", duration=int(round(1000 / fps)), loop=0)
    written = [gif]
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        warnings.warn("imageio-ffmpeg is not installed, so no MP4 movie was written; "
                      "pip install imageio-ffmpeg", stacklevel=2)
        return written
    mp4 = stem.with_suffix(".mp4")
    writer = iio2.get_writer(mp4, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                             pixelformat="yuv420p", macro_block_size=16, ffmpeg_log_level="error")
    try:
        for f in padded:
            writer.append_data(f)
    finally:
        writer.close()
    written.append(mp4)
    return written


def training_frames(history: np.ndarray, epochs: np.ndarray, neurons: Sequence[int], channel: str) -> list[np.ndarray]:
    """Frames of embedding maps at each checkpoint; ``history`` is (checkpoint, rows, cols, neurons).

    Each neuron keeps one colour scale over all checkpoints, so a growing feature looks brighter.
    """
    neurons = list(neurons)
    n = len(neurons)
    ncols = min(4, n)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.0 * ncols, 2.0 * nrows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes.flat[n:]:
        ax.axis("off")
    ims = []
    for ax, j in zip(axes.flat, neurons):
        h = history[..., j]
        hi = float(np.nanmax(h)) if np.isfinite(h).any() else 1.0
        lo = float(np.nanmin(h)) if np.isfinite(h).any() else 0.0
        ims.append(ax.imshow(history[0, ..., j], cmap="viridis", vmin=lo, vmax=hi if hi > lo else lo + 1))
        ax.set_title(f"neuron {j}", fontsize=8)
    title = fig.suptitle(f"{channel} embedding, epoch {int(epochs[-1])}", fontsize=10)
    fig.tight_layout()
    blit = _Blitter(fig, [*ims, title])
    frames = []
    for k in range(history.shape[0]):
        for im, j in zip(ims, neurons):
            im.set_data(history[k, ..., j])
        title.set_text(f"{channel} embedding, epoch {int(epochs[k])}")
        frames.append(blit.frame())
    plt.close(fig)
    return frames


def generator_frames(curves: np.ndarray, levels: np.ndarray, voltage: np.ndarray, neurons: Sequence[int],
                     channel: str) -> list[np.ndarray]:
    """Frames over levels: for each neuron, all generated curves faint and the current one bold."""
    neurons = list(neurons)
    n = len(neurons)
    ncols = min(4, n)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.2 * nrows + 0.4), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    lines = []
    for ax, j in zip(axes.flat, neurons):
        for li in range(curves.shape[1]):
            ax.plot(voltage, curves[j, li], color="0.85", lw=0.6)
        (ln,) = ax.plot(voltage, curves[j, 0], color="C3", lw=1.6)
        lines.append(ln)
        ax.set_title(f"neuron {j}", fontsize=8)
        ax.tick_params(labelsize=6)
    title = fig.suptitle(f"{channel} generator, level {curves.shape[1]}/{curves.shape[1]}", fontsize=10)
    fig.tight_layout()
    blit = _Blitter(fig, [*lines, title])
    frames = []
    for li in range(curves.shape[1]):
        for ln, j in zip(lines, neurons):
            ln.set_ydata(curves[j, li])
        title.set_text(f"{channel} generator, level {li + 1}/{curves.shape[1]}")
        frames.append(blit.frame())
    plt.close(fig)
    return frames


def interpretation_movies(ds: xr.Dataset, moviedir: Path, *, fps: float = 4.0) -> list[Path]:
    """Training movies (from ``embedding_history_<channel>``) and generator movies (from
    ``generated_<channel>``), each as GIF and MP4, into ``moviedir``. Returns the paths written."""
    moviedir = Path(moviedir)
    moviedir.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    for ch in CHANNELS:
        hist_name = f"embedding_history_{ch}"
        if hist_name in ds and ds[hist_name].sizes.get("checkpoint", 0) > 0:
            hist = ds[hist_name].transpose("checkpoint", "row", "col", "neuron").values
            epochs = (ds["checkpoint_epoch"].values if "checkpoint_epoch" in ds.coords
                      else np.arange(hist.shape[0]))
            act = _active(hist[-1])
            if act.size:
                out += write_movie(training_frames(hist, epochs, act, ch), moviedir / f"training_{ch}", fps=fps)
        gen_name = f"generated_{ch}"
        if gen_name in ds and "voltage" in ds.coords:
            curves = ds[gen_name].transpose("neuron", "level", "step").values
            neurons = np.flatnonzero(np.isfinite(curves).any(axis=(1, 2)))
            if neurons.size:
                frames = generator_frames(curves, ds[f"{gen_name}_level"].values,
                                          np.asarray(ds["voltage"].values, float), neurons, ch)
                out += write_movie(frames, moviedir / f"generator_{ch}", fps=fps)
    return out
