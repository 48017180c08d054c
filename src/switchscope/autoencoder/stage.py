"""The ``autoencoder`` pipeline stage: one sparse LSTM autoencoder per channel.

For each channel of ``config.channels`` present in the data (``<channel>_clean`` when the clean
stage ran, else the raw channel), the loops are normalized as the clean stage chose (global,
robust or per pixel: :func:`~switchscope.preprocess.stored_stats`; without stored statistics, by
the global mean and std computed here; a variable whose attrs say ``normalized=1`` is used as is),
a network is trained (or, with
``ctx.pretrained == "paper"``, the published one is loaded), and the stage adds:

* ``embedding_<channel>`` (row, col, neuron): the sparse ReLU embedding;
* ``reconstruction_<channel>`` (row, col, step): the reconstructed loops in the units of the input;
* ``embedding_history_<channel>`` (checkpoint, row, col, neuron), coordinate ``checkpoint_epoch``:
  the embedding at improved checkpoints (the training movie); all channels share one
  ``checkpoint`` axis, the union of their checkpoint epochs (see :func:`_add_histories`);

and to ``ctx.summary["autoencoder"][channel]``: active neurons (see
:func:`~switchscope.autoencoder.active_neurons`), reconstruction MSE on the normalized loops (train,
validation, all pixels), epochs, seconds, and ``baselines``: the held-out error against the mean
loop and PCA with as many components as active neurons (fractions of the variance; a DataWarning
and a note in the report when the network is not clearly better than the mean loop). Models go to ``ctx.models/<channel>/`` (for the
published networks, a ``config.json`` that names them); the interpretation stage loads its
decoder from there, with the normalization recorded in the embedding's attributes. The stage
computes only: the report draws its figures from the results and ``models/``.

In a chunked run (dask-backed loops: :mod:`switchscope.chunked`), training is unchanged (in
memory), and the embedding and reconstructions of all pixels are computed chunk by chunk
(:func:`_chunk_inference`), written into the run's store and read back lazily; they equal the
in-process ones.

With ``config.joint`` (``[autoencoder] joint = true``) and at least two of the channels present,
one more network is trained on all of them at once (each step's input: one normalized value per
channel, in the order of ``config.channels``), after the per-channel ones, and the stage adds:

* ``embedding_joint`` (row, col, neuron), attrs ``channels`` (space-separated) and, per channel,
  the normalization (``norm_mean_<channel>``, ``norm_std_<channel>`` or, per pixel,
  ``norm_mean_variable_<channel>``, ``norm_std_variable_<channel>``);
* ``reconstruction_joint_<channel>`` (row, col, step), in the units of the input;
* ``embedding_history_joint`` on the shared ``checkpoint`` axis;

``ctx.summary["autoencoder"]["joint"]`` (as a channel's, plus ``channels`` and ``mse_per_channel``:
all pixels, normalized units) and the network in ``ctx.models/joint/``. The published networks
have no joint twin: with ``--pretrained paper`` the joint network is still trained.
"""

from __future__ import annotations

import json
import time
import warnings
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import xarray as xr

from .._baselines import compare, mean_loop_mse, pca_mse
from .._context import RunContext
from .._embedding import active_neurons
from .._errors import DataError, DataWarning
from .._grid import flatten, unflatten
from ..paper import PAPER_L1, PAPER_STEPS
from ..preprocess import NormStats, normalize, stored_stats
from ._options import AutoencoderConfig

if TYPE_CHECKING:
    from .train import Autoencoder

__all__ = ["stage", "AutoencoderConfig"]

#: Sequence length of the published networks.


def _normalization(ds: xr.Dataset, name: str, X: np.ndarray) -> NormStats:
    """The statistics that map ``X`` to the normalized loops the network sees: floats, or arrays
    of shape (n_pixels, 1) for per-pixel normalization."""
    attrs = ds[name].attrs
    flag = attrs.get("normalized", 0)
    if isinstance(flag, (bytes, str)):
        flag = flag.strip().lower() in {"1", "true", "yes"}
    if flag:
        return NormStats(0.0, 1.0)
    st = stored_stats(ds, name)
    if st is not None:
        return st
    if not X.std() > 0:
        raise DataError(f"{name} has the same value everywhere (std 0); an autoencoder cannot learn from it")
    return normalize(X)[1]


def _loops(ds: xr.Dataset, channel: str) -> tuple[str, np.ndarray, tuple[int, ...]] | None:
    name = f"{channel}_clean" if f"{channel}_clean" in ds else channel
    if name not in ds:
        return None
    X, grid = flatten(ds, name)
    X = np.asarray(X, dtype=np.float64)
    bad = ~np.isfinite(X)
    if bad.any():
        pix, step = np.argwhere(bad)[0]
        r, c = divmod(int(pix), grid[1]) if grid else (int(pix), 0)
        raise DataError(f"{name} holds {int(bad.sum())} NaN/Inf value(s) (first at row {r}, col {c}, step "
                        f"{int(step)}); run the clean stage first or fill them")
    assert grid is not None  # a Dataset variable always has the (row, col) grid
    return name, X, grid


def stage(ds: xr.Dataset, config: AutoencoderConfig, ctx: RunContext) -> xr.Dataset:
    """Train (or load) one autoencoder per channel and add its embedding and reconstruction.

    Parameters
    ----------
    ds : xarray.Dataset
        With ``<channel>`` or ``<channel>_clean`` of dims (row, col, step).
    config : AutoencoderConfig
    ctx : RunContext
        ``ctx.pretrained == "paper"`` loads the published networks (piezoresponse, resonance).

    Returns
    -------
    xarray.Dataset
        A new dataset with the variables listed in the module docstring.
    """
    if config.seed is None:
        config = config.replace(seed=int(ctx.seed))
    if config.device == "auto" and ctx.device not in ("auto", None):
        config = config.replace(device=str(ctx.device))
    out = ds.copy()
    section: dict[str, Any] = ctx.summary.setdefault("autoencoder", {})
    found = [c for c in config.channels if f"{c}_clean" in ds or c in ds]
    if not found:
        warnings.warn(f"the autoencoder stage found none of the channels {', '.join(config.channels)} in the data; "
                      "it added nothing (set [autoencoder] channels to ones the data has)", DataWarning, stacklevel=2)
        return out
    histories: dict[str, tuple[list, tuple[int, ...]]] = {}
    # a chunked run (dask-backed loops): training as in memory, inference chunk by chunk
    chunked = any(ds[n].chunks is not None for c in found for n in (f"{c}_clean", c) if n in ds)
    lazy: dict[str, xr.DataArray] = {}
    normalized: dict[str, tuple[np.ndarray, NormStats, str]] = {}
    for channel in found:
        loaded = _loops(ds, channel)
        assert loaded is not None
        name, X, grid = loaded
        st = _normalization(ds, name, X)
        mean, std = st.mean, st.std
        Xn = (X - mean) / std
        normalized[channel] = (Xn, st, name)
        t0 = time.perf_counter()
        names = (f"embedding_{channel}", (f"reconstruction_{channel}",))
        infer = _chunk_inference(ds, [(name, st)], grid, names, ctx, lazy) if chunked else None
        if ctx.pretrained == "paper" and channel in PAPER_L1:
            info, Z, R, hist, decode_n = _pretrained(channel, Xn, ctx, infer)
            tr = ev = np.arange(len(Xn))  # the published network saw none of these pixels' split
        else:
            info, Z, R, hist, decode_n, (tr, ev) = _train(channel, Xn, config, ctx, infer=infer)
        info["seconds"] = time.perf_counter() - t0
        active = active_neurons(Z)
        info.update(active_neurons=int(active.sum()), n_neurons=int(Z.shape[1]),
                    active_neuron_index=[int(i) for i in np.flatnonzero(active)],
                    mse_all=float(np.mean((R - Xn) ** 2)), variable=name,
                    normalization="pixel" if st.per_pixel else str(ds[name].attrs.get("normalization", "global")))
        info["baselines"] = _baselines(Xn, R, tr, ev, int(active.sum()), channel)
        if "warning" in info["baselines"]:
            warnings.warn(info["baselines"]["warning"], DataWarning, stacklevel=2)
        if st.per_pixel:  # the decoder's curves are in units of each pixel's own std
            norm = {"normalization": "pixel", "norm_mean_variable": f"{channel}_norm_mean",
                    "norm_std_variable": f"{channel}_norm_std"}
        else:
            norm = {"normalization": info["normalization"], "norm_mean": float(mean), "norm_std": float(std)}
            info.update(norm_mean=float(mean), norm_std=float(std))
        section[channel] = info

        units = ds[name].attrs.get("units", "")
        neuron = np.arange(Z.shape[1])
        out[f"embedding_{channel}"] = _result(
            lazy, f"embedding_{channel}", lambda: unflatten(Z, grid), dims=("row", "col", "neuron"),
            coords={"neuron": neuron}, attrs={"long_name": f"{channel} autoencoder embedding", "units": "1",
                   "active_threshold": 1e-6, "n_active": int(active.sum()), "source": info["source"],
                   # the decoder saved in models/<channel> works on loops normalized with these
                   **norm, "normalized_variable": name})
        out[f"reconstruction_{channel}"] = _result(
            lazy, f"reconstruction_{channel}", lambda: unflatten(R * std + mean, grid), dims=("row", "col", "step"),
            attrs={"long_name": f"{channel} reconstructed by the autoencoder", "units": units,
                   "mse_normalized": info["mse_all"]})
        histories[channel] = (hist, grid)
    if config.joint:
        if len(normalized) < 2:
            warnings.warn(f"[autoencoder] joint = true needs at least two channels, the data has "
                          f"{', '.join(normalized)}; no joint network was trained", DataWarning, stacklevel=2)
        else:
            histories["joint"] = _joint(ds, out, normalized, grid, config, ctx, section, lazy if chunked else None)
    _add_histories(out, histories)
    return out


def _joint(ds: xr.Dataset, out: xr.Dataset, normalized: dict[str, tuple[np.ndarray, NormStats, str]],
           grid: tuple[int, ...], config: AutoencoderConfig, ctx: RunContext,
           section: dict[str, Any], lazy: dict[str, xr.DataArray] | None = None) -> tuple[list, tuple[int, ...]]:
    """Train the joint network on the normalized channels stacked per step; add its variables to
    ``out`` and its summary to ``section["joint"]``; return its training history. With ``lazy``
    (a chunked run) its inference runs chunk by chunk (:func:`_chunk_inference`)."""
    channels = list(normalized)
    Xn = np.stack([normalized[c][0] for c in channels], axis=2)  # (n_pixels, n_steps, n_channels)
    t0 = time.perf_counter()
    infer = None
    if lazy is not None:
        names = ("embedding_joint", tuple(f"reconstruction_joint_{c}" for c in channels))
        infer = _chunk_inference(ds, [(normalized[c][2], normalized[c][1]) for c in channels], grid, names,
                                 ctx, lazy)
    else:
        lazy = {}
    info, Z, R, hist, _, (tr, ev) = _train("+".join(channels), Xn, config, ctx, folder="joint", infer=infer)
    info["seconds"] = time.perf_counter() - t0
    active = active_neurons(Z)
    n_active = int(active.sum())
    per_channel = {c: float(np.mean((R[..., k] - Xn[..., k]) ** 2)) for k, c in enumerate(channels)}
    info.update(channels=channels, active_neurons=n_active, n_neurons=int(Z.shape[1]),
                active_neuron_index=[int(i) for i in np.flatnonzero(active)],
                mse_all=float(np.mean((R - Xn) ** 2)), mse_per_channel=per_channel,
                variables=[normalized[c][2] for c in channels])
    n = len(Xn)
    info["baselines"] = _baselines(Xn.reshape(n, -1), R.reshape(n, -1), tr, ev, n_active, "joint")
    if "warning" in info["baselines"]:
        warnings.warn(info["baselines"]["warning"], DataWarning, stacklevel=3)
    norm: dict[str, Any] = {}
    for c in channels:
        st = normalized[c][1]
        if st.per_pixel:
            norm.update({f"normalization_{c}": "pixel", f"norm_mean_variable_{c}": f"{c}_norm_mean",
                         f"norm_std_variable_{c}": f"{c}_norm_std"})
        else:
            norm.update({f"normalization_{c}": str(ds[normalized[c][2]].attrs.get("normalization", "global")),
                         f"norm_mean_{c}": float(st.mean),
                         f"norm_std_{c}": float(st.std)})
        norm[f"normalized_variable_{c}"] = normalized[c][2]
    section["joint"] = info
    out["embedding_joint"] = _result(
        lazy, "embedding_joint", lambda: unflatten(Z, grid), dims=("row", "col", "neuron"),
        coords={"neuron": np.arange(Z.shape[1])},
        attrs={"long_name": f"joint ({' + '.join(channels)}) autoencoder embedding", "units": "1",
               "active_threshold": 1e-6, "n_active": n_active, "source": info["source"],
               "channels": " ".join(channels), **norm})
    for k, c in enumerate(channels):
        _, st, name = normalized[c]
        out[f"reconstruction_joint_{c}"] = _result(
            lazy, f"reconstruction_joint_{c}", lambda: unflatten(R[..., k] * st.std + st.mean, grid),
            dims=("row", "col", "step"),
            attrs={"long_name": f"{c} reconstructed by the joint autoencoder",
                   "units": ds[name].attrs.get("units", ""), "mse_normalized": per_channel[c]})
    return hist, grid


def _baselines(Xn: np.ndarray, R: np.ndarray, train: np.ndarray, evaluate: np.ndarray, n_active: int,
               channel: str) -> dict[str, Any]:
    """The network's error on the ``evaluate`` pixels (held out when there are any) against the mean
    loop and PCA with ``n_active`` components, both fitted on the ``train`` pixels, as fractions of
    the variance of the evaluated normalized loops (see :mod:`switchscope._baselines`)."""
    Xt, Xe = Xn[train], Xn[evaluate]
    held_out = not np.array_equal(train, evaluate)
    out = compare(float(np.mean((R[evaluate] - Xe) ** 2)), Xe, mean_loop=mean_loop_mse(Xt, Xe),
                  pca=pca_mse(Xt, Xe, n_active), pca_components=n_active, channel=channel,
                  model=f"the autoencoder ({n_active} active neurons)")
    out["evaluated_on"] = (f"{len(evaluate)} held-out pixels" if held_out
                           else f"all {len(evaluate)} pixels (no held-out set)")
    return out


def _add_histories(out: xr.Dataset, histories: dict[str, tuple[list, tuple[int, ...]]]) -> None:
    """Put every channel's training-movie frames on one shared ``checkpoint`` axis.

    The axis is the union of the channels' checkpoint epochs (coordinate ``checkpoint_epoch``); a
    channel's frame at epoch ``e`` is its embedding at its last improved checkpoint up to ``e``
    (its first one before that), which is the embedding its training had kept at that epoch.
    """
    if not histories:
        return
    epochs = np.array(sorted({int(e) for hist, _ in histories.values() for e, _ in hist}), dtype=np.int64)
    for channel, (hist, grid) in histories.items():
        own = np.array([e for e, _ in hist], dtype=np.int64)
        pick = np.clip(np.searchsorted(own, epochs, side="right") - 1, 0, len(own) - 1)
        frames = np.stack([unflatten(hist[i][1], grid) for i in pick])
        out[f"embedding_history_{channel}"] = xr.DataArray(
            frames, dims=("checkpoint", "row", "col", "neuron"),
            coords={"checkpoint_epoch": ("checkpoint", epochs), "neuron": np.arange(frames.shape[-1])},
            attrs={"long_name": f"{channel} embedding at its last improved checkpoint up to each epoch",
                   "units": "1", "own_checkpoint_epochs": own.tolist()})


def _train(channel: str, Xn: np.ndarray, config: AutoencoderConfig, ctx: RunContext, folder: str | None = None,
           infer: Callable[[dict[str, Any]], tuple[np.ndarray, np.ndarray]] | None = None):
    from .model import n_parameters
    from .train import Autoencoder  # torch: only where a network is trained

    folder = ctx.models / (folder or channel)
    ae = Autoencoder(config, channel=channel).fit(Xn, checkpoint_dir=folder, progress=ctx.progress)
    if infer is None:
        Z, R = _apply({"kind": "trained", "network": ae}, Xn)
    else:
        Z, R = infer(_trained_state(ae))
    tr, va = ae.train_index_, ae.val_index_
    info: dict[str, Any] = {
        "source": "trained", "epochs": ae.n_epochs_, "best_epoch": ae.best_epoch_,
        "stop_reason": ae.stop_reason_, "max_seconds": config.max_seconds, "l1": ae.l1_, "n_parameters": n_parameters(ae.model_),
        "mse_train": float(np.mean((R[tr] - Xn[tr]) ** 2)),
        "mse_val": float(np.mean((R[va] - Xn[va]) ** 2)) if len(va) else None,
        "best_val_loss": ae.best_val_loss_ if np.isfinite(ae.best_val_loss_) else None,
        "refine_epochs": max(len(ae.refine_history_) - 1, 0),
        "training_seconds": ae.seconds_,
    }
    hist = ae.embedding_history_ or [(ae.best_epoch_, Z)]
    return info, Z, R, hist, ae.decode, (tr, va if len(va) else tr)


def _pretrained(channel: str, Xn: np.ndarray, ctx: RunContext,
                infer: Callable[[dict[str, Any]], tuple[np.ndarray, np.ndarray]] | None = None):
    if Xn.shape[1] != PAPER_STEPS:
        raise DataError(f"the published {channel} network takes {PAPER_STEPS} steps per loop, the data has "
                        f"{Xn.shape[1]}; train instead (drop --pretrained paper)")
    from .keras import load_pretrained  # written beside this module; imported only when asked for

    from tqdm.auto import tqdm

    net = load_pretrained(channel)
    if infer is not None:
        Z, R = infer({"kind": "paper", "network": net})
    else:
        with tqdm(total=len(Xn), disable=not ctx.progress, desc=f"published {channel} network",
                  unit="loop", leave=False) as bar:
            Z, R = _published(net, Xn, bar.update)
    folder = ctx.models / channel
    folder.mkdir(parents=True, exist_ok=True)
    epoch = getattr(getattr(net, "autoencoder", net), "epoch", None)
    epoch = -1 if epoch is None else int(epoch)
    (folder / "config.json").write_text(json.dumps(
        {"format": "switchscope-autoencoder-pretrained", "source": "paper", "channel": channel,
         "epoch": epoch, "note": "published Keras 2.1.5 weights, loaded by switchscope.autoencoder.keras"},
        indent=2), encoding="utf-8")
    info: dict[str, Any] = {"source": "paper", "epochs": epoch, "l1": PAPER_L1[channel]}
    return info, Z, R, [(epoch, Z)], net.decode


def _published(net: Any, Xn: np.ndarray, done: Callable[[int], Any] = lambda n: None) -> tuple[np.ndarray, np.ndarray]:
    """Embedding and reconstruction of ``Xn`` by a published network (float64)."""
    Zs, Rs = [], []
    block = 256  # the networks' own batch, so the result equals one call over all pixels
    for i in range(0, len(Xn), block):
        z = net.transform(Xn[i:i + block])  # encoded once; the decoder takes it on (bit-identical)
        Zs.append(np.asarray(z, dtype=np.float64))
        Rs.append(np.asarray(net.decode(z), dtype=np.float64))
        done(len(Xn[i:i + block]))
    if not Zs:
        return np.zeros((0, net.n_embedding)), np.zeros((0, Xn.shape[1]))
    return np.concatenate(Zs), np.concatenate(Rs)


# -- inference chunk by chunk (a chunked run: switchscope.chunked) --------------------------------
def _trained_state(ae: Autoencoder) -> dict[str, Any]:
    """What a chunk needs to rebuild a trained network: its weights as safetensors bytes, its
    config and shape (no pickled model: dask ships these plain values to each chunk)."""
    from safetensors.torch import save

    weights = {k: v.detach().cpu().contiguous().clone() for k, v in ae.model_.state_dict().items()}
    return {"kind": "trained", "weights": save(weights), "config": ae._cfg(), "channel": ae.channel,
            "n_channels": int(getattr(ae.model_, "n_channels", 1)), "n_steps": ae.n_steps_}


def _network(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with its network ready to run (a trained one rebuilt from its weights, on the
    device its config names, as :meth:`Autoencoder.load` does)."""
    if "network" in state:
        return state
    from pathlib import Path

    from safetensors.torch import load

    from .train import Autoencoder, _load_state_dict, _resolve_device

    cfg = state["config"]
    ae = Autoencoder(cfg, channel=state["channel"])
    model = ae._new_model(cfg, state["n_channels"])
    _load_state_dict(model, load(state["weights"]), Path("<trained network>"))
    model.to(_resolve_device(cfg.device)).eval()
    ae.model_, ae.n_steps_, ae.n_channels_ = model, state["n_steps"], state["n_channels"]
    return {"kind": "trained", "network": ae}


def _apply(state: dict[str, Any], Xn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Embedding (n_pixels, n_neurons) and normalized reconstruction of loops ``Xn``: the same
    calls in memory and on each chunk."""
    net = _network(state)["network"]
    if state["kind"] == "paper":
        return _published(net, Xn)
    return net.transform(Xn), net.reconstruct(Xn)


def _infer_chunk(block: xr.Dataset, *, state: dict[str, Any], norms: list[tuple[Any, Any] | None],
                 outputs: tuple[str, tuple[str, ...]]) -> xr.Dataset:
    """The embedding and reconstructions of one chunk: its loops ``x<i>`` normalized as in
    memory (global statistics in ``norms``, per-pixel ones in the variables ``m<i>``, ``s<i>``)."""
    Xs, stats = [], []
    grid = None
    for i, norm in enumerate(norms):
        X, grid = flatten(block, f"x{i}")
        if norm is None:
            norm = tuple(block[f"{k}{i}"].values.reshape(-1, 1) for k in "ms")
        mean, std = norm
        Xs.append((np.asarray(X, dtype=np.float64) - mean) / std)
        stats.append((mean, std))
    Xn = Xs[0] if len(Xs) == 1 else np.stack(Xs, axis=2)
    Z, R = _apply(state, Xn)
    emb, recs = outputs
    out = xr.Dataset({emb: (("row", "col", "neuron"), unflatten(Z, grid))},
                     coords={"neuron": np.arange(Z.shape[1])})
    for i, (rec, (mean, std)) in enumerate(zip(recs, stats)):
        out[rec] = (("row", "col", "step"), unflatten((R if len(recs) == 1 else R[..., i]) * std + mean, grid))
    return out


def _chunk_inference(ds: xr.Dataset, inputs: list[tuple[str, NormStats]], grid: tuple[int, ...],
                     names: tuple[str, tuple[str, ...]], ctx: RunContext, lazy: dict[str, xr.DataArray]
                     ) -> Callable[[dict[str, Any]], tuple[np.ndarray, np.ndarray]]:
    """``infer(state)`` for a chunked run: the network's embedding and reconstructions of every
    pixel, chunk by chunk with :func:`xarray.map_blocks` (the network's state handed to each),
    written into the run's store (``ctx.persist``) and read back lazily into ``lazy``; returns
    the embedding (n_pixels, n_neurons) and the normalized reconstruction, in memory, for the
    summary (the loops it is compared with are in memory for training already)."""
    from ..chunked import map_pixels, persist, pixel_dims

    def infer(state: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        first = ds[inputs[0][0]]
        dims = pixel_dims(first)
        src = xr.Dataset(coords={d: ds[d] for d in dims if d in ds.coords})
        norms: list[tuple[Any, Any] | None] = []
        for i, (name, st) in enumerate(inputs):
            src[f"x{i}"] = ds[name].transpose("row", "col", "step")
            if st.per_pixel:
                for key, v in (("m", st.mean), ("s", st.std)):
                    src[f"{key}{i}"] = xr.DataArray(unflatten(np.ravel(v), grid), dims=("row", "col"))
                norms.append(None)
            else:
                norms.append((st.mean, st.std))
        rows = first.chunks[first.dims.index("row")] if first.chunks is not None else (grid[0],)
        src = src.chunk({"row": rows, "col": -1, "step": -1})
        emb, recs = names
        result = persist(map_pixels(src, _infer_chunk, (emb, *recs), state=state, norms=norms, outputs=names), ctx)
        lazy.update({k: result[k] for k in (emb, *recs)})
        Z = np.asarray(result[emb].values).reshape(-1, result.sizes["neuron"])
        Rn = [(flatten(result, rec)[0] - st.mean) / st.std for rec, (_, st) in zip(recs, inputs)]
        return Z, (Rn[0] if len(Rn) == 1 else np.stack(Rn, axis=2))

    return infer


def _result(lazy: dict[str, xr.DataArray], name: str, values: Callable[[], np.ndarray], *, dims: tuple[str, ...],
            attrs: dict[str, Any], coords: dict[str, Any] | None = None) -> xr.DataArray:
    """A result variable: read back from the run's store (a chunked run), else built in memory."""
    if name in lazy:
        out = lazy[name].copy()
        out.attrs = dict(attrs)
        return out
    return xr.DataArray(values(), dims=dims, coords=coords, attrs=attrs)
