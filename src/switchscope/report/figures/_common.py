"""What every figure module shares: the Agg backend (set once, here), one save, map grids.

Figures render arrays already in the results; nothing is refitted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: never open a window, and work on headless machines

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 80


def active(emb: np.ndarray) -> np.ndarray:
    """Indices of the active neurons of an embedding ``(..., n_neurons)``."""
    from ..._embedding import active_neurons

    return np.flatnonzero(active_neurons(emb.reshape(-1, emb.shape[-1])))


def save(fig: plt.Figure, path: Path | None, dpi: int = DPI) -> Any:
    """Write ``fig`` to ``path`` (PNG), close it and return the path; with ``path=None`` return
    the open Figure (for notebooks: :mod:`switchscope.plot`)."""
    if path is None:
        return fig
    try:
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)
    return Path(path)


def plot_maps(maps: Sequence[tuple[str, np.ndarray]], path: Path | None, *, title: str = "",
              cmap: str = "viridis", ncols: int = 4, clip: bool = True) -> Path:
    """A grid of images, one per ``(title, array (rows, cols))``; written to ``path`` (PNG).

    With ``clip`` each colour scale spans the 1st to 99th percentile (a few failed pixels must
    not wash out a map) and its colour bar says so; otherwise the full finite range."""
    n = len(maps)
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.5 * nrows + 0.4), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (name, img) in zip(axes.flat, maps):
        img = np.asarray(img, dtype=float)
        finite = np.isfinite(img)
        if not finite.any():
            lo, hi = 0.0, 1.0
        elif clip:
            lo, hi = np.percentile(img[finite], [1, 99])
        else:
            lo, hi = float(img[finite].min()), float(img[finite].max())
        im = ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
        bar.ax.tick_params(labelsize=7)
        if clip:
            bar.set_label("1-99 % range", fontsize=6)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save(fig, path)
