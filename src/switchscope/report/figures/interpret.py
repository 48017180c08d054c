"""Figures and movies of the ``interpret`` stage: generated loops per neuron, cross-channel loops,
generator movies; drawn from ``generated_<channel>`` in the results."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np
import xarray as xr

from ..._dataset import CHANNELS
from ._common import plt, save
from .movies import generator_frames, write_movie


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
    return save(fig, path)




def draw(ds: xr.Dataset, figdir: Path, *, moviedir: Path | None = None, fps: float = 4.0,
         **_: Any) -> list[tuple[str, Path]]:
    """``generated_<channel>.png``, ``generated_piezoresponse_from_resonance.png``,
    ``generated_joint_<channel>.png`` (the joint network's sweeps, one figure per channel) and, with
    ``moviedir``, ``generator_<channel>.gif``/``.mp4`` (also ``generator_joint_<channel>``)."""
    out: list[tuple[str, Path]] = []
    if "voltage" not in ds.coords:
        return out
    voltage = np.asarray(ds["voltage"].values, dtype=float)
    for ch in CHANNELS:
        for gen_name, label in ((f"generated_{ch}", f"{ch}: generated loops per neuron"),
                                (f"generated_{ch}_from_resonance",
                                 f"{ch} of the pixels selected by the resonance generator"),
                                (f"generated_joint_{ch}", f"joint network, {ch}: generated loops per joint neuron")):
            if gen_name not in ds:
                continue
            curves = ds[gen_name].transpose("neuron", "level", "step").values
            levels = ds[f"{gen_name}_level"].values
            neurons = np.flatnonzero(np.isfinite(curves).any(axis=(1, 2)))
            if not neurons.size:
                continue
            section = "cross" if gen_name.endswith("_from_resonance") else "generated"
            out.append((section, plot_generated(curves, levels, voltage, neurons, figdir / f"{gen_name}.png",
                                                title=label, units=str(ds[gen_name].attrs.get("units", "")))))
            if moviedir is not None and not gen_name.endswith("_from_resonance"):
                label_ch = gen_name.removeprefix("generated_")  # <channel> or joint_<channel>
                frames = generator_frames(curves, levels, voltage, neurons, label_ch)
                out += [("movies", p) for p in write_movie(frames, moviedir / f"generator_{label_ch}", fps=fps)]
    return out
