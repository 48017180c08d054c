"""Figures and movies of the ``autoencoder`` stage: embedding maps, training curves (from
``models/<channel>/metrics.csv``), reconstruction error maps, training movies."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..._dataset import CHANNELS
from ._common import active, plot_maps, plt, save
from .movies import training_frames, write_movie


def reconstruction_error(ds: xr.Dataset, channel: str) -> np.ndarray | None:
    """Per-pixel mean squared error ``(rows, cols)`` of ``reconstruction_<channel>``.

    In normalized units (divided by ``norm_std**2`` of ``<channel>_clean`` when known, by each
    pixel's own ``<channel>_norm_std`` squared under per-pixel normalization), so it is comparable
    with the training loss; None when the variables are absent. ``channel = "joint_<channel>"``
    scores that channel of the joint network (``reconstruction_joint_<channel>``).
    """
    rec, ref = f"reconstruction_{channel}", f"{channel}_clean"
    emb = ds.get(f"embedding_{channel}")
    if channel.startswith("joint_"):
        # the joint network keeps each channel's normalization under attrs suffixed _<channel>
        own = channel.removeprefix("joint_")
        ref, joint = f"{own}_clean", ds.get("embedding_joint")
        emb = None if joint is None else xr.DataArray(0, attrs={
            k.removesuffix(f"_{own}"): v for k, v in joint.attrs.items() if k.endswith(f"_{own}")})
    if emb is not None and str(emb.attrs.get("normalized_variable", "")) in ds:
        ref = str(emb.attrs["normalized_variable"])  # the variable the network was trained on
    if rec not in ds or ref not in ds:
        return None
    diff = ds[rec].transpose("row", "col", "step").values - ds[ref].transpose("row", "col", "step").values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels stay NaN
        mse = np.nanmean(diff**2, axis=-1)
    if emb is not None and str(emb.attrs.get("normalization", "")) == "pixel":
        std_var = str(emb.attrs.get("norm_std_variable", f"{channel}_norm_std"))
        return mse / ds[std_var].transpose("row", "col").values ** 2 if std_var in ds else mse
    std = emb.attrs.get("norm_std") if emb is not None and "norm_std" in emb.attrs else ds[ref].attrs.get("norm_std")
    if std is not None and np.isfinite(float(np.ravel(std)[0])) and float(np.ravel(std)[0]) > 0:
        mse = mse / float(np.ravel(std)[0]) ** 2
    return mse



def _training_curve(metrics_csv: Path, channel: str, path: Path) -> Path | None:
    try:
        with open(metrics_csv, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, csv.Error, UnicodeDecodeError):
        return None

    def column(name: str) -> np.ndarray:
        return np.array([float(r[name]) if r.get(name) not in (None, "") else np.nan for r in rows])

    if len(rows) < 2 or "epoch" not in rows[0]:
        return None
    epoch = column("epoch")
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.semilogy(epoch, column("mse"), label="training MSE")
    val = column("val_mse") if "val_mse" in rows[0] else None
    if val is not None and np.isfinite(val).any():
        ax.semilogy(epoch, val, label="validation MSE")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE (normalized loops)")
    ax.set_title(f"{channel} autoencoder training")
    ax.legend()
    fig.tight_layout()
    return save(fig, path, dpi=90)


def draw(ds: xr.Dataset, figdir: Path, *, run_dir: Path | None = None, moviedir: Path | None = None,
         fps: float = 4.0, **_: Any) -> list[tuple[str, Path]]:
    """``embedding_<channel>.png`` (active neurons, full colour range; ``embedding_joint.png`` for
    the joint network), ``training_<channel>.png``
    (when ``run_dir/models/<channel>/metrics.csv`` exists), ``reconstruction_error.png`` and, with
    ``moviedir``, ``training_<channel>.gif``/``.mp4`` (when there is a training history)."""
    out: list[tuple[str, Path]] = []
    for ch in (*CHANNELS, "joint"):
        emb_name = f"embedding_{ch}"
        if emb_name not in ds:
            continue
        emb = ds[emb_name].transpose("row", "col", ...).values
        act = active(emb)
        if act.size:
            out.append(("embedding", plot_maps(
                [(f"neuron {j}", emb[..., j]) for j in act], figdir / f"embedding_{ch}.png",
                title=f"{ch} embedding: active neurons ({act.size} of {emb.shape[-1]})", clip=False)))
        if run_dir is not None:
            curve = _training_curve(Path(run_dir) / "models" / ch / "metrics.csv", ch, figdir / f"training_{ch}.png")
            if curve is not None:
                out.append(("autoencoder", curve))
        hist_name = f"embedding_history_{ch}"
        # a movie only of a training history: the published networks have one checkpoint
        own = (np.ravel(ds[hist_name].attrs.get("own_checkpoint_epochs", ds[hist_name].coords.get(
            "checkpoint_epoch", []))) if hist_name in ds else [])
        if moviedir is not None and hist_name in ds and len(np.unique(own)) > 1:
            hist = ds[hist_name].transpose("checkpoint", "row", "col", "neuron").values
            epochs = (ds["checkpoint_epoch"].values if "checkpoint_epoch" in ds.coords
                      else np.arange(hist.shape[0]))
            # only this channel's own checkpoints: on the axis shared with the other channel a frame
            # would be labelled with an epoch at which this network saved nothing
            keep = np.isin(epochs, own) if len(own) else np.ones(len(epochs), bool)
            hist, epochs = hist[keep], epochs[keep]
            act_h = active(hist[-1])
            if act_h.size:
                out += [("movies", p) for p in
                        write_movie(training_frames(hist, epochs, act_h, ch), moviedir / f"training_{ch}", fps=fps)]
    errs = [(f"{ch} MSE".replace("joint_", "joint network: "), e)
            for ch in (*CHANNELS, *(f"joint_{c}" for c in CHANNELS))
            if (e := reconstruction_error(ds, ch)) is not None]
    if errs:
        out.append(("reconstruction", plot_maps(
            errs, figdir / "reconstruction_error.png",
            title="autoencoder reconstruction error per pixel (normalized units)", cmap="magma")))
    return out
