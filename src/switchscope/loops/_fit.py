"""Batched loop fitting of every pixel at once, and its result object."""

from __future__ import annotations

import dataclasses
import warnings
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import xarray as xr

if TYPE_CHECKING:  # annotations only: torch is imported where it is used
    import torch

from .._dataset import check_voltage
from .._device import fit_device, float_dtype, inference_mode, is_tensor, numba_threads
from .._errors import ConfigError, ConvergenceWarning, DataError, DataWarning
from .._grid import GRID_DIMS, flatten, unflatten
from ._lm import (LAM0, STATUS_CONSTANT, STATUS_MAXITER, STATUS_MESSAGES, STATUS_NONFINITE,
                  STATUS_TOO_FEW, levenberg_marquardt)
from ._metrics import METRICS, loop_metrics
from ._models import LoopModel, ModelName, get_model, sweep_masks

#: Widths of the data-driven starts, as fractions of the voltage span.
_GUESS_WIDTHS = (0.06, 0.2)
#: Iterations of the k-means centre fits: they only seed starts, and a handful of small
#: problems costs ~1 ms of fixed overhead per iteration. Measured on the 3600 real loops: 15
#: instead of 30 saves ~15 ms with the same median R2 (to the run-to-run spread of 1e-5).
_PRIOR_MAX_ITER = 15
#: Problems per LM call in the race of the starts and in the iterations after it (measured:
#: ~3000-problem batches run ~1.7x faster per problem than 10000-problem ones on a 32 MB L3 cache).
_RACE_BATCH = 3072
#: Successive halving of the race: after this many iterations, starts whose cost exceeds
#: this ratio times their pixel's best stop. Measured on the 3600 real paper13 fits: ~26 % of
#: the starts stop early, the race does ~17 % less work, and 7 pixels end more than 1e-3 lower
#: in R2 than with the full race (none by 5e-3; the median is unchanged to 5e-6).
_PRUNE_ITER = 2
_PRUNE_RATIO = 1.5
#: Models the numba kernel (:mod:`switchscope.fit._loops_numba`) implements.
_NUMBA_MODELS = ("paper13", "bglib9")


@dataclasses.dataclass(frozen=True, repr=False)
class LoopFitResult:
    """Result of :func:`fit_loops`.

    Attributes
    ----------
    params : ndarray of shape (n_pixels, n_params)
        Best-fit parameters in physical units (NaN where a pixel was not fitted).
    param_names : tuple of str
    stderr : ndarray of shape (n_pixels, n_params)
        Standard errors from the Jacobian at the solution, ``sqrt(diag((J^T J)^-1) * SSE/(n - p))``
        (NaN where the normal matrix is singular).
    r2 : ndarray of shape (n_pixels,)
        Coefficient of determination over the finite points.
    converged : ndarray of bool, shape (n_pixels,)
        True where the best start met a convergence test (status 0 or 1).
    status : ndarray of int, shape (n_pixels,)
        0: converged (cost decrease below ftol); 1: converged (step below xtol, or no further
        decrease possible); 2: stopped at max_iter (parameters kept, flagged); 3: not fitted, too
        few finite points; 4: not fitted, constant loop; 5: failed, non-finite result.
    n_iter : ndarray of int, shape (n_pixels,)
        Iterations of the best start.
    metrics : dict of str to ndarray of shape (n_pixels,)
        Switching parameters (see :data:`switchscope.loops.METRICS`).
    fit : ndarray of shape (n_pixels, n_steps)
        The fitted curves.
    voltage : ndarray of shape (n_steps,)
    descending : ndarray of bool, shape (n_steps,)
        Steps of the descending sweep, read from the voltage.
    model : str
    grid : tuple of int or None
        ``(rows, cols)`` when the input was a grid.
    starts : ndarray of shape (n_pixels, n_starts, n_params)
        The starting points tried for each pixel, in physical units (for reproducing the fit).
    units : str
        Units of the fitted response.
    """

    params: np.ndarray
    param_names: tuple[str, ...]
    stderr: np.ndarray
    r2: np.ndarray
    converged: np.ndarray
    status: np.ndarray
    n_iter: np.ndarray
    metrics: dict[str, np.ndarray]
    fit: np.ndarray
    voltage: np.ndarray
    descending: np.ndarray
    model: str
    grid: tuple[int, ...] | None
    starts: np.ndarray
    units: str = "a.u."

    @property
    def success(self) -> np.ndarray:
        """Alias of :attr:`converged`."""
        return self.converged

    @property
    def message(self) -> str:
        counts = np.bincount(self.status, minlength=len(STATUS_MESSAGES))
        return "; ".join(f"{int(c)} {STATUS_MESSAGES[i]}" for i, c in enumerate(counts) if c)

    def _repr_html_(self) -> str:
        """A table for notebooks: outcome first, then the medians of the switching maps."""
        import html

        n = self.r2.size
        ok = np.isfinite(self.r2)
        rows = [("model", self.model), ("pixels", f"{n}" + (f" ({self.grid[0]} x {self.grid[1]})" if self.grid else "")),
                ("converged", f"{int(self.converged.sum())} of {n}"),
                ("median R²", f"{np.median(self.r2[ok]):.5f}" if ok.any() else "n/a"),
                ("status", self.message)]
        for name, values in self.metrics.items():
            finite = np.isfinite(values)
            rows.append((f"median {name}", f"{np.median(values[finite]):.4g}" if finite.any() else "n/a"))
        body = "".join(f"<tr><th style='text-align:left'>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                       for k, v in rows)
        return f"<table><caption>LoopFitResult</caption>{body}</table>"

    def __repr__(self) -> str:
        n = self.r2.size
        med = float(np.nanmedian(self.r2)) if np.isfinite(self.r2).any() else float("nan")
        return (f"LoopFitResult({int(self.converged.sum())}/{n} pixels converged, "
                f"median R2 {med:.4f}, model={self.model!r}; {self.message})")

    def to_dataset(self, like: xr.Dataset | None = None) -> xr.Dataset:
        """The result as ``loop_*`` variables.

        Parameters
        ----------
        like : xarray.Dataset, optional
            The input Dataset; the result is a new Dataset holding its variables plus the
            ``loop_*`` ones. Without it, a Dataset of the loop variables alone.

        Returns
        -------
        xarray.Dataset
            ``loop_params``/``loop_stderr`` (row, col, param), ``loop_r2``, ``loop_converged``,
            ``loop_status``, ``loop_n_iter``, one ``loop_<metric>`` per switching parameter
            (row, col), and ``loop_fit`` (row, col, step). Pixel dims are ``pixel`` when the
            input was not a grid.
        """
        grid = self.grid
        if like is not None and grid is None:
            grid = (like.sizes["row"], like.sizes["col"])
        if grid is None:
            pdims: tuple[str, ...] = ("pixel",)
        else:
            pdims = GRID_DIMS

        def put(values: np.ndarray, extra: tuple[str, ...] = (), **attrs: Any) -> xr.DataArray:
            return xr.DataArray(unflatten(values, grid), dims=pdims + extra, attrs=attrs)

        u = self.units
        unit_of = {"V": "V", "response": u, "area": f"{u}*V", "1": "1"}
        mdl = get_model(self.model)
        # offsets and amplitudes carry the response's units, the slope units per volt
        punits = ";".join(
            "V" if kind == "voltage" else (f"{u}/V" if i == mdl.slope_index else u)
            for i, kind in enumerate(mdl.param_kinds))
        common = {"model": self.model, "reference": mdl.reference}
        vars_ = {
            "loop_params": put(self.params, ("param",), long_name="fitted loop parameters",
                               units=punits, **common),
            "loop_stderr": put(self.stderr, ("param",), long_name="standard errors of loop_params",
                               units=punits, **common),
            "loop_r2": put(self.r2, long_name="R2 of the loop fit", units="1"),
            "loop_converged": put(self.converged, long_name="loop fit converged"),
            "loop_status": put(self.status.astype(np.int64), long_name="loop fit status",
                               flag_meanings=" | ".join(f"{k}: {m}" for k, m in
                                                        STATUS_MESSAGES.items())),
            "loop_n_iter": put(self.n_iter.astype(np.int64), long_name="iterations of the loop fit"),
        }
        for name, (long, kind) in METRICS.items():
            vars_[f"loop_{name}"] = put(self.metrics[name], long_name=long, units=unit_of[kind])
        vars_["loop_fit"] = put(self.fit, ("step",), long_name="fitted loop", units=u, **common)
        out = xr.Dataset(vars_, coords={"param": list(self.param_names)})
        if like is not None:
            return like.assign(**{k: v for k, v in out.data_vars.items()}).assign_coords(
                param=list(self.param_names))
        if grid is not None:
            out = out.assign_coords(row=np.arange(grid[0]), col=np.arange(grid[1]))
        return out.assign_coords(voltage=("step", self.voltage, {"units": "V"}))


# --------------------------------------------------------------------------------------------
def _resolve_input(data: Any, voltage: Any, channel: str | None):
    """``(X (n, n_steps) float64 numpy, grid, voltage, units, device)`` from any accepted input."""
    device = None
    units = "a.u."
    if isinstance(data, xr.Dataset):
        if channel is None:
            channel = "piezoresponse_clean" if "piezoresponse_clean" in data else "piezoresponse"
        X, grid = flatten(data, channel)
        units = str(data[channel].attrs.get("units", units))
        if voltage is None:
            if "voltage" not in data.coords and "voltage" not in data:
                raise DataError("the Dataset has no 'voltage' coordinate; pass voltage=<array (n_steps,)>")
            voltage = data["voltage"].values
    elif isinstance(data, xr.DataArray):
        X, grid = flatten(data)
        units = str(data.attrs.get("units", units))
        if voltage is None and "voltage" in data.coords:
            voltage = data["voltage"].values
    else:
        if is_tensor(data):
            device = data.device
            data = data.detach().cpu().numpy()
        X, grid = flatten(np.asarray(data))
    if voltage is None:
        raise DataError("voltage is required with a plain array; pass voltage=<array (n_steps,)>")
    X = np.asarray(X, dtype=float)
    if X.shape[0] == 0:
        raise DataError("the data has no pixels; give at least one loop")
    v = check_voltage(voltage, X.shape[1])
    return X, grid, v, units, device


def _check_options(n_clusters, max_iter, ftol, xtol, chunk_size, nucleation_fraction,
                   race_iter) -> None:
    """The checks of the ``[loops]`` options (one validator for the API and the configuration)."""
    from ._options import LoopsConfig

    LoopsConfig(n_clusters=n_clusters, max_iter=max_iter, ftol=ftol, xtol=xtol, chunk_size=chunk_size,
                nucleation_fraction=nucleation_fraction, race_iter=race_iter)


def _inside(p: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Clip starts strictly inside the box (a start on a bound can freeze that parameter)."""
    span = np.where(np.isfinite(upper - lower), upper - lower, 0.0)
    lo = np.where(np.isfinite(lower), lower + 1e-3 * span, -np.inf)
    hi = np.where(np.isfinite(upper), upper - 1e-3 * span, np.inf)
    return np.clip(p, lo, hi)


def _kmeans_sample(n: int, seed: int) -> np.ndarray | None:
    """Rows of the ``n`` loops that the k-means of the priors sees: all (None) up to 20000,
    else a random sample of 20000."""
    return None if n <= 20000 else np.random.default_rng(seed).choice(n, 20000, replace=False)


def _kmeans(sample: np.ndarray, n_clusters: int, seed: int) -> Any:
    """The k-means of the priors (scikit-learn's), fitted on the normalized loops ``sample``.

    One thread: on a few thousand loops scikit-learn's thread pool costs more than the
    clustering (70-200 ms of CPU against ~20 ms for 3600 loops on 2 loaded cores)."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return KMeans(n_clusters=min(n_clusters, sample.shape[0]), n_init=1, max_iter=50,
                      random_state=seed).fit(sample)


def _kmeans_priors(model: LoopModel, Yn: np.ndarray, v: np.ndarray, desc: np.ndarray,
                   n_clusters: int, seed: int, lm_kwargs: dict, lower: np.ndarray,
                   upper: np.ndarray, tt: dict, use_numba: bool = False,
                   km: Any = None) -> np.ndarray:
    """Fit the k-means centroids of the normalized loops; each pixel gets its centroid's fit.

    Cluster-centre fits as starting points follow BGlib's loop fitter (k-means of the loops,
    fit of the centres, centre parameters as each member's guess). ``km``: the k-means of the
    whole film when ``Yn`` is a part of it (:func:`switchscope.chunked.loop_priors`).
    """
    if km is None:
        rows = _kmeans_sample(Yn.shape[0], seed)
        km = _kmeans(Yn if rows is None else Yn[rows], n_clusters, seed)
        labels = km.predict(Yn) if rows is not None else km.labels_
    else:
        labels = km.predict(Yn)
    k = km.cluster_centers_.shape[0]
    cent = km.cluster_centers_
    starts = np.stack([_inside(model.guess(v, desc, cent, width=wd), lower, upper)
                       for wd in _GUESS_WIDTHS], axis=1)
    kk = starts.shape[1]
    order = np.r_[np.flatnonzero(desc), np.flatnonzero(~desc)]
    if use_numba:
        cp = _numba_priors(model, starts, np.ascontiguousarray(cent[:, order]), v, desc,
                           lower, upper, lm_kwargs)
        return _inside(cp[labels], lower, upper)
    import torch

    yt = torch.as_tensor(cent[:, order], **tt)
    p, cost, _, _ = levenberg_marquardt(
        model, torch.as_tensor(starts.reshape(-1, model.n_params), **tt), yt,
        None, torch.arange(k, device=tt["device"]).repeat_interleave(kk),
        torch.as_tensor(v[desc], **tt), torch.as_tensor(v[~desc], **tt),
        torch.as_tensor(lower, **tt), torch.as_tensor(upper, **tt),
        **{**lm_kwargs, "max_iter": min(lm_kwargs["max_iter"], _PRIOR_MAX_ITER)})
    best = cost.reshape(k, kk).argmin(1)
    cp = p.reshape(k, kk, -1)[torch.arange(k), best].cpu().numpy()
    return _inside(cp[labels], lower, upper)


def _numba_priors(model, starts, yc, v, desc, lower, upper, lm_kwargs) -> np.ndarray:
    """The centre fits of :func:`_kmeans_priors` with the numba kernel (same LM, same pick)."""
    from ..fit import _loops_numba as nb

    k, kk, P = starts.shape
    p0 = np.ascontiguousarray(starts.reshape(-1, P))
    p, cost = np.empty_like(p0), np.empty(p0.shape[0])
    st, it = np.empty(p0.shape[0], np.int64), np.empty(p0.shape[0], np.int64)
    nb.lm_problems(nb.MODEL_CODES[model.name], p0, yc, np.repeat(np.arange(k), kk),
                   np.ascontiguousarray(v[desc]), np.ascontiguousarray(v[~desc]), lower, upper,
                   np.asarray(model.block_order, dtype=np.int64),
                   min(lm_kwargs["max_iter"], _PRIOR_MAX_ITER), lm_kwargs["ftol"],
                   lm_kwargs["xtol"], LAM0, p, cost, st, it)
    cost = np.where(np.isfinite(cost), cost, np.inf)
    return p.reshape(k, kk, P)[np.arange(k), cost.reshape(k, kk).argmin(1)]


def _take_state(state: dict | None, rows) -> dict | None:
    return None if state is None else {k: t[rows] for k, t in state.items()}


def _lm_batched(mdl, p0, yt, wl, pix, vd, va, lo_t, hi_t, lm_kwargs, n_iter, state=None):
    """:func:`levenberg_marquardt` over sub-batches of :data:`_RACE_BATCH` problems.

    Sub-batches keep the Jacobian blocks in cache (a few thousand problems); used for the race
    of the starts and for the iterations of the winners after it. ``state`` (from an earlier
    call on the same rows) lets the problems go on with the damping and normal equations they
    had reached; the state at the end is returned with the results.
    """
    import torch

    parts = [levenberg_marquardt(mdl, p0[u:u + _RACE_BATCH], yt, wl, pix[u:u + _RACE_BATCH],
                                 vd, va, lo_t, hi_t, **{**lm_kwargs, "max_iter": n_iter},
                                 state=_take_state(state, slice(u, u + _RACE_BATCH)),
                                 return_state=True)
             for u in range(0, p0.shape[0], _RACE_BATCH)]
    p, cost, st, it = (torch.cat(z) for z in zip(*(q[:4] for q in parts)))
    new_state = {k: torch.cat([q[4][k] for q in parts]) for k in parts[0][4]}
    cost = torch.where(torch.isfinite(cost), cost, torch.full_like(cost, float("inf")))
    return p, cost, st, it, new_state


def _race_dtype(dtype: torch.dtype) -> torch.dtype:
    """Float type of the race of the starts: float32 for a float64 fit.

    The race only picks each pixel's start; its winner is then iterated in the fit's dtype
    (when ``max_iter`` leaves no iterations after the race, the race runs in the fit's dtype).
    float32 halves the memory traffic of the Jacobian blocks and doubles the width of the
    vectorized erf and exp.
    """
    import torch

    return torch.float32 if dtype == torch.float64 else dtype


def _fresh_state(mdl, p, yt, wl, pix, vd, va, lam, nu) -> dict:
    """A :func:`levenberg_marquardt` state at ``p`` (cost and normal equations evaluated)."""
    cost, A, g = mdl.normal(p[:, list(mdl.block_order)], vd, va, yt.index_select(0, pix),
                            None if wl is None else wl.index_select(0, pix))
    return {"cost": cost, "A": A, "g": g, "lam": lam, "nu": nu}


def _race(mdl, p0, yt, wl, pix, vd, va, lo_t, hi_t, lm_kwargs, race: int):
    """Run every start ``race`` iterations, pruning clear losers early (successive halving).

    After :data:`_PRUNE_ITER` iterations, a start whose cost is above :data:`_PRUNE_RATIO` times
    its pixel's best stops; the others run on to ``race`` iterations. Returns ``p, cost, status,
    n_iter, state`` per start (pruned starts keep their early values, so they lose the choice;
    ``state`` lets the winners go on where the race left them).
    """
    import torch

    first = min(_PRUNE_ITER, race)
    p, cost, st, it, state = _lm_batched(mdl, p0, yt, wl, pix, vd, va, lo_t, hi_t, lm_kwargs,
                                         first)
    if race <= first:
        return p, cost, st, it, state
    best = torch.full((yt.shape[0],), float("inf"), dtype=cost.dtype, device=cost.device)
    best = best.scatter_reduce(0, pix, cost, reduce="amin")
    keep = torch.nonzero((st == STATUS_MAXITER) & (cost <= _PRUNE_RATIO * best[pix]))[:, 0]
    if keep.numel():
        p2, c2, st2, it2, s2 = _lm_batched(mdl, p[keep], yt, wl, pix[keep], vd, va, lo_t, hi_t,
                                           lm_kwargs, race - first, _take_state(state, keep))
        p[keep], cost[keep], st[keep], it[keep] = p2, c2, st2, it[keep] + it2
        for k, t in s2.items():
            state[k][keep] = t
    return p, cost, st, it, state


# no autograd bookkeeping for the thousands of small tensor ops of the fit (results are numpy);
# the decorator adds a frame, hence stacklevel=3 on the warnings below
@inference_mode
def fit_loops(data: Any, voltage: Any = None, model: ModelName | LoopModel = "paper13", *,
              channel: str | None = None, n_clusters: int = 8, max_iter: int = 100,
              ftol: float = 1e-5, xtol: float = 1e-7, race_iter: int | None = None, chunk_size: int = 4096,
              nucleation_fraction: float = 0.03, dtype: Any = "float64",
              device: str | torch.device | None = None, seed: int = 0,
              backend: Literal["auto", "numba", "torch"] = "auto", priors: Any = None) -> LoopFitResult:
    """Fit a hysteresis-loop model to every pixel at once (batched Levenberg-Marquardt).

    Parameters
    ----------
    data : xarray.Dataset, xarray.DataArray, ndarray or torch.Tensor
        Loops: a Dataset (``channel``, default ``piezoresponse_clean`` if present, else
        ``piezoresponse``), or an array of shape (n_pixels, n_steps) or (rows, cols, n_steps).
    voltage : array of shape (n_steps,), optional
        DC voltage per step; required with a plain array (a Dataset supplies its ``voltage``).
    model : {"paper13", "bglib9"} or LoopModel
        Loop model.
    channel : str, optional
        Variable of a Dataset to fit.
    n_clusters : int
        Clusters of the k-means priors (the fit of each cluster's mean loop is an extra start for
        its members); 0 uses only the data-driven starts.
    max_iter : int
        Most iterations per pixel.
    race_iter : int, optional
        Iterations every start runs before only the best start of each pixel goes on (starts
        clearly behind after 2 iterations stop early). Default: the model's (paper13 10,
        bglib9 2).
    ftol, xtol : float
        Convergence tolerances on the relative cost decrease and the relative step. On the
        3600 real loops, ftol=1e-5 instead of 1e-6 cuts the mean iterations by ~25 % and the
        pixels stopped at max_iter from ~100 to ~20, for an R2 change below 3e-4 on any pixel.
    chunk_size : int
        Pixels fitted together; bounds the memory (torch path: about ``chunk_size * n_starts *
        n_steps * n_params * 8`` bytes for the Jacobian in float64; the numba kernel keeps only
        a few kB per thread).
    nucleation_fraction : float
        Change of the response, as a fraction of the loop height, that marks nucleation.
    dtype : "float64" or "float32"
        Float type of the torch path's fit (also ``torch.float32``, ``numpy.float64``). With float64, the race of the
        starts runs in float32 (it only picks each pixel's start) and its winners are iterated
        in float64 (unless ``max_iter`` leaves no iterations after the race: then all in
        float64). The numba kernel always computes in float64.
    device : str or torch.device, optional
        Where to fit; default the device of a torch input, else CPU.
    seed : int
        Seed of the k-means priors.
    backend : {"auto", "numba", "torch"}
        ``"numba"``: a compiled CPU kernel that fits one pixel at a time with its whole problem
        in cache (:mod:`switchscope.fit._loops_numba`; same starts, race, LM, statuses and
        quality as the torch path, computed in float64 throughout, so the race is not run in
        float32; the first call in a fresh environment compiles it, ~20 s, cached on disk
        after; ``dtype`` is ignored). ``"torch"``: batched torch kernels (CPU or GPU).
        ``"auto"`` (default): numba on the CPU for the models it implements (paper13,
        bglib9; 3-5x faster than torch there, see docs/benchmarks.md), torch otherwise.
    priors : k-means, optional
        The k-means of the whole film's loops (:func:`switchscope.chunked.loop_priors`), when
        ``data`` is a part of it: the fit then equals those pixels of the whole film's fit.

    Returns
    -------
    LoopFitResult

    Examples
    --------
    >>> import numpy as np
    >>> from switchscope.loops import fit_loops, paper13
    >>> v = np.r_[np.linspace(16, -16, 49)[:-1], np.linspace(-16, 16, 49)[:-1]]
    >>> p = [-1, 1, 0.01, 2, 3, 3, 2, 5, 5, 0, 0, -5, 5]
    >>> res = fit_loops(paper13([p, p], v), v, n_clusters=0)
    >>> bool(res.r2.min() > 0.999)
    True
    """
    mdl = get_model(model)
    _check_options(n_clusters, max_iter, ftol, xtol, chunk_size, nucleation_fraction, race_iter)
    if backend not in ("auto", "numba", "torch"):
        raise ConfigError(f"fit_loops: backend must be one of auto, numba, torch, got {backend!r}")
    X, grid, v, units, in_device = _resolve_input(data, voltage, channel)
    desc = sweep_masks(v)
    cpu, dev = fit_device(device, in_device)
    if backend == "numba" and not cpu:
        raise ConfigError(f"fit_loops: backend='numba' runs on the CPU only, got device {dev}; "
                          "pass backend='torch' or device='cpu'")
    if backend == "numba" and mdl.name not in _NUMBA_MODELS:
        raise ConfigError(f"fit_loops: backend='numba' fits the models {', '.join(_NUMBA_MODELS)}, "
                          f"got {mdl.name!r}; pass backend='torch'")
    # "auto": the numba kernel on the CPU, where it measured 3-5x faster than torch
    # (docs/benchmarks.md, loops); torch on other devices and for models it does not implement
    use_numba = backend == "numba" or (backend == "auto" and cpu and mdl.name in _NUMBA_MODELS)
    dtype = float_dtype(dtype, "fit_loops")
    if use_numba:
        tt = None
    else:
        import torch

        tt = {"dtype": getattr(torch, dtype), "device": dev if dev is not None else torch.device("cpu")}
    n, m = X.shape
    P = mdl.n_params
    lower, upper = mdl.bounds(v)
    if any(np.isfinite(lower[i]) or np.isfinite(upper[i])
           for i, k in enumerate(mdl.param_kinds) if k != "voltage"):
        raise ConfigError(f"model {mdl.name!r}: response parameters must be unbounded")

    status, center, scale, finite = _triage(X, P)
    fitted = np.flatnonzero(status < 0)
    params = np.full((n, P), np.nan)
    stderr = np.full((n, P), np.nan)
    r2 = np.full(n, np.nan)
    n_iter = np.zeros(n, dtype=np.int64)
    n_starts = len(_GUESS_WIDTHS) + (1 if n_clusters > 0 else 0)
    starts_phys = np.full((n, n_starts, P), np.nan)
    lm_kwargs = {"max_iter": max_iter, "ftol": ftol, "xtol": xtol}

    if fitted.size:
        c, s = center[fitted], scale[fitted]
        # every pixel is fitted in normalized units (its own mean and standard deviation)
        Yn = (X[fitted] - c[:, None]) / s[:, None]
        Wn = finite[fitted]
        Yn = np.where(Wn, Yn, 0.0)
        S = _starts(mdl, Yn, v, desc, n_clusters, seed, lm_kwargs, lower, upper, tt,
                   use_numba, priors)  # (n_fit, K, P)
        # the models evaluate the descending steps first, then the ascending ones
        order = np.r_[np.flatnonzero(desc), np.flatnonzero(~desc)]
        Yn, Wn = Yn[:, order], Wn[:, order]
        race = min(mdl.race_iter if race_iter is None else race_iter, max_iter)
        if use_numba:
            best_p, best_st, best_it, r2[fitted], stderr[fitted] = _fit_numba(
                mdl, S, Yn, Wn, v, desc, lower, upper, lm_kwargs, race, max_iter, chunk_size)
        if not use_numba:
            geometry = {"vd": torch.as_tensor(v[desc], **tt), "va": torch.as_tensor(v[~desc], **tt),
                        "lo": torch.as_tensor(lower, **tt), "hi": torch.as_tensor(upper, **tt)}
            best_p = np.empty((fitted.size, P))
            best_st = np.empty(fitted.size, dtype=np.int64)
            best_it = np.empty(fitted.size, dtype=np.int64)
        for a in range(0, fitted.size if not use_numba else 0, chunk_size):
            b = min(a + chunk_size, fitted.size)
            best_p[a:b], best_st[a:b], best_it[a:b], r2[fitted[a:b]], stderr[fitted[a:b]] = _fit_chunk(
                mdl, S[a:b], Yn[a:b], Wn[a:b], geometry, lm_kwargs, race, max_iter, tt)
        params[fitted], stderr[fitted], starts_phys[fitted] = _to_physical(mdl, best_p, stderr[fitted], S, c, s)
        status[fitted] = best_st
        n_iter[fitted] = best_it

    converged, notfit = _flag_failures(status, params, stderr, r2, max_iter)
    fit = np.full((n, m), np.nan)
    ok = ~notfit
    if ok.any():
        fit[ok] = mdl(params[ok], v, desc)
    metrics = loop_metrics(mdl, params, v, nucleation_fraction=nucleation_fraction)
    return LoopFitResult(params=params, param_names=mdl.param_names, stderr=stderr, r2=r2,
                         converged=converged, status=status, n_iter=n_iter, metrics=metrics,
                         fit=fit, voltage=v, descending=desc, model=mdl.name, grid=grid,
                         starts=starts_phys, units=units)


def _fit_numba(mdl: LoopModel, S: np.ndarray, Yn: np.ndarray, Wn: np.ndarray, v: np.ndarray,
               desc: np.ndarray, lower: np.ndarray, upper: np.ndarray, lm_kwargs: dict, race: int,
               max_iter: int, chunk_size: int):
    """:func:`_fit_chunk` with the numba kernel, over chunks of ``chunk_size`` pixels (bounds the
    contiguous copies); numba runs as many threads as torch is set to."""
    from ..fit import _loops_numba as nb

    n, _, P = S.shape
    params, stderr = np.empty((n, P)), np.empty((n, P))
    r2 = np.empty(n)
    status, n_iter = np.empty(n, np.int64), np.empty(n, np.int64)
    weighted = not bool(Wn.all())
    with numba_threads():
        for a in range(0, n, chunk_size):
            b = min(a + chunk_size, n)
            nb.fit_block(nb.MODEL_CODES[mdl.name], np.ascontiguousarray(S[a:b]),
                         np.ascontiguousarray(Yn[a:b]), np.ascontiguousarray(Wn[a:b], dtype=float),
                         weighted, np.ascontiguousarray(v[desc]), np.ascontiguousarray(v[~desc]),
                         lower, upper, np.asarray(mdl.block_order, dtype=np.int64), race,
                         _PRUNE_ITER, _PRUNE_RATIO, max_iter, lm_kwargs["ftol"], lm_kwargs["xtol"],
                         LAM0, params[a:b], status[a:b], n_iter[a:b], r2[a:b], stderr[a:b])
    return params, status, n_iter, r2, stderr


def _triage(X: np.ndarray, n_params: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Status -1 (to fit), 3 (too few finite points) or 4 (constant) per pixel, with each pixel's
    mean and standard deviation and the finite mask."""
    n = X.shape[0]
    finite = np.isfinite(X)
    nfin = finite.sum(1)
    status = np.full(n, -1, dtype=np.int64)
    status[nfin < n_params + 2] = STATUS_TOO_FEW
    if nfin.min(initial=X.shape[1]) == X.shape[1]:
        # every point finite (the common case): the plain reductions, without nan* copies
        center, scale = X.mean(axis=1), X.std(axis=1)
    else:
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            center = np.nanmean(np.where(finite, X, np.nan), axis=1)
            scale = np.nanstd(np.where(finite, X, np.nan), axis=1)
    const = (status < 0) & ~(scale > 1e-12 * np.maximum(np.abs(center), 1e-300))
    status[const] = STATUS_CONSTANT
    if status[status == STATUS_TOO_FEW].size or const.any():
        warnings.warn(f"{int((status == STATUS_TOO_FEW).sum())} pixel(s) with too few finite points "
                      f"and {int(const.sum())} constant pixel(s) were not fitted (status 3, 4; NaN)",
                      DataWarning, stacklevel=4)
    return status, center, scale, finite


def _starts(mdl: LoopModel, Yn: np.ndarray, v: np.ndarray, desc: np.ndarray, n_clusters: int, seed: int,
            lm_kwargs: dict, lower: np.ndarray, upper: np.ndarray, tt: dict,
            use_numba: bool = False, km: Any = None) -> np.ndarray:
    """The starts of every pixel ``(n, K, P)`` in normalized units: one data-driven guess per
    width of :data:`_GUESS_WIDTHS`, and a k-means prior when ``n_clusters > 0``."""
    starts = [_inside(mdl.guess(v, desc, Yn, width=wd), lower, upper) for wd in _GUESS_WIDTHS]
    if n_clusters > 0:
        starts.append(_kmeans_priors(mdl, Yn, v, desc, n_clusters, seed, lm_kwargs, lower, upper, tt,
                                     use_numba, km))
    return np.stack(starts, axis=1)


def _fit_chunk(mdl: LoopModel, S: np.ndarray, Yn: np.ndarray, Wn: np.ndarray, geometry: dict, lm_kwargs: dict,
               race: int, max_iter: int, tt: dict):
    """Fit one chunk of pixels (normalized, steps in model order) from their starts ``S``:
    race the starts, go on with each pixel's winner, then R² and standard errors at the result.
    Returns ``(params, status, n_iter, r2, stderr)`` as numpy arrays."""
    import torch

    dtype, dev = tt["dtype"], tt["device"]
    vd, va, lo_t, hi_t = geometry["vd"], geometry["va"], geometry["lo"], geometry["hi"]
    nb, K, P = S.shape
    yt = torch.as_tensor(Yn, **tt)
    wt = torch.as_tensor(Wn, **tt)
    # unit weights everywhere (the usual, cleaned case): skip the weighting passes
    wl = None if bool(Wn.all()) else wt
    rows = torch.arange(nb, device=dev)
    # Race: every start runs a few iterations, then only the best start per pixel goes on.
    # float32 only when iterations in the fit's dtype follow the race
    rd = _race_dtype(dtype) if max_iter > race else dtype
    p0 = torch.as_tensor(S.reshape(-1, P), dtype=rd, device=dev)
    p, cost, st, it, state = _race(
        mdl, p0, yt.to(rd), None if wl is None else wl.to(rd), rows.repeat_interleave(K),
        vd.to(rd), va.to(rd), lo_t.to(rd), hi_t.to(rd), lm_kwargs, race)
    k = cost.reshape(nb, K).argmin(1)
    win = rows * K + k
    p = p.reshape(nb, K, P)[rows, k]
    # a parameter on a (rounded) bound in the race stays exactly on the fit's bound
    p = torch.where(p <= lo_t.to(rd), lo_t, torch.where(p >= hi_t.to(rd), hi_t, p.to(dtype)))
    st = st.reshape(nb, K)[rows, k]
    it = it.reshape(nb, K)[rows, k]
    if rd != dtype:
        # the race ran in float32: every winner goes on in the fit's dtype, with its
        # normal equations evaluated afresh and the damping it reached, capped at the
        # initial one (near a float32 optimum, rejected steps inflate the damping)
        go_on = torch.nonzero(st != STATUS_NONFINITE)[:, 0]
        lam = torch.clamp(state["lam"][win[go_on]].to(dtype), max=LAM0)
        state = _fresh_state(mdl, p[go_on], yt, wl, go_on, vd, va, lam, torch.full_like(lam, 2.0))
    else:
        go_on = torch.nonzero(st == STATUS_MAXITER)[:, 0]
        state = _take_state(state, win[go_on])
    if go_on.numel() and max_iter > race:
        # the winners go on from where the race left them
        p2, _, st2, it2, _ = _lm_batched(mdl, p[go_on], yt, wl, go_on, vd, va, lo_t, hi_t,
                                         lm_kwargs, max_iter - race, state)
        p[go_on], st[go_on], it[go_on] = p2, st2, it[go_on] + it2
    r2, se = _quality(mdl, p, vd, va, yt, wt, wl)
    return p.cpu().numpy(), st.cpu().numpy(), it.cpu().numpy(), r2, se


def _quality(mdl: LoopModel, p: torch.Tensor, vd: torch.Tensor, va: torch.Tensor, yt: torch.Tensor,
             wt: torch.Tensor, wl: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray]:
    """R² and standard errors (from the Gauss-Newton covariance) at ``p``, in normalized units."""
    import torch

    P = p.shape[1]
    order_t = torch.as_tensor(mdl.block_order, device=p.device)
    sse, A, _ = mdl.normal(p[:, order_t], vd, va, yt, wl)
    yw = yt * wt
    nf = wt.sum(1)
    sst = ((yw - (yw.sum(1) / nf)[:, None]) * wt).pow(2).sum(1)
    r2 = (1.0 - sse / sst).cpu().numpy()
    Ainv, info = torch.linalg.inv_ex(A)
    dof = torch.clamp(nf - P, min=1.0)
    # the diagonal of the inverse, from block order back to parameter order
    var = torch.diagonal(Ainv, dim1=1, dim2=2)[:, torch.argsort(order_t)] * (sse / dof)[:, None]
    se = torch.sqrt(torch.clamp(var, min=0.0))
    se = torch.where(((info == 0)[:, None]) & (var >= 0), se, torch.nan)
    return r2, se.cpu().numpy()


def _to_physical(mdl: LoopModel, best_p: np.ndarray, stderr: np.ndarray, S: np.ndarray, c: np.ndarray,
                 s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parameters, standard errors and starts back in the units of the data (offsets shift by the
    pixel's mean, offsets and amplitudes scale by its standard deviation)."""
    kinds = np.array(mdl.param_kinds)
    off, sc = kinds == "offset", kinds == "scale"
    bp = best_p.copy()
    bp[:, off] = bp[:, off] * s[:, None] + c[:, None]
    bp[:, sc] = bp[:, sc] * s[:, None]
    se = stderr.copy()
    se[:, off | sc] *= s[:, None]
    Sp = S.copy()
    Sp[:, :, off] = Sp[:, :, off] * s[:, None, None] + c[:, None, None]
    Sp[:, :, sc] = Sp[:, :, sc] * s[:, None, None]
    return bp, se, Sp


def _flag_failures(status: np.ndarray, params: np.ndarray, stderr: np.ndarray, r2: np.ndarray,
                   max_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """Mark non-finite results as failed (status 5), blank every pixel that was not fitted, and
    warn about pixels that stopped at ``max_iter`` or failed. Returns ``(converged, not_fitted)``."""
    bad = (status < STATUS_TOO_FEW) & ~(np.isfinite(params).all(1) & np.isfinite(r2))
    status[bad] = STATUS_NONFINITE
    notfit = status >= STATUS_TOO_FEW
    params[notfit] = np.nan
    stderr[notfit] = np.nan
    r2[notfit] = np.nan
    n_max = int((status == STATUS_MAXITER).sum())
    if n_max or bad.any():
        warnings.warn(f"{n_max} pixel(s) stopped at max_iter={max_iter} (status 2) and "
                      f"{int(bad.sum())} failed (status 5); see loop_status in results.nc (result.status in "
                      "Python)", ConvergenceWarning, stacklevel=4)
    return status <= 1, notfit
