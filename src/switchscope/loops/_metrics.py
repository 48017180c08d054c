"""Switching parameters read from fitted loops (model-agnostic: from the fitted curves).

Each fitted loop is evaluated on a dense voltage grid, branch by branch, after removing its
linear background and normalising it between its saturation levels (0 at the negative-voltage
level, 1 at the positive-voltage one). On the descending sweep the coercive voltage is where the
normalized response crosses 0.5 and the nucleation bias where it has fallen by 3 % of the height
(0.97); on the ascending sweep they are the crossings of 0.5 and 0.03 (the 3 % threshold of
BGlib's ``calc_switching_coef_vec``, ``nuc_threshold=0.03``). Area and centroid are those of the
region between the two fitted branches over the measured voltage range.
"""

from __future__ import annotations

import numpy as np

from .._errors import ConfigError
from ._models import LoopModel

#: Metric name -> (long name, unit kind: "V", "response", "area", "1")
METRICS: dict[str, tuple[str, str]] = {
    "height": ("loop height (switchable response)", "response"),
    "width": ("loop width (coercive_pos - coercive_neg)", "V"),
    "area": ("loop area (work of switching)", "area"),
    "coercive_neg": ("coercive voltage of the descending sweep", "V"),
    "coercive_pos": ("coercive voltage of the ascending sweep", "V"),
    "nucleation_neg": ("nucleation bias of the descending sweep (3 % of height)", "V"),
    "nucleation_pos": ("nucleation bias of the ascending sweep (3 % of height)", "V"),
    "imprint": ("imprint ((coercive_pos + coercive_neg) / 2)", "V"),
    "centroid_voltage": ("voltage centroid of the loop", "V"),
    "centroid_response": ("response centroid of the loop", "response"),
}


#: Pixels per block of the dense-grid evaluation: a 512 x 642 block of float64 (2.6 MB) stays in
#: cache; measured on the 3600 real fits: 4096-pixel blocks take 1.8x (paper13) to 2.3x (bglib9) longer.
_CHUNK = 512


def _first_crossing(t: np.ndarray, grid: np.ndarray, level: float, rising: bool) -> np.ndarray:
    """Voltage of the first crossing of ``level`` along ``grid`` (in the given order), or NaN."""
    cond = t >= level if rising else t <= level
    hit = cond.any(axis=1)
    k = np.argmax(cond, axis=1)
    km1 = np.maximum(k - 1, 0)
    rows = np.arange(t.shape[0])
    t0, t1 = t[rows, km1], t[rows, k]
    g0, g1 = grid[km1], grid[k]
    denom = t1 - t0
    frac = np.where(np.abs(denom) > 0, (level - t0) / np.where(denom == 0, 1, denom), 0.0)
    out = g0 + np.clip(frac, 0.0, 1.0) * (g1 - g0)
    # a crossing at the very first grid point means the branch starts past the level: no crossing
    return np.where(hit & (k > 0), out, np.nan)


def loop_metrics(model: LoopModel, params: np.ndarray, voltage: np.ndarray, *,
                 nucleation_fraction: float = 0.03, n_grid: int = 321) -> dict[str, np.ndarray]:
    """Switching parameters of fitted loops.

    Parameters
    ----------
    model : LoopModel
        The model the parameters belong to.
    params : ndarray of shape (n_pixels, n_params)
        Fitted parameters in physical units (NaN rows give NaN metrics).
    voltage : ndarray of shape (n_steps,)
        The measured voltage (sets the range of area, centroid and crossings).
    nucleation_fraction : float
        Fraction of the height by which the response has changed at the nucleation bias.
    n_grid : int
        Points of the dense voltage grid. With 321 points over +-16 V (0.1 V spacing), the
        metrics of the 3600 real fits differ from those on a 10241-point grid by at most
        0.005 V (coercive), 0.03 V (nucleation) and 1e-4 (relative area); 641 points halve
        those errors at twice the cost.

    Returns
    -------
    dict of str to ndarray of shape (n_pixels,)
        The keys of :data:`METRICS`.
    """
    if not isinstance(n_grid, (int, np.integer)) or isinstance(n_grid, bool) or n_grid < 2:
        raise ConfigError(f"loop_metrics: n_grid must be an integer >= 2, got {n_grid!r}")
    params = np.atleast_2d(np.asarray(params, dtype=float))
    if _compiled(model):
        return _loop_metrics_numba(model, params, voltage, nucleation_fraction, n_grid)
    if params.shape[0] > _CHUNK:
        # the dense grids take n_pixels * n_grid floats each: bound the memory by chunking
        parts = [loop_metrics(model, params[a:a + _CHUNK], voltage,
                              nucleation_fraction=nucleation_fraction, n_grid=n_grid)
                 for a in range(0, params.shape[0], _CHUNK)]
        return {k: np.concatenate([d[k] for d in parts]) for k in parts[0]}
    import torch

    p = torch.as_tensor(params)
    v = np.asarray(voltage, dtype=float)
    vmin, vmax = float(v.min()), float(v.max())
    grid = np.linspace(vmin, vmax, n_grid)
    gt = torch.as_tensor(grid)
    # both branches over the whole grid in one call: descending first, then ascending
    f_both, _ = model.split(p, gt, gt, False)
    f_both = f_both.numpy()
    f_desc, f_asc = f_both[:, :n_grid], f_both[:, n_grid:]
    low, high = (x.numpy() for x in model.levels(p))
    slope = p[:, model.slope_index].numpy()
    height = high - low
    safe = np.where(np.abs(height) > 0, height, np.nan)
    t_desc = (f_desc - slope[:, None] * grid - low[:, None]) / safe[:, None]
    t_asc = (f_asc - slope[:, None] * grid - low[:, None]) / safe[:, None]
    rev = grid[::-1]
    # the descending sweep runs from +V to -V: scan its grid backwards
    coercive_neg = _first_crossing(t_desc[:, ::-1], rev, 0.5, rising=False)
    nucleation_neg = _first_crossing(t_desc[:, ::-1], rev, 1.0 - nucleation_fraction, rising=False)
    coercive_pos = _first_crossing(t_asc, grid, 0.5, rising=True)
    nucleation_pos = _first_crossing(t_asc, grid, nucleation_fraction, rising=True)

    diff = f_desc - f_asc
    # trapezoid rule over the grid as products with its weights (one pass, no temporaries)
    wts = _trapezoid_weights(grid)
    signed = diff @ wts
    area = np.abs(diff) @ wts
    tiny = 1e-12 * np.maximum(np.abs(height) * (vmax - vmin), 1e-300)
    sden = np.where(np.abs(signed) > tiny, signed, np.nan)
    cx = diff @ (grid * wts) / sden
    cy = (diff * (f_desc + f_asc)) @ (0.5 * wts) / sden     # (f_desc^2 - f_asc^2) / 2
    return {
        "height": np.abs(height),
        "width": coercive_pos - coercive_neg,
        "area": area,
        "coercive_neg": coercive_neg,
        "coercive_pos": coercive_pos,
        "nucleation_neg": nucleation_neg,
        "nucleation_pos": nucleation_pos,
        "imprint": 0.5 * (coercive_pos + coercive_neg),
        "centroid_voltage": cx,
        "centroid_response": cy,
    }


def _trapezoid_weights(grid: np.ndarray) -> np.ndarray:
    wts = np.gradient(grid)
    wts[0], wts[-1] = 0.5 * (grid[1] - grid[0]), 0.5 * (grid[-1] - grid[-2])
    return wts


def _compiled(model: LoopModel) -> bool:
    """True for the built-in models, which the numba kernels evaluate."""
    from ..fit._loops_numba import MODEL_CODES
    from ._models import MODELS

    return model.name in MODEL_CODES and MODELS.get(model.name) is model


def _loop_metrics_numba(model: LoopModel, params: np.ndarray, voltage: np.ndarray,
                        nucleation_fraction: float, n_grid: int) -> dict[str, np.ndarray]:
    """:func:`loop_metrics` with the numba kernel (one pass per pixel, no dense-grid arrays;
    the same formulas, equal to the torch evaluation to rounding)."""
    from .._device import numba_threads
    from ..fit import _loops_numba as nb

    v = np.asarray(voltage, dtype=float)
    grid = np.linspace(float(v.min()), float(v.max()), n_grid)
    out = np.empty((params.shape[0], len(METRICS)))
    with numba_threads():
        nb.metrics(nb.MODEL_CODES[model.name], np.ascontiguousarray(params), grid,
                   _trapezoid_weights(grid), float(nucleation_fraction), out)
    return {name: out[:, j].copy() for j, name in enumerate(METRICS)}
