"""Simple-harmonic-oscillator (SHO) fit of band-excitation spectra.

The model is BGlib's (pycroscopy/BGlib, ``BGlib/be/analysis/utils/be_sho.py``, ``SHOfunc``)::

    H(w) = A exp(i phi) w0^2 / (w^2 - i w w0 / Q - w0^2)

so that ``H(w0) = i A Q exp(i phi)``: at resonance ``|H| = A Q`` and the phase of the response
is ``phi + pi/2``; far below resonance ``H -> -A exp(i phi)`` (phase ``phi + pi``), far above
``H -> 0`` with phase ``phi``. BGlib gives frequencies in Hz; the model depends on ``w / w0``
only, so any unit works and ``w0`` comes back in the unit of ``freq``. The phase ``phi`` is in
radians. :func:`switchscope.synthetic.sho_response` uses the same formula with the phase in
degrees (and frequencies in kHz).

:func:`fit_sho` fits every spectrum from the better of two guesses per spectrum
(:func:`sho_guess`) with a bounded Levenberg-Marquardt: on a CPU by a numba kernel that solves
one spectrum's whole problem at a time (:mod:`switchscope.fit._sho_numba`), elsewhere (or with
``backend="torch"``) with the batched torch engine that the loop fitter uses
(:mod:`switchscope.fit`); both run the same algorithm. :func:`project_loops`
(:mod:`switchscope.projection`, importable from here too) turns amplitude and phase into
piezoresponse loops.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import math
import warnings
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:  # annotations only: torch is imported where it is used
    import torch

from ._device import (cpu_threads, fit_device, float_dtype, inference_mode, is_tensor, numba_threads,
                      torch_threads)
from ._errors import ConfigError, ConvergenceWarning, DataError, DataWarning
from .fit._lm import (STATUS_CONSTANT, STATUS_FTOL, STATUS_MAXITER, STATUS_NONFINITE,
                      STATUS_TOO_FEW, STATUS_XTOL, levenberg_marquardt)
from .projection import ProjectionResult, project_loops, wrap_angle as _wrap

__all__ = ["PARAM_NAMES", "STATUS_MESSAGES", "ProjectionResult", "SHOFitResult", "fit_sho",
           "project_loops", "sho_guess", "sho_jacobian", "sho_response"]

PARAM_NAMES = ("amplitude", "resonance", "quality_factor", "phase")

#: Fitted, but ``w0`` ended on a band edge or ``Q`` on a bound: no resolved resonance in the band.
STATUS_BOUND = 6

STATUS_MESSAGES = {
    STATUS_FTOL: "converged (cost decrease below ftol)",
    STATUS_XTOL: "converged (step below xtol or no further decrease)",
    STATUS_MAXITER: "stopped at max_iter",
    STATUS_TOO_FEW: "not fitted: fewer than 3 finite frequency bins",
    STATUS_CONSTANT: "not fitted: constant spectrum (all zeros or flat)",
    STATUS_NONFINITE: "failed: non-finite result",
    STATUS_BOUND: "fitted, but w0 on a band edge or Q on a bound (no resonance in the band)",
}

#: Default bounds of the quality factor. Band-excitation resonances of cantilevers in contact
#: have Q of tens to a few hundred; Q = 1 is an overdamped oscillator and 1e4 a peak far narrower
#: than any band-excitation bin spacing, so a fit outside this range has found no resonance.
Q_BOUNDS = (1.0, 1e4)

#: Spectra per block on a CPU: guess, LM and quality of one block run together, so that its
#: Jacobian block (5 x n_freq complex per spectrum) and temporaries stay in cache. Measured on
#: one core, float64, 64 bins: 6 us per spectrum and iteration for the normal equations at 256-1024
#: spectra, 10-14 us at 4096, 30 us at 16384.
_CPU_BLOCK = 1024
#: Most frequency bins used by BGlib's complex-plane guess (the largest ``|H|``).
_GUESS_POINTS = 5


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
def sho_response(freq: Any, A: Any, w0: Any, Q: Any, phi: Any) -> np.ndarray:
    """Complex SHO response ``A exp(i phi) w0^2 / (w^2 - i w w0 / Q - w0^2)`` (BGlib's ``SHOfunc``).

    Parameters
    ----------
    freq : array of shape (n_freq,)
        Frequencies ``w`` (Hz in BGlib; any unit, the same as ``w0``).
    A, w0, Q, phi : arrays broadcastable to one shape (...)
        Amplitude, resonance frequency, quality factor and phase (radians).

    Returns
    -------
    ndarray of shape (..., n_freq), complex
        ``|H(w0)| = A Q`` and ``arg H(w0) = phi + pi/2``.
    """
    w = np.asarray(freq, dtype=float)
    A, w0, Q, phi = (np.asarray(x, dtype=float)[..., None] for x in (A, w0, Q, phi))
    return A * np.exp(1j * phi) * w0**2 / (w**2 - 1j * w * w0 / Q - w0**2)


def sho_jacobian(freq: Any, A: Any, w0: Any, Q: Any, phi: Any) -> np.ndarray:
    """Analytic Jacobian of the stacked real and imaginary parts of :func:`sho_response`.

    Parameters
    ----------
    freq, A, w0, Q, phi
        As in :func:`sho_response`.

    Returns
    -------
    ndarray of shape (..., 2 * n_freq, 4)
        Rows: ``Re H`` at every frequency, then ``Im H``; columns: derivatives with respect to
        ``(A, w0, Q, phi)``. With ``rho = w / w0`` and ``D = rho^2 - 1 - i rho / Q``
        (``H = A exp(i phi) / D``): ``dH/dA = H / A``, ``dH/dw0 = H rho (2 rho - i/Q) / (w0 D)``,
        ``dH/dQ = -H i rho / (Q^2 D)``, ``dH/dphi = i H``.
    """
    w = np.asarray(freq, dtype=float)
    A, w0, Q, phi = (np.asarray(x, dtype=float)[..., None] for x in (A, w0, Q, phi))
    rho = w / w0
    D = rho**2 - 1.0 - 1j * rho / Q
    H = A * np.exp(1j * phi) / D
    cols = (H / A, H * rho * (2.0 * rho - 1j / Q) / (w0 * D), -H * 1j * rho / (Q**2 * D), 1j * H)
    J = np.stack([np.concatenate((c.real, c.imag), axis=-1) for c in np.broadcast_arrays(*cols)],
                 axis=-1)
    return J


# The fit runs in internal coordinates in which every parameter moves on a scale of 1:
#   t0 = ln(A Q / s)  (peak height over the spectrum's scale s = max |H|),
#   x0 = (w0 - fc) / hw  (band centre fc, half-width hw: the band is [-1, 1]),
#   t2 = ln Q,  phi.
# A > 0 holds by construction, the damping lambda I of the engine is the same for all four
# parameters, and the peak height does not move with Q (it would with A itself).
class _SHOModel:
    """The SHO model as the LM engine sees it (:func:`switchscope.fit.levenberg_marquardt`)."""

    block_order = (0, 1, 2, 3)

    @staticmethod
    def normal(q: torch.Tensor, u: torch.Tensor, fc: float, hw: float, y: torch.Tensor,
               w: torch.Tensor | None, ws: dict | None = None):
        """Cost ``sum(w |H - y|^2)``, ``J^T J`` and ``J^T r`` in internal coordinates.

        ``u`` (n_freq,) are the normalized frequencies ``(f - fc) / hw``; ``y`` (n, n_freq)
        complex, scaled by each spectrum's ``s``. The four Jacobian rows and the residual are
        written as complex rows into one block (n, 5, n_freq), whose real view (n, 5,
        2 n_freq) gives cost, normal matrix and gradient in one batched Gram product
        (``sum Re(conj(a) b)`` is the dot product of the interleaved real and imaginary parts).
        Complex kernels do each complex product in one pass over memory: measured 1.1-1.5x
        faster than the same algebra on separate real and imaginary parts.
        """
        import torch

        n, m = y.shape
        Jc = _scratch(ws, (n, 5, m), y)
        H, E, rho, rc, Qi = _sho_core(q, u, fc, hw, out=Jc[:, 0])
        torch.mul(H, 1j, out=Jc[:, 3])                                 # d/dphi = i H
        # d/dx0 = H E (2 rho - i/Q) rho hw/w0
        torch.mul(H, E, out=Jc[:, 1]).mul_(torch.complex(2.0 * rho * rc, -rc * Qi))
        # d/dt2 = -H (1 + E i rho/Q)
        torch.mul(E, torch.complex(torch.zeros_like(rho), rho * Qi), out=Jc[:, 2]).add_(
            1.0).mul_(H).neg_()
        torch.sub(H, y, out=Jc[:, 4])
        J = torch.view_as_real(Jc).reshape(n, 5, 2 * m)
        if w is not None:
            J = J * w.repeat_interleave(2, dim=1)[:, None, :]
        G = torch.bmm(J, J.transpose(1, 2))
        return G[:, 4, 4], G[:, :4, :4], G[:, :4, 4]


def _scratch(ws: dict | None, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A scratch block reused across the engine's calls (page faults of a fresh block cost
    as much as filling it; see :func:`switchscope.loops._models._buffer`)."""
    if ws is None:
        return like.new_empty(shape)
    buf = ws.get("sho")
    if (buf is None or buf.shape[0] < shape[0] or buf.shape[1:] != shape[1:]
            or buf.dtype != like.dtype or buf.device != like.device):
        buf = ws["sho"] = like.new_empty(shape)
    return buf[:shape[0]]


def _sho_core(q: torch.Tensor, u: torch.Tensor, fc: float, hw: float,
              out: torch.Tensor | None = None):
    """``H`` (n, n_freq) complex in internal coordinates, with ``E = 1/D``, ``rho = w/w0``,
    ``rho hw/w0`` and ``1/Q`` for the derivatives.

    ``rho - 1 = hw (u - x0) / w0`` is formed directly (no difference of two numbers near 1),
    which keeps float32 accurate: ``rho^2 - 1 = (rho - 1)(rho + 1)``.
    """
    import torch

    t0, x0, t2, ph = (q[:, i:i + 1] for i in range(4))
    Qi = torch.exp(-t2)                         # 1/Q
    w0 = x0 * hw + fc
    c = hw / w0
    d = (u - x0) * c                            # rho - 1
    rho = d + 1.0
    E = torch.complex(d * (d + 2.0), -rho * Qi).reciprocal_()
    K = torch.polar(torch.exp(t0) * Qi, ph)     # A exp(i phi) / s
    H = torch.mul(E, K, out=out)
    return H, E, rho, rho * c, Qi


def _to_internal(p: torch.Tensor, s: torch.Tensor, fc: float, hw: float) -> torch.Tensor:
    import torch

    A, w0, Q, ph = p.unbind(1)
    return torch.stack((torch.log(A * Q / s), (w0 - fc) / hw, torch.log(Q), ph), dim=1)


def _to_physical(q: torch.Tensor, s: torch.Tensor, fc: float, hw: float) -> torch.Tensor:
    import torch

    t0, x0, t2, ph = q.unbind(1)
    return torch.stack((torch.exp(t0 - t2) * s, x0 * hw + fc, torch.exp(t2), ph), dim=1)


def _cost(q, u, fc, hw, y, w):
    import torch

    r = _sho_core(q, u, fc, hw)[0].sub_(y)
    r2 = torch.view_as_real(r).pow(2).sum(2)
    return (r2 if w is None else r2 * w).sum(1)


# --------------------------------------------------------------------------------------------
# Guesses
# --------------------------------------------------------------------------------------------
def _complex_plane_guess(y, fin, f, fc, hw):
    """BGlib's complex-plane estimate (``SHOestimateGuess`` in ``be_sho.py``), for all spectra.

    Method (as in BGlib): for every pair of the 5 bins of largest ``|H|``, the model written as
    ``H (w^2 - w0^2) - i w (w0/Q) H = A exp(i phi) w0^2`` is linear in ``w0^2``, ``w0/Q`` and the
    complex right-hand side, so two bins determine it exactly. A pair counts if the 2 x 2
    determinant (BGlib's ``denom``) and ``w0^2`` are positive; here also ``w0/Q`` must be
    positive (BGlib lets Q go negative; our Q is bounded below by 1). The pairs' solutions are
    averaged with weights ``(1/e)^4``, ``e`` each pair's sum of squared residuals over the band.
    Frequencies are scaled by ``fc`` here (``nu = w / fc``), which leaves the solution unchanged.

    Returns physical ``(A, w0, Q, phi)`` per spectrum (scaled ``A``) and a validity mask (some
    valid pair, finite, ``w0`` inside the band: BGlib falls back otherwise).
    """
    import torch

    n, m = y.shape
    k = min(_GUESS_POINTS, m)
    mag = torch.where(fin, y.abs(), torch.full_like(y.real, -1.0))
    top = torch.topk(mag, k, dim=1).indices                                # (n, k)
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    ii = torch.tensor([p[0] for p in pairs], device=y.device)
    jj = torch.tensor([p[1] for p in pairs], device=y.device)
    yd = y.to(torch.complex128)
    nu = (f / fc).to(torch.float64)
    H1, H2 = yd.gather(1, top[:, ii]), yd.gather(1, top[:, jj])            # (n, n_pairs)
    n1, n2 = nu[top[:, ii]], nu[top[:, jj]]
    ok = fin.gather(1, top[:, ii]) & fin.gather(1, top[:, jj])
    R = H1 * n1**2 - H2 * n2**2
    U = H1 - H2
    V = 1j * (n1 * H1 - n2 * H2)
    det = U.real * V.imag - U.imag * V.real
    safe = torch.where(det > 0, det, torch.ones_like(det))
    d = (R.real * V.imag - R.imag * V.real) / safe                        # (w0 / fc)^2
    sq = (U.real * R.imag - U.imag * R.real) / safe                       # (w0 / Q) / fc
    K = H1 * (n1**2 - d) - 1j * n1 * sq * H1                              # A exp(i phi) d
    ok = ok & (det > 0) & (d > 0) & (sq > 0) & torch.isfinite(K.real) & torch.isfinite(K.imag)
    # each pair's residual over the band, evaluated with the stable model in the working dtype
    dd, sd = torch.where(ok, d, 1.0), torch.where(ok, sq, 1.0)
    w0 = torch.sqrt(dd)
    Q = w0 / sd
    A = K.abs() / dd
    ph = torch.angle(K)
    P = torch.stack((A, w0 * fc, Q, ph), dim=2).reshape(-1, 4)             # (n * n_pairs, 4)
    s1 = torch.ones(P.shape[0], dtype=torch.float64, device=y.device)
    q = _to_internal(P, s1, fc, hw).to(y.real.dtype)
    q = torch.where(torch.isfinite(q), q, torch.zeros_like(q))
    rows = torch.arange(n, device=y.device).repeat_interleave(len(pairs))
    e = _cost(q, (f - fc) / hw, fc, hw, y[rows], fin[rows].to(y.real.dtype)).reshape(n, -1)
    e = torch.where(ok & torch.isfinite(e), e.to(torch.float64), torch.full_like(d, math.inf))
    emin = e.min(1, keepdim=True).values
    wt = torch.where(torch.isfinite(e), (emin / e) ** 4, torch.zeros_like(e))
    wt = torch.where(emin > 0, wt, (e == emin).to(wt.dtype))               # an exact pair wins
    wsum = wt.sum(1)
    good = ok.any(1) & (wsum > 0)
    wsum = torch.where(good, wsum, torch.ones_like(wsum))
    Kw = (wt * K).sum(1) / wsum
    dw = (wt * torch.where(ok, d, 0.0)).sum(1) / wsum
    sw = (wt * torch.where(ok, sq, 0.0)).sum(1) / wsum
    w0 = torch.sqrt(torch.clamp(dw, min=0.0)) * fc
    out = torch.stack((Kw.abs() / dw, w0, w0 / fc / sw, torch.angle(Kw)), dim=1)
    fmin, fmax = fc - hw, fc + hw
    good = good & torch.isfinite(out).all(1) & (w0 >= fmin) & (w0 <= fmax) & (out[:, 0] > 0)
    return out, good


def _peak_guess(y, fin, f):
    """Cheap fallback: resonance at the peak of ``|H|`` (parabolic refinement), phase of the
    peak minus ``pi/2``, Q from the half-power width (linear interpolation of ``|H|^2`` on each
    side; one side doubled when the other leaves the band; the band's width when both do),
    ``A = |H(peak)| / Q``."""
    import torch

    n, m = y.shape
    p2 = torch.where(fin, y.real**2 + y.imag**2, torch.zeros_like(y.real))
    imax = p2.argmax(1)
    rows = torch.arange(n, device=y.device)
    peak = p2[rows, imax]
    ymax = y[rows, imax]
    # parabolic refinement of the peak on the three bins around it (uniform or not: fitted in f)
    il, ir = torch.clamp(imax - 1, min=0), torch.clamp(imax + 1, max=m - 1)
    fl, f0, fr = f[il], f[imax], f[ir]
    pl, pr = p2[rows, il], p2[rows, ir]
    inner = (imax > 0) & (imax < m - 1)
    denom = (fl - f0) * (pl - pr) - (fl - fr) * (pl - peak)
    num = (fl - f0) ** 2 * (pl - pr) - (fl - fr) ** 2 * (pl - peak)
    shift = torch.where(inner & (denom != 0), 0.5 * num / torch.where(denom != 0, denom, 1.0),
                        torch.zeros_like(f0))
    w0 = torch.where(shift.abs() <= (fr - fl).abs(), f0 - shift, f0)
    half = 0.5 * peak[:, None]
    idx = torch.arange(m, device=y.device)
    below = (p2 < half) & fin
    lo_i = torch.where(below & (idx < imax[:, None]), idx, -1).max(1).values
    hi_i = torch.where(below & (idx > imax[:, None]), idx, m).min(1).values

    def cross(i0, i1):
        a0, a1 = p2[rows, i0], p2[rows, i1]
        t = (half[:, 0] - a0) / torch.where(a1 != a0, a1 - a0, 1.0)
        return f[i0] + torch.clamp(t, 0.0, 1.0) * (f[i1] - f[i0])

    has_lo, has_hi = lo_i >= 0, hi_i < m
    f_lo = cross(torch.clamp(lo_i, min=0), torch.clamp(lo_i + 1, max=m - 1))
    f_hi = cross(torch.clamp(hi_i - 1, min=0), torch.clamp(hi_i, max=m - 1))
    band = f[-1] - f[0]
    width = torch.where(has_lo & has_hi, f_hi - f_lo,
                        torch.where(has_lo, 2.0 * (w0 - f_lo),
                                    torch.where(has_hi, 2.0 * (f_hi - w0), band)))
    width = torch.where(width > 0, width, band)
    Q = w0 / width
    A = torch.sqrt(peak) / Q
    ph = torch.angle(ymax) - 0.5 * math.pi
    return torch.stack((A, w0, Q, ph), dim=1)


def _clip_start(P, fmin, fmax, qlo, qhi):
    """A start strictly inside the box (a start on a bound can freeze that parameter)."""
    import torch

    span = fmax - fmin
    A, w0, Q, ph = P.unbind(1)
    A = torch.where(torch.isfinite(A) & (A > 0), A, torch.ones_like(A))
    w0 = torch.where(torch.isfinite(w0), w0, torch.full_like(w0, 0.5 * (fmin + fmax)))
    w0 = torch.clamp(w0, fmin + 1e-3 * span, fmax - 1e-3 * span)
    Q = torch.where(torch.isfinite(Q), Q, torch.full_like(Q, math.sqrt(qlo * qhi)))
    Q = torch.clamp(Q, qlo * 1.001, qhi / 1.001)
    ph = torch.where(torch.isfinite(ph), ph, torch.zeros_like(ph))
    return torch.stack((A, w0, Q, ph), dim=1)


def _guess(yn, fin, f, fc, hw, qb, method: str):
    """Internal start per spectrum and which guess it came from (0 complex-plane, 1 peak)."""
    import torch

    u = (f - fc) / hw
    w = None if bool(fin.all()) else fin.to(yn.real.dtype)
    ones = torch.ones(yn.shape[0], dtype=f.dtype, device=f.device)
    fmin, fmax = fc - hw, fc + hw
    cands, costs = [], []
    if method in ("best", "complex"):
        Pc, good = _complex_plane_guess(yn, fin, f, fc, hw)
        qc = _to_internal(_clip_start(Pc.to(f.dtype), fmin, fmax, *qb), ones, fc, hw)
        cc = torch.where(good, _cost(qc, u, fc, hw, yn, w), torch.full_like(ones, math.inf))
        cands.append(qc)
        costs.append(cc)
    if method in ("best", "peak"):
        qp = _to_internal(_clip_start(_peak_guess(yn, fin, f), fmin, fmax, *qb), ones, fc, hw)
        cands.append(qp)
        costs.append(_cost(qp, u, fc, hw, yn, w))
    if len(cands) == 1:
        if method == "complex":
            # BGlib falls back to its fast guess where the estimate is unusable; so do we
            qp = _to_internal(_clip_start(_peak_guess(yn, fin, f), fmin, fmax, *qb), ones, fc, hw)
            bad = ~torch.isfinite(costs[0])
            return torch.where(bad[:, None], qp, cands[0]), bad.to(torch.int64)
        return cands[0], torch.ones(yn.shape[0], dtype=torch.int64, device=f.device)
    pick = ~(costs[0] <= costs[1])
    return torch.where(pick[:, None], cands[1], cands[0]), pick.to(torch.int64)


@inference_mode
def sho_guess(spectra: Any, freq: Any, *, method: Literal["best", "complex", "peak"] = "best",
              q_bounds: tuple[float, float] = Q_BOUNDS) -> np.ndarray:
    """Starting values ``(A, w0, Q, phi)`` of every spectrum (the ones :func:`fit_sho` uses).

    Parameters
    ----------
    spectra : complex array of shape (..., n_freq)
    freq : array of shape (n_freq,)
    method : {"best", "complex", "peak"}
        ``"complex"``: BGlib's complex-plane estimate (``SHOestimateGuess`` in
        ``BGlib/be/analysis/utils/be_sho.py``; the peak guess where it is unusable, as
        BGlib falls back to its fast guess); ``"peak"``: resonance at the peak of ``|H|``, phase
        of the peak minus pi/2, Q from the half-power width; ``"best"``: per spectrum, the one
        of the two with the lower sum of squared residuals.
    q_bounds : (float, float)
        Guesses are clipped strictly inside these Q bounds and the band.

    Returns
    -------
    ndarray of shape (..., 4), float64
        NaN for spectra that :func:`fit_sho` would not fit (status 3, 4).
    """
    import torch

    _check_options(torch.float64, 1, 1, None, None, q_bounds, method)
    data, _ = _as_complex(spectra)
    if data.ndim < 1:
        raise DataError("spectra must have a frequency axis, shape (..., n_freq)")
    shape, m = tuple(data.shape[:-1]), int(data.shape[-1])
    f_np, order = _check_freq(freq, m)
    n = int(np.prod(shape)) if shape else 1
    out = np.full((n, 4), np.nan)
    if m >= 3 and n:
        y = torch.as_tensor(data.reshape(n, m)).to(dtype=torch.complex128, device="cpu")
        if order is not None:
            y = y[:, torch.as_tensor(order)]
        fin, s, st = _triage(y)
        go = torch.nonzero(st < 0)[:, 0]
        if go.numel():
            fc, hw = 0.5 * (f_np[0] + f_np[-1]), 0.5 * (f_np[-1] - f_np[0])
            f_t = torch.as_tensor(f_np)
            sg = s[go].to(torch.float64)
            yn = torch.where(fin[go], y[go] / sg[:, None], torch.zeros_like(y[go]))
            q0, _ = _guess(yn, fin[go], f_t, fc, hw, tuple(map(float, q_bounds)), method)
            p = _to_physical(q0, sg, fc, hw).numpy()
            p[:, 3] = _wrap(p[:, 3])
            out[go.numpy()] = p
    return out.reshape(shape + (4,))


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------
def _check_freq(freq: Any, n_freq: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Frequencies as float64, and the order that sorts them (None if already ascending)."""
    f = np.asarray(freq, dtype=float)
    if f.ndim != 1 or f.size != n_freq:
        raise DataError(f"freq has shape {f.shape}; give one frequency per bin, shape ({n_freq},)")
    if not np.all(np.isfinite(f)):
        raise DataError("freq holds NaN or Inf values; give a finite frequency for every bin")
    if f.size and f.min() <= 0:
        raise DataError(f"freq must be positive (the SHO model needs w > 0), got a minimum of "
                        f"{f.min():g}")
    order = None
    if np.any(np.diff(f) < 0):
        order = np.argsort(f, kind="stable")
        f = f[order]
    if np.any(np.diff(f) == 0):
        raise DataError("freq holds repeated values; give each bin its own frequency")
    return f, order


def _check_options(dtype, chunk, max_iter, ftol, xtol, q_bounds, guess):
    float_dtype(dtype, "fit_sho")
    if not (isinstance(chunk, int) and chunk >= 1):
        raise ConfigError(f"fit_sho: chunk must be a positive int, got {chunk!r}")
    if not (isinstance(max_iter, int) and max_iter >= 1):
        raise ConfigError(f"fit_sho: max_iter must be a positive int, got {max_iter!r}")
    for name, v in (("ftol", ftol), ("xtol", xtol)):
        if v is not None and not (isinstance(v, (int, float)) and 0 < v < 1):
            raise ConfigError(f"fit_sho: {name} must be in (0, 1), got {v!r}")
    lo, hi = q_bounds
    if not (0 < lo < hi < math.inf):
        raise ConfigError(f"fit_sho: q_bounds must satisfy 0 < low < high < inf, got {q_bounds!r}")
    if guess not in ("best", "complex", "peak"):
        raise ConfigError(f"fit_sho: guess must be one of best, complex, peak, got {guess!r}")


# --------------------------------------------------------------------------------------------
# Fit
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, repr=False)
class SHOFitResult:
    """Result of :func:`fit_sho`; every array has the leading shape ``shape`` of the input.

    Attributes
    ----------
    params : ndarray of shape (..., 4)
        ``(A, w0, Q, phi)``: amplitude (units of the spectra), resonance (units of ``freq``),
        quality factor, phase in radians wrapped to (-pi, pi]. NaN where not fitted (status 3,
        4, 5).
    param_names : tuple of str
        ``("amplitude", "resonance", "quality_factor", "phase")``.
    stderr : ndarray of shape (..., 4)
        Standard errors from the Gauss-Newton covariance at the solution,
        ``sqrt(diag((J^T J)^-1) SSE / (2 n_finite - 4))`` over the stacked real and imaginary
        residuals (NaN where the normal matrix is singular or the fit failed).
    r2 : ndarray of shape (...)
        ``1 - sum |H - y|^2 / sum |y - mean(y)|^2`` over the finite bins (complex residual).
    converged : ndarray of bool, shape (...)
        Status 0 or 1.
    status : ndarray of int, shape (...)
        0, 1 converged (cost decrease below ftol; step below xtol or no further decrease);
        2 stopped at max_iter (kept); 3 not fitted: fewer than 3 finite bins (NaN or Inf
        spectra, a band of fewer than 3 bins); 4 not fitted: constant spectrum (all zeros or
        flat); 5 failed: non-finite result; 6 fitted but ``w0`` on a band edge or ``Q`` on a
        bound (no resonance in the band; kept). See :data:`STATUS_MESSAGES`.
    n_iter : ndarray of int, shape (...)
        LM iterations.
    guess : ndarray of shape (..., 4)
        The starting point of each spectrum (the better of the two guesses, inside the bounds).
    guess_source : ndarray of int, shape (...)
        0: BGlib's complex-plane estimate, 1: the peak fallback (-1 where not fitted).
    freq : ndarray of shape (n_freq,)
        The frequencies, ascending.
    shape : tuple of int
        Leading shape of the input spectra.
    """

    params: np.ndarray
    param_names: tuple[str, ...]
    stderr: np.ndarray
    r2: np.ndarray
    converged: np.ndarray
    status: np.ndarray
    n_iter: np.ndarray
    guess: np.ndarray
    guess_source: np.ndarray
    freq: np.ndarray
    shape: tuple[int, ...]

    @property
    def amplitude(self) -> np.ndarray:
        return self.params[..., 0]

    @property
    def resonance(self) -> np.ndarray:
        return self.params[..., 1]

    @property
    def quality_factor(self) -> np.ndarray:
        return self.params[..., 2]

    @property
    def phase(self) -> np.ndarray:
        """Phase in radians, (-pi, pi]."""
        return self.params[..., 3]

    @property
    def success(self) -> np.ndarray:
        return self.converged

    @property
    def message(self) -> str:
        counts = np.bincount(self.status.ravel(), minlength=len(STATUS_MESSAGES))
        return "; ".join(f"{int(c)} {STATUS_MESSAGES[i]}" for i, c in enumerate(counts) if c)

    def __repr__(self) -> str:
        n = self.r2.size
        ok = np.isfinite(self.r2)
        med = float(np.median(self.r2[ok])) if ok.any() else float("nan")
        return (f"SHOFitResult({int(self.converged.sum())}/{n} spectra converged, "
                f"median R2 {med:.4f}; {self.message})")


def _as_complex(spectra: Any) -> tuple[np.ndarray | torch.Tensor, torch.device | None]:
    if is_tensor(spectra):
        if not spectra.is_complex():
            raise DataError(f"spectra must be complex (got {spectra.dtype}); pass real + 1j * imag")
        return spectra.detach(), spectra.device
    arr = np.asarray(spectra)
    if not np.iscomplexobj(arr):
        raise DataError(f"spectra must be complex (got {arr.dtype}); pass real + 1j * imag")
    return arr, None


@inference_mode
def fit_sho(spectra: Any, freq: Any, *, dtype: Any = "float64",
            device: str | torch.device | None = None, chunk: int = 65536, max_iter: int = 50,
            ftol: float | None = None, xtol: float | None = None,
            q_bounds: tuple[float, float] = Q_BOUNDS,
            guess: Literal["best", "complex", "peak"] = "best",
            threads: int | None = None,
            backend: Literal["auto", "numba", "torch"] = "auto") -> SHOFitResult:
    """Fit the SHO model to every complex spectrum at once (batched Levenberg-Marquardt).

    Parameters
    ----------
    spectra : complex array of shape (..., n_freq)
        Band-excitation responses (numpy or torch; complex64 or complex128). Non-finite bins
        are left out of that spectrum's fit.
    freq : array of shape (n_freq,)
        Frequencies of the bins (BGlib: Hz; any positive unit, ``w0`` comes back in it). Out of
        order frequencies are sorted (with the spectra's bins); repeated ones are refused.
    dtype : "float64" or "float32"
        Float type of the fit (also ``torch.float32``, ``numpy.float64``; the guess's closed
        forms always run in float64).
    device : str or torch.device, optional
        Where to fit; default the device of a torch input, else CPU.
    chunk : int
        Spectra moved to the device and fitted together; bounds the memory (about
        ``chunk * n_freq * 100`` bytes in float64 besides the input and the results).
    max_iter : int
        Most LM iterations per spectrum.
    ftol, xtol : float, optional
        Convergence tolerances on the relative decrease of the cost and the relative step;
        default 1e-8 in float64, 1e-5 in float32.
    q_bounds : (float, float)
        Bounds of Q (default ``(1, 1e4)``, :data:`Q_BOUNDS`). ``A`` is kept positive, ``w0``
        inside ``[min(freq), max(freq)]``; the phase is free during the fit and wrapped to
        (-pi, pi] at the end.
    guess : {"best", "complex", "peak"}
        Starting point: the better (lower residual) of BGlib's complex-plane estimate and the
        peak fallback per spectrum (default), or one of them (``"complex"`` falls back to the
        peak guess where the estimate is unusable, as BGlib does).
    threads : int, optional
        CPU only: threads of the fit (default ``torch.get_num_threads()`` when torch is loaded,
        else ``OMP_NUM_THREADS`` or the CPUs of the process; at most numba's
        ``NUMBA_NUM_THREADS``). With the numba kernel, numba's threads; with the torch path,
        blocks of 1024 spectra on this many Python threads, each running torch
        single-threaded (small cache-resident blocks side by side are faster than one large
        batch split by torch's OpenMP threads, and do not stall when other processes load the
        machine).
    backend : {"auto", "numba", "torch"}
        ``"numba"``: a compiled CPU kernel that fits one spectrum at a time with the whole
        problem in cache (:mod:`switchscope.fit._sho_numba`; same guess, LM, statuses and
        quality as the torch path, always computed in float64, ``dtype`` only setting the
        default tolerances; the first call in a fresh environment compiles it, ~10 s, cached
        on disk after). ``"torch"``: batched torch kernels (CPU or GPU). ``"auto"`` (default):
        numba on CPU, torch on other devices.

    Returns
    -------
    SHOFitResult

    Warns
    -----
    DataWarning
        Once, with the counts, when spectra were not fitted (status 3, 4) or ended without a
        resonance in the band (status 6).
    ConvergenceWarning
        When spectra stopped at ``max_iter`` (status 2) or failed (status 5).

    Examples
    --------
    >>> import numpy as np
    >>> from switchscope.sho import fit_sho, sho_response
    >>> f = np.linspace(1.30e6, 1.34e6, 64)
    >>> y = sho_response(f, [1e-3, 2e-3], [1.32e6, 1.31e6], [200, 150], [0.3, -2.0])
    >>> res = fit_sho(y, f)
    >>> np.allclose(res.params, [[1e-3, 1.32e6, 200, 0.3], [2e-3, 1.31e6, 150, -2.0]])
    True
    """
    _check_options(dtype, chunk, max_iter, ftol, xtol, q_bounds, guess)
    if threads is not None and not (isinstance(threads, int) and threads >= 1):
        raise ConfigError(f"fit_sho: threads must be a positive int, got {threads!r}")
    if backend not in ("auto", "numba", "torch"):
        raise ConfigError(f"fit_sho: backend must be one of auto, numba, torch, got {backend!r}")
    data, in_device = _as_complex(spectra)
    shape = tuple(data.shape[:-1])
    n_freq = int(data.shape[-1]) if data.ndim else 0
    if data.ndim < 1:
        raise DataError("spectra must have a frequency axis, shape (..., n_freq)")
    f_np, order = _check_freq(freq, n_freq)
    n = int(np.prod(shape)) if shape else 1
    cpu, dev = fit_device(device, in_device)
    if backend == "numba" and not cpu:
        raise ConfigError(f"fit_sho: backend='numba' runs on the CPU only, got device {dev}; "
                          "pass backend='torch' or device='cpu'")
    use_numba = cpu and backend != "torch"
    double = float_dtype(dtype, "fit_sho") == "float64"
    if ftol is None:
        ftol = 1e-8 if double else 1e-5
    if xtol is None:
        xtol = 1e-8 if double else 1e-5
    flat = data.reshape(n, n_freq)

    params = np.full((n, 4), np.nan)
    stderr = np.full((n, 4), np.nan)
    starts = np.full((n, 4), np.nan)
    r2 = np.full(n, np.nan)
    status = np.full(n, STATUS_TOO_FEW, dtype=np.int64)
    n_iter = np.zeros(n, dtype=np.int64)
    source = np.full(n, -1, dtype=np.int64)
    if n_freq >= 3 and n and use_numba:
        _fit_numba(flat, f_np, order, chunk, max_iter, ftol, xtol, q_bounds, guess,
                   1e-9 if double else 1e-5, cpu_threads() if threads is None else threads,
                   (params, stderr, r2, status, n_iter, starts, source))
    elif n_freq >= 3 and n:
        import torch

        dev = dev if dev is not None else torch.device("cpu")
        tt = {"dtype": torch.float64 if double else torch.float32, "device": dev}
        cdtype = torch.complex128 if double else torch.complex64
        fmin, fmax = float(f_np[0]), float(f_np[-1])
        fc, hw = 0.5 * (fmin + fmax), 0.5 * (fmax - fmin)
        f_t = torch.as_tensor(f_np, **tt)
        u = (f_t - fc) / hw
        qb = (float(q_bounds[0]), float(q_bounds[1]))
        lo = torch.tensor([-math.inf, -1.0, math.log(qb[0]), -math.inf], **tt)
        hi = torch.tensor([math.inf, 1.0, math.log(qb[1]), math.inf], **tt)
        lm = {"max_iter": max_iter, "ftol": ftol, "xtol": xtol}
        block = _CPU_BLOCK if cpu else chunk
        workers = (cpu_threads() if threads is None else threads) if cpu else 1
        outs = (params, stderr, r2, status, n_iter, starts, source)

        def run(a: int, y: torch.Tensor) -> None:
            res = _fit_block(y, f_t, u, fc, hw, qb, lo, hi, lm, guess)
            for dst, src in zip(outs, res):
                dst[a:a + y.shape[0]] = src

        with torch_threads(1) if workers > 1 else contextlib.nullcontext(), \
                concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            for a in range(0, n, chunk):
                b = min(a + chunk, n)
                y = torch.as_tensor(flat[a:b]).to(device=dev, dtype=cdtype)
                if order is not None:
                    y = y[:, torch.as_tensor(order, device=dev)]
                # blocks of a chunk run on the worker threads (torch releases the GIL in its
                # kernels); the next chunk is converted while they run
                if workers == 1:
                    for k in range(0, b - a, block):
                        run(a + k, y[k:k + block])
                    continue
                jobs = [pool.submit(run, a + k, y[k:k + block]) for k in range(0, b - a, block)]
                for job in jobs:
                    job.result()
    _warn(status, max_iter)
    lead = shape
    return SHOFitResult(params=params.reshape(lead + (4,)), param_names=PARAM_NAMES,
                        stderr=stderr.reshape(lead + (4,)), r2=r2.reshape(lead),
                        converged=(status <= STATUS_XTOL).reshape(lead),
                        status=status.reshape(lead), n_iter=n_iter.reshape(lead),
                        guess=starts.reshape(lead + (4,)), guess_source=source.reshape(lead),
                        freq=f_np, shape=lead)


def _fit_numba(flat, f_np, order, chunk, max_iter, ftol, xtol, q_bounds, guess, edge_tol,
               threads, outs) -> None:
    """The numba kernel over chunks of ``flat`` (n, n_freq), each converted to contiguous
    complex128 in ascending frequency order (bounds the extra memory to one chunk)."""
    from .fit import _sho_numba

    params, stderr, r2, status, n_iter, starts, source = outs
    with numba_threads(threads):
        for a in range(0, flat.shape[0], chunk):
            b = min(a + chunk, flat.shape[0])
            y = flat[a:b] if isinstance(flat, np.ndarray) else flat[a:b].cpu().numpy()
            y = y[:, order] if order is not None else y
            y = np.ascontiguousarray(y, dtype=np.complex128)
            _sho_numba.fit_block(y, f_np, float(q_bounds[0]), float(q_bounds[1]),
                                 _sho_numba.GUESS_CODES[guess], max_iter, float(ftol),
                                 float(xtol), edge_tol, params[a:b], stderr[a:b], r2[a:b],
                                 status[a:b], n_iter[a:b], starts[a:b], source[a:b])
    params[:, 3] = _wrap(params[:, 3])
    starts[:, 3] = _wrap(starts[:, 3])


def _triage(y: torch.Tensor):
    """Finite mask, each spectrum's scale ``max |y|`` and its status (-1: to fit, 3, 4)."""
    import torch

    fin = torch.isfinite(y.real) & torch.isfinite(y.imag)
    nfin = fin.sum(1)
    yz = torch.where(fin, y, torch.zeros_like(y))
    mag = yz.abs()
    s = mag.max(1).values
    mean = yz.sum(1) / torch.clamp(nfin, min=1)
    spread = torch.where(fin, (yz - mean[:, None]).abs(), torch.zeros_like(mag)).max(1).values
    st = torch.full(nfin.shape, -1, dtype=torch.int64, device=y.device)
    st = torch.where(spread <= 1e-12 * s, STATUS_CONSTANT, st)   # all zeros: 0 <= 0
    st = torch.where(nfin < 3, STATUS_TOO_FEW, st)
    return fin, s, st


@inference_mode     # worker threads do not inherit the caller's mode
def _fit_block(y, f, u, fc, hw, qb, lo, hi, lm, guess):
    """Triage, guess, LM fit and quality of one block of spectra ``y`` (n, n_freq) complex;
    numpy arrays of the results."""
    import torch

    nb, m = y.shape
    dtype = f.dtype
    fin, s, st = _triage(y)
    go = torch.nonzero(st < 0)[:, 0]
    P = torch.full((nb, 4), math.nan, dtype=torch.float64)
    SE = torch.full((nb, 4), math.nan, dtype=torch.float64)
    R2 = torch.full((nb,), math.nan, dtype=torch.float64)
    IT = torch.zeros(nb, dtype=torch.int64)
    S0 = torch.full((nb, 4), math.nan, dtype=torch.float64)
    SRC = torch.full((nb,), -1, dtype=torch.int64)
    ST = st.cpu()
    if go.numel():
        yg, fg, sg = y[go], fin[go], s[go].to(dtype)
        yn = torch.where(fg, yg / sg[:, None], torch.zeros_like(yg))
        q0, src = _guess(yn, fg, f, fc, hw, qb, guess)
        q0 = torch.maximum(torch.minimum(q0, hi), lo)
        wt = None if bool(fg.all()) else fg.to(dtype)
        pix = torch.arange(go.numel(), device=y.device)
        q, _, stg, itg = levenberg_marquardt(_SHOModel, q0, yn, wt, pix, lo, hi,
                                             args=(u, fc, hw), **lm)
        r2, se = _quality(q, u, fc, hw, yn, fg, wt)
        # w0 on a band edge or Q on a bound: no resonance resolved inside the band
        tol = 1e-9 if dtype == torch.float64 else 1e-5
        edge = ((q[:, 1].abs() >= 1.0 - tol) | (q[:, 2] <= lo[2] + tol) | (q[:, 2] >= hi[2] - tol))
        stg = torch.where(edge & (stg <= STATUS_MAXITER), STATUS_BOUND, stg)
        phys = _to_physical(q, sg, fc, hw).to(torch.float64)
        se[:, 0] = se[:, 0] * phys[:, 0]
        bad = ~(torch.isfinite(phys).all(1) & torch.isfinite(r2))
        stg = torch.where(bad, STATUS_NONFINITE, stg)
        phys[:, 3] = torch.as_tensor(_wrap(phys[:, 3].cpu().numpy()), device=phys.device)
        phys = torch.where(bad[:, None], math.nan, phys)
        se = torch.where(bad[:, None], math.nan, se)
        r2 = torch.where(bad, math.nan, r2)
        gi = go.cpu()
        P[gi], SE[gi], R2[gi] = phys.cpu(), se.cpu(), r2.cpu()
        ST[gi], IT[gi] = stg.cpu(), itg.cpu()
        start = _to_physical(q0, sg, fc, hw).to(torch.float64).cpu()
        start[:, 3] = torch.as_tensor(_wrap(start[:, 3].numpy()))
        S0[gi], SRC[gi] = start, src.cpu()
    return (P.numpy(), SE.numpy(), R2.numpy(), ST.numpy(), IT.numpy(), S0.numpy(), SRC.numpy())


def _quality(q, u, fc, hw, yn, fin, wt):
    """R² over the finite bins and the standard errors of ``(A, w0, Q, phi)`` (float64)."""
    import torch

    sse, A, _ = _SHOModel.normal(q, u, fc, hw, yn, wt)
    fz = fin.to(yn.real.dtype)
    nf = fz.sum(1)
    mean = (yn * fz).sum(1) / nf
    dev = (yn - mean[:, None]) * fz
    sst = (dev.real**2 + dev.imag**2).sum(1)
    sse, A, sst, nf = sse.double(), A.double(), sst.double(), nf.double()
    r2 = 1.0 - sse / sst
    C, info = torch.linalg.inv_ex(A)
    C = C * (sse / torch.clamp(2.0 * nf - 4.0, min=1.0))[:, None, None]
    # delta method: ln A = ln s + t0 - t2, w0 = fc + hw x0, Q = exp(t2), phi; the first column
    # is the standard error of ln A (relative), scaled by A by the caller
    Q = torch.exp(q[:, 2].double())
    var = torch.stack((C[:, 0, 0] - 2.0 * C[:, 0, 2] + C[:, 2, 2],
                       C[:, 1, 1] * hw**2, C[:, 2, 2] * Q**2, C[:, 3, 3]), dim=1)
    se = torch.sqrt(torch.clamp(var, min=0.0))
    return r2, torch.where((info == 0)[:, None] & (var >= 0), se, math.nan)


def _warn(status: np.ndarray, max_iter: int) -> None:
    # stacklevel 4: past _warn, fit_sho and its inference_mode wrapper, to the caller's line
    n3, n4, n6 = (int((status == k).sum()) for k in (STATUS_TOO_FEW, STATUS_CONSTANT, STATUS_BOUND))
    if n3 or n4 or n6:
        warnings.warn(f"{n3} spectra with fewer than 3 finite bins and {n4} constant spectra were "
                      f"not fitted (status 3, 4; NaN), {n6} ended with w0 on a band edge or Q on a "
                      "bound (status 6: no resonance in the band)", DataWarning, stacklevel=4)
    n2, n5 = int((status == STATUS_MAXITER).sum()), int((status == STATUS_NONFINITE).sum())
    if n2 or n5:
        warnings.warn(f"{n2} spectra stopped at max_iter={max_iter} (status 2) and {n5} failed "
                      "(status 5)", ConvergenceWarning, stacklevel=4)
