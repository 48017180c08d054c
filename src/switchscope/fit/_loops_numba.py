"""Numba CPU kernel of the loop fit: one pixel's whole problem at a time, in cache.

The same algorithm as the torch path of :func:`switchscope.loops.fit_loops` (the race of the
starts with its pruning, the winner going on with the normal equations and damping it reached,
the bounded Levenberg-Marquardt of :mod:`switchscope.fit._lm` in the model's block order,
R² and standard errors), written per pixel: each branch's Jacobian block (the shared rows, the
branch's own rows and the residual, ``(rows, steps)``) lives in a small per-thread scratch
array, and the normal equations are built from it block by block (paper13: each branch
touches 8 of the 13 parameters; bglib9: 6 of 9). ``prange`` spreads pixels over numba's
threads. It is ``fit_loops``'s default on the CPU (3-5x the torch path there, docs/benchmarks.md).

The loops over the steps are branch-free and call no libm function (``erf`` and ``exp`` come
from :mod:`switchscope.fit._special`), so LLVM vectorizes them; ``exp(-x^2)`` is exactly 0 past
``x^2 = 100``, which keeps the Gram sums out of the (slow) subnormal range.

Everything is computed in float64, the race included: the flow is the torch path's when its
race runs in the fit's dtype (by default torch races in float32 and re-evaluates the winners in
float64; most pixels end at the same optimum, a few at a neighbouring one, see the tests).
See :mod:`switchscope.loops._models` for the formulas and their sources; the comments here only
mark where this code must mirror the torch path.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ._lm import _LAM_MAX, STATUS_FTOL, STATUS_MAXITER, STATUS_NONFINITE, STATUS_XTOL
from ._special import erf_gauss

#: Model codes of the kernel.
MODEL_CODES = {"paper13": 0, "bglib9": 1}
_TINY = float(np.finfo(np.float64).tiny)
_TSP = 2.0 / math.sqrt(math.pi)
_D = 1000.0                        # BGLIB9_D
#: Pixels per scratch allocation (the prange unit).
_BLOCK = 16

# error_model="numpy": IEEE division (x / 0 gives inf or NaN, as in torch).
_JIT = dict(cache=True, fastmath=False, error_model="numpy")
# the Jacobian rows: "contract" lets LLVM fuse multiply-adds (as in fit._special)
_JIT_ROWS = dict(cache=True, fastmath={"contract"}, error_model="numpy")
# the Gram sums only: reassociation lets LLVM vectorize the dot products over the steps
# (no 'nnan'/'ninf': the callers test finiteness)
_JIT_SUM = dict(cache=True, fastmath={"reassoc", "contract", "nsz", "arcp"},
                error_model="numpy")


def layout(code: int) -> tuple[int, int, int]:
    """``(n_common, own rows of the descending branch, of the ascending branch)``."""
    return (3, 5, 5) if code == 0 else (3, 3, 3)


@njit(**_JIT_ROWS)
def _rows_paper13(q, v, y, w, weighted, desc, J):
    """Jacobian block of one paper13 branch into ``J`` (9, m): rows a1, a2, a3, then the
    branch's own (descending b1, b2, b5, b7, Au; ascending b3, b4, b6, b8, Al), residual."""
    a1, a2, a3 = q[0], q[1], q[2]
    if desc:
        bl, bh, bw, bc, vc = q[3], q[4], q[5], q[6], q[7]
        i_lo, i_hi = 3, 4
    else:
        bh, bl, bw, bc, vc = q[8], q[9], q[10], q[11], q[12]
        i_lo, i_hi = 4, 3
    h = 0.5 * (a2 - a1)
    c0 = 0.5 * (a1 + a2)
    half = 0.5 * (bh - bl)
    mid = 0.5 * (bl + bh)
    kvc = -_TSP * h
    kbc = -_TSP * half / bw
    ibw = 1.0 / bw
    # a branch-free body (no libm calls, no data-dependent branches): LLVM vectorizes it
    for k in range(v.shape[0]):
        vk = v[k]
        wv = (vk - bc) * ibw
        ew, gw = erf_gauss(wv)
        s = mid + half * ew
        inv_s = 1.0 / s
        z = (vk - vc) * inv_s
        ez, gz = erf_gauss(z)
        j_vc = gz * kvc * inv_s
        dfds = j_vc * z
        j_lo = (ew * -0.5 + 0.5) * dfds
        j_bc = gw * dfds * kbc
        J[0, k] = ez * -0.5 + 0.5
        J[1, k] = ez * 0.5 + 0.5
        J[2, k] = vk
        J[i_lo, k] = j_lo
        J[i_hi, k] = dfds - j_lo
        J[5, k] = j_bc * wv
        J[6, k] = j_bc
        J[7, k] = j_vc
        J[8, k] = c0 + h * ez + a3 * vk - y[k]
    if weighted:
        _weigh(J, w)


@njit(**_JIT_ROWS)
def _rows_bglib9(q, v, y, w, weighted, desc, J):
    """Jacobian block of one bglib9 branch into ``J`` (7, m): rows a0, a1, a4, then the
    branch's own (switching voltage, lower and upper width), residual."""
    a0, a1, a4 = q[0], q[1], q[2]
    if desc:
        vc, lo, hi = q[3], q[4], q[5]
    else:
        vc, lo, hi = q[6], q[7], q[8]
    half = 0.5 * (hi - lo)
    kk = a1 / (lo + hi)
    isum = 1.0 / (lo + hi)
    for k in range(v.shape[0]):
        vk = v[k]
        x = vk - vc
        dx = x * _D
        ed, gd = erf_gauss(dx)
        g = ed * half + (half + lo)
        z = x / g
        ez, gz = erf_gauss(z)
        jy = (g * ez + lo) * isum
        G = (gz * z * -_TSP + ez) * kk
        j_lo = (ed * -0.5 + 0.5) * G + jy * -kk + kk
        J[0, k] = 1.0
        J[1, k] = jy
        J[2, k] = vk
        J[3, k] = gd * G * ((-_TSP * _D) * half) + gz * (-_TSP * kk)
        J[4, k] = j_lo
        J[5, k] = G - j_lo + kk + jy * (-2.0 * kk)
        J[6, k] = a4 * vk - y[k] + a0 + jy * a1
    if weighted:
        _weigh(J, w)


@njit(**_JIT_ROWS)
def _weigh(J, w):
    for r in range(J.shape[0]):
        for k in range(J.shape[1]):
            J[r, k] *= w[k]


@njit(**_JIT_SUM)
def _sumsq(J, r, m):
    s = 0.0
    for k in range(m):
        s += J[r, k] * J[r, k]
    return s


@njit(**_JIT_SUM)
def _gram(J, m, c, kb, off, G, A, g):
    """Add one branch's ``J J^T`` to ``A`` and ``g`` (block order; the branch's own rows go
    to ``off:off+kb``). ``G`` is scratch (c+kb+1, c+kb+1)."""
    R = c + kb
    # the lower triangle of the Gram matrix as dot products over the steps (vectorized)
    for a in range(R + 1):
        for b in range(min(a + 1, R)):
            s = 0.0
            for k in range(m):
                s += J[a, k] * J[b, k]
            G[a, b] = s
    for a in range(R):
        ia = a if a < c else off + a - c
        g[ia] += G[R, a]
        for b in range(a + 1):
            ib = b if b < c else off + b - c
            A[ia, ib] += G[a, b]
            if ia != ib:
                A[ib, ia] += G[a, b]


@njit(**_JIT)
def _normal(code, q, vd, va, yd, ya, wd, wa, weighted, J1, J2, G, A, g, bound=math.inf):
    """Cost, ``J^T J`` into ``A`` and ``J^T r`` into ``g`` at ``q`` (block order), as
    :attr:`~switchscope.loops.LoopModel.normal` of the model ``code``. Where the cost is not
    below ``bound`` (a trial step the LM rejects) ``A`` and ``g`` are left as they were."""
    P = q.shape[0]
    if code == 0:
        _rows_paper13(q, vd, yd, wd, weighted, True, J1)
        _rows_paper13(q, va, ya, wa, weighted, False, J2)
        k1 = 5
    else:
        _rows_bglib9(q, vd, yd, wd, weighted, True, J1)
        _rows_bglib9(q, va, ya, wa, weighted, False, J2)
        k1 = 3
    k2 = P - 3 - k1
    R1, R2 = 3 + k1, 3 + k2
    cost = _sumsq(J1, R1, vd.shape[0]) + _sumsq(J2, R2, va.shape[0])
    if not cost < bound:
        return cost
    for i in range(P):
        g[i] = 0.0
        for j in range(P):
            A[i, j] = 0.0
    _gram(J1, vd.shape[0], 3, k1, 3, G, A, g)
    _gram(J2, va.shape[0], 3, k2, 3 + k1, G, A, g)
    return cost


@njit(**_JIT)
def _lm(code, q, A, g, cost, lam, nu, n_it, vd, va, yd, ya, wd, wa, weighted, lo, hi,
        ftol, xtol, J1, J2, G, An, gn, M, qn, step, free):
    """Up to ``n_it`` bounded LM iterations from ``q`` with its ``A``, ``g``, ``cost``,
    ``lam``, ``nu`` (all updated in place), as :func:`switchscope.fit.levenberg_marquardt`
    does for one problem; returns ``(status, iterations, cost, lam, nu)``."""
    P = q.shape[0]
    for it in range(1, n_it + 1):
        # active set: a parameter on a bound whose descent direction leaves the box is held
        for i in range(P):
            free[i] = not ((q[i] <= lo[i] and g[i] > 0) or (q[i] >= hi[i] and g[i] < 0))
        for i in range(P):
            for j in range(P):
                if free[i] and free[j]:
                    M[i, j] = A[i, j]
                else:
                    M[i, j] = 1.0 if i == j else 0.0
            M[i, i] += lam
        chol_ok = True
        for j in range(P):
            s = M[j, j]
            for k in range(j):
                s -= M[j, k] * M[j, k]
            if not s > 0:
                chol_ok = False
                break
            M[j, j] = math.sqrt(s)
            for i in range(j + 1, P):
                s = M[i, j]
                for k in range(j):
                    s -= M[i, k] * M[j, k]
                M[i, j] = s / M[j, j]
        ok = False
        small_f = small_x = False
        rho = 0.0
        if chol_ok:
            for i in range(P):
                s = -g[i] if free[i] else 0.0
                for k in range(i):
                    s -= M[i, k] * step[k]
                step[i] = s / M[i, i]
            for i in range(P - 1, -1, -1):
                s = step[i]
                for k in range(i + 1, P):
                    s -= M[k, i] * step[k]
                step[i] = s / M[i, i]
            for i in range(P):
                qn[i] = min(max(q[i] + step[i], lo[i]), hi[i])
                step[i] = qn[i] - q[i]
            # a step that does not lower the cost needs no normal equations
            cost_new = _normal(code, qn, vd, va, yd, ya, wd, wa, weighted, J1, J2, G, An, gn,
                               cost)
            ok = math.isfinite(cost_new) and cost_new < cost
            if ok:
                sg = sAs = 0.0
                for i in range(P):
                    sg += step[i] * g[i]
                    t = 0.0
                    for j in range(P):
                        t += A[i, j] * step[j]
                    sAs += step[i] * t
                pred = -(2.0 * sg + sAs)
                actual = cost - cost_new
                scale = max(cost, _TINY)
                small_f = actual <= ftol * scale and abs(pred) <= ftol * scale
                sn = pn = 0.0
                for i in range(P):
                    sn += step[i] * step[i]
                    pn += q[i] * q[i]
                small_x = math.sqrt(sn) <= xtol * (math.sqrt(pn) + xtol)
                rho = actual / (pred if pred > 0 else 1.0)
                for i in range(P):
                    q[i] = qn[i]
                    g[i] = gn[i]
                    for j in range(P):
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
            return STATUS_FTOL, it, cost, lam, nu
        if stop_x:
            return STATUS_XTOL, it, cost, lam, nu
    return STATUS_MAXITER, n_it, cost, lam, nu


@njit(**_JIT)
def _inverse(A, C, W):
    """``C = A^-1`` by Gauss-Jordan with partial pivoting (as LU's ``inv_ex``: fails only on
    an exact zero pivot); False if singular. ``W`` is scratch (P, 2P)."""
    P = A.shape[0]
    for i in range(P):
        for j in range(P):
            W[i, j] = A[i, j]
            W[i, P + j] = 1.0 if i == j else 0.0
    for c in range(P):
        p, best = c, abs(W[c, c])
        for r in range(c + 1, P):
            if abs(W[r, c]) > best:
                p, best = r, abs(W[r, c])
        if best == 0.0 or not math.isfinite(best):
            return False
        if p != c:
            for j in range(2 * P):
                W[c, j], W[p, j] = W[p, j], W[c, j]
        piv = W[c, c]
        for j in range(2 * P):
            W[c, j] /= piv
        for r in range(P):
            if r != c:
                fct = W[r, c]
                if fct != 0.0:
                    for j in range(2 * P):
                        W[r, j] -= fct * W[c, j]
    for i in range(P):
        for j in range(P):
            C[i, j] = W[i, P + j]
    return True


@njit(parallel=True, **_JIT)
def fit_block(code, S, y, w, weighted, vd, va, lo, hi, order, race, prune_iter, prune_ratio,
              max_iter, ftol, xtol, lam0, params, status, n_iter, r2, stderr):
    """Fit every pixel from its starts.

    ``S`` (n, K, P) normalized starts in parameter order; ``y``, ``w`` (n, m) data and 0/1
    weights, descending steps first (``weighted`` False: unit weights); ``lo``, ``hi`` (P,)
    bounds and ``order`` (P,) the block order. Writes ``params`` (n, P) in parameter order,
    ``status``, ``n_iter``, ``r2``, ``stderr`` (n, P; NaN where the normal matrix is
    singular). The flow mirrors ``_fit_chunk`` of :mod:`switchscope.loops._fit`.
    """
    n, K, P = S.shape
    md, ma = vd.shape[0], va.shape[0]
    m = md + ma
    c, k1, k2 = (3, 5, 5) if code == 0 else (3, 3, 3)
    lob = np.empty(P)
    hib = np.empty(P)
    for i in range(P):
        lob[i] = lo[order[i]]
        hib[i] = hi[order[i]]
    first = min(prune_iter, race)
    nblocks = (n + _BLOCK - 1) // _BLOCK
    for blk in prange(nblocks):
        J1 = np.empty((c + k1 + 1, md))
        J2 = np.empty((c + k2 + 1, ma))
        G = np.empty((c + max(k1, k2) + 1, c + max(k1, k2) + 1))
        qs = np.empty((K, P))
        As = np.empty((K, P, P))
        gs = np.empty((K, P))
        cost = np.empty(K)
        lam = np.empty(K)
        nu = np.empty(K)
        st = np.empty(K, np.int64)
        its = np.empty(K, np.int64)
        An = np.empty((P, P))
        gn = np.empty(P)
        M = np.empty((P, P))
        C = np.empty((P, P))
        W = np.empty((P, 2 * P))
        qn = np.empty(P)
        step = np.empty(P)
        free = np.empty(P, np.bool_)
        for i in range(blk * _BLOCK, min((blk + 1) * _BLOCK, n)):
            yd, ya = y[i, :md], y[i, md:]
            wd, wa = w[i, :md], w[i, md:]
            # the race: every start runs `first` iterations
            best = math.inf
            for s in range(K):
                q = qs[s]
                for j in range(P):
                    q[j] = S[i, s, order[j]]
                cs = _normal(code, q, vd, va, yd, ya, wd, wa, weighted, J1, J2, G, As[s], gs[s])
                lam[s], nu[s] = lam0, 2.0
                if not math.isfinite(cs):
                    st[s], its[s], cost[s] = STATUS_NONFINITE, 0, math.inf
                else:
                    st[s], its[s], cs, lam[s], nu[s] = _lm(
                        code, q, As[s], gs[s], cs, lam[s], nu[s], first, vd, va, yd, ya, wd, wa,
                        weighted, lob, hib, ftol, xtol, J1, J2, G, An, gn, M, qn, step, free)
                    cost[s] = cs if math.isfinite(cs) else math.inf
                best = min(best, cost[s])
            # successive halving: only starts still running and not clearly behind go on
            if race > first:
                for s in range(K):
                    if st[s] == STATUS_MAXITER and cost[s] <= prune_ratio * best:
                        st2, it2, cs, lam[s], nu[s] = _lm(
                            code, qs[s], As[s], gs[s], cost[s], lam[s], nu[s], race - first,
                            vd, va, yd, ya, wd, wa, weighted, lob, hib, ftol, xtol, J1, J2, G, An,
                            gn, M, qn, step, free)
                        st[s] = st2
                        its[s] += it2
                        cost[s] = cs if math.isfinite(cs) else math.inf
            win = 0
            for s in range(1, K):
                if cost[s] < cost[win]:
                    win = s
            q = qs[win]
            A = As[win]
            gg = gs[win]
            sw, itw = st[win], its[win]
            if max_iter > race and sw == STATUS_MAXITER:
                # as the torch path when its race runs in the fit's dtype: a winner still
                # running goes on with the normal equations and damping it reached
                sw, it2, _, _, _ = _lm(
                    code, q, A, gg, cost[win], lam[win], nu[win], max_iter - race, vd, va,
                    yd, ya, wd, wa, weighted, lob, hib, ftol, xtol, J1, J2, G, An, gn, M, qn,
                    step, free)
                itw += it2
            # quality (_quality of _fit.py): R² and standard errors at the result
            sse = _normal(code, q, vd, va, yd, ya, wd, wa, weighted, J1, J2, G, An, gn)
            nf = 0.0
            ysum = 0.0
            for k in range(m):
                wk = w[i, k] if weighted else 1.0
                nf += wk
                ysum += y[i, k] * wk
            mean = ysum / nf
            sst = 0.0
            for k in range(m):
                wk = w[i, k] if weighted else 1.0
                d = (y[i, k] * wk - mean) * wk
                sst += d * d
            r2[i] = 1.0 - sse / sst
            inv_ok = _inverse(An, C, W)
            fac = sse / max(nf - P, 1.0)
            for j in range(P):
                params[i, order[j]] = q[j]
                var = C[j, j] * fac
                stderr[i, order[j]] = math.sqrt(var) if (inv_ok and var >= 0) else math.nan
            status[i] = sw
            n_iter[i] = itw


@njit(parallel=True, **_JIT)
def lm_problems(code, p0, y, pix, vd, va, lo, hi, order, max_iter, ftol, xtol, lam0,
                p_out, cost_out, status_out, iter_out):
    """Plain bounded LM for each row of ``p0`` (P in parameter order) against ``y[pix]``
    (unit weights), as :func:`switchscope.fit.levenberg_marquardt` (used for the k-means
    centre fits)."""
    N, P = p0.shape
    md, ma = vd.shape[0], va.shape[0]
    c, k1, k2 = (3, 5, 5) if code == 0 else (3, 3, 3)
    lob = np.empty(P)
    hib = np.empty(P)
    for i in range(P):
        lob[i] = lo[order[i]]
        hib[i] = hi[order[i]]
    for r in prange(N):
        J1 = np.empty((c + k1 + 1, md))
        J2 = np.empty((c + k2 + 1, ma))
        G = np.empty((c + max(k1, k2) + 1, c + max(k1, k2) + 1))
        q = np.empty(P)
        A = np.empty((P, P))
        g = np.empty(P)
        An = np.empty((P, P))
        gn = np.empty(P)
        M = np.empty((P, P))
        qn = np.empty(P)
        step = np.empty(P)
        free = np.empty(P, np.bool_)
        wd = np.empty(0)
        wa = np.empty(0)
        i = pix[r]
        yd, ya = y[i, :md], y[i, md:]
        for j in range(P):
            q[j] = p0[r, order[j]]
        cs = _normal(code, q, vd, va, yd, ya, wd, wa, False, J1, J2, G, A, g)
        if not math.isfinite(cs):
            st, it, cs = STATUS_NONFINITE, 0, math.inf
        else:
            st, it, cs, _, _ = _lm(code, q, A, g, cs, lam0, 2.0, max_iter, vd, va, yd, ya, wd,
                                   wa, False, lob, hib, ftol, xtol, J1, J2, G, An, gn, M, qn,
                                   step, free)
        for j in range(P):
            p_out[r, order[j]] = q[j]
        cost_out[r] = cs
        status_out[r] = st
        iter_out[r] = it


@njit(**_JIT_ROWS)
def _branch(code, p, v, desc, out):
    """``out``: the model ``code`` at the voltages ``v`` on one branch (``p`` in parameter
    order, physical units), as ``LoopModel.split`` computes it; a branch-free loop."""
    if code == 0:
        a1, a2, a3 = p[0], p[1], p[2]
        if desc:
            bl, bh, bw, bc, vc = p[3], p[4], p[7], p[9], p[11]
        else:
            bl, bh, bw, bc, vc = p[6], p[5], p[8], p[10], p[12]
        mid, half, c0, h = 0.5 * (bl + bh), 0.5 * (bh - bl), 0.5 * (a1 + a2), 0.5 * (a2 - a1)
        for k in range(v.shape[0]):
            s = mid + half * erf_gauss((v[k] - bc) / bw)[0]
            out[k] = c0 + h * erf_gauss((v[k] - vc) / s)[0] + a3 * v[k]
    else:
        a0, a1, a4 = p[0], p[1], p[4]
        if desc:
            vc, lo, hi = p[2], p[5], p[6]
        else:
            vc, lo, hi = p[3], p[7], p[8]
        half = 0.5 * (hi - lo)
        for k in range(v.shape[0]):
            x = v[k] - vc
            g = half * (erf_gauss(_D * x)[0] + 1.0) + lo
            out[k] = a0 + a1 * ((g * erf_gauss(x / g)[0] + lo) / (lo + hi)) + a4 * v[k]


@njit(parallel=True, **_JIT)
def curves(code, params, vd, va, jd, ja, out):
    """``out (n, n_steps)``: the model at the descending voltages ``vd`` into the columns ``jd``
    and at the ascending ``va`` into the columns ``ja`` (the steps of each branch)."""
    md, ma = vd.shape[0], va.shape[0]
    for blk in prange((params.shape[0] + _BLOCK - 1) // _BLOCK):
        # contiguous scratch rows: LLVM vectorizes the branch loops only on those
        fd = np.empty(md)
        fa = np.empty(ma)
        for i in range(blk * _BLOCK, min((blk + 1) * _BLOCK, params.shape[0])):
            _branch(code, params[i], vd, True, fd)
            _branch(code, params[i], va, False, fa)
            for k in range(md):
                out[i, jd[k]] = fd[k]
            for k in range(ma):
                out[i, ja[k]] = fa[k]


@njit(**_JIT)
def _crossing(t, grid, level, rising, reverse):
    """First crossing of ``level`` along ``grid`` (scanned backwards with ``reverse``), as
    ``_first_crossing`` of :mod:`switchscope.loops._metrics`; NaN if none."""
    n = t.shape[0]
    for j in range(n):
        k = n - 1 - j if reverse else j
        hit = t[k] >= level if rising else t[k] <= level
        if hit:
            if j == 0:
                return math.nan       # the branch starts past the level
            k0 = k + 1 if reverse else k - 1
            t0, t1 = t[k0], t[k]
            den = t1 - t0
            frac = (level - t0) / den if abs(den) > 0 else 0.0
            frac = min(max(frac, 0.0), 1.0)
            return grid[k0] + frac * (grid[k] - grid[k0])
    return math.nan


@njit(parallel=True, **_JIT)
def metrics(code, params, grid, wts, nuc, out):
    """The switching metrics of :func:`switchscope.loops.loop_metrics` per pixel into ``out``
    (n, 10), in the order of :data:`~switchscope.loops.METRICS`: height, width, area,
    coercive_neg, coercive_pos, nucleation_neg, nucleation_pos, imprint, centroid_voltage,
    centroid_response. ``wts`` are the trapezoid weights of ``grid``."""
    ng = grid.shape[0]
    span = grid[ng - 1] - grid[0]
    slope_i = 2 if code == 0 else 4
    for blk in prange((params.shape[0] + _BLOCK - 1) // _BLOCK):
        fd = np.empty(ng)
        fa = np.empty(ng)
        td = np.empty(ng)
        ta = np.empty(ng)
        for i in range(blk * _BLOCK, min((blk + 1) * _BLOCK, params.shape[0])):
            p = params[i]
            # the saturation levels (LoopModel.levels): paper13 a1, a2; bglib9 a0, a0 + a1
            low = p[0]
            high = p[1] if code == 0 else p[0] + p[1]
            slope = p[slope_i]
            height = high - low
            safe = height if abs(height) > 0 else math.nan
            _branch(code, p, grid, True, fd)
            _branch(code, p, grid, False, fa)
            signed = area = sx = sy = 0.0
            for k in range(ng):
                g = grid[k]
                td[k] = (fd[k] - slope * g - low) / safe
                ta[k] = (fa[k] - slope * g - low) / safe
                d = fd[k] - fa[k]
                signed += d * wts[k]
                area += abs(d) * wts[k]
                sx += d * g * wts[k]
                sy += d * (fd[k] + fa[k]) * (0.5 * wts[k])
            cn = _crossing(td, grid, 0.5, False, True)
            nn = _crossing(td, grid, 1.0 - nuc, False, True)
            cp = _crossing(ta, grid, 0.5, True, False)
            np_ = _crossing(ta, grid, nuc, True, False)
            tiny = 1e-12 * max(abs(height) * span, 1e-300)
            sden = signed if abs(signed) > tiny else math.nan
            out[i, 0] = abs(height)
            out[i, 1] = cp - cn
            out[i, 2] = area
            out[i, 3] = cn
            out[i, 4] = cp
            out[i, 5] = nn
            out[i, 6] = np_
            out[i, 7] = 0.5 * (cp + cn)
            out[i, 8] = sx / sden
            out[i, 9] = sy / sden
