"""Hysteresis-loop models: function, analytic Jacobian, bounds and a data-driven guess.

Every model is a pair of branch functions of the voltage: one for the steps of the descending
sweep (voltage falling, switching at the negative coercive voltage) and one for the ascending
sweep. Which step belongs to which sweep is read from the voltage array by :func:`sweep_masks`,
never assumed from the position in the array, so waveforms that start at 0 V, at +Vmax or at
-Vmax are all handled.

All model code is written in torch and is batched over pixels: parameters ``(n, n_params)``,
voltage ``(n_steps,)``, output ``(n, n_steps)`` and Jacobian ``(n, n_steps, n_params)``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Callable, Literal

import numpy as np

if TYPE_CHECKING:  # annotations only: torch is imported where it is used
    import torch

from .._errors import ConfigError
from ..waveform import check_bipolar, descending_steps

ModelName = Literal["paper13", "bglib9"]

_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)


def _exp_cut(dtype: torch.dtype) -> float:
    """``exp(-u)`` is evaluated as ``exp(-min(u, cut))`` in the normal equations.

    Arguments whose result underflows to a subnormal or zero (e.g. far from a sharp switch)
    take a slow path in the vectorized exp, measured 6-18x slower per element; exp(-cut) is
    ~1e-304 in float64 and ~9e-27 in float32 (far enough above float32's smallest normal that
    the products with the other factors stay normal too), nothing next to the other terms.
    """
    import torch

    return 700.0 if dtype == torch.float64 else 60.0


# --------------------------------------------------------------------------------------------
# Waveform
# --------------------------------------------------------------------------------------------
def sweep_masks(voltage: np.ndarray) -> np.ndarray:
    """Boolean mask of the steps that belong to the descending sweep.

    Parameters
    ----------
    voltage : ndarray of shape (n_steps,)
        DC voltage of each step, one bipolar triangle (e.g. +V -> -V -> +V, or 0 -> +V -> -V -> 0),
        any start, direction, length and amplitude; repeated voltages (flat steps) keep the
        direction of the sweep they lie on.

    Returns
    -------
    descending : ndarray of bool, shape (n_steps,)
        True where the voltage is falling. The turning points belong to the sweep that starts
        there; at a turning point both branches are saturated, so the choice does not matter.

    Raises
    ------
    DataError
        If the voltage is not a single bipolar triangle; the message names what it is instead
        (a ramp, several cycles, a FORC waveform, a unipolar triangle, too few steps per sweep:
        see :func:`switchscope.waveform.check_bipolar`).
    """
    check_bipolar(voltage, max_cycles=1)
    return descending_steps(voltage)


def _erf_gauss(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``erf(z)`` and its derivative ``2/sqrt(pi) exp(-z^2)``."""
    import torch

    return torch.erf(z), _TWO_OVER_SQRT_PI * torch.exp(-z * z)


# --------------------------------------------------------------------------------------------
# Model objects
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LoopModel:
    """A loop model: names, function, Jacobian, bounds, and how its parameters scale.

    Attributes
    ----------
    name : str
        Registry name.
    param_names : tuple of str
        Parameter names, in the order of the parameter vector.
    param_kinds : tuple of str
        Per parameter: ``"offset"`` (response level: scales and shifts with the response),
        ``"scale"`` (response amplitude or slope: scales with the response) or ``"voltage"``
        (a voltage or width in volts: unchanged by response scaling).
    split : callable
        ``split(p, v_desc, v_asc, jac) -> (f, J or None)``: the model on the descending steps
        followed by the ascending ones, ``p (n, n_params)``, ``f (n, m)``, ``J (n, n_params, m)``
        (parameter-major, so that ``J J^T`` is one contiguous batched product).
    bounds : callable
        ``bounds(voltage) -> (lower, upper)``, arrays of shape (n_params,) in physical units.
    guess : callable
        ``guess(voltage, descending, y) -> p0 (n, n_params)``; a data-driven start.
    levels : callable
        ``levels(p) -> (low, high)``: the response levels the loop saturates to at large negative
        and positive voltage, without the linear background.
    normal : callable
        ``normal(q, vd, va, y, w, ws=None) -> (cost (n,), A (n, n_params, n_params), g (n, n_params))``:
        the weighted sum of squares against ``y`` (split step order; ``w`` of the same shape, or
        None for unit weights), the Gauss-Newton matrix ``J^T J`` and gradient ``J^T r``, built
        branch by branch so that the zeros of ``J`` (each branch's own parameters do not touch the
        other branch) are never stored or multiplied. ``q``, ``A`` and ``g`` are in block order
        (``q = p[:, block_order]``); ``ws``, a dict kept by the caller across calls, lets the
        scratch Jacobian blocks be reused. This is what the fitter calls.
    block_order : tuple of int
        The parameters shared by both branches, then the descending branch's own, then the
        ascending branch's own.
    race_iter : int
        Default iterations of the race of the starts (:func:`~switchscope.loops.fit_loops`).
    """

    name: str
    param_names: tuple[str, ...]
    param_kinds: tuple[str, ...]
    split: Callable[..., tuple[torch.Tensor, torch.Tensor | None]]
    bounds: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
    guess: Callable[..., np.ndarray]
    levels: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    normal: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    block_order: tuple[int, ...]
    slope_index: int
    reference: str
    race_iter: int = 6

    @property
    def n_params(self) -> int:
        return len(self.param_names)

    def evaluate(self, p: torch.Tensor, voltage: torch.Tensor, descending: torch.Tensor,
                 jac: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The model in step order: ``f (n, n_steps)`` and ``J (n, n_steps, n_params)``."""
        import torch

        v = voltage.to(p.dtype)
        desc = descending.to(torch.bool)
        order = torch.cat((torch.nonzero(desc)[:, 0], torch.nonzero(~desc)[:, 0]))
        f_s, J_s = self.split(p, v[desc], v[~desc], jac)
        f = torch.empty_like(f_s)
        f[:, order] = f_s
        if J_s is None:
            return f, None
        J = torch.empty((p.shape[0], v.shape[0], p.shape[1]), dtype=p.dtype, device=p.device)
        J[:, order] = J_s.transpose(1, 2)
        return f, J

    def _evaluate_numpy(self, params, voltage, descending, jac: bool) -> np.ndarray:
        import torch

        v = np.asarray(voltage, dtype=float).ravel()
        d = sweep_masks(v) if descending is None else np.asarray(descending, dtype=bool)
        p = torch.as_tensor(np.atleast_2d(np.asarray(params, dtype=float)))
        f, J = self.evaluate(p, torch.as_tensor(v), torch.as_tensor(d), jac)
        out = (J if jac else f).numpy()
        return out[0] if np.ndim(params) == 1 else out

    def __call__(self, params, voltage, descending=None) -> np.ndarray:
        """Evaluate the model with numpy inputs: ``params (n, n_params)`` -> ``(n, n_steps)``."""
        if MODELS.get(self.name) is self:
            # the built-in models: the numba kernel's evaluation (equal to rounding)
            return self._evaluate_compiled(params, voltage, descending)
        return self._evaluate_numpy(params, voltage, descending, False)

    def _evaluate_compiled(self, params, voltage, descending) -> np.ndarray:
        from .._device import numba_threads
        from ..fit import _loops_numba as nb

        v = np.asarray(voltage, dtype=float).ravel()
        d = sweep_masks(v) if descending is None else np.asarray(descending, dtype=bool)
        p = np.ascontiguousarray(np.atleast_2d(np.asarray(params, dtype=float)))
        jd, ja = np.flatnonzero(d), np.flatnonzero(~d)
        f = np.empty((p.shape[0], v.size))
        with numba_threads():
            nb.curves(nb.MODEL_CODES[self.name], p, v[jd], v[ja], jd, ja, f)
        return f[0] if np.ndim(params) == 1 else f

    def jacobian(self, params, voltage, descending=None) -> np.ndarray:
        """Analytic Jacobian with numpy inputs: ``(n, n_params)`` -> ``(n, n_steps, n_params)``."""
        return self._evaluate_numpy(params, voltage, descending, True)


# --------------------------------------------------------------------------------------------
# Shared pieces of the guesses
# --------------------------------------------------------------------------------------------
def _span(voltage: np.ndarray) -> float:
    return float(voltage.max() - voltage.min())


def _saturation_levels(voltage: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean response over the steps within 10 % of the span of each voltage end."""
    span = _span(voltage)
    lo = voltage <= voltage.min() + 0.1 * span
    hi = voltage >= voltage.max() - 0.1 * span
    return y[:, lo].mean(axis=1), y[:, hi].mean(axis=1)


def _branch_switch(voltage: np.ndarray, mask: np.ndarray, y: np.ndarray, low: np.ndarray,
                   high: np.ndarray) -> np.ndarray:
    """Switching voltage of one branch from the area under its normalized response.

    For a step from ``low`` to ``high`` at ``V0`` on ``[vmin, vmax]``, the integral of the
    normalized response is ``vmax - V0``; integrating is far less noise-sensitive than locating
    the midpoint crossing.
    """
    order = np.argsort(voltage[mask], kind="stable")
    v = voltage[mask][order]
    t = (y[:, mask][:, order] - low[:, None]) / (high - low)[:, None]
    t = np.clip(t, 0.0, 1.0)
    area = np.trapezoid(t, v, axis=1) if hasattr(np, "trapezoid") else np.trapz(t, v, axis=1)
    return np.clip(v.max() - area, v.min(), v.max())


def _common_guess(voltage: np.ndarray, descending: np.ndarray, y: np.ndarray):
    voltage = np.asarray(voltage, dtype=float)
    y = np.asarray(y, dtype=float)
    low, high = _saturation_levels(voltage, y)
    same = np.isclose(high, low, rtol=0, atol=1e-12 * (np.abs(high) + np.abs(low) + 1e-300))
    high = np.where(same, low + 1.0, high)
    v_neg = _branch_switch(voltage, descending, y, low, high)
    v_pos = _branch_switch(voltage, ~descending, y, low, high)
    return low, high, v_neg, v_pos


# --------------------------------------------------------------------------------------------
# paper13: Agar et al. 2019 (DESIGN section 2.3)
# --------------------------------------------------------------------------------------------
PAPER13_NAMES = ("a1", "a2", "a3", "b1", "b2", "b3", "b4", "b5", "b6", "b7", "b8", "Au", "Al")


def _paper13_split(p: torch.Tensor, vd: torch.Tensor, va: torch.Tensor, jac: bool):
    """The paper's 13-parameter loop on the descending steps ``vd`` then the ascending ``va``.

    ``S1 = (b1+b2)/2 + (b2-b1)/2 erf((V-b7)/b5)`` and
    ``S2 = (b4+b3)/2 + (b3-b4)/2 erf((V-b8)/b6)`` are voltage-dependent widths; the descending
    branch is ``(a1+a2)/2 + (a2-a1)/2 erf((V-Au)/S1) + a3 V``, the ascending branch the same with
    ``Al`` and ``S2`` (Agar et al., Nat. Commun. 10, 4809 (2019), Methods).
    """
    import torch

    a1, a2, a3, b1, b2, b3, b4, b5, b6, b7, b8, au, al = (p[:, i:i + 1] for i in range(13))
    md = vd.shape[0]
    w1 = (vd - b7) / b5
    s1 = 0.5 * (b1 + b2) + 0.5 * (b2 - b1) * torch.erf(w1)
    z1 = (vd - au) / s1
    w2 = (va - b8) / b6
    s2 = 0.5 * (b4 + b3) + 0.5 * (b3 - b4) * torch.erf(w2)
    z2 = (va - al) / s2
    v = torch.cat((vd, va))
    h = 0.5 * (a2 - a1)
    if not jac:
        # the function alone (metrics, fitted curves): no derivative terms
        return 0.5 * (a1 + a2) + h * torch.erf(torch.cat((z1, z2), dim=1)) + a3 * v, None
    ew1, gw1 = _erf_gauss(w1)
    ew2, gw2 = _erf_gauss(w2)
    ez, gz = _erf_gauss(torch.cat((z1, z2), dim=1))
    f = 0.5 * (a1 + a2) + h * ez + a3 * v
    n, m = f.shape
    J = p.new_empty((n, 13, m))
    # each branch's own parameters have no effect on the other branch
    J[:, (3, 4, 7, 9, 11), md:] = 0.0
    J[:, (5, 6, 8, 10, 12), :md] = 0.0
    J[:, 0] = 0.5 - 0.5 * ez
    J[:, 1] = 1.0 - J[:, 0]
    J[:, 2] = v
    df_da = -h * gz / torch.cat((s1, s2), dim=1)
    df_da1, df_da2 = df_da[:, :md], df_da[:, md:]
    df_ds1, df_ds2 = df_da1 * z1, df_da2 * z2
    J[:, 3, :md] = df_ds1 * (0.5 - 0.5 * ew1)
    J[:, 4, :md] = df_ds1 - J[:, 3, :md]
    J[:, 9, :md] = df_ds1 * (0.5 * (b2 - b1) / b5) * gw1 * -1.0
    J[:, 7, :md] = J[:, 9, :md] * w1
    J[:, 11, :md] = df_da1
    J[:, 5, md:] = df_ds2 * (0.5 + 0.5 * ew2)
    J[:, 6, md:] = df_ds2 - J[:, 5, md:]
    J[:, 10, md:] = df_ds2 * (0.5 * (b3 - b4) / b6) * gw2 * -1.0
    J[:, 8, md:] = J[:, 10, md:] * w2
    J[:, 12, md:] = df_da2
    return f, J


def _buffer(ws: dict | None, key, shape: tuple[int, ...], like: torch.Tensor,
            init: Callable[[torch.Tensor], object] | None = None) -> torch.Tensor:
    """A scratch tensor of ``shape``, reused across calls through the workspace ``ws``.

    The Jacobian blocks are ~10 MB: allocated afresh at every iteration, glibc hands them back
    to the kernel and every page faults again on the next write (measured: ~2x the cost of the
    whole normal-equation pass). Buffers only grow; a smaller batch uses the leading rows.
    ``init(buffer)`` fills a new buffer's constant parts (the caller must never overwrite them,
    and must use one workspace per voltage).
    """
    if ws is None:
        buf = like.new_empty(shape)
        if init is not None:
            init(buf)
        return buf
    buf = ws.get(key)
    if (buf is None or buf.shape[0] < shape[0] or buf.shape[1:] != shape[1:]
            or buf.dtype != like.dtype or buf.device != like.device):
        buf = ws[key] = like.new_empty(shape)
        if init is not None:
            init(buf)
    return buf[:shape[0]]


def _branch_normal(j_parts, w: torch.Tensor | None, md: int, n_common: int):
    """Cost, ``J^T J`` and ``J^T r`` in block order from the two branches' Jacobian blocks.

    ``j_parts[b]`` is ``(n, n_common + k_b + 1, m_b)``: the rows of the parameters shared by
    both branches first, then branch ``b``'s own, then the residual ``f - y`` of the branch. One
    batched product of this block with itself gives ``J^T J``, ``J^T r`` and ``r^T r`` at once.
    The normal matrix is assembled in the block order (shared, descending-own, ascending-own)
    without ever forming the zero blocks of ``J``.
    """
    import torch

    grams = []
    for b, J in enumerate(j_parts):
        if w is not None:
            J = J * (w[:, :md] if b == 0 else w[:, md:])[:, None, :]
        grams.append(torch.bmm(J, J.transpose(1, 2)))
    G1, G2 = grams
    c, e = n_common, G1.shape[1] - 1
    n, P = G1.shape[0], e + G2.shape[1] - 1 - c
    A = G1.new_empty((n, P, P))
    A[:, :e, :e] = G1[:, :e, :e]
    A[:, :c, :c] += G2[:, :c, :c]
    A[:, :c, e:] = G2[:, :c, c:-1]
    A[:, e:, :c] = G2[:, c:-1, :c]
    A[:, e:, e:] = G2[:, c:-1, c:-1]
    A[:, c:e, e:] = 0.0
    A[:, e:, c:e] = 0.0
    g = torch.cat((G1[:, :c, -1] + G2[:, :c, -1], G1[:, c:e, -1], G2[:, c:-1, -1]), dim=1)
    return G1[:, -1, -1] + G2[:, -1, -1], A, g


# block order: shared (a1, a2, a3), descending (b1, b2, b5, b7, Au), ascending (b3, b4, b6, b8, Al)
_PAPER13_BLOCKS = (0, 1, 2, 3, 4, 7, 9, 11, 5, 6, 8, 10, 12)


def _paper13_normal(p: torch.Tensor, vd: torch.Tensor, va: torch.Tensor, y: torch.Tensor,
                    w: torch.Tensor | None, ws: dict | None = None):
    """:attr:`LoopModel.normal` of paper13 (same formulas as :func:`_paper13_split`).

    ``p`` is in block order (:data:`_PAPER13_BLOCKS`). The Jacobian rows are written straight
    into one preallocated block per branch (``out=``), which avoids a stacking copy per row.
    """
    import torch

    a1, a2, a3, b1, b2, b5, b7, au, b3, b4, b6, b8, al = p[:, :, None].unbind(1)
    h = 0.5 * (a2 - a1)
    c0 = 0.5 * (a1 + a2)
    n, md = p.shape[0], vd.shape[0]
    cut = _exp_cut(p.dtype)
    js = []
    # S = (bl+bh)/2 + (bh-bl)/2 erf((V-bc)/bw): descending bl=b1, bh=b2; ascending bl=b4, bh=b3
    for v, bl, bh, bw, bc, vc, desc in ((vd, b1, b2, b5, b7, au, True),
                                        (va, b4, b3, b6, b8, al, False)):
        # the constant row d/da3 = V is written once per buffer
        J = _buffer(ws, ("paper13", desc), (n, 9, v.shape[0]), p,
                    init=lambda buf, v=v: buf[:, 2].copy_(v))
        j_a1, j_a2, _, j_3, j_4, j_bw, j_bc, j_vc, res = J.unbind(1)
        j_lo, j_hi = (j_3, j_4) if desc else (j_4, j_3)
        wv = (v - bc) / bw
        ew = torch.erf(wv)
        half = 0.5 * (bh - bl)
        s = 0.5 * (bl + bh) + half * ew
        z = (v - vc) / s
        ez = torch.erf(z)
        torch.sub(c0 + h * ez + a3 * v, y[:, :md] if desc else y[:, md:], out=res)
        torch.mul(ez, -0.5, out=j_a1).add_(0.5)
        torch.mul(ez, 0.5, out=j_a2).add_(0.5)
        # d f / d(switching voltage) = -h erf'(z) / S
        torch.mul(z, z, out=j_vc).clamp_(max=cut).neg_().exp_().mul_(
            (-_TWO_OVER_SQRT_PI) * h).div_(s)
        dfds = j_vc * z
        torch.mul(ew, -0.5, out=j_lo).add_(0.5).mul_(dfds)          # dS/dbl = (1 - erf)/2
        torch.sub(dfds, j_lo, out=j_hi)
        torch.mul(wv, wv, out=j_bc).clamp_(max=cut).neg_().exp_().mul_(dfds).mul_(
            (-_TWO_OVER_SQRT_PI) * half / bw)
        torch.mul(j_bc, wv, out=j_bw)
        js.append(J)
    return _branch_normal(js, w, md, 3)


def _paper13_bounds(voltage: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(voltage, dtype=float)
    span, vmin, vmax = _span(v), float(v.min()), float(v.max())
    inf = np.inf
    wmin = 1e-3 * span
    lower = np.array([-inf, -inf, -inf, wmin, wmin, wmin, wmin, wmin, wmin,
                      vmin - 0.5 * span, vmin - 0.5 * span, vmin, vmin])
    upper = np.array([inf, inf, inf, span, span, span, span, 2 * span, 2 * span,
                      vmax + 0.5 * span, vmax + 0.5 * span, vmax, vmax])
    return lower, upper


def _paper13_guess(voltage: np.ndarray, descending: np.ndarray, y: np.ndarray,
                   width: float = 0.06) -> np.ndarray:
    low, high, v_neg, v_pos = _common_guess(voltage, descending, y)
    span = _span(np.asarray(voltage, dtype=float))
    n = low.shape[0]
    p = np.empty((n, 13))
    p[:, 0], p[:, 1], p[:, 2] = low, high, 0.0
    # b1 != b2 and b3 != b4: with equal widths, b5 and b7 have a zero Jacobian (DESIGN 8).
    p[:, 3], p[:, 4] = width * span, 1.5 * width * span
    p[:, 5], p[:, 6] = 1.5 * width * span, width * span
    p[:, 7], p[:, 8] = 0.2 * span, 0.2 * span
    p[:, 9], p[:, 10] = v_neg, v_pos
    p[:, 11], p[:, 12] = v_neg, v_pos
    return p


def _paper13_levels(p: torch.Tensor):
    return p[:, 0], p[:, 1]


# --------------------------------------------------------------------------------------------
# bglib9: BGlib's 9-parameter loop
# --------------------------------------------------------------------------------------------
BGLIB9_NAMES = ("a0", "a1", "a2", "a3", "a4", "b0", "b1", "b2", "b3")
#: Sharpness (1/V) of the switch between the two widths of a branch, as in BGlib.
BGLIB9_D = 1000.0


def _bglib9_branch(v, a0, a1, vc, a4, w_lo, w_hi, jac: bool):
    """One branch of the 9-parameter loop and its derivatives.

    ``g = (w_hi - w_lo)/2 (erf(d (V - vc)) + 1) + w_lo``,
    ``y = (g erf((V - vc)/g) + w_lo) / (w_lo + w_hi)``, ``f = a0 + a1 y + a4 V``.
    """
    import torch

    x = v - vc
    ed = torch.erf(BGLIB9_D * x)
    g = 0.5 * (w_hi - w_lo) * (ed + 1.0) + w_lo
    z = x / g
    ez = torch.erf(z)
    ssum = w_lo + w_hi
    y = (g * ez + w_lo) / ssum
    f = a0 + a1 * y + a4 * v
    if not jac:
        return f, None
    gd = _TWO_OVER_SQRT_PI * torch.exp(-(BGLIB9_D * x) ** 2)
    gz = _TWO_OVER_SQRT_PI * torch.exp(-z * z)
    dy_dg = (ez - gz * z) / ssum                   # d/dg [g erf(x/g)] = erf(z) - z erf'(z)
    dg_dvc = -0.5 * (w_hi - w_lo) * gd * BGLIB9_D
    dy_dvc = dy_dg * dg_dvc - gz / ssum            # explicit x-dependence: g erf'(z) (-1/g)
    dg_dlo = 1.0 - 0.5 * (ed + 1.0)
    dg_dhi = 0.5 * (ed + 1.0)
    dy_dlo = dy_dg * dg_dlo + (1.0 - y) / ssum     # numerator +1, denominator -y/ssum
    dy_dhi = dy_dg * dg_dhi - y / ssum
    return f, (y, a1 * dy_dvc, a1 * dy_dlo, a1 * dy_dhi)


def _bglib9_split(p: torch.Tensor, vd: torch.Tensor, va: torch.Tensor, jac: bool):
    """BGlib's 9-parameter loop (pycroscopy/BGlib, ``BGlib/be/analysis/utils/be_loop.py``,
    ``loop_fit_function``): the descending branch switches at ``a2`` with widths ``b0`` (below
    ``a2``) and ``b1`` (above), the ascending branch at ``a3`` with widths ``b2``, ``b3``; both
    share the level ``a0``, the amplitude ``a1`` and the slope ``a4``. BGlib splits the waveform
    into halves by position; here the branches are chosen by the sweep direction."""
    import torch

    a0, a1, a2, a3, a4, b0, b1, b2, b3 = (p[:, i:i + 1] for i in range(9))
    md = vd.shape[0]
    f1, j1 = _bglib9_branch(vd, a0, a1, a2, a4, b0, b1, jac)
    f2, j2 = _bglib9_branch(va, a0, a1, a3, a4, b2, b3, jac)
    f = torch.cat((f1, f2), dim=1)
    if not jac:
        return f, None
    n, m = f.shape
    J = p.new_empty((n, 9, m))
    J[:, (2, 5, 6), md:] = 0.0
    J[:, (3, 7, 8), :md] = 0.0
    J[:, 0] = 1.0
    J[:, 1, :md] = j1[0]
    J[:, 1, md:] = j2[0]
    J[:, 2, :md] = j1[1]
    J[:, 3, md:] = j2[1]
    J[:, 4] = torch.cat((vd, va))
    J[:, 5, :md] = j1[2]
    J[:, 6, :md] = j1[3]
    J[:, 7, md:] = j2[2]
    J[:, 8, md:] = j2[3]
    return f, J


# block order: shared (a0, a1, a4), descending (a2, b0, b1), ascending (a3, b2, b3)
_BGLIB9_BLOCKS = (0, 1, 4, 2, 5, 6, 3, 7, 8)


def _bglib9_normal(p: torch.Tensor, vd: torch.Tensor, va: torch.Tensor, y: torch.Tensor,
                   w: torch.Tensor | None, ws: dict | None = None):
    """:attr:`LoopModel.normal` of bglib9 (same formulas as :func:`_bglib9_split`); ``p`` in
    block order (:data:`_BGLIB9_BLOCKS`)."""
    import torch

    a0, a1, a4, a2, b0, b1, a3, b2, b3 = p[:, :, None].unbind(1)
    n, md = p.shape[0], vd.shape[0]
    cut = _exp_cut(p.dtype)
    js = []
    for b, (v, vc, lo, hi, yb) in enumerate(((vd, a2, b0, b1, y[:, :md]),
                                             (va, a3, b2, b3, y[:, md:]))):
        # rows: d/da0 = 1, d/da1 = shape y, d/da4 = V, then vc, w_lo, w_hi, and the residual;
        # the constant rows are written once per buffer
        J = _buffer(ws, ("bglib9", b), (n, 7, v.shape[0]), p,
                    init=lambda buf, v=v: (buf[:, 0].fill_(1.0), buf[:, 2].copy_(v)))
        _, j_y, _, j_vc, j_lo, j_hi, res = J.unbind(1)
        half = 0.5 * (hi - lo)
        k = a1 / (lo + hi)                               # a1 / (w_lo + w_hi), (n, 1)
        x = v - vc
        dx = x * BGLIB9_D
        ed = torch.erf(dx)
        g = torch.mul(ed, half).add_(half + lo)          # (w_hi - w_lo)/2 (erf(d x) + 1) + w_lo
        z = x.div_(g)
        ez = torch.erf(z)
        torch.mul(g, ez, out=j_y).add_(lo).mul_(1.0 / (lo + hi))   # y = (g erf(z) + w_lo) / sum
        torch.sub(a4 * v, yb, out=res).add_(a0).addcmul_(j_y, a1)  # f - y_data
        gz = torch.mul(z, z).clamp_(max=cut).neg_().exp_()     # erf'(z) / (2/sqrt(pi))
        # G = a1 dy/dg = k (erf(z) - erf'(z) z)
        G = torch.mul(gz, z).mul_(-_TWO_OVER_SQRT_PI).add_(ez).mul_(k)
        # a1 dy/dvc = G dg/dvc - k erf'(z), dg/dvc = -(w_hi - w_lo)/2 erf'(d x) d
        torch.mul(dx, dx, out=j_vc).clamp_(max=cut).neg_().exp_().mul_(G).mul_(
            (-_TWO_OVER_SQRT_PI * BGLIB9_D) * half).addcmul_(gz, (-_TWO_OVER_SQRT_PI) * k)
        # a1 dy/dw_lo = G (1 - erf(d x))/2 + k (1 - y); a1 dy/dw_hi = G (1 + erf(d x))/2 - k y
        torch.mul(ed, -0.5, out=j_lo).add_(0.5).mul_(G).addcmul_(j_y, -k).add_(k)
        torch.sub(G, j_lo, out=j_hi).add_(k).addcmul_(j_y, -2.0 * k)
        js.append(J)
    return _branch_normal(js, w, md, 3)


def _bglib9_bounds(voltage: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(voltage, dtype=float)
    span, vmin, vmax = _span(v), float(v.min()), float(v.max())
    inf = np.inf
    wmin = 1e-3 * span
    lower = np.array([-inf, -inf, vmin, vmin, -inf, wmin, wmin, wmin, wmin])
    upper = np.array([inf, inf, vmax, vmax, inf, span, span, span, span])
    return lower, upper


def _bglib9_guess(voltage: np.ndarray, descending: np.ndarray, y: np.ndarray,
                  width: float = 0.06) -> np.ndarray:
    low, high, v_neg, v_pos = _common_guess(voltage, descending, y)
    span = _span(np.asarray(voltage, dtype=float))
    p = np.empty((low.shape[0], 9))
    p[:, 0], p[:, 1] = low, high - low
    p[:, 2], p[:, 3], p[:, 4] = v_neg, v_pos, 0.0
    p[:, 5], p[:, 6] = width * span, 1.5 * width * span
    p[:, 7], p[:, 8] = 1.5 * width * span, width * span
    return p


def _bglib9_levels(p: torch.Tensor):
    return p[:, 0], p[:, 0] + p[:, 1]


MODELS: dict[str, LoopModel] = {
    "paper13": LoopModel(
        name="paper13",
        param_names=PAPER13_NAMES,
        param_kinds=("offset", "offset", "scale") + ("voltage",) * 10,
        split=_paper13_split,
        bounds=_paper13_bounds,
        guess=_paper13_guess,
        levels=_paper13_levels,
        normal=_paper13_normal,
        block_order=_PAPER13_BLOCKS,
        slope_index=2,
        reference="Agar et al., Nat. Commun. 10, 4809 (2019), Methods: 13-parameter loop",
        # the race's winners go on with their damping and normal equations, so a longer race
        # costs only the losers' extra iterations: on the 3600 real loops 10 iterations instead
        # of 6 raise the median R2 by 1.4e-5 (to 4e-6 below per-pixel scipy) for ~5 % more time
        race_iter=10,
    ),
    "bglib9": LoopModel(
        name="bglib9",
        param_names=BGLIB9_NAMES,
        param_kinds=("offset", "scale", "voltage", "voltage", "scale") + ("voltage",) * 4,
        split=_bglib9_split,
        bounds=_bglib9_bounds,
        guess=_bglib9_guess,
        levels=_bglib9_levels,
        normal=_bglib9_normal,
        block_order=_BGLIB9_BLOCKS,
        slope_index=4,
        reference="pycroscopy/BGlib, BGlib/be/analysis/utils/be_loop.py, loop_fit_function",
        # converges in ~10 iterations; on the 3600 real loops a 2-iteration race picks a start
        # within 1e-3 in R2 of the 6-iteration race's on every pixel, at ~17 % less time
        race_iter=2,
    ),
}

paper13 = MODELS["paper13"]
bglib9 = MODELS["bglib9"]


def get_model(model: str | LoopModel) -> LoopModel:
    """A model by name (or the model itself)."""
    if isinstance(model, LoopModel):
        return model
    if model not in MODELS:
        raise ConfigError(f"unknown loop model {model!r}; valid models are: {', '.join(MODELS)}")
    return MODELS[model]
