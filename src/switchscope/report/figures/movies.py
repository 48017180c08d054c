"""Movies: frames rendered by blitting, written as GIF (imageio + pillow) and MP4 (imageio-ffmpeg)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._common import plt

__all__ = ["generator_frames", "training_frames", "write_movie"]


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


def _panel_grid(n: int, width: float, height: float) -> tuple[plt.Figure, list]:
    """A figure with ``n`` panels, four to a row (the rest of the grid switched off)."""
    ncols = min(4, n)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows + 0.4), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat[:n])


def _record(fig: plt.Figure, artists: Sequence, title: Any, n_frames: int, update) -> list[np.ndarray]:
    """Frames of ``fig``: ``update(k)`` changes the artists for frame ``k``; only they are redrawn."""
    fig.tight_layout()
    blit = _Blitter(fig, [*artists, title])
    frames = []
    for k in range(n_frames):
        update(k)
        frames.append(blit.frame())
    plt.close(fig)
    return frames


def training_frames(history: np.ndarray, epochs: np.ndarray, neurons: Sequence[int], channel: str) -> list[np.ndarray]:
    """Frames of embedding maps at each checkpoint; ``history`` is (checkpoint, rows, cols, neurons).

    Each neuron keeps one colour scale over all checkpoints, so a growing feature looks brighter.
    """
    neurons = list(neurons)
    fig, axes = _panel_grid(len(neurons), 2.0, 2.0)
    ims = []
    for ax, j in zip(axes, neurons):
        ax.set_xticks([])
        ax.set_yticks([])
        h = history[..., j]
        hi = float(np.nanmax(h)) if np.isfinite(h).any() else 1.0
        lo = float(np.nanmin(h)) if np.isfinite(h).any() else 0.0
        ims.append(ax.imshow(history[0, ..., j], cmap="viridis", vmin=lo, vmax=hi if hi > lo else lo + 1))
        ax.set_title(f"neuron {j}", fontsize=8)
    title = fig.suptitle(f"{channel} embedding, epoch {int(epochs[-1])}", fontsize=10)

    def update(k: int) -> None:
        for im, j in zip(ims, neurons):
            im.set_data(history[k, ..., j])
        title.set_text(f"{channel} embedding, epoch {int(epochs[k])}")

    return _record(fig, ims, title, history.shape[0], update)


def generator_frames(curves: np.ndarray, levels: np.ndarray, voltage: np.ndarray, neurons: Sequence[int],
                     channel: str) -> list[np.ndarray]:
    """Frames over levels: for each neuron, all generated curves faint and the current one bold."""
    neurons = list(neurons)
    fig, axes = _panel_grid(len(neurons), 2.6, 2.2)
    lines = []
    for ax, j in zip(axes, neurons):
        for li in range(curves.shape[1]):
            ax.plot(voltage, curves[j, li], color="0.85", lw=0.6)
        (ln,) = ax.plot(voltage, curves[j, 0], color="C3", lw=1.6)
        lines.append(ln)
        ax.set_title(f"neuron {j}", fontsize=8)
        ax.tick_params(labelsize=6)
    title = fig.suptitle(f"{channel} generator, level {curves.shape[1]}/{curves.shape[1]}", fontsize=10)

    def update(li: int) -> None:
        for ln, j in zip(lines, neurons):
            ln.set_ydata(curves[j, li])
        title.set_text(f"{channel} generator, level {li + 1}/{curves.shape[1]}")

    return _record(fig, lines, title, curves.shape[1], update)
