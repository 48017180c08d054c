"""Cleaning and normalization of switching-spectroscopy curves (DESIGN section 2.2).

The paper's recipe (Agar et al., Nat. Commun. 10, 4809 (2019); the ``range_filter``,
``clean_interpolate``, ``savgol`` and ``normalize`` steps of its published code), vectorized over
all pixels of a ``(n_pixels, n_steps)`` array:

1. resonance frequencies outside a valid range become NaN (only for the ``resonance`` channel, and
   only when it is not already normalized). The paper used 1300-1340 kHz, its cantilever's
   resonance (``--preset paper``); by default the range comes from the data (:func:`robust_range`);
2. non-finite values become NaN (Inf with a :class:`~switchscope.DataWarning`);
3. NaNs are filled by linear interpolation along the step axis (:func:`interpolate_nans`);
4. a Savitzky-Golay filter (window 7, order 3) is fitted to each curve, the 3 points farthest from
   it become NaN and are interpolated again (:func:`remove_outliers`);
5. each channel is normalized (:func:`normalize`): by its global mean and standard deviation (the
   paper, ``"global"``), each curve by its own (``"pixel"``), or by the global median and scaled
   interquartile range (``"robust"``); ``"auto"`` picks global or pixel from the spread of the loop
   heights (:func:`choose_normalization`). A validation set is normalized with the training set's
   statistics.

The cleaned curves stay in the channel's physical units; the normalization travels with them so
every later stage normalizes the same way (:func:`stored_stats`): attrs ``normalization`` (the
method) and ``normalization_reason`` of ``<channel>_clean``, and the statistics in its attrs
``norm_mean`` and ``norm_std`` (global, robust) or in the variables ``<channel>_norm_mean`` and
``<channel>_norm_std`` (row, col) (pixel).
"""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from typing import Any, Literal, Mapping, overload

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
    "choose_normalization",
    "clean",
    "denormalize",
    "interpolate_nans",
    "normalize",
    "remove_outliers",
    "robust_range",
    "stage",
    "stored_stats",
]

Normalization = Literal["auto", "global", "pixel", "robust"]
NORMALIZATIONS = ("auto", "global", "pixel", "robust")

#: Half-width of the automatic resonance range in scaled MADs (see :func:`robust_range`).
RANGE_MADS = 8.0

#: ``"auto"`` normalizes per pixel when the 90th/10th percentile ratio of the loop heights is
#: larger than this (see :func:`choose_normalization`).
HEIGHT_RATIO = 10.0


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
        Set resonance frequencies outside ``resonance_range_khz`` to NaN. Applies only to the
        ``resonance`` channel, and never when its attrs say ``normalized``.
    resonance_range_khz : "auto" or (float, float)
        Valid resonance range in kHz: ``"auto"`` (default) derives it from the data, median
        +- 8 scaled MADs (:func:`robust_range`); ``[low, high]`` sets it. Paper: 1300-1340.
    normalization : {"auto", "global", "pixel", "robust"}
        How each channel is normalized for the learning stages (see :func:`normalize`):
        ``"global"`` the paper's global mean and std, ``"pixel"`` each curve by its own mean and
        std, ``"robust"`` the global median and scaled IQR; ``"auto"`` (default) chooses global or
        pixel from the spread of the loop heights (:func:`choose_normalization`). Paper: global.
    channels : tuple of str, optional
        Channels to clean; None cleans every channel present.
    figures : bool
        Let the report draw ``clean.png`` (raw and cleaned curves of the most repaired pixels).
    """

    savgol_window: int = 7
    savgol_order: int = 3
    n_outliers: int = 3
    range_filter: bool = True
    resonance_range_khz: Literal["auto"] | tuple[float, float] = "auto"
    normalization: Normalization = "auto"
    channels: tuple[str, ...] | None = None
    figures: bool = True

    presets = {
        "paper": {
            "savgol_window": 7,
            "savgol_order": 3,
            "n_outliers": 3,
            "range_filter": True,
            "resonance_range_khz": (1300.0, 1340.0),
            "normalization": "global",
        }
    }

    def __post_init__(self) -> None:
        # TOML hands lists; a tuple keeps the frozen config hashable.
        if isinstance(self.channels, (list, str)):
            value = (self.channels,) if isinstance(self.channels, str) else tuple(self.channels)
            object.__setattr__(self, "channels", value)
        if isinstance(self.resonance_range_khz, list):
            object.__setattr__(self, "resonance_range_khz", tuple(self.resonance_range_khz))
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
        rng = self.resonance_range_khz
        if rng != "auto" and not (
                isinstance(rng, tuple) and len(rng) == 2
                and all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                        and np.isfinite(v) for v in rng)
                and rng[0] < rng[1]):
            self._fail("resonance_range_khz", '"auto" or [low, high] in kHz with low < high', rng)
        self.check_choice("normalization", NORMALIZATIONS)
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
@dataclasses.dataclass(frozen=True, eq=False)
class NormStats:
    """Statistics of one channel: ``Xn = (X - mean) / std``.

    ``mean`` and ``std`` are floats (global and robust normalization: one location and scale for
    the channel) or arrays of shape (n_pixels, 1) (pixel normalization: one per curve).
    """

    mean: Any
    std: Any

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, NormStats) and np.array_equal(self.mean, other.mean)
                and np.array_equal(self.std, other.std))

    @property
    def per_pixel(self) -> bool:
        """Whether the statistics are one per curve."""
        return np.ndim(self.mean) > 0

    def to_dict(self) -> dict[str, Any]:
        return {"mean": np.asarray(self.mean).tolist(), "std": np.asarray(self.std).tolist()}


def _as_stats(stats: Any) -> NormStats:
    if isinstance(stats, NormStats):
        pair = (stats.mean, stats.std)
    elif isinstance(stats, Mapping) and {"mean", "std"} <= set(stats):
        pair = (stats["mean"], stats["std"])
    elif isinstance(stats, (tuple, list)) and len(stats) == 2:
        pair = (stats[0], stats[1])
    else:
        raise ConfigError(f"stats must be a NormStats, a {{'mean', 'std'}} mapping or a (mean, std) "
                          f"pair, got {stats!r}")
    try:
        mean, std = (np.asarray(v, dtype=np.float64) for v in pair)
    except (TypeError, ValueError):
        raise ConfigError(f"stats must hold numbers, got {stats!r}") from None
    if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
        raise ConfigError(f"stats must have a finite mean and a finite std > 0, got {stats!r}")
    return NormStats(*(float(v) if v.ndim == 0 else v for v in (mean, std)))


def _pixel_stats(arr: np.ndarray) -> NormStats:
    """Mean and population std of each curve (rows of a 2-D array), shape (n_pixels, 1).

    A curve with (numerically) no spread, a dead pixel, takes the channel's global std instead, so
    it normalizes to zeros rather than to noise divided by nothing.
    """
    if arr.ndim != 2:
        raise DataError(f"pixel normalization needs curves of shape (n_pixels, n_steps), got shape "
                        f"{arr.shape}; flatten the grid first (switchscope.flatten)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows are refused below
        mean = np.nanmean(arr, axis=1, keepdims=True)
        std = np.nanstd(arr, axis=1, keepdims=True)
    if not np.isfinite(mean).all():
        raise DataError("cannot normalize per pixel: a curve holds no finite value; clean it first")
    glob = float(np.nanstd(arr))
    flat = std <= 1e-9 * np.maximum(np.abs(mean), glob)
    if flat.all():
        raise DataError("cannot normalize: every value is the same (std 0); "
                        "give data that varies or pass stats=(mean, std)")
    return NormStats(mean, np.where(flat, glob, std))


def normalize(X: Any, stats: NormStats | Mapping[str, Any] | tuple[Any, Any] | None = None, *,
              method: Literal["global", "pixel", "robust"] = "global") -> tuple[np.ndarray, NormStats]:
    """Subtract a location and divide by a scale: ``Xn = (X - mean) / std``.

    Parameters
    ----------
    X : array of any shape, e.g. (n_pixels, n_steps)
        Values to normalize; NaNs are ignored by the statistics and stay NaN. ``method="pixel"``
        needs shape (n_pixels, n_steps).
    stats : NormStats or {"mean", "std"} mapping or (mean, std), optional
        Statistics to use (those of a training set, to normalize a validation set); floats, or
        arrays that broadcast against ``X`` (per-pixel: shape (n_pixels, 1)). When None they are
        computed from ``X`` by ``method``.
    method : {"global", "pixel", "robust"}
        ``"global"``: mean and population standard deviation (``ddof=0``) of all finite values,
        as the paper does. ``"pixel"``: each curve by its own mean and population standard
        deviation (every loop then has unit spread, whatever its height; a flat curve takes the
        global std). ``"robust"``: the global median and the interquartile range divided by
        1.349 (the standard deviation of a Gaussian), which spikes and a few huge loops do not
        move.

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
    >>> normalize([[1.0, 3.0], [10.0, 30.0]], method="pixel")[0]
    array([[-1.,  1.],
           [-1.,  1.]])
    """
    arr = np.asarray(X, dtype=np.float64)
    if stats is not None:
        st = _as_stats(stats)
        return (arr - st.mean) / st.std, st
    if method not in ("global", "pixel", "robust"):
        raise ConfigError(f"normalize method must be one of 'global', 'pixel', 'robust', got {method!r}")
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        raise DataError("cannot normalize: the data holds no finite value; clean it first")
    if method == "pixel":
        st = _pixel_stats(arr)
    elif method == "robust":
        q25, med, q75 = np.percentile(finite, [25, 50, 75])
        st = NormStats(float(med), float((q75 - q25) / 1.349))
    else:
        st = NormStats(float(finite.mean()), float(finite.std()))
    if not np.all(np.asarray(st.std) > 0):
        raise DataError("cannot normalize: every value is the same (std 0); "
                        "give data that varies or pass stats=(mean, std)")
    return (arr - st.mean) / st.std, st


def denormalize(Xn: Any, stats: NormStats | Mapping[str, Any] | tuple[Any, Any]) -> np.ndarray:
    """Inverse of :func:`normalize`: ``Xn * std + mean`` (per-pixel statistics broadcast)."""
    st = _as_stats(stats)
    return np.asarray(Xn, dtype=np.float64) * st.std + st.mean


def loop_heights(X: Any) -> np.ndarray:
    """Height of each curve, robust to spikes: its 95th minus its 5th percentile, shape (n_pixels,)."""
    arr = _as_2d_float(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanpercentile(arr, 95, axis=1) - np.nanpercentile(arr, 5, axis=1)


def choose_normalization(X: Any, ratio: float = HEIGHT_RATIO) -> tuple[str, str]:
    """What ``normalization = "auto"`` picks for curves ``X`` (n_pixels, n_steps), and why.

    The paper's global normalization keeps the loops' relative heights, which is what an
    autoencoder should see when the heights are alike. When they spread widely, most loops
    become tiny next to the largest ones, and a network trained on the mean squared error learns
    little more than the mean loop (a film from another lab, heights over four decades: held-out
    error 0.82 of the variance). The rule: with ``h`` the heights (:func:`loop_heights`), choose
    ``"pixel"`` when ``P90(h) / P10(h) > ratio`` (default 10: one decade between the tall and the
    small loops), else ``"global"``. The paper's film and the synthetic film have ratios about 1.8
    and 2.0 and keep global normalization.

    Returns
    -------
    method : {"global", "pixel"}
    reason : str
        One sentence that gives the ratio.
    """
    h = loop_heights(X)
    h = h[np.isfinite(h)]
    p10, p90 = (np.percentile(h, [10, 90]) if h.size else (0.0, 0.0))
    spread = p90 / p10 if p10 > 0 else (np.inf if p90 > 0 else 1.0)
    if spread > ratio:
        return "pixel", (f"auto chose pixel: the loop heights (p95-p5 of each curve) spread over a 90th/10th "
                         f"percentile ratio of {spread:.3g} > {ratio:g}, so each curve is scaled by its own "
                         "mean and std")
    return "global", (f"auto chose global: the loop heights (p95-p5 of each curve) have a 90th/10th "
                      f"percentile ratio of {spread:.3g} <= {ratio:g}, so the paper's global mean and std")


def robust_range(X: Any, n_mads: float = RANGE_MADS) -> tuple[float, float]:
    """``median -+ n_mads * 1.4826 * MAD`` of the finite values of ``X``: a valid range from the data.

    The scaled MAD equals the standard deviation for Gaussian data, and neither it nor the median
    moves with a few wild values (failed fits at 0 or 1e6 kHz). Why 8: the widest excursion of
    the paper's resonance loops (its softening dips) is 5.2 scaled MADs from the median and that of
    the synthetic film's noise-free resonance 4.2, so 8 leaves them untouched with a margin of 1.5,
    while a value off by more than 8 sigma of the bulk is no resonance of this cantilever (the
    synthetic film: median 1326.1 kHz, scaled MAD 2.2 kHz, range 1308.3-1343.9 kHz, which holds
    every noise-free value and excludes 0 or 1e6 kHz). When more than half the values are equal (MAD 0) the mean absolute deviation
    from the median is the scale.

    Returns
    -------
    (low, high) : tuple of float
    """
    arr = np.asarray(X, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        raise DataError("cannot derive a resonance range: the data holds no finite value")
    med = float(np.median(finite))
    dev = np.abs(finite - med)
    scale = 1.4826 * float(np.median(dev))
    if scale == 0:
        scale = float(dev.mean())
    return med - n_mads * scale, med + n_mads * scale


def stored_stats(ds: xr.Dataset, name: str) -> NormStats | None:
    """The normalization that the clean stage stored for variable ``name`` of ``ds``.

    Per-pixel statistics (``normalization = "pixel"``) come from the variables
    ``<channel>_norm_mean`` and ``<channel>_norm_std`` (row, col), flattened row-major to shape
    (n_pixels, 1), the order of :func:`~switchscope.flatten`; global and robust ones from the attrs
    ``norm_mean`` and ``norm_std``. None when ``name`` carries no (valid) statistics.
    """
    attrs = ds[name].attrs
    if str(attrs.get("normalization", "")) == "pixel":
        base = name.removesuffix("_clean")
        pair = [f"{base}_norm_mean", f"{base}_norm_std"]
        if not all(v in ds for v in pair):
            return None
        values = [ds[v].transpose("row", "col").values.reshape(-1, 1) for v in pair]
    elif "norm_mean" in attrs and "norm_std" in attrs:
        values = [np.ravel(attrs["norm_mean"])[0], np.ravel(attrs["norm_std"])[0]]
    else:
        return None
    try:
        return _as_stats(values)
    except ConfigError:
        return None


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
                 grid: tuple[int, ...] | None) -> tuple[np.ndarray, dict[str, Any]]:
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
    valid: dict[str, Any] = {}
    if apply_range:
        if config.resonance_range_khz == "auto":
            lo, hi = robust_range(X)
            valid = {"resonance_range_khz": [lo, hi],
                     "resonance_range_source": f"auto: median +- {RANGE_MADS:g} scaled MADs of the data"}
        else:
            lo, hi = (float(v) for v in config.resonance_range_khz)
            valid = {"resonance_range_khz": [lo, hi], "resonance_range_source": "[clean] resonance_range_khz"}
        with np.errstate(invalid="ignore"):
            out = (X < lo) | (X > hi)
        n_out = int(out.sum())
        if n_out and not np.isfinite(np.where(out, np.nan, X)).any():
            raise DataError(
                f"{label}: no value lies in the valid range {lo}-{hi} kHz; if the data is in other "
                "units or already normalized, mark it (attrs['normalized'] = 1), set "
                '[clean] resonance_range_khz = "auto" or [clean] range_filter = false'
            )
        X[out] = np.nan
    _check_no_empty_pixels(X, label, grid)
    X = interpolate_nans(X)
    n_outliers = 0
    if config.n_outliers:
        X = remove_outliers(X, config.savgol_window, config.savgol_order, config.n_outliers)
        n_outliers = n_pixels * config.n_outliers
    counts = {"n_nonfinite": n_nonfinite, "n_out_of_range": n_out, "n_outliers": n_outliers, **valid}
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
        ``n_out_of_range``, ``n_outliers``, the resonance range used (``resonance_range_khz``,
        ``resonance_range_source``, resonance only), the normalization (``normalization``,
        ``normalization_reason``) and its statistics: attrs ``norm_mean``, ``norm_std`` (global,
        robust), or variables ``<channel>_norm_mean`` and ``<channel>_norm_std`` (row, col) added
        beside it (pixel); :func:`stored_stats` reads either. For an array: the cleaned array,
        float64, of the input's shape.

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
            method, reason = _normalization_choice(Xc, config.normalization)
            _, st = normalize(Xc, method=method)
            attrs = {k: v for k, v in src.attrs.items() if k not in ("norm_mean", "norm_std")}
            attrs.update(counts)
            attrs.update(normalization=method, normalization_reason=reason,
                         long_name=f"cleaned {src.attrs.get('long_name', name)}")
            if st.per_pixel:
                units = src.attrs.get("units", CHANNELS.get(name, ""))
                for key, what in (("mean", "mean"), ("std", "standard deviation")):
                    new[f"{name}_norm_{key}"] = xr.DataArray(
                        unflatten(np.ravel(getattr(st, key)), grid), dims=src.dims[:2],
                        attrs={"units": units, "long_name": f"{what} of each {name} curve (pixel normalization)"})
            else:
                attrs.update(norm_mean=st.mean, norm_std=st.std)
            new[f"{name}_clean"] = xr.DataArray(unflatten(Xc, grid), dims=src.dims,
                                                coords=src.coords, attrs=attrs)
        return data.assign(new)
    if channel is not None:
        check_channel(channel)
    X, grid = flatten(data)
    Xc, _ = _clean_array(X, config, apply_range=config.range_filter and channel == "resonance",
                         label=channel or "data", grid=grid)
    return unflatten(Xc, grid)


def _normalization_choice(X: np.ndarray, option: str) -> tuple[str, str]:
    if option == "auto":
        return choose_normalization(X)
    return option, f"set by [clean] normalization = {option!r}"


# ------------------------------------------------------------------------------------------------
# pipeline stage
# ------------------------------------------------------------------------------------------------
def stage(ds: xr.Dataset, config: CleanConfig, ctx: RunContext) -> xr.Dataset:
    """Pipeline stage ``clean``: :func:`clean` on every channel, and key numbers.

    Adds ``ctx.summary["clean"] = {"seconds": ..., "<channel>": {n_nonfinite, n_out_of_range,
    n_outliers, normalization, normalization_reason, and norm_mean, norm_std (global, robust) or
    their medians over the pixels median_norm_mean, median_norm_std (pixel), and for resonance
    resonance_range_khz, resonance_range_source}}``; the report draws ``clean.png`` from the
    results.
    """
    t0 = time.perf_counter()
    out = clean(ds, config)
    seconds = time.perf_counter() - t0
    names = [n for n in channels_in(ds) if f"{n}_clean" in out and f"{n}_clean" not in ds]
    summary: dict[str, Any] = {"seconds": round(seconds, 4)}
    for name in names:
        a = out[f"{name}_clean"].attrs
        entry: dict[str, Any] = {k: int(a[k]) for k in ("n_nonfinite", "n_out_of_range", "n_outliers")}
        entry.update(normalization=str(a["normalization"]), normalization_reason=str(a["normalization_reason"]))
        if a["normalization"] == "pixel":
            for key in ("mean", "std"):
                entry[f"median_norm_{key}"] = float(np.median(out[f"{name}_norm_{key}"].values))
        else:
            entry.update(norm_mean=float(a["norm_mean"]), norm_std=float(a["norm_std"]))
        if "resonance_range_khz" in a:
            entry["resonance_range_khz"] = [float(v) for v in a["resonance_range_khz"]]
            entry["resonance_range_source"] = str(a["resonance_range_source"])
        summary[name] = entry
    ctx.summary["clean"] = summary
    return out
