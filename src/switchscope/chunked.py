"""The per-pixel stages on chunks of pixels, with xarray + dask: scans larger than memory.

A Dataset whose variables are dask arrays (a Zarr store opened lazily, or any Dataset after
:func:`chunk_pixels`) runs the stages ``sho``, ``project``, ``clean`` and ``loops`` chunk by chunk
with :func:`xarray.map_blocks`, on whatever dask scheduler is active (the threaded one in this
process, or a ``dask.distributed`` cluster: :mod:`switchscope._scheduler`). Each chunk holds
whole curves (every step, every frequency bin) of a block of rows.

What is not per pixel is computed once, from the whole scan, and handed to every chunk:

* ``loops``: the k-means of the loops and the fits of its centres (:func:`loop_priors`, the
  same sample, seed and fits as :func:`switchscope.loops.fit_loops` on the whole film), so every
  pixel starts from the same prior as in a fit of the whole film;
* ``clean``: the automatic resonance range (before the chunks), then the normalization choice
  and statistics (after them), from the whole channel, with the functions of the in-process
  stage.

The results therefore equal the in-process run's (the tests check it, value by value). Memory:
a chunk's curves and results per worker; the clean statistics read one channel
(pixels x steps) at a time on the client. Raw spectra, the large arrays, are never held whole.
"""

from __future__ import annotations

import time
import warnings
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import xarray as xr

from ._context import RunContext
from ._errors import DataError

#: Stages that run chunk by chunk on dask-backed data.
CHUNKED_STAGES = ("sho", "project", "clean", "loops")


def is_lazy(ds: xr.Dataset) -> bool:
    """Whether any variable of ``ds`` is a dask array (the chunked stages then apply)."""
    return any(v.chunks is not None for v in ds.data_vars.values())


def pixel_dims(ds: xr.Dataset | xr.DataArray) -> tuple[str, ...]:
    """The pixel dims: ``("row", "col")`` on a grid, else ``("pixel",)``."""
    if "row" in ds.dims and "col" in ds.dims:
        return ("row", "col")
    if "pixel" in ds.dims:
        return ("pixel",)
    raise DataError(f"the data has dims {tuple(ds.dims)}; chunked stages need (row, col, ...) or (pixel, ...)")


def chunk_pixels(ds: xr.Dataset, pixels: int) -> xr.Dataset:
    """``ds`` as dask arrays in chunks of about ``pixels`` pixels: blocks of whole rows (of a
    grid) or of pixels, every other dim whole."""
    dims = pixel_dims(ds)
    if dims == ("row", "col"):
        rows = max(1, int(pixels) // max(1, int(ds.sizes["col"])))
        spec = {"row": rows, "col": -1}
    else:
        spec = {"pixel": int(pixels)}
    spec.update({d: -1 for d in ds.dims if d not in spec})
    return ds.chunk(spec)


#: Largest chunk of any one variable, in bytes (raw spectra set the pixels per chunk). Measured
#: on a 4 GB store of spectra (benchmarks/bench_dask.py): 64 MB chunks took the summed RSS of the
#: client and 2 workers to 2.18 GB, 32 MB ones keep it lower.
MAX_CHUNK_BYTES = 32 * 2**20
#: Spectra the SHO fit of one chunk takes at a time (its scratch memory scales with it; the fit
#: of each spectrum is independent of the others, so the results do not change).
SHO_BATCH = 16384


def pixels_per_chunk(ds: xr.Dataset, pixels: int) -> int:
    """At most ``pixels``, and few enough that no variable's chunk exceeds
    :data:`MAX_CHUNK_BYTES` (a pixel of raw spectra holds steps x bins values)."""
    dims = pixel_dims(ds)
    n_pixels = int(np.prod([ds.sizes[d] for d in dims]))
    per_pixel = max((v.dtype.itemsize * int(v.size) // max(1, n_pixels) for v in ds.data_vars.values()
                     if all(d in v.dims for d in dims)), default=8)
    return int(max(1, min(pixels, MAX_CHUNK_BYTES // max(1, per_pixel))))


def _scratch_context(ctx: RunContext | None) -> RunContext:
    """A context for a stage function run on one chunk: its summary is thrown away."""
    import tempfile
    from pathlib import Path

    if ctx is None:
        return RunContext(workdir=Path(tempfile.gettempdir()), progress=False)
    return RunContext(workdir=ctx.workdir, seed=ctx.seed, device=ctx.device, pretrained=ctx.pretrained,
                      progress=False, input_dir=ctx.input_dir)


def _on_chunk(block: xr.Dataset, fn: Callable[..., xr.Dataset], names: tuple[str, ...],
              kwargs: dict) -> xr.Dataset:
    """``fn(block, **kwargs)`` restricted to the variables ``names``, with the block's own
    pixel coordinates (the functions number pixels from 0 in each chunk)."""
    out = fn(block, **kwargs)  # its warnings are silenced by quiet_chunks (once per chunk is noise)
    out = out[list(names)]
    dims = pixel_dims(block)
    out = out.drop_vars([c for c in out.coords if c in dims or c not in out.dims], errors="ignore")
    return out.assign_coords({d: block[d] for d in dims if d in block.coords})


def quiet_chunks() -> None:
    """Silence the data and convergence warnings of the functions run per chunk: each chunk would
    repeat them; the chunked stages warn once from the totals. Set in the main thread (the
    filters are global: a threaded scheduler's chunks see them) and on each dask worker."""
    from ._errors import ConvergenceWarning, DataWarning

    for category in (DataWarning, ConvergenceWarning, RuntimeWarning):
        warnings.filterwarnings("ignore", category=category)


def map_pixels(ds: xr.Dataset, fn: Callable[..., xr.Dataset], names: tuple[str, ...], **kwargs: Any) -> xr.Dataset:
    """The variables ``names`` of ``fn(ds, **kwargs)``, computed lazily chunk by chunk.

    ``fn`` is a per-pixel function from a Dataset to a Dataset (a chunk of it in, the same
    pixels' results out). Its output structure (dims, dtypes, attributes) is read from a call on
    the first pixel, then every chunk of ``ds`` maps through :func:`xarray.map_blocks`.
    """
    import dask.array as da

    dims = pixel_dims(ds)
    with warnings.catch_warnings():
        quiet_chunks()
        first = _on_chunk(ds.isel({d: slice(0, 1) for d in dims}).compute(), fn, names, kwargs)
    chunks = {d: ds.chunks[d] for d in dims}
    template = xr.Dataset(coords={d: ds[d] for d in dims if d in ds.coords})
    for name, var in first.data_vars.items():
        shape = tuple(ds.sizes[d] if d in dims else var.sizes[d] for d in var.dims)
        blocks = tuple(chunks[d] if d in dims else (var.sizes[d],) for d in var.dims)
        template[name] = xr.DataArray(da.empty(shape, chunks=blocks, dtype=var.dtype), dims=var.dims,
                                      attrs=var.attrs)
    extra = {c: first.coords[c] for c in first.coords if c not in dims}
    template = template.assign_coords(extra)
    return xr.map_blocks(_on_chunk, ds, args=(fn, names, kwargs), template=template)


def persist(lazy: xr.Dataset, ctx: RunContext | None) -> xr.Dataset:
    """Compute lazy results once: into the run's store (``ctx.persist``), else into memory."""
    from ._progress import compute_with_progress

    with warnings.catch_warnings():
        quiet_chunks()
        if ctx is not None and ctx.persist is not None:
            return ctx.persist(lazy)
        return compute_with_progress(lazy, progress=bool(ctx and ctx.progress))[0]


def _stage_on_chunk(block: xr.Dataset, *, stage: Callable, config: Any, ctx: RunContext) -> xr.Dataset:
    return stage(block, config, ctx)


# -- sho, project -------------------------------------------------------------------------------
def sho_stage(ds: xr.Dataset, config: Any, ctx: RunContext) -> xr.Dataset:
    """The ``sho`` stage on chunks: the in-process stage's function on each chunk of spectra."""
    from .sho import STATUS_MESSAGES
    from .sho_stage import check_spectra, needs_sho, sho_stage as one_chunk

    if not needs_sho(ds):
        return ds
    check_spectra(ds)
    t0 = time.perf_counter()
    names = ("amplitude", "resonance", "quality_factor", "phase", "sho_r2", "sho_status")
    batch = config.replace(chunk=min(int(config.chunk), SHO_BATCH))
    out = persist(map_pixels(ds[["spectrum"]], _stage_on_chunk, names, stage=one_chunk, config=batch,
                             ctx=_scratch_context(ctx)), ctx)
    status = out["sho_status"].data
    r2 = out["sho_r2"].data
    import dask.array as da

    counts, med = da.compute(da.bincount(status.ravel().astype(np.int64), minlength=len(STATUS_MESSAGES)),
                             _median_finite(r2))
    message = "; ".join(f"{int(c)} {STATUS_MESSAGES[i]}" for i, c in enumerate(counts) if c)
    out["sho_status"].attrs["meaning"] = message
    n = int(np.prod(status.shape))
    seconds = time.perf_counter() - t0
    if counts[2:].sum():
        from ._errors import ConvergenceWarning

        warnings.warn(f"SHO fit: {message}; see sho_status in results", ConvergenceWarning, stacklevel=2)
    ctx.summary["sho"] = {
        "n_spectra": n, "seconds": round(seconds, 3), "spectra_per_s": round(n / max(seconds, 1e-9)),
        "median_r2": med, "converged": int(counts[:2].sum()), "status": message, "dtype": config.dtype,
        "chunks": int(np.prod([len(c) for c in ds["spectrum"].chunks[:2]])),
    }
    return ds.assign(out.data_vars)


def _median_finite(x: Any) -> Any:
    """The median of the finite values of a (lazy) array, None if none: exact, from the values
    (per-step maps are pixels x steps, small next to the spectra)."""
    import dask

    @dask.delayed
    def med(values: np.ndarray) -> float | None:
        values = np.asarray(values).ravel()
        values = values[np.isfinite(values)]
        return float(np.median(values)) if values.size else None

    return med(x)


def project_stage(ds: xr.Dataset, config: Any, ctx: RunContext) -> xr.Dataset:
    """The ``project`` stage on chunks: the in-process stage's function on each chunk of loops."""
    from .sho_stage import needs_projection, project_stage as one_chunk

    if not needs_projection(ds):
        return ds
    names = ("piezoresponse", "projection_angle", "projection_offset")
    src = ds[["amplitude", "phase"]]
    out = persist(map_pixels(src, _stage_on_chunk, names, stage=one_chunk, config=config,
                             ctx=_scratch_context(ctx)), ctx)
    angle = np.asarray(out["projection_angle"].values)
    ctx.summary["project"] = {"method": config.method,
                              "median_angle_deg": float(np.nanmedian(np.rad2deg(angle)))
                              if np.isfinite(angle).any() else None}
    return ds.assign(out.data_vars)


# -- clean --------------------------------------------------------------------------------------
def _clean_chunk(block: xr.Dataset, *, name: str, config: Any, apply_range: bool) -> xr.Dataset:
    from ._grid import flatten, unflatten
    from .preprocess import _clean_array

    X, grid = flatten(block, name)
    Xc, _ = _clean_array(np.array(X, dtype=float), config, apply_range=apply_range, label=name, grid=grid)
    return xr.Dataset({f"{name}_clean": (block[name].dims, unflatten(Xc, grid))})


def clean_stage(ds: xr.Dataset, config: Any, ctx: RunContext) -> xr.Dataset:
    """The ``clean`` stage on chunks.

    Interpolation and outlier removal run per chunk; the automatic resonance range is taken
    from the whole channel before them, the normalization choice and statistics from the whole
    cleaned channel after them, with the in-process functions (so they are equal)."""
    import dask.array as da

    from ._dataset import CHANNELS
    from ._errors import DataWarning
    from ._grid import flatten, unflatten
    from .preprocess import (RANGE_MADS, _is_normalized, _normalization_choice, check_steps, normalize,
                             robust_range)

    t0 = time.perf_counter()
    names = list(config.channels) if config.channels is not None else channels_in_ds(ds)
    missing = [n for n in names if n not in ds.data_vars]
    if missing:
        raise DataError(f"channel(s) {', '.join(missing)} not in the data (has: "
                        f"{', '.join(channels_in_ds(ds)) or 'none'}); choose channels it has")
    summary: dict[str, Any] = {}
    new: dict[str, xr.DataArray] = {}
    for name in names:
        src = ds[name]
        check_steps(int(ds.sizes["step"]), config, name)
        apply_range = config.range_filter and name == "resonance" and not _is_normalized(src.attrs)
        cfg, valid = config, {}
        X = src.data
        finite = da.isfinite(X)
        if apply_range:
            if config.resonance_range_khz == "auto":
                lo, hi = robust_range(np.asarray(src.values, dtype=float))
                cfg = config.replace(resonance_range_khz=(lo, hi))
                valid = {"resonance_range_khz": [lo, hi],
                         "resonance_range_source": f"auto: median +- {RANGE_MADS:g} scaled MADs of the data"}
            else:
                lo, hi = (float(v) for v in config.resonance_range_khz)
                valid = {"resonance_range_khz": [lo, hi], "resonance_range_source": "[clean] resonance_range_khz"}
            outside = finite & ((X < lo) | (X > hi))
            n_out, n_in = da.compute(outside.sum(), (finite & ~outside).sum())
            n_out, n_in = int(n_out), int(n_in)
            if n_out and not n_in:
                raise DataError(
                    f"{name}: no value lies in the valid range {lo}-{hi} kHz; if the data is in other "
                    "units or already normalized, mark it (attrs['normalized'] = 1), set "
                    '[clean] resonance_range_khz = "auto" or [clean] range_filter = false')
        else:
            n_out = 0
        n_nonfinite, n_inf = (int(v) for v in da.compute((~finite).sum(), da.isinf(X).sum()))
        if n_inf:
            warnings.warn(f"{name}: {n_inf} Inf value(s) set to NaN and interpolated", DataWarning, stacklevel=2)
        lazy = map_pixels(ds[[name]], _clean_chunk, (f"{name}_clean",), name=name, config=cfg,
                          apply_range=apply_range)
        cleaned = persist(lazy, ctx)[f"{name}_clean"]
        Xc, grid = flatten(cleaned.compute() if cleaned.chunks is not None else cleaned)
        method, reason = _normalization_choice(Xc, config.normalization)
        _, st = normalize(Xc, method=method)
        n_pixels = Xc.shape[0]
        counts = {"n_nonfinite": n_nonfinite, "n_out_of_range": n_out,
                  "n_outliers": n_pixels * config.n_outliers if config.n_outliers else 0, **valid}
        attrs = {k: v for k, v in src.attrs.items() if k not in ("norm_mean", "norm_std")}
        attrs.update(counts)
        attrs.update(normalization=method, normalization_reason=reason,
                     long_name=f"cleaned {src.attrs.get('long_name', name)}")
        entry: dict[str, Any] = {k: int(counts[k]) for k in ("n_nonfinite", "n_out_of_range", "n_outliers")}
        entry.update(normalization=method, normalization_reason=reason)
        if st.per_pixel:
            units = src.attrs.get("units", CHANNELS.get(name, ""))
            for key, what in (("mean", "mean"), ("std", "standard deviation")):
                values = unflatten(np.ravel(getattr(st, key)), grid)
                new[f"{name}_norm_{key}"] = xr.DataArray(
                    values, dims=src.dims[:2],
                    attrs={"units": units, "long_name": f"{what} of each {name} curve (pixel normalization)"})
                entry[f"median_norm_{key}"] = float(np.median(values))
        else:
            attrs.update(norm_mean=st.mean, norm_std=st.std)
            entry.update(norm_mean=float(st.mean), norm_std=float(st.std))
        if valid:
            entry["resonance_range_khz"] = [float(v) for v in valid["resonance_range_khz"]]
            entry["resonance_range_source"] = str(valid["resonance_range_source"])
        cleaned.attrs = attrs
        new[f"{name}_clean"] = cleaned
        summary[name] = entry
    summary = {"seconds": round(time.perf_counter() - t0, 4), **summary}
    ctx.summary["clean"] = summary
    return ds.assign(new)


def channels_in_ds(ds: xr.Dataset) -> list[str]:
    from ._dataset import channels_in

    return channels_in(ds)


# -- loops --------------------------------------------------------------------------------------
def loop_priors(data: xr.DataArray, model: str = "paper13", *, n_clusters: int = 8, seed: int = 0) -> Any:
    """The k-means of :func:`switchscope.loops.fit_loops`'s priors for the whole film, from a
    lazy (or in-memory) DataArray of loops ``(..., step)``.

    The same loops (the fittable ones, or the same random sample of 20000 of them), normalized
    the same way, and the same seed as a fit of the whole film; only those loops are read into
    memory. Each chunk's ``fit_loops(..., priors=)`` then labels its pixels with it and fits its
    centroids (a few small problems) with its own kernel. None when there is nothing to cluster
    (``n_clusters=0`` or no fittable loop).
    """
    from .loops._fit import _kmeans, _kmeans_sample, _triage
    from .loops._models import get_model

    if n_clusters <= 0:
        return None
    mdl = get_model(model)
    lead = [d for d in data.dims if d != "step"]
    X = data.transpose(*lead, "step").data
    X = X.reshape(-1, X.shape[-1]) if X.ndim != 2 else X

    def fittable(block: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _triage(np.asarray(block, dtype=float), mdl.n_params)[0] < 0

    lazy = hasattr(X, "map_blocks")
    mask = X.map_blocks(fittable, drop_axis=1, dtype=bool).compute() if lazy else fittable(X)
    fitted = np.flatnonzero(mask)
    if fitted.size == 0:
        return None
    rows = _kmeans_sample(fitted.size, seed)
    idx = fitted if rows is None else fitted[rows]
    if lazy:  # read in index order, then put back in the sample's order (k-means++ depends on it)
        sample = np.asarray(X[np.sort(idx)].compute(), dtype=float)[np.argsort(np.argsort(idx))]
    else:
        sample = np.asarray(X[idx], dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, c, s, finite = _triage(sample, mdl.n_params)
    Yn = np.where(finite, (sample - c[:, None]) / s[:, None], 0.0)
    return _kmeans(Yn, n_clusters, seed)


def _fit_chunk(block: xr.Dataset, *, channel: str, options: dict, priors: tuple | None) -> xr.Dataset:
    from .loops._fit import fit_loops

    res = fit_loops(block, channel=channel, priors=priors, **options)
    return res.to_dataset(like=block) if "row" in block.dims else res.to_dataset()


def fit_loops_chunked(ds: xr.Dataset, channel: str, model: str = "paper13", *, seed: int = 0,
                      **options: Any) -> xr.Dataset:
    """:func:`switchscope.loops.fit_loops` of ``ds[channel]`` chunk by chunk: the ``loop_*``
    variables as lazy dask arrays (compute, persist or write them), equal to the whole film's
    fit (same priors, from :func:`loop_priors`)."""
    priors = loop_priors(ds[channel], model=model, n_clusters=int(options.get("n_clusters", 8)), seed=seed)
    names = ("loop_params", "loop_stderr", "loop_r2", "loop_converged", "loop_status", "loop_n_iter",
             *(f"loop_{m}" for m in _metric_names()), "loop_fit")
    return map_pixels(ds[[channel]], _fit_chunk, names, channel=channel,
                      options={"model": model, "seed": seed, **options}, priors=priors)


def _metric_names() -> tuple[str, ...]:
    from .loops._metrics import METRICS

    return tuple(METRICS)


def loops_stage(ds: xr.Dataset, config: Any, ctx: RunContext) -> xr.Dataset:
    """The ``loops`` stage on chunks (same options, results and summary as in process)."""
    from .loops._options import default_loop_variable
    from .loops._stage import _device, _summary, missing_piezoresponse

    if config.channel is None and default_loop_variable(ds) is None:
        ctx.summary["loops"] = {"skipped": missing_piezoresponse(ds)}
        return ds.copy()
    channel = config.channel or default_loop_variable(ds) or "piezoresponse"
    if channel not in ds:
        raise DataError(f"the loops stage fits {channel!r}, which is not in the data "
                        f"(has: {', '.join(map(str, ds.data_vars))}); set [loops] channel")
    t0 = time.perf_counter()
    out = fit_loops_chunked(
        ds, channel, config.model, seed=ctx.seed, n_clusters=int(config.n_clusters), max_iter=int(config.max_iter),
        race_iter=None if config.race_iter is None else int(config.race_iter), ftol=float(config.ftol),
        xtol=float(config.xtol), chunk_size=int(config.chunk_size),
        nucleation_fraction=float(config.nucleation_fraction), dtype=config.dtype,
        device=_device(ctx.device))
    out["loop_fit"].attrs["fitted_variable"] = channel
    out = persist(out, ctx)
    small = out[[v for v in out.data_vars if out[v].dims == pixel_dims(out)]].compute()
    flat = {k: np.asarray(v.values).ravel() for k, v in small.data_vars.items()}
    res = SimpleNamespace(model=config.model, r2=flat["loop_r2"], converged=flat["loop_converged"],
                          status=flat["loop_status"], metrics={m: flat[f"loop_{m}"] for m in _metric_names()})
    ctx.summary["loops"] = _summary(res, time.perf_counter() - t0)
    _warn_status(res.status, int(config.max_iter))
    return ds.assign(out.data_vars).assign_coords(param=out["param"])


def fit_loops_dataset_chunked(ds: xr.Dataset, config: Any = None) -> xr.Dataset:
    """:func:`switchscope.loops.fit_loops_dataset` chunk by chunk (``switchscope fit-loops`` on a
    Zarr store or with ``--scheduler``): the ``loop_*`` variables lazily, to be written."""
    import dask.array as da

    from .loops._options import LoopsConfig, default_loop_variable
    from .loops._stage import missing_piezoresponse

    config = config or LoopsConfig()
    channel = config.channel or default_loop_variable(ds) or "piezoresponse"
    if channel not in ds:
        raise DataError(missing_piezoresponse(ds) if config.channel is None else
                        f"the loops stage fits {channel!r}, which is not in the data; set [loops] channel")
    n_inf = int(da.isinf(ds[channel].data).sum().compute())
    if n_inf:
        raise DataError(f"{channel!r} holds {n_inf} Inf value(s); clean the data first "
                        "(switchscope run --data FILE --stages clean) or replace them with NaN")
    out = fit_loops_chunked(
        ds, channel, config.model, n_clusters=int(config.n_clusters), max_iter=int(config.max_iter),
        race_iter=None if config.race_iter is None else int(config.race_iter), ftol=float(config.ftol),
        xtol=float(config.xtol), chunk_size=int(config.chunk_size),
        nucleation_fraction=float(config.nucleation_fraction), dtype=config.dtype)
    return ds.assign(out.data_vars).assign_coords(param=out["param"])


def _warn_status(status: np.ndarray, max_iter: int) -> None:
    """The in-process fit's warning, once for the whole film (the chunks' own were silenced)."""
    from .loops._lm import STATUS_MAXITER, STATUS_NONFINITE
    from ._errors import ConvergenceWarning

    n_max, bad = int((status == STATUS_MAXITER).sum()), int((status == STATUS_NONFINITE).sum())
    if n_max or bad:
        warnings.warn(f"{n_max} pixel(s) stopped at max_iter={max_iter} (status 2) and {bad} failed "
                      "(status 5); see loop_status in results", ConvergenceWarning, stacklevel=3)
