"""Numba CPU kernel of the SHO fit: one spectrum's whole problem at a time, in cache.

The same algorithm as the torch path of :func:`switchscope.sho.fit_sho` (triage, the two
guesses and the "best" pick, the bounded Levenberg-Marquardt of :mod:`switchscope.fit._lm` in
the same internal coordinates, R², standard errors, the band-edge status), written per
spectrum: the normal equations are four-by-four, so a spectrum's Jacobian never exists as an
array, only as sums accumulated bin by bin, and the iterations run on scalars and tiny
per-block scratch arrays. ``prange`` spreads blocks of spectra over numba's threads.

Everything is computed in float64 whatever ``dtype`` the caller asked for (the caller's dtype
only sets the default tolerances). See :mod:`switchscope.sho` for the formulas and their
sources; the comments here only mark where this code must mirror the torch path exactly.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ._lm import (_LAM_MAX, LAM0, STATUS_CONSTANT, STATUS_FTOL, STATUS_MAXITER,
                  STATUS_NONFINITE, STATUS_TOO_FEW, STATUS_XTOL)

#: Guess method codes (``fit_sho(guess=...)``).
GUESS_CODES = {"best": 0, "complex": 1, "peak": 2}
STATUS_BOUND = 6        # switchscope.sho.STATUS_BOUND (sho imports this module lazily)
_TINY = float(np.finfo(np.float64).tiny)
_GUESS_POINTS = 5
#: Spectra per scratch allocation (the prange unit).
_BLOCK = 64

# error_model="numpy": IEEE division (x / 0 gives inf or NaN, as in torch) instead of Python's
# ZeroDivisionError; the bad-input statuses depend on it.


@njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def _isfin(x):
    return math.isfinite(x)


@njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def _recip(a, b):
    """``1 / (a + ib)``: ``(a - ib) / (a^2 + b^2)``, with Smith's scaled division where
    ``a^2 + b^2`` overflows or underflows (guess pairs far off the band)."""
    den = a * a + b * b
    if den > 1e-290 and den < 1e290:
        return complex(a / den, -b / den)
    return 1.0 / complex(a, b)


@njit(cache=True, fastmath=False, error_model="numpy")
def _cost(t0, x0, t2, ph, u, fc, hw, y, fin):
    """``sum over finite bins |H - y|^2`` in internal coordinates (``_cost`` of sho.py)."""
    Qi = math.exp(-t2)
    w0 = x0 * hw + fc
    c = hw / w0
    amp = math.exp(t0) * Qi
    K = complex(amp * math.cos(ph), amp * math.sin(ph))
    s = 0.0
    for k in range(u.shape[0]):
        if not fin[k]:
            continue
        d = (u[k] - x0) * c
        rho = d + 1.0
        E = _recip(d * (d + 2.0), -rho * Qi)
        r = E * K - y[k]
        s += r.real * r.real + r.imag * r.imag
    return s


@njit(cache=True, fastmath=False, error_model="numpy")
def _normal(q, u, fc, hw, y, fin, A, g):
    """Cost, ``J^T J`` into ``A`` (4, 4) and ``J^T r`` into ``g`` (4,) (``_SHOModel.normal``)."""
    t0, x0, t2, ph = q[0], q[1], q[2], q[3]
    Qi = math.exp(-t2)
    w0 = x0 * hw + fc
    c = hw / w0
    amp = math.exp(t0) * Qi
    K = complex(amp * math.cos(ph), amp * math.sin(ph))
    a00 = a01 = a02 = a03 = a11 = a12 = a13 = a22 = a23 = a33 = 0.0
    g0 = g1 = g2 = g3 = 0.0
    cost = 0.0
    for k in range(u.shape[0]):
        if not fin[k]:
            continue
        d = (u[k] - x0) * c
        rho = d + 1.0
        rc = rho * c
        E = _recip(d * (d + 2.0), -rho * Qi)
        H = E * K
        J0 = H
        J1 = (H * E) * complex(2.0 * rho * rc, -rc * Qi)
        J2 = -(((E * complex(0.0, rho * Qi)) + 1.0) * H)
        J3 = complex(-H.imag, H.real)
        r = H - y[k]
        cost += r.real * r.real + r.imag * r.imag
        a00 += J0.real * J0.real + J0.imag * J0.imag
        a01 += J0.real * J1.real + J0.imag * J1.imag
        a02 += J0.real * J2.real + J0.imag * J2.imag
        a03 += J0.real * J3.real + J0.imag * J3.imag
        a11 += J1.real * J1.real + J1.imag * J1.imag
        a12 += J1.real * J2.real + J1.imag * J2.imag
        a13 += J1.real * J3.real + J1.imag * J3.imag
        a22 += J2.real * J2.real + J2.imag * J2.imag
        a23 += J2.real * J3.real + J2.imag * J3.imag
        a33 += J3.real * J3.real + J3.imag * J3.imag
        g0 += J0.real * r.real + J0.imag * r.imag
        g1 += J1.real * r.real + J1.imag * r.imag
        g2 += J2.real * r.real + J2.imag * r.imag
        g3 += J3.real * r.real + J3.imag * r.imag
    A[0, 0], A[0, 1], A[0, 2], A[0, 3] = a00, a01, a02, a03
    A[1, 0], A[1, 1], A[1, 2], A[1, 3] = a01, a11, a12, a13
    A[2, 0], A[2, 1], A[2, 2], A[2, 3] = a02, a12, a22, a23
    A[3, 0], A[3, 1], A[3, 2], A[3, 3] = a03, a13, a23, a33
    g[0], g[1], g[2], g[3] = g0, g1, g2, g3
    return cost


@njit(cache=True, fastmath=False, error_model="numpy")
def _clip_internal(A, w0, Q, ph, fc, hw, qlo, qhi, out):
    """``_to_internal(_clip_start(P), s=1)`` of sho.py into ``out`` (4,)."""
    fmin, fmax = fc - hw, fc + hw
    span = fmax - fmin
    if not (_isfin(A) and A > 0):
        A = 1.0
    if not _isfin(w0):
        w0 = 0.5 * (fmin + fmax)
    w0 = min(max(w0, fmin + 1e-3 * span), fmax - 1e-3 * span)
    if not _isfin(Q):
        Q = math.sqrt(qlo * qhi)
    Q = min(max(Q, qlo * 1.001), qhi / 1.001)
    if not _isfin(ph):
        ph = 0.0
    out[0] = math.log(A * Q)
    out[1] = (w0 - fc) / hw
    out[2] = math.log(Q)
    out[3] = ph


@njit(cache=True, fastmath=False, error_model="numpy")
def _complex_plane_guess(y, fin, f, u, fc, hw, mag, top, pk, pd, psq, pe, pok, qtmp):
    """BGlib's complex-plane estimate (``_complex_plane_guess`` of sho.py) for one spectrum:
    physical ``(A, w0, Q, phi)`` and whether it is usable. ``mag`` is scratch (m,)."""
    m = y.shape[0]
    for i in range(m):
        mag[i] = y[i].real * y[i].real + y[i].imag * y[i].imag if fin[i] else -1.0
    kk = min(_GUESS_POINTS, m)
    # the kk bins of largest |H| (|H|^2: the same order; non-finite bins count as -1), first
    # index on ties
    for j in range(kk):
        best, bi = -math.inf, -1
        for i in range(m):
            taken = False
            for t in range(j):
                if top[t] == i:
                    taken = True
            if taken:
                continue
            v = mag[i]
            if v > best:
                best, bi = v, i
        top[j] = bi
    npair = 0
    for a in range(kk):
        for b in range(a + 1, kk):
            i1, i2 = top[a], top[b]
            H1, H2 = y[i1], y[i2]
            n1, n2 = f[i1] / fc, f[i2] / fc
            R = H1 * n1 ** 2 - H2 * n2 ** 2
            U = H1 - H2
            V = 1j * (n1 * H1 - n2 * H2)
            det = U.real * V.imag - U.imag * V.real
            safe = det if det > 0 else 1.0
            d = (R.real * V.imag - R.imag * V.real) / safe
            sq = (U.real * R.imag - U.imag * R.real) / safe
            K = H1 * (n1 ** 2 - d) - 1j * n1 * sq * H1
            ok = (fin[i1] and fin[i2] and det > 0 and d > 0 and sq > 0
                  and _isfin(K.real) and _isfin(K.imag))
            pk[npair] = K
            pd[npair] = d
            psq[npair] = sq
            pok[npair] = ok
            e = math.inf
            if ok:
                w0 = math.sqrt(d)
                Q = w0 / sq
                A = abs(K) / d
                qtmp[0] = math.log(A * Q)
                qtmp[1] = (w0 * fc - fc) / hw
                qtmp[2] = math.log(Q)
                qtmp[3] = math.atan2(K.imag, K.real)
                for t in range(4):
                    if not _isfin(qtmp[t]):
                        qtmp[t] = 0.0
                e = _cost(qtmp[0], qtmp[1], qtmp[2], qtmp[3], u, fc, hw, y, fin)
                if not _isfin(e):
                    e = math.inf
            pe[npair] = e
            npair += 1
    emin = math.inf
    anyok = False
    for t in range(npair):
        emin = min(emin, pe[t])
        anyok = anyok or pok[t]
    wsum = 0.0
    for t in range(npair):
        if emin > 0:
            wt = (emin / pe[t]) ** 4 if _isfin(pe[t]) else 0.0
        else:
            wt = 1.0 if pe[t] == emin else 0.0
        pe[t] = wt
        wsum += wt
    good = anyok and wsum > 0
    if not good:
        wsum = 1.0
    kr = ki = dw = sw = 0.0
    for t in range(npair):
        wt = pe[t]
        # as torch's real * complex product: 0 * inf gives NaN, as in sho.py
        kr += wt * pk[t].real - 0.0 * pk[t].imag
        ki += wt * pk[t].imag + 0.0 * pk[t].real
        if pok[t]:
            dw += wt * pd[t]
            sw += wt * psq[t]
    kr, ki, dw, sw = kr / wsum, ki / wsum, dw / wsum, sw / wsum
    w0 = math.sqrt(max(dw, 0.0)) * fc
    A = math.hypot(kr, ki) / dw
    Q = w0 / fc / sw
    ph = math.atan2(ki, kr)
    good = (good and _isfin(A) and _isfin(w0) and _isfin(Q) and _isfin(ph)
            and w0 >= fc - hw and w0 <= fc + hw and A > 0)
    return A, w0, Q, ph, good


@njit(cache=True, fastmath=False, error_model="numpy")
def _peak_guess(y, fin, f):
    """The peak fallback (``_peak_guess`` of sho.py) for one spectrum."""
    m = y.shape[0]
    imax, peak = 0, -1.0
    for i in range(m):
        p = y[i].real ** 2 + y[i].imag ** 2 if fin[i] else 0.0
        if p > peak:
            imax, peak = i, p
    ymax = y[imax]
    il, ir = max(imax - 1, 0), min(imax + 1, m - 1)
    fl, f0, fr = f[il], f[imax], f[ir]
    pl = y[il].real ** 2 + y[il].imag ** 2 if fin[il] else 0.0
    pr = y[ir].real ** 2 + y[ir].imag ** 2 if fin[ir] else 0.0
    inner = imax > 0 and imax < m - 1
    denom = (fl - f0) * (pl - pr) - (fl - fr) * (pl - peak)
    num = (fl - f0) ** 2 * (pl - pr) - (fl - fr) ** 2 * (pl - peak)
    shift = 0.5 * num / denom if (inner and denom != 0) else 0.0
    w0 = f0 - shift if abs(shift) <= abs(fr - fl) else f0
    half = 0.5 * peak
    lo_i, hi_i = -1, m
    for i in range(m):
        p = y[i].real ** 2 + y[i].imag ** 2 if fin[i] else 0.0
        if fin[i] and p < half:
            if i < imax:
                lo_i = i
            elif i > imax and hi_i == m:
                hi_i = i
    has_lo, has_hi = lo_i >= 0, hi_i < m
    f_lo = _cross(y, fin, f, half, max(lo_i, 0), min(lo_i + 1, m - 1))
    f_hi = _cross(y, fin, f, half, max(hi_i - 1, 0), min(hi_i, m - 1))
    band = f[m - 1] - f[0]
    if has_lo and has_hi:
        width = f_hi - f_lo
    elif has_lo:
        width = 2.0 * (w0 - f_lo)
    elif has_hi:
        width = 2.0 * (f_hi - w0)
    else:
        width = band
    if not width > 0:
        width = band
    Q = w0 / width
    A = math.sqrt(peak) / Q
    ph = math.atan2(ymax.imag, ymax.real) - 0.5 * math.pi
    return A, w0, Q, ph


@njit(cache=True, fastmath=False, error_model="numpy")
def _cross(y, fin, f, half, i0, i1):
    a0 = y[i0].real ** 2 + y[i0].imag ** 2 if fin[i0] else 0.0
    a1 = y[i1].real ** 2 + y[i1].imag ** 2 if fin[i1] else 0.0
    t = (half - a0) / (a1 - a0 if a1 != a0 else 1.0)
    return f[i0] + min(max(t, 0.0), 1.0) * (f[i1] - f[i0])


@njit(cache=True, fastmath=False, error_model="numpy")
def _lm(q, u, fc, hw, y, fin, lo, hi, max_iter, ftol, xtol, A, g, An, gn, M, qn, step, free):
    """Bounded LM from ``q`` (updated in place), as :func:`switchscope.fit.levenberg_marquardt`
    does for one problem; returns ``(status, n_iter)``."""
    cost = _normal(q, u, fc, hw, y, fin, A, g)
    if not _isfin(cost):
        return STATUS_NONFINITE, 0
    lam, nu = LAM0, 2.0
    for it in range(1, max_iter + 1):
        # active set: a parameter on a bound whose descent direction leaves the box is held
        for i in range(4):
            free[i] = not ((q[i] <= lo[i] and g[i] > 0) or (q[i] >= hi[i] and g[i] < 0))
        for i in range(4):
            for j in range(4):
                if free[i] and free[j]:
                    M[i, j] = A[i, j]
                else:
                    M[i, j] = 1.0 if i == j else 0.0
            M[i, i] += lam
        # Cholesky in place (lower triangle), then the solve of M delta = -g_free
        chol_ok = True
        for j in range(4):
            s = M[j, j]
            for k in range(j):
                s -= M[j, k] * M[j, k]
            if not s > 0:
                chol_ok = False
                break
            M[j, j] = math.sqrt(s)
            for i in range(j + 1, 4):
                s = M[i, j]
                for k in range(j):
                    s -= M[i, k] * M[j, k]
                M[i, j] = s / M[j, j]
        ok = False
        small_f = small_x = False
        rho = 0.0
        if chol_ok:
            for i in range(4):
                s = -g[i] if free[i] else 0.0
                for k in range(i):
                    s -= M[i, k] * step[k]
                step[i] = s / M[i, i]
            for i in range(3, -1, -1):
                s = step[i]
                for k in range(i + 1, 4):
                    s -= M[k, i] * step[k]
                step[i] = s / M[i, i]
            for i in range(4):
                qn[i] = min(max(q[i] + step[i], lo[i]), hi[i])
                step[i] = qn[i] - q[i]
            cost_new = _normal(qn, u, fc, hw, y, fin, An, gn)
            ok = _isfin(cost_new) and cost_new < cost
            if ok:
                sg = sAs = 0.0
                for i in range(4):
                    sg += step[i] * g[i]
                    t = 0.0
                    for j in range(4):
                        t += A[i, j] * step[j]
                    sAs += step[i] * t
                pred = -(2.0 * sg + sAs)
                actual = cost - cost_new
                scale = max(cost, _TINY)
                small_f = actual <= ftol * scale and abs(pred) <= ftol * scale
                sn = pn = 0.0
                for i in range(4):
                    sn += step[i] * step[i]
                    pn += q[i] * q[i]
                small_x = math.sqrt(sn) <= xtol * (math.sqrt(pn) + xtol)
                rho = actual / (pred if pred > 0 else 1.0)
                for i in range(4):
                    q[i] = qn[i]
                    g[i] = gn[i]
                    for j in range(4):
                        A[i, j] = An[i, j]
                cost = cost_new
        # Nielsen's damping update
        if ok:
            lam = max(lam * max(1.0 - (2.0 * rho - 1.0) ** 3, 1.0 / 3.0), 1e-12)
            nu = 2.0
        else:
            lam = lam * nu
            nu = nu * 2.0
        stop_x = small_x or lam > _LAM_MAX or cost <= _TINY
        if small_f:
            return STATUS_FTOL, it
        if stop_x:
            return STATUS_XTOL, it
        if it == max_iter:
            return STATUS_MAXITER, it
    return STATUS_MAXITER, max_iter


@njit(cache=True, fastmath=False, error_model="numpy")
def _inv4(A, C):
    """``C = A^-1`` by Gauss-Jordan with partial pivoting (as LU's ``inv_ex``: fails only on
    an exact zero pivot); False if singular."""
    W = np.empty((4, 8))
    for i in range(4):
        for j in range(4):
            W[i, j] = A[i, j]
            W[i, 4 + j] = 1.0 if i == j else 0.0
    for c in range(4):
        p, best = c, abs(W[c, c])
        for r in range(c + 1, 4):
            if abs(W[r, c]) > best:
                p, best = r, abs(W[r, c])
        if best == 0.0 or not _isfin(best):
            return False
        if p != c:
            for j in range(8):
                W[c, j], W[p, j] = W[p, j], W[c, j]
        piv = W[c, c]
        for j in range(8):
            W[c, j] /= piv
        for r in range(4):
            if r != c:
                fct = W[r, c]
                if fct != 0.0:
                    for j in range(8):
                        W[r, j] -= fct * W[c, j]
    for i in range(4):
        for j in range(4):
            C[i, j] = W[i, 4 + j]
    return True


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def fit_block(y, f, qlo, qhi, method, max_iter, ftol, xtol, edge_tol,
              params, stderr, r2, status, n_iter, starts, source):
    """Fit every spectrum ``y`` (n, m) complex128 at ascending frequencies ``f`` (m,).

    Writes, per spectrum: physical ``params`` (n, 4) (phase not wrapped), ``stderr`` (n, 4),
    ``r2`` (n,), ``status``, ``n_iter``, the physical start ``starts`` (n, 4) and its
    ``source`` (0 complex-plane, 1 peak); NaN / -1 where not fitted, as sho.py does.
    """
    n, m = y.shape
    fc = 0.5 * (f[0] + f[m - 1])
    hw = 0.5 * (f[m - 1] - f[0])
    u = (f - fc) / hw
    lo = np.array([-math.inf, -1.0, math.log(qlo), -math.inf])
    hi = np.array([math.inf, 1.0, math.log(qhi), math.inf])
    nblocks = (n + _BLOCK - 1) // _BLOCK
    for blk in prange(nblocks):
        yn = np.empty(m, np.complex128)
        fin = np.empty(m, np.bool_)
        mag = np.empty(m)
        top = np.empty(_GUESS_POINTS, np.int64)
        npairs = _GUESS_POINTS * (_GUESS_POINTS - 1) // 2
        pk = np.empty(npairs, np.complex128)
        pd = np.empty(npairs)
        psq = np.empty(npairs)
        pe = np.empty(npairs)
        pok = np.empty(npairs, np.bool_)
        q = np.empty(4)
        qc = np.empty(4)
        qp = np.empty(4)
        A = np.empty((4, 4))
        g = np.empty(4)
        An = np.empty((4, 4))
        gn = np.empty(4)
        M = np.empty((4, 4))
        C = np.empty((4, 4))
        qn = np.empty(4)
        step = np.empty(4)
        free = np.empty(4, np.bool_)
        for i in range(blk * _BLOCK, min((blk + 1) * _BLOCK, n)):
            for k in range(4):
                params[i, k] = stderr[i, k] = starts[i, k] = math.nan
            r2[i] = math.nan
            n_iter[i] = 0
            source[i] = -1
            # triage (_triage of sho.py)
            nfin = 0
            s = 0.0
            mr = mi = 0.0
            for k in range(m):
                v = y[i, k]
                fin[k] = _isfin(v.real) and _isfin(v.imag)
                if fin[k]:
                    nfin += 1
                    s = max(s, v.real * v.real + v.imag * v.imag)
                    mr += v.real
                    mi += v.imag
            # squared magnitudes (no hypot per bin): s to within an ulp of torch's max |y|
            s = math.sqrt(s)
            mr, mi = mr / max(nfin, 1), mi / max(nfin, 1)
            spread = 0.0
            for k in range(m):
                if fin[k]:
                    dr, di = y[i, k].real - mr, y[i, k].imag - mi
                    spread = max(spread, dr * dr + di * di)
            if nfin < 3:
                status[i] = STATUS_TOO_FEW
                continue
            if math.sqrt(spread) <= 1e-12 * s:
                status[i] = STATUS_CONSTANT
                continue
            for k in range(m):
                yn[k] = y[i, k] / s if fin[k] else 0j
            # guesses (_guess of sho.py)
            cc = math.inf
            if method != 2:
                Ac, wc, Qc, phc, good = _complex_plane_guess(yn, fin, f, u, fc, hw, mag, top, pk,
                                                             pd, psq, pe, pok, q)
                _clip_internal(Ac, wc, Qc, phc, fc, hw, qlo, qhi, qc)
                if good:
                    cc = _cost(qc[0], qc[1], qc[2], qc[3], u, fc, hw, yn, fin)
            if method != 1 or not _isfin(cc):
                Ap, wp, Qp, php = _peak_guess(yn, fin, f)
                _clip_internal(Ap, wp, Qp, php, fc, hw, qlo, qhi, qp)
            if method == 0:
                cp = _cost(qp[0], qp[1], qp[2], qp[3], u, fc, hw, yn, fin)
                pick = not (cc <= cp)
            elif method == 1:
                pick = not _isfin(cc)
            else:
                pick = True
            for k in range(4):
                q[k] = min(max(qp[k] if pick else qc[k], lo[k]), hi[k])
            source[i] = 1 if pick else 0
            starts[i, 0] = math.exp(q[0] - q[2]) * s
            starts[i, 1] = q[1] * hw + fc
            starts[i, 2] = math.exp(q[2])
            starts[i, 3] = q[3]
            st, it = _lm(q, u, fc, hw, yn, fin, lo, hi, max_iter, ftol, xtol,
                         A, g, An, gn, M, qn, step, free)
            # quality (_quality of sho.py)
            sse = _normal(q, u, fc, hw, yn, fin, A, g)
            mr = mi = 0.0
            for k in range(m):
                if fin[k]:
                    mr += yn[k].real
                    mi += yn[k].imag
            mr, mi = mr / nfin, mi / nfin
            sst = 0.0
            for k in range(m):
                if fin[k]:
                    dr, di = yn[k].real - mr, yn[k].imag - mi
                    sst += dr * dr + di * di
            rr = 1.0 - sse / sst
            inv_ok = _inv4(A, C)
            fac = sse / max(2.0 * nfin - 4.0, 1.0)
            Q = math.exp(q[2])
            var0 = (C[0, 0] - 2.0 * C[0, 2] + C[2, 2]) * fac
            var1 = C[1, 1] * fac * hw ** 2
            var2 = C[2, 2] * fac * Q ** 2
            var3 = C[3, 3] * fac
            edge = abs(q[1]) >= 1.0 - edge_tol or q[2] <= lo[2] + edge_tol \
                or q[2] >= hi[2] - edge_tol
            if edge and st <= STATUS_MAXITER:
                st = STATUS_BOUND
            p0 = math.exp(q[0] - q[2]) * s
            p1 = q[1] * hw + fc
            p3 = q[3]
            if not (_isfin(p0) and _isfin(p1) and _isfin(Q) and _isfin(p3) and _isfin(rr)):
                status[i] = STATUS_NONFINITE
                n_iter[i] = it
                continue
            params[i, 0], params[i, 1], params[i, 2], params[i, 3] = p0, p1, Q, p3
            r2[i] = rr
            if inv_ok:
                for k, v in enumerate((var0, var1, var2, var3)):
                    stderr[i, k] = math.sqrt(v) if v >= 0 else math.nan
                stderr[i, 0] *= p0
            status[i] = st
            n_iter[i] = it
