"""Cleaning and normalization of switching-spectroscopy curves (DESIGN section 2.2).

The paper's recipe (Agar et al., Nat. Commun. 10, 4809 (2019); the ``range_filter``,
``clean_interpolate``, ``savgol`` and ``normalize`` steps of its published code), vectorized over
all pixels of a ``(n_pixels, n_steps)`` array:

1. resonance frequencies outside a valid range (1300-1340 kHz) become NaN (only for the
   ``resonance`` channel, and only when it is not already normalized);
2. non-finite values become NaN (Inf with a :class:`~switchscope.DataWarning`);
3. NaNs are filled by linear interpolation along the step axis (:func:`interpolate_nans`);
4. a Savitzky-Golay filter (window 7, order 3) is fitted to each curve, the 3 points farthest from
   it become NaN and are interpolated again (:func:`remove_outliers`);
5. each channel is normalized by its global mean and standard deviation (:func:`normalize`); a
   validation set is normalized with the training set's statistics.

The cleaned curves stay in the channel's physical units; the normalization statistics travel with
them (attrs ``norm_mean`` and ``norm_std`` of ``<channel>_clean``) so every later stage normalizes
the same way.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from typing import Any, Mapping, overload

import numpy as np
import xarray as xr
from scipy.signal import savgol_filter

from ._config import StageConfig, register
from ._context import RunContext
from ._dataset import CHANNELS, channels_in, check_channel
from ._errors import ConfigError, DataError, DataWarning
from ._grid import flatten, unflatten

__all__ = [
    "CleanConfig",
    "NormStats",
    "clean",
    "denormalize",
    "interpolate_nans",
    "normalize",
    "remove_outliers",
    "stage",
]


# ------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------
@register("clean")
@dataclasses.dataclass(frozen=True, kw_only=True)
class CleanConfig(StageConfig):
    """Options of the cleaning stage (TOML section ``[clean]``); defaults are the paper's values.

    Parameters
    ----------
    savgol_window : int
        Length of the Savitzky-Golay window in steps (odd, > ``savgol_order``). Paper: 7.
    savgol_order : int
        Polynomial order of the Savitzky-Golay filter. Paper: 3.
    n_outliers : int
        Points per curve farthest from the Savitzky-Golay fit that are replaced by interpolation.
        Paper: 3. ``0`` skips the step.
    range_filter : bool
        Set resonance frequencies outside ``[resonance_low_khz, resonance_high_khz]`` to NaN.
        Applies only to the ``resonance`` channel, and never when its attrs say ``normalized``.
    resonance_low_khz, resonance_high_khz : float
        Valid resonance range in kHz. Paper: 1300 and 1340.
    channels : tuple of str, optional
        Channels to clean; None cleans every channel present.
    figures : bool
        Let the report draw ``clean.png`` (raw and cleaned curves of the most repaired pixels).
    """

    savgol_window: int = 7
    savgol_order: int = 3
    n_outliers: int = 3
    range_filter: bool = True
    resonance_low_khz: float = 1300.0
    resonance_high_khz: float = 1340.0
    channels: tuple[str, ...] | None = None
    figures: bool = True

    presets = {
        "paper": {
            "savgol_window": 7,
            "savgol_order": 3,
            "n_outliers": 3,
            "range_filter": True,
            "resonance_low_khz": 1300.0,
            "resonance_high_khz": 1340.0,
        }
    }

    def __post_init__(self) -> None:
        # TOML hands lists; a tuple keeps the frozen config hashable.
        if isinstance(self.channels, (list, str)):
            value = (self.channels,) if isinstance(self.channels, str) else tuple(self.channels)
            object.__setattr__(self, "channels", value)
        super().__post_init__()

    def validate(self) -> None:
        self.check_number("savgol_window", lo=3, hi=1001, integer=True, odd=True)
        self.check_number("savgol_order", lo=0, integer=True)
        if self.savgol_order >= self.savgol_window:
            self._fail("savgol_order", f"an integer < savgol_window ({self.savgol_window})",
                       self.savgol_order)
        self.check_number("n_outliers", lo=0, hi=1000, integer=True)
        for name in ("range_filter", "figures"):
            if not isinstance(getattr(self, name), bool):
                self._fail(name, "true or false", getattr(self, name))
        self.check_number("resonance_low_khz")
        self.check_number("resonance_high_khz")
        if self.resonance_low_khz >= self.resonance_high_khz:
            self._fail("resonance_low_khz",
                       f"a number < resonance_high_khz ({self.resonance_high_khz})",
                       self.resonance_low_khz)
        if self.channels is not None:
            if not isinstance(self.channels, tuple) or not self.channels:
                self._fail("channels", "a non-empty list of channel names", self.channels)
            for ch in self.channels:
                if ch not in CHANNELS:
                    self._fail("channels", "a list of: " + ", ".join(CHANNELS), ch)


# ------------------------------------------------------------------------------------------------
# building blocks
# ------------------------------------------------------------------------------------------------
def _as_2d_float(X: Any, name: str = "X") -> np.ndarray:
    arr = np.asarray(X)
    if arr.ndim != 2:
        raise DataError(f"{name} must have shape (n_pixels, n_steps), got shape {arr.shape}; "
                        "flatten the grid first (switchscope.flatten)")
    if not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"{name} must be numeric, got dtype {arr.dtype}; convert it to float")
    return arr.astype(np.float64, copy=True)


def _pixel_name(index: int, grid: tuple[int, ...] | None) -> str:
    if grid is None:
        return f"pixel {index}"
    return f"(row, col) = ({index // grid[1]}, {index % grid[1]})"


def _check_no_empty_pixels(X: np.ndarray, label: str, grid: tuple[int, ...] | None = None) -> None:
    empty = np.flatnonzero(~np.isfinite(X).any(axis=1))
    if empty.size:
        raise DataError(
            f"{label}: {empty.size} pixel(s) have no finite value (first at "
            f"{_pixel_name(int(empty[0]), grid)}); remove those pixels or fill them before cleaning"
        )


def interpolate_nans(X: Any) -> np.ndarray:
    """Fill NaNs by linear interpolation along the step axis, for all pixels at once.

    Interpolation is in step index (the paper's steps are equally spaced in time; the voltage runs
    down and back up, so it is not an abscissa). NaNs before the first finite value take that value
    and NaNs after the last finite value take that one, as ``numpy.interp`` does. The paper's code
    first copies the second point into a NaN first point; that gives the same curve.

    Parameters
    ----------
    X : array of shape (n_pixels, n_steps)
        Curves; NaN marks a missing value. Inf is not accepted (turn it into NaN first).

    Returns
    -------
    ndarray of shape (n_pixels, n_steps), float64
        A new array without NaN.

    Raises
    ------
    DataError
        A pixel has no finite value at all, or the array holds Inf.

    Examples
    --------
    >>> interpolate_nans([[np.nan, 1.0, np.nan, 3.0, np.nan]])
    array([[1., 1., 2., 3., 3.]])
    """
    X = _as_2d_float(X)
    if np.isinf(X).any():
        raise DataError(f"X holds {int(np.isinf(X).sum())} Inf value(s); set them to NaN first "
                        "(clean() does this for you)")
    _check_no_empty_pixels(X, "X")
    rows = np.flatnonzero(np.isnan(X).any(axis=1))
    if rows.size == 0:
        return X
    if rows.size < X.shape[0]:
        X[rows] = _fill(X[rows])
        return X
    return _fill(X)


def _fill(X: np.ndarray) -> np.ndarray:
    """Linear interpolation of the NaNs of ``X`` (every row has a finite value)."""
    valid = ~np.isnan(X)
    n_steps = X.shape[1]
    steps = np.arange(n_steps)
    # Nearest valid index on each side of every step: a running max/min over the valid indices.
    prev = np.maximum.accumulate(np.where(valid, steps, -1), axis=1)
    nxt = np.minimum.accumulate(np.where(valid, steps, n_steps)[:, ::-1], axis=1)[:, ::-1]
    lo = np.where(prev < 0, nxt, prev)
    hi = np.where(nxt >= n_steps, prev, nxt)
    y_lo = np.take_along_axis(X, lo, axis=1)
    y_hi = np.take_along_axis(X, hi, axis=1)
    span = hi - lo
    with np.errstate(invalid="ignore", divide="ignore"):
        # Same arithmetic order as numpy.interp: slope * (x - x_lo) + y_lo.
        slope = np.where(span > 0, (y_hi - y_lo) / np.where(span > 0, span, 1), 0.0)
    filled = slope * (steps - lo) + y_lo
    return np.where(valid, X, filled)


@functools.lru_cache(maxsize=16)
def _savgol_operator(n_steps: int, window: int, order: int) -> np.ndarray:
    """Matrix ``M`` with ``X @ M == savgol_filter(X, window, order, axis=-1)`` (mode "interp").

    The filter, edges included, is linear in the curve, so filtering the identity gives its
    matrix; one matmul over all pixels is faster than ``savgol_filter`` on a 2-D array
    (benchmarks/bench_clean.py) and agrees with it to ~1e-15 relative.
    """
    M = savgol_filter(np.eye(n_steps), window_length=window, polyorder=order, axis=-1)
    M.setflags(write=False)
    return M


def _outlier_mask(X: np.ndarray, window: int, order: int, n_points: int) -> np.ndarray:
    fit = X @ _savgol_operator(X.shape[1], int(window), int(order))
    distance = np.abs(X - fit)
    # The n_points largest distances of each row, chosen as the last n_points of a stable
    # ascending sort would (ties go to the later steps), via a partition instead of a full sort.
    kth = X.shape[1] - n_points
    threshold = np.partition(distance, kth, axis=1)[:, kth:kth + 1]
    mask = distance > threshold
    still = n_points - mask.sum(axis=1, keepdims=True)
    tie = distance == threshold
    from_right = np.cumsum(tie[:, ::-1], axis=1)[:, ::-1]
    return mask | (tie & (from_right <= still))


def _check_savgol(window: Any, order: Any, n_points: Any) -> None:
    for name, value in (("window", window), ("order", order), ("n_points", n_points)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ConfigError(f"remove_outliers {name} must be an integer, got {value!r}")
    if window < 3 or window % 2 == 0:
        raise ConfigError(f"remove_outliers window must be an odd integer >= 3, got {window!r}")
    if not 0 <= order < window:
        raise ConfigError(f"remove_outliers order must be an integer >= 0 and < window ({window}), "
                          f"got {order!r}")
    if n_points < 0:
        raise ConfigError(f"remove_outliers n_points must be an integer >= 0, got {n_points!r}")


def remove_outliers(X: Any, window: int = 7, order: int = 3, n_points: int = 3) -> np.ndarray:
    """Replace the ``n_points`` points of each curve farthest from its Savitzky-Golay fit.

    The filter is ``scipy.signal.savgol_filter`` (mode ``"interp"``: the edges are fitted by the
    polynomial of the first/last full window), applied to all curves at once as one matrix
    product; the farthest points
    become NaN and are filled by :func:`interpolate_nans`.

    Parameters
    ----------
    X : array of shape (n_pixels, n_steps)
        Finite curves (interpolate NaNs first).
    window : int
        Savitzky-Golay window length, odd, >= 3 and <= n_steps.
    order : int
        Polynomial order, < ``window``.
    n_points : int
        Points replaced per curve; 0 returns a copy of ``X``. (The paper's code would have removed
        every point for 0, because ``a[-0:]`` is the whole array.)

    Returns
    -------
    ndarray of shape (n_pixels, n_steps), float64
    """
    _check_savgol(window, order, n_points)
    X = _as_2d_float(X)
    n_bad = int((~np.isfinite(X)).sum())
    if n_bad:
        raise DataError(f"X holds {n_bad} NaN/Inf value(s); remove_outliers needs finite curves, "
                        "call interpolate_nans first")
    if window > X.shape[1]:
        raise DataError(f"the curves have {X.shape[1]} steps, fewer than the Savitzky-Golay window "
                        f"({window}); choose a window <= {X.shape[1]}")
    if n_points >= X.shape[1]:
        raise DataError(f"n_points ({n_points}) must be smaller than the number of steps "
                        f"({X.shape[1]}); choose fewer points to remove")
    if n_points == 0:
        return X
    X[_outlier_mask(X, window, order, n_points)] = np.nan
    return interpolate_nans(X)


# ------------------------------------------------------------------------------------------------
# normalization
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class NormStats:
    """Global statistics of one channel: ``Xn = (X - mean) / std``."""

    mean: float
    std: float

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "std": self.std}


def _as_stats(stats: Any) -> NormStats:
    if isinstance(stats, NormStats):
        out = stats
    elif isinstance(stats, Mapping) and {"mean", "std"} <= set(stats):
        out = NormStats(float(stats["mean"]), float(stats["std"]))
    elif isinstance(stats, (tuple, list)) and len(stats) == 2:
        out = NormStats(float(stats[0]), float(stats[1]))
    else:
        raise ConfigError(f"stats must be a NormStats, a {{'mean', 'std'}} mapping or a (mean, std) "
                          f"pair, got {stats!r}")
    if not (np.isfinite(out.mean) and np.isfinite(out.std) and out.std > 0):
        raise ConfigError(f"stats must have a finite mean and a finite std > 0, got {out}")
    return out


def normalize(X: Any, stats: NormStats | Mapping[str, float] | tuple[float, float] | None = None
              ) -> tuple[np.ndarray, NormStats]:
    """Subtract the global mean and divide by the global standard deviation.

    Parameters
    ----------
    X : array of any shape, e.g. (n_pixels, n_steps)
        Values to normalize; NaNs are ignored by the statistics and stay NaN.
    stats : NormStats or {"mean", "std"} mapping or (mean, std), optional
        Statistics to use (those of a training set, to normalize a validation set). When None they
        are computed from ``X``: mean and population standard deviation (``ddof=0``) of all its
        finite values, as the paper does.

    Returns
    -------
    Xn : ndarray of the shape of X, float64
    stats : NormStats
        The statistics used.

    Examples
    --------
    >>> Xn, st = normalize([[1.0, 2.0, 3.0]])
    >>> st.mean, round(float(Xn.std()), 12)
    (2.0, 1.0)
    """
    arr = np.asarray(X, dtype=np.float64)
    if stats is None:
        finite = arr[np.isfinite(arr)]
        if finite.size == 0:
            raise DataError("cannot normalize: the data holds no finite value; clean it first")
        st = NormStats(float(finite.mean()), float(finite.std()))
        if not st.std > 0:
            raise DataError("cannot normalize: every value is the same (std 0); "
                            "give data that varies or pass stats=(mean, std)")
    else:
        st = _as_stats(stats)
    return (arr - st.mean) / st.std, st


def denormalize(Xn: Any, stats: NormStats | Mapping[str, float] | tuple[float, float]) -> np.ndarray:
    """Inverse of :func:`normalize`: ``Xn * std + mean``."""
    st = _as_stats(stats)
    return np.asarray(Xn, dtype=np.float64) * st.std + st.mean


# ------------------------------------------------------------------------------------------------
# the whole recipe
# ------------------------------------------------------------------------------------------------
def check_steps(n_steps: int, config: CleanConfig, label: str) -> None:
    """Refuse curves too short for the configured Savitzky-Golay window and outlier count."""
    if n_steps < 3:
        raise DataError(f"{label}: the curves have {n_steps} step(s), but cleaning needs at least 3 (a "
                        "Savitzky-Golay window is odd and >= 3); give curves with more steps")
    if n_steps < config.savgol_window:
        largest = n_steps if n_steps % 2 else n_steps - 1
        raise DataError(f"{label}: the curves have {n_steps} steps, fewer than the Savitzky-Golay window "
                        f"({config.savgol_window}); set [clean] savgol_window to an odd number from 3 to "
                        f"{largest}")
    if config.n_outliers >= n_steps:
        raise DataError(f"{label}: [clean] n_outliers ({config.n_outliers}) must be smaller than the "
                        f"number of steps ({n_steps}); lower it")


def _clean_array(X: np.ndarray, config: CleanConfig, *, apply_range: bool, label: str,
                 grid: tuple[int, ...] | None) -> tuple[np.ndarray, dict[str, int]]:
    X = _as_2d_float(X, label)
    n_pixels, n_steps = X.shape
    check_steps(n_steps, config, label)
    n_inf = int(np.isinf(X).sum())
    n_nonfinite = int((~np.isfinite(X)).sum())
    if n_inf:
        warnings.warn(f"{label}: {n_inf} Inf value(s) set to NaN and interpolated", DataWarning,
                      stacklevel=3)
    X[~np.isfinite(X)] = np.nan
    n_out = 0
    if apply_range:
        lo, hi = config.resonance_low_khz, config.resonance_high_khz
        with np.errstate(invalid="ignore"):
            out = (X < lo) | (X > hi)
        n_out = int(out.sum())
        if n_out and not np.isfinite(np.where(out, np.nan, X)).any():
            raise DataError(
                f"{label}: no value lies in the valid range {lo}-{hi} kHz; if the data is in other "
                "units or already normalized, mark it (attrs['normalized'] = 1) or set "
                "[clean] range_filter = false"
            )
        X[out] = np.nan
    _check_no_empty_pixels(X, label, grid)
    X = interpolate_nans(X)
    n_outliers = 0
    if config.n_outliers:
        X = remove_outliers(X, config.savgol_window, config.savgol_order, config.n_outliers)
        n_outliers = n_pixels * config.n_outliers
    counts = {"n_nonfinite": n_nonfinite, "n_out_of_range": n_out, "n_outliers": n_outliers}
    return X, counts


def _is_normalized(attrs: Mapping[str, Any]) -> bool:
    value = attrs.get("normalized", False)
    if isinstance(value, (bytes, str)):
        return value.strip().lower() in {"1", "true", "yes"}
    return bool(value)


def _check_config(config: Any) -> CleanConfig:
    if config is None:
        return CleanConfig()
    if isinstance(config, Mapping):
        return CleanConfig.from_dict(dict(config))
    if not isinstance(config, CleanConfig):
        raise ConfigError(f"config must be a CleanConfig (or a mapping of its options), "
                          f"got {type(config).__name__}")
    return config


@overload
def clean(data: xr.Dataset, config: CleanConfig | None = ..., *, channel: str | None = ...
          ) -> xr.Dataset: ...
@overload
def clean(data: np.ndarray, config: CleanConfig | None = ..., *, channel: str | None = ...
          ) -> np.ndarray: ...
def clean(data: Any, config: CleanConfig | Mapping[str, Any] | None = None, *,
          channel: str | None = None) -> Any:
    """Clean switching curves with the paper's recipe (see the module docstring).

    Parameters
    ----------
    data : xarray.Dataset or array of shape (n_pixels, n_steps) or (rows, cols, steps)
        A Dataset with channel variables ``(row, col, step)``, or the curves of one channel.
    config : CleanConfig, optional
        Options; the paper's values by default.
    channel : str, optional
        For a Dataset: clean only this channel (default: ``config.channels`` or every channel).
        For an array: its channel name; the resonance range filter applies only to
        ``"resonance"``.

    Returns
    -------
    xarray.Dataset or ndarray
        For a Dataset: a new Dataset with ``<channel>_clean`` ``(row, col, step)`` added for each
        cleaned channel, in the channel's units, whose attrs hold the counts ``n_nonfinite``,
        ``n_out_of_range``, ``n_outliers`` and the normalization statistics ``norm_mean``,
        ``norm_std`` (see :func:`normalize`). For an array: the cleaned array, float64, of the
        input's shape.

    Raises
    ------
    DataError
        A pixel has no finite value (its count and the first pixel are named), or the curves are
        shorter than the filter window.

    Warns
    -----
    DataWarning
        When Inf values were replaced.

    Examples
    --------
    >>> X = np.sin(np.linspace(0, 6, 96))[None].repeat(4, 0)
    >>> X[0, 10] = np.nan
    >>> clean(X).shape
    (4, 96)
    """
    config = _check_config(config)
    if isinstance(data, xr.Dataset):
        if channel is not None:
            names = [check_channel(channel)]
        elif config.channels is not None:
            names = list(config.channels)
        else:
            names = channels_in(data)
        missing = [n for n in names if n not in data.data_vars]
        if missing:
            raise DataError(f"channel(s) {', '.join(missing)} not in the data (has: "
                            f"{', '.join(channels_in(data)) or 'none'}); choose channels it has")
        if not names:
            raise DataError("the Dataset has no measurement channel to clean; give one of: "
                            + ", ".join(CHANNELS))
        new: dict[str, xr.DataArray] = {}
        for name in names:
            src = data[name]
            X, grid = flatten(data, name)
            apply_range = (config.range_filter and name == "resonance"
                           and not _is_normalized(src.attrs))
            Xc, counts = _clean_array(X, config, apply_range=apply_range, label=name, grid=grid)
            _, st = normalize(Xc)
            attrs = dict(src.attrs)
            attrs.update(counts)
            attrs.update(norm_mean=st.mean, norm_std=st.std,
                         long_name=f"cleaned {src.attrs.get('long_name', name)}")
            new[f"{name}_clean"] = xr.DataArray(unflatten(Xc, grid), dims=src.dims,
                                                coords=src.coords, attrs=attrs)
        return data.assign(new)
    if channel is not None:
        check_channel(channel)
    X, grid = flatten(data)
    Xc, _ = _clean_array(X, config, apply_range=config.range_filter and channel == "resonance",
                         label=channel or "data", grid=grid)
    return unflatten(Xc, grid)


# ------------------------------------------------------------------------------------------------
# pipeline stage
# ------------------------------------------------------------------------------------------------
def stage(ds: xr.Dataset, config: CleanConfig, ctx: RunContext) -> xr.Dataset:
    """Pipeline stage ``clean``: :func:`clean` on every channel, and key numbers.

    Adds ``ctx.summary["clean"] = {"seconds": ..., "<channel>": {n_nonfinite, n_out_of_range,
    n_outliers, norm_mean, norm_std}}``; the report draws ``clean.png`` from the results.
    """
    t0 = time.perf_counter()
    out = clean(ds, config)
    seconds = time.perf_counter() - t0
    names = [n for n in channels_in(ds) if f"{n}_clean" in out and f"{n}_clean" not in ds]
    summary: dict[str, Any] = {"seconds": round(seconds, 4)}
    for name in names:
        a = out[f"{name}_clean"].attrs
        summary[name] = {k: (int(a[k]) if k.startswith("n_") else float(a[k]))
                         for k in ("n_nonfinite", "n_out_of_range", "n_outliers",
                                   "norm_mean", "norm_std")}
    ctx.summary["clean"] = summary
    return out
