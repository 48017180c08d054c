"""Physical detectors of switching mechanisms, and neurons named by what they track.

Three per-pixel measures, computed from the cleaned curves (``<channel>_clean``, physical units)
and vectorized over pixels. Each branch of the loop (the steps of the falling sweeps, then those
of the rising sweeps, :func:`switchscope.waveform.descending_steps`; any bipolar waveform, any
number of cycles: repeated voltages are averaged) is oriented so that it rises with the voltage
and normalized to ``s = 2 (y - mid) / H`` by its saturation levels (the mean of the 15 % of its
steps at the lowest and at the highest voltages; ``H`` their difference). ``m(a)`` is the voltage
span (V) over which ``|s| < a``, measured exactly on the piecewise-linear branch (so it does not
need a monotonic or noise-free branch).

``mechanism_three_state`` (V)
    Resolved plateau between two switching events (the c -> a -> c sequence):
    ``sqrt(max(d^2 - w^2 - 2 SE(d^2), 0))`` with ``d`` the plateau and ``w`` the erf width of
    the two-step loop model ``y0 + h p(V) + k V p(V)^2``, ``p(V) = [erf((V - c - d/2)/w) +
    erf((V - c + d/2)/w)] / 2`` (``c`` per branch; ``d``, ``w``, ``h``, the tilt ``k`` and ``y0``
    shared), fitted by least squares to both branches (:func:`two_step_fit`). Below ``d ~ w`` the
    curve depends on ``w^2 + d^2/2`` only (a short plateau is a wider step), so such plateaus
    read as 0, as do those within two standard errors of it.
``mechanism_hardening`` (the resonance's units: kHz, or standard deviations of a normalized file)
    Rise of the resonance frequency before switching above the branch's baseline: on each branch,
    the amplitude of a Gaussian rise (width ``rise_width``, 1.3 V) centred 1-8 V before the
    coercive voltage ``Vc`` (the zero crossing of the branch), fitted by linear least squares over
    the whole branch together with its baseline: a line, the butterfly ``s(V) V`` (the measured
    polarization times the field) and the softening dip at switching (a Gaussian centred on
    ``Vc``); averaged over the rise centres and dip widths with the weight of each fit's
    likelihood (:func:`hardening`). Mean of the two branches; negative when the resonance dips
    before switching instead.
``mechanism_c_like`` (1, film median about 1)
    c-like switching, a tall and sharp step: ``(h^2 q)^(1/3)``, the geometric mean of the step
    height relative to the film's median (``h = H / median H``, counted twice: it is the direct
    measure of the out-of-plane response) and the step's sharpness relative to the film's median
    (``q = median w / w``, ``w = (m(b) - m(a)) / (2 (erfinv(b) - erfinv(a)))`` the width of one
    error-function step, V; a plateau widens it less than it widens the
    whole switching span: 1.6 w for a 4 V plateau at w = 1 V).

Naming (:func:`name_neurons`): Spearman rho of every active neuron of every ``embedding_<channel>``
with every measure (the three detectors and the ``loop_*`` maps). A neuron is named after the
measure with the largest ``|rho|`` when ``|rho| >= min_rho`` (0.6) and every other measure within
``margin`` (0.1) of it is itself correlated with it at ``|rho| >= same_measure`` (0.8) over the
film (it measures the same thing here; it is listed with it).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any, Mapping

import numpy as np
import xarray as xr
from scipy.special import erf, erfinv

from ._config import StageConfig, register
from ._context import RunContext
from ._embedding import active_neurons
from ._errors import DataError, DataWarning
from .waveform import descending_steps

__all__ = [
    "DETECTORS",
    "Branch",
    "MechanismsConfig",
    "branches",
    "c_like",
    "detect",
    "hardening",
    "name_neurons",
    "sentences",
    "stage",
    "three_state",
    "two_step_fit",
]

#: Detector variable -> (label in sentences, one-line definition).
DETECTORS: dict[str, tuple[str, str]] = {
    "mechanism_three_state": ("three-state switching",
                              "plateau between two switching events in excess of one step width (two-step loop fit)"),
    "mechanism_hardening": ("elastic hardening",
                            "rise of the resonance frequency before switching above the branch's baseline"),
    "mechanism_c_like": ("c-like switching",
                         "geometric mean of step height (twice) and sharpness, each relative to the film median"),
}

_END_SHARE = 0.15  # share of a branch's steps at each end that give its saturation levels


# -- configuration --------------------------------------------------------------------------------
@register("mechanisms")
@dataclasses.dataclass(frozen=True, kw_only=True)
class MechanismsConfig(StageConfig):
    """Options of the ``mechanisms`` stage (section ``[mechanisms]``).

    Attributes
    ----------
    channel : str
        The switching loops (``<channel>_clean``).
    resonance : str
        The resonance channel for elastic hardening (skipped without ``<resonance>_clean``).
    plateau_level, switching_level : float
        ``a`` and ``b`` of the definitions (0 < a < b < 1).
    rise_from, hardening_window, rise_width : float
        Volts: the rise's centre is looked for from ``rise_from`` to ``hardening_window`` before the
        coercive voltage; ``rise_width`` is its Gaussian width.
    min_rho, margin, same_measure : float
        The naming rule (module docstring).
    """

    channel: str = "piezoresponse"
    resonance: str = "resonance"
    plateau_level: float = 0.25
    switching_level: float = 0.8
    rise_from: float = 1.0
    hardening_window: float = 8.0
    rise_width: float = 1.3
    min_rho: float = 0.6
    margin: float = 0.1
    same_measure: float = 0.8

    def validate(self) -> None:
        for name in ("channel", "resonance"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                self._fail(name, "a channel name", getattr(self, name))
        self.check_number("plateau_level", lo=0, hi=0.999, lo_open=True)
        self.check_number("switching_level", lo=0, hi=0.999, lo_open=True)
        if self.plateau_level >= self.switching_level:
            self._fail("plateau_level", f"smaller than switching_level ({self.switching_level})",
                       self.plateau_level)
        for name in ("rise_from", "hardening_window", "rise_width"):
            self.check_number(name, lo=0, hi=1000, lo_open=True)
        if self.rise_from > self.hardening_window:
            self._fail("rise_from", f"at most hardening_window ({self.hardening_window})", self.rise_from)
        self.check_number("min_rho", lo=0, hi=1)
        self.check_number("margin", lo=0, hi=1)
        self.check_number("same_measure", lo=0, hi=1)


# -- branches -------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Branch:
    """One branch of a loop: its distinct voltages (ascending) and the averaging operator.

    Attributes
    ----------
    falling : bool
        The steps of the falling sweeps (True) or of the rising ones.
    voltage : ndarray of shape (n_levels,)
    operator : ndarray of shape (n_levels, n_steps)
        ``curves @ operator.T`` gives the branch (mean over the steps at one voltage).
    """

    falling: bool
    voltage: np.ndarray
    operator: np.ndarray

    def of(self, curves: np.ndarray) -> np.ndarray:
        """``(n_pixels, n_steps) -> (n_pixels, n_levels)``."""
        return curves @ self.operator.T


def branches(voltage: Any) -> tuple[Branch, Branch]:
    """The falling and the rising branch of a bipolar waveform ``voltage`` (n_steps,)."""
    v = np.asarray(voltage, dtype=float).ravel()
    desc = descending_steps(v)
    out = []
    for falling in (True, False):
        idx = np.flatnonzero(desc == falling)
        if idx.size < 4:
            raise DataError(f"the waveform has {idx.size} {'falling' if falling else 'rising'} steps; "
                            "mechanism detectors need a bipolar waveform with at least 4 steps per branch")
        scale = max(float(np.abs(v).max()), 1.0)
        u, inv = np.unique(np.round(v[idx] / scale, 9), return_inverse=True)
        op = np.zeros((u.size, v.size))
        op[inv, idx] = 1.0
        op /= op.sum(axis=1, keepdims=True)
        out.append(Branch(falling, op @ v, op))
    return out[0], out[1]


def _measure_below(s: np.ndarray, u: np.ndarray, level: float) -> np.ndarray:
    """Voltage span (V) where the piecewise-linear ``s`` (n, k) on ``u`` (k,) is below ``level``."""
    lo = np.minimum(s[:, :-1], s[:, 1:])
    hi = np.maximum(s[:, :-1], s[:, 1:])
    span = hi - lo
    flat = span <= 0
    frac = np.where(flat, (level > lo).astype(float),
                    np.clip((level - lo) / np.where(flat, 1.0, span), 0.0, 1.0))
    return (frac * np.diff(u)).sum(axis=1)


def _levels(curves: np.ndarray, brs: tuple[Branch, Branch]) -> tuple[list[np.ndarray], np.ndarray]:
    """Normalized oriented branches ``s`` and the step height ``H`` of each (per branch)."""
    ends = []
    for b in brs:
        y = b.of(curves)
        k = max(2, int(round(_END_SHARE * y.shape[1])))
        ends.append((y, y[:, :k].mean(axis=1), y[:, -k:].mean(axis=1)))
    sign = np.sign(sum(hi - lo for _, lo, hi in ends))
    sign[sign == 0] = 1.0
    s_all, heights = [], []
    for y, lo, hi in ends:
        h = np.abs(hi - lo)
        safe = np.where(h > 0, h, np.nan)
        s_all.append(sign[:, None] * 2.0 * (y - 0.5 * (lo + hi)[:, None]) / safe[:, None])
        heights.append(h)
    return s_all, np.asarray(heights)


def _as_curves(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    arr = arr.reshape(-1, arr.shape[-1])
    if arr.shape[0] == 0:
        raise DataError(f"{name} holds no curve")
    return arr


# -- detectors ------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _plateau_table(a: float, b: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The two-step model with ``w = 1``, on a grid of plateau widths ``r = d / w``: ``m(a)/m(b)``
    (rises monotonically from ``erfinv(a)/erfinv(b)`` at ``r = 0`` towards 1) and ``m(b)``."""
    r = np.concatenate([np.linspace(0.0, 4.0, 401), np.linspace(4.05, 40.0, 720)])

    def half_span(level: float) -> np.ndarray:  # x >= 0 where the step reaches ``level`` (bisection)
        lo, hi = np.zeros_like(r), np.full_like(r, r.max() / 2 + 10.0)
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            below = 0.5 * (erf(mid - r / 2) + erf(mid + r / 2)) < level
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
        return 0.5 * (lo + hi)

    xa, xb = half_span(a), half_span(b)
    return r, xa / xb, 2.0 * xb


def _tilt_levels(brs: tuple[Branch, Branch], ys: list[np.ndarray], share: float = 0.25
                 ) -> list[np.ndarray]:
    """Branches normalized by saturation lines: the falling branch's top and the rising branch's
    bottom (the sides far from their switching, saturated on any loop that closes) give a common
    slope ``k`` and the two levels ``+-h`` about ``mid``; the tilt ``k V s^2`` (vanishing with the
    switched polarization) is then removed, ``s = 2 z / (1 + sqrt(1 + 4 k V z / h))``."""
    (uf, yf), (ur, yr) = (brs[0].voltage, ys[0]), (brs[1].voltage, ys[1])
    kf, kr = max(2, int(round(share * uf.size))), max(2, int(round(share * ur.size)))
    tu, ty, bu, by = uf[-kf:], yf[:, -kf:], ur[:kr], yr[:, :kr]
    num = (((tu - tu.mean()) * (ty - ty.mean(axis=1, keepdims=True))).sum(axis=1)
           + ((bu - bu.mean()) * (by - by.mean(axis=1, keepdims=True))).sum(axis=1))
    k = num / (((tu - tu.mean()) ** 2).sum() + ((bu - bu.mean()) ** 2).sum())
    hi = (ty - k[:, None] * tu).mean(axis=1)
    lo = (by - k[:, None] * bu).mean(axis=1)
    mid, h = 0.5 * (hi + lo), 0.5 * (hi - lo)
    h = np.where(h != 0, h, np.nan)
    out = []
    for br, y in zip(brs, ys):
        z = (y - mid[:, None]) / h[:, None]
        kk = k[:, None] * br.voltage[None, :] / h[:, None]
        out.append(2.0 * z / (1.0 + np.sqrt(np.maximum(1.0 + 4.0 * kk * z, 0.0))))
    return out


def two_step_fit(voltage: Any, loops: Any, *, plateau_level: float = 0.25, switching_level: float = 0.8,
                 iterations: int = 25, chunk: int = 4096) -> dict[str, np.ndarray]:
    """Least-squares fit of the two-step loop model to every pixel's two branches.

    ``y = y0 + h p_j(V) + k V p_j(V)^2`` on branch ``j`` (falling, rising) with ``p_j(V) = [erf((V -
    c_j - d/2)/w) + erf((V - c_j + d/2)/w)] / 2``: offset ``y0``, step half-height ``h`` and the
    field-induced tilt ``k V p^2`` (it vanishes with the switched polarization) shared by the two
    branches, the coercive centres ``c_j`` apart, erf width ``w`` and plateau ``d`` shared. The
    linear parameters are solved exactly at every step (variable projection); ``c_j, w, d^2`` by
    the project's batched, bounded Levenberg-Marquardt (:func:`switchscope.fit.levenberg_marquardt`,
    at most ``iterations`` iterations; ``w`` in [0.2, 15] V, ``d^2`` in [-0.16, 400] V²; ``d^2``
    rather than ``d``: below the step width the curve depends on ``d^2``), started from the level
    crossings of the tilt-corrected branches.

    Returns
    -------
    dict of ndarrays (n_pixels,)
        ``d2`` (V², may be slightly negative: a step sharper than one erf), ``w`` (V),
        ``d2_se`` (V², the standard error of ``d2`` from the fit's Jacobian and residual noise),
        ``c_falling``, ``c_rising`` (V); NaN where a pixel has fewer than 10 finite points.
    """
    X = _as_curves(loops, "loops")
    brs = branches(voltage)
    out = {k: np.full(X.shape[0], np.nan) for k in ("d2", "w", "d2_se", "c_falling", "c_rising")}
    for start in range(0, X.shape[0], int(chunk)):
        part = _two_step_fit_chunk(brs, X[start:start + int(chunk)], float(plateau_level),
                                   float(switching_level), int(iterations))
        for key, val in part.items():
            out[key][start:start + len(val)] = val
    return out


class _TwoStepModel:
    """The two-step loop model as the LM engine sees it (:func:`switchscope.fit.levenberg_marquardt`).

    Parameters ``(c_falling, c_rising, w, d2)``; the three linear ones (``y0``, ``h``, ``k``) are
    projected out at every evaluation (variable projection), so the residual is that of the best
    linear fit at the current nonlinear parameters. The Jacobian is a forward difference
    (:attr:`steps`), the five residuals of one call evaluated as one batch. The weights ``w``
    of :meth:`normal` are required: the 0/1 mask of finite points enters the projection.
    """

    block_order = (0, 1, 2, 3)
    #: forward-difference steps of (c_falling, c_rising, w, d2): V, V, V, V²
    steps = (1e-3, 1e-3, 1e-3, 1e-2)

    @staticmethod
    def residual(p, u, falling, y, fit):
        """``y - B coef`` (n, k), ``B = [1, s, u s^2]`` on the finite points (``fit``, 0/1) and
        ``coef`` its least-squares solution, ``s`` the two-step state at ``p`` (n, 4)."""
        import torch

        c = torch.where(falling[None, :], p[:, 0:1], p[:, 1:2])
        half = 0.5 * torch.sqrt(torch.clamp(p[:, 3:4], min=0.0))
        x = u[None, :] - c
        w = p[:, 2:3]
        s = 0.5 * (torch.special.erf((x - half) / w) + torch.special.erf((x + half) / w))
        B = torch.stack([torch.ones_like(s), s, u[None, :] * s * s], dim=-1) * fit[..., None]
        BtB = B.transpose(1, 2) @ B
        ridge = 1e-12 * BtB.diagonal(dim1=1, dim2=2).sum(1)
        BtB = BtB + ridge[:, None, None] * torch.eye(3, dtype=p.dtype, device=p.device)
        coef = torch.linalg.solve_ex(BtB, (B.transpose(1, 2) @ y[..., None]))[0]
        return y - (B @ coef)[..., 0]

    @classmethod
    def normal(cls, p, u, falling, y, w, ws=None):
        """Cost ``sum r^2``, ``J^T J`` and ``J^T r`` of the projected residual ``r`` at ``p``
        (``w``: the 0/1 mask of finite points, ``y`` zero elsewhere)."""
        import torch

        n = p.shape[0]
        h = p.new_tensor(cls.steps)
        P = torch.cat([p[None], p[None] + torch.diag(h)[:, None, :]]).reshape(-1, 4)
        R = cls.residual(P, u, falling, y.repeat(5, 1), w.repeat(5, 1)).reshape(5, n, -1)
        r = R[0]
        J = ((R[1:] - r[None]) / h[:, None, None]).transpose(0, 1)  # (n, 4, k)
        return (r * r).sum(1), J @ J.transpose(1, 2), (J @ r[..., None])[..., 0]


#: Box bounds of (c_falling, c_rising, w, d2): ``w`` in V, ``d2`` in V², down to ``-4 w^2`` at
#: the lowest ``w`` (below 0 the model is flat in ``d2``: any negative value reads as no plateau).
_TWO_STEP_LOWER = (-np.inf, -np.inf, 0.2, -0.16)
_TWO_STEP_UPPER = (np.inf, np.inf, 15.0, 400.0)


def _two_step_fit_chunk(brs: tuple[Branch, Branch], X: np.ndarray, a: float, b: float,
                        iterations: int) -> dict[str, np.ndarray]:
    import torch

    from ._device import torch_threads
    from .fit import levenberg_marquardt

    n = X.shape[0]
    us = [br.voltage for br in brs]
    ys = [br.of(X) for br in brs]
    Y = np.concatenate(ys, axis=1)
    U = np.concatenate(us)
    fit = np.isfinite(Y)
    Y0 = np.where(fit, Y, 0.0)
    # start: level crossings of the tilt-corrected branches (the model's m(a)/m(b), module docstring)
    r_grid, ratio, mb_grid = _plateau_table(a, b)
    d0, w0, c0 = [], [], []
    with np.errstate(invalid="ignore", divide="ignore"):
        for u, s in zip(us, _tilt_levels(brs, ys)):
            ma = _measure_below(s, u, a) - _measure_below(s, u, -a)
            mb = _measure_below(s, u, b) - _measure_below(s, u, -b)
            r = np.interp(ma / mb, ratio, r_grid, left=0.0, right=r_grid[-1])
            w = mb / np.interp(r, r_grid, mb_grid)
            d0.append(r * w)
            w0.append(w)
            c0.append(u[0] + _measure_below(s, u, 0.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        w_start = np.nan_to_num(np.nanmean(w0, axis=0), nan=2.0)
        d_start = np.nan_to_num(np.nanmean(d0, axis=0), nan=0.0)
    c_mid = 0.5 * (us[0][0] + us[0][-1])
    lower, upper = np.array(_TWO_STEP_LOWER), np.array(_TWO_STEP_UPPER)
    P = np.clip(np.stack([np.nan_to_num(c0[0], nan=c_mid), np.nan_to_num(c0[1], nan=c_mid),
                          w_start, d_start**2], axis=1), lower, upper)
    se = np.full(n, np.nan)
    go = np.flatnonzero(fit.sum(axis=1) >= 10)
    if go.size:
        # each pixel about its mean in units of its spread, the scale the engine's damping
        # lambda I assumes (the least-squares solution and the standard error do not depend on it)
        yg, fg = Y0[go], fit[go]
        nf = fg.sum(axis=1)
        mean = yg.sum(axis=1) / nf
        spread = np.sqrt((((yg - mean[:, None]) * fg) ** 2).sum(axis=1) / nf)
        spread = np.where(spread > 0, spread, 1.0)
        t = functools.partial(torch.as_tensor, dtype=torch.float64)
        yt, wt = t((yg - mean[:, None]) * fg / spread[:, None]), t(fg)
        args = (t(U), torch.as_tensor(np.concatenate([np.ones(us[0].size, bool), np.zeros(us[1].size, bool)])))
        # one intra-op thread (restored after): the batched ops are small (96 points a problem);
        # on 2 loaded cores a second thread took 1.3-6x the CPU time and no less wall time
        with torch_threads(1):
            p, _, _, _ = levenberg_marquardt(_TwoStepModel, t(P[go]), yt, wt, torch.arange(go.size),
                                             t(lower), t(upper), args=args, max_iter=max(int(iterations), 1))
            sse, A, _ = _TwoStepModel.normal(p, *args, yt, wt)
        cov = np.linalg.pinv(A.numpy())
        dof = np.maximum(nf - 7, 1)
        se[go] = np.sqrt(np.maximum(cov[:, 3, 3] * sse.numpy() / dof, 0.0))
        P[go] = p.numpy()
    bad = np.ones(n, bool)
    bad[go] = False
    P[bad] = np.nan
    return {"d2": P[:, 3], "w": P[:, 2], "d2_se": se, "c_falling": P[:, 0], "c_rising": P[:, 1]}


def three_state(voltage: Any, loops: Any, *, plateau_level: float = 0.25, switching_level: float = 0.8,
                resolution: float = 1.0, confidence: float = 2.0) -> np.ndarray:
    """Resolved plateau between two switching events, in volts (module docstring).

    From :func:`two_step_fit` (plateau ``d``, erf width ``w``, both branches at once):
    ``sqrt(max(d^2 - (resolution w)^2 - confidence SE(d^2), 0))``, the plateau in excess of one
    step width (below it the two events merge into one wider step: the curve depends on ``d^2 /
    2 + w^2`` only, so a short plateau and a wide step cannot be told apart), less ``confidence``
    standard errors of ``d^2``. 0 where no plateau is resolved (one switching event).

    Parameters
    ----------
    voltage : array of shape (n_steps,)
    loops : array of shape (n_pixels, n_steps) or (rows, cols, n_steps)

    Returns
    -------
    ndarray of shape (n_pixels,)
    """
    f = two_step_fit(voltage, loops, plateau_level=plateau_level, switching_level=switching_level)
    excess = f["d2"] - (float(resolution) * f["w"]) ** 2 - float(confidence) * f["d2_se"]
    return np.sqrt(np.maximum(excess, 0.0))


def c_like(voltage: Any, loops: Any, *, plateau_level: float = 0.25,
           switching_level: float = 0.8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """c-like switching ``(h^2 q)^(1/3)`` and its parts, the step height ``H`` and width ``w`` (V).

    Returns
    -------
    c_like, height, width : ndarrays of shape (n_pixels,)
        ``height`` in the loops' units (mean of the two branches), ``width`` the error-function
        width of one step (V).
    """
    X = _as_curves(loops, "loops")
    brs = branches(voltage)
    s_all, heights = _levels(X, brs)
    a, b = float(plateau_level), float(switching_level)
    widths = []
    for br, s in zip(brs, s_all):
        u = br.voltage
        ma = _measure_below(s, u, a) - _measure_below(s, u, -a)
        mb = _measure_below(s, u, b) - _measure_below(s, u, -b)
        widths.append((mb - ma) / (2.0 * float(erfinv(b) - erfinv(a))))
    H = heights.mean(axis=0)
    W = np.mean(widths, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        h = H / np.nanmedian(H)
        q = np.nanmedian(W) / np.where(W > 0, W, np.nan)
        return np.cbrt(h**2 * q), H, W


def hardening(voltage: Any, loops: Any, resonance: Any, *, switching_level: float = 0.8,
              rise_from: float = 1.0, hardening_window: float = 8.0, rise_width: float = 1.3,
              step: float = 0.5, dip_widths: tuple[float, ...] = (0.8, 1.1, 1.5, 2.0)) -> np.ndarray:
    """Rise of the resonance before switching above the branch's baseline, in the resonance's units.

    On each branch (the switching from ``loops``: ``s`` the normalized branch, ``Vc`` its zero
    crossing, ``d`` the distance from ``Vc`` to the start of switching, where ``|s|`` reaches
    ``switching_level``, at least 0.5 V) the resonance of every step of the branch is fitted by
    linear least squares, every pixel at once, with::

        c0 + c1 V + c2 s(V) V - D exp(-((V - Vc)/(f d))^2) + A exp(-((V - Vr)/rise_width)^2)

    a line, the butterfly (the polarization-times-field shift, from the measured branch), the
    softening dip at switching and the rise, for every dip width ``f`` in ``dip_widths`` and rise
    centre ``Vr`` every ``step`` volts from ``rise_from`` to ``hardening_window`` before ``Vc``.
    The rise is ``A`` averaged over these models with the weights ``exp(-(SSE - SSE_min) / (2
    sigma^2))`` (``sigma^2 = SSE_min / (n - 5)``, the branch's noise; a model average rather than the
    single best model, which noise picks at random among near-equal ones). Returns the mean of the
    two branches (n_pixels,); negative where the resonance dips before switching instead.
    """
    X = _as_curves(loops, "loops")
    Rf = _as_curves(resonance, "resonance")
    if Rf.shape != X.shape:
        raise DataError(f"resonance has shape {Rf.shape}, the loops {X.shape}; they must share grid and steps")
    brs = branches(voltage)
    s_all, _ = _levels(X, brs)
    b = float(switching_level)
    offsets = np.arange(float(rise_from), float(hardening_window) + 1e-9, float(step))
    rises = []
    for br, s in zip(brs, s_all):
        u = br.voltage
        sg = 1.0 if br.falling else -1.0  # "before" switching: higher V when falling
        vc = u[0] + _measure_below(s, u, 0.0)
        start = u[0] + _measure_below(s, u, b if br.falling else -b)
        r = br.of(Rf)
        fit = np.isfinite(r) & np.isfinite(s)
        r0 = np.where(fit, r, 0.0)
        half = np.maximum(np.abs(start - vc), 0.5)
        base = [np.ones_like(r), np.broadcast_to(u, r.shape), np.where(fit, np.clip(s, -1.5, 1.5), 0.0) * u]
        amps, sses = [], []
        for f in dip_widths:
            dip = np.exp(-(((u[None, :] - vc[:, None]) / (f * half[:, None])) ** 2))
            for off in offsets:
                rise = np.exp(-(((u[None, :] - (vc + sg * off)[:, None]) / rise_width) ** 2))
                A = np.stack(base + [dip, rise], axis=-1) * fit[..., None]
                AtA = np.einsum("nki,nkj->nij", A, A)
                AtA += 1e-9 * np.einsum("nii->n", AtA)[:, None, None] / 5 * np.eye(5)  # scale-free ridge
                coef = np.linalg.solve(AtA, np.einsum("nki,nk->ni", A, r0)[..., None])[..., 0]
                sses.append(((r0 - np.einsum("nki,ni->nk", A, coef)) ** 2).sum(axis=1))
                amps.append(coef[:, 4])
        sse, amp = np.asarray(sses), np.asarray(amps)
        n_fit = fit.sum(axis=1)
        floor = 1e-24 * np.maximum((r0**2).sum(axis=1), 1e-300)  # noise-free curves: the best model wins
        sigma2 = np.maximum(sse.min(axis=0) / np.maximum(n_fit - 5, 1), floor)
        with np.errstate(invalid="ignore", over="ignore"):
            weight = np.exp(-(sse - sse.min(axis=0)) / (2.0 * sigma2))
            rise_amp = (weight * amp).sum(axis=0) / weight.sum(axis=0)
        rises.append(np.where(n_fit >= 10, rise_amp, np.nan))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(rises, axis=0)


def detect(ds: xr.Dataset, config: MechanismsConfig | None = None) -> dict[str, xr.DataArray]:
    """The three detector maps of a cleaned Dataset, as DataArrays (row, col) with units.

    Needs ``<config.channel>_clean``; hardening also ``<config.resonance>_clean`` (left out
    without it).
    """
    config = config or MechanismsConfig()
    name = f"{config.channel}_clean"
    if name not in ds:
        raise DataError(f"mechanism detectors need {name!r}; run the clean stage first")
    da = ds[name].transpose("row", "col", "step")
    grid = da.shape[:2]
    voltage = ds["voltage"].values
    X = da.values.reshape(-1, da.shape[-1])
    kw = dict(plateau_level=config.plateau_level, switching_level=config.switching_level)
    out: dict[str, xr.DataArray] = {}

    def put(var: str, values: np.ndarray, units: str, **attrs: Any) -> None:
        out[var] = xr.DataArray(values.reshape(grid), dims=("row", "col"),
                                attrs={"units": units, "long_name": DETECTORS[var][1], **attrs})

    put("mechanism_three_state", three_state(voltage, X, **kw), "V", from_variable=name)
    c, H, W = c_like(voltage, X, **kw)
    put("mechanism_c_like", c, "1", from_variable=name, median_height=float(np.nanmedian(H)),
        height_units=str(da.attrs.get("units", "")), median_width_v=float(np.nanmedian(W)))
    rname = f"{config.resonance}_clean"
    if rname in ds:
        R = ds[rname].transpose("row", "col", "step").values.reshape(X.shape)
        attrs = ds[rname].attrs
        normalized = bool(attrs.get("normalized", False)) or str(attrs.get("units", "")) in ("", "1", "a.u.")
        units = "standard deviations (normalized resonance)" if normalized else str(attrs.get("units", "kHz"))
        put("mechanism_hardening",
            hardening(voltage, X, R, switching_level=config.switching_level,
                      rise_from=config.rise_from, hardening_window=config.hardening_window,
                      rise_width=config.rise_width),
            units, from_variable=rname)
    return out


# -- naming ---------------------------------------------------------------------------------------
def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return float("nan")
    return float(spearmanr(x[ok], y[ok]).statistic)


def name_neurons(embeddings: Mapping[str, Any], measures: Mapping[str, Any], *, min_rho: float = 0.6,
                 margin: float = 0.1, same_measure: float = 0.8) -> dict[str, Any]:
    """Spearman rho of every active neuron with every measure, and the names the rule gives.

    Parameters
    ----------
    embeddings : dict of channel -> array (n_pixels, n_neurons) or (rows, cols, n_neurons)
    measures : dict of name -> array (n_pixels,) or (rows, cols)

    Returns
    -------
    dict
        ``rho`` (n_channels, max_neurons, n_measures), NaN for inactive neurons;
        ``named`` (n_channels, max_neurons) int, index of the measure a neuron tracks or -1;
        ``also`` {(channel, neuron): [measures within the margin that measure the same]};
        ``channels``, ``measures`` (the names, in order).
    """
    names = list(measures)
    M = np.stack([np.asarray(measures[m], dtype=float).ravel() for m in names], axis=1) if names else None
    chans = list(embeddings)
    Zs = {}
    for ch in chans:
        Z = np.asarray(embeddings[ch], dtype=float)
        Zs[ch] = Z.reshape(-1, Z.shape[-1])
        if M is not None and Zs[ch].shape[0] != M.shape[0]:
            raise DataError(f"embedding {ch!r} has {Zs[ch].shape[0]} pixels, the measures {M.shape[0]}")
    n_max = max((Z.shape[1] for Z in Zs.values()), default=0)
    rho = np.full((len(chans), n_max, len(names)), np.nan)
    named = np.full((len(chans), n_max), -1, dtype=np.int64)
    also: dict[tuple[str, int], list[str]] = {}
    if M is None:
        return {"rho": rho, "named": named, "also": also, "channels": chans, "measures": names}
    between = np.array([[_spearman(M[:, i], M[:, j]) if i != j else 1.0 for j in range(len(names))]
                        for i in range(len(names))])
    from .interpret import truth_correlations  # NaN for inactive neurons and constant measures

    for c, ch in enumerate(chans):
        Z = Zs[ch]
        rho[c, :Z.shape[1]] = truth_correlations(Z, {m: M[:, i] for i, m in enumerate(names)})[0]
        for j in np.flatnonzero(active_neurons(Z)):
            a = np.abs(rho[c, j])
            if not np.isfinite(a).any():
                continue
            best = int(np.nanargmax(a))
            if a[best] < min_rho:
                continue
            close = [m for m in range(len(names)) if m != best and np.isfinite(a[m]) and a[m] > a[best] - margin]
            if all(abs(between[best, m]) >= same_measure for m in close):
                named[c, j] = best
                if close:
                    also[(ch, int(j))] = [names[m] for m in close]
    return {"rho": rho, "named": named, "also": also, "channels": chans, "measures": names}


def _label(measure: str) -> str:
    if measure in DETECTORS:
        return DETECTORS[measure][0]
    return measure.removeprefix("loop_").replace("_", " ")


def sentences(ds: xr.Dataset) -> list[str]:
    """"neuron 6 (resonance) tracks elastic hardening (rho = +0.82)" for every named neuron in
    the results (``mechanism_rho``, ``mechanism_named``, ``mechanism_also``)."""
    if "mechanism_named" not in ds or "mechanism_rho" not in ds:
        return []
    rho = ds["mechanism_rho"].transpose("mechanism_channel", "neuron", "measure").values
    named = ds["mechanism_named"].transpose("mechanism_channel", "neuron").values
    chans = [str(c) for c in ds["mechanism_channel"].values]
    measures = [str(m) for m in ds["measure"].values]
    out = []
    for c, ch in enumerate(chans):
        for j in np.flatnonzero(named[c] >= 0):
            m = int(named[c, j])
            text = f"neuron {int(ds['neuron'].values[j])} ({ch}) tracks {_label(measures[m])} (rho = {rho[c, j, m]:+.2f})"
            others = [k for k in range(len(measures)) if k != m and np.isfinite(rho[c, j, k])
                      and abs(rho[c, j, k]) > abs(rho[c, j, m]) - float(ds["mechanism_named"].attrs.get("margin", 0.1))]
            if others:
                text += "; also " + ", ".join(f"{_label(measures[k])} ({rho[c, j, k]:+.2f})" for k in others)
            out.append(text)
    return out


# -- stage ----------------------------------------------------------------------------------------
def _loop_maps(ds: xr.Dataset) -> dict[str, np.ndarray]:
    skip = ("status", "n_iter", "converged", "r2", "fit")
    out = {}
    for name in sorted(map(str, ds.data_vars)):
        if (name.startswith("loop_") and ds[name].dims == ("row", "col")
                and np.issubdtype(ds[name].dtype, np.floating) and not any(k in name for k in skip)):
            out[name] = ds[name].values
    return out


def stage(ds: xr.Dataset, config: MechanismsConfig, ctx: RunContext) -> xr.Dataset:
    """Pipeline stage ``mechanisms``: the detector maps and the neurons named by what they track.

    Adds ``mechanism_three_state``, ``mechanism_hardening`` (with a resonance channel) and
    ``mechanism_c_like`` (row, col); with embeddings, ``mechanism_rho`` (mechanism_channel,
    neuron, measure) and ``mechanism_named`` (mechanism_channel, neuron; index into ``measure``,
    -1 for none); ``ctx.summary["mechanisms"]``: definitions, units, the sentences and, on
    synthetic data, each detector's Spearman rho with its truth.
    """
    summary: dict[str, Any] = {}
    ctx.summary["mechanisms"] = summary
    if f"{config.channel}_clean" not in ds:
        summary["skipped"] = f"no {config.channel}_clean (run the clean stage)"
        return ds.copy()
    maps = detect(ds, config)
    out = ds.assign(maps)
    summary["detectors"] = {k: {"definition": DETECTORS[k][1], "units": v.attrs["units"],
                                "median": round(float(np.nanmedian(v.values)), 6)} for k, v in maps.items()}
    truth_of = {"mechanism_three_state": "truth_three_state", "mechanism_hardening": "truth_hardening",
                "mechanism_c_like": "truth_c_fraction"}
    truth = {k: round(_spearman(maps[k].values.ravel(), ds[t].values.ravel()), 4)
             for k, t in truth_of.items() if k in maps and t in ds}
    if truth:
        summary["truth_rho"] = truth
    embeddings = {str(n).removeprefix("embedding_"): ds[n].transpose("row", "col", "neuron").values
                  for n in ds.data_vars if str(n).startswith("embedding_") and not str(n).startswith("embedding_history")
                  and ds[n].dims == ("row", "col", "neuron")}
    if embeddings:
        measures = {k: v.values for k, v in maps.items()} | _loop_maps(ds)
        res = name_neurons(embeddings, measures, min_rho=config.min_rho, margin=config.margin,
                           same_measure=config.same_measure)
        n = res["rho"].shape[1]
        coords = {"mechanism_channel": res["channels"], "neuron": np.arange(n), "measure": res["measures"]}
        out["mechanism_rho"] = xr.DataArray(
            res["rho"], dims=("mechanism_channel", "neuron", "measure"), coords=coords,
            attrs={"long_name": "Spearman rho of each active neuron with each measure", "units": "1"})
        out["mechanism_named"] = xr.DataArray(
            res["named"], dims=("mechanism_channel", "neuron"),
            coords={k: coords[k] for k in ("mechanism_channel", "neuron")},
            attrs={"long_name": "index into measure of what a neuron tracks, -1 for none",
                   "min_rho": config.min_rho, "margin": config.margin, "same_measure": config.same_measure})
        summary["sentences"] = sentences(out)
        summary["rule"] = (f"|rho| >= {config.min_rho} and every measure within {config.margin} of the best "
                           f"correlates with it at |rho| >= {config.same_measure}")
    elif "embedding_piezoresponse" not in ds:
        warnings.warn("no embedding in the results: the mechanism maps are computed, no neuron is named",
                      DataWarning, stacklevel=2)
    return out
