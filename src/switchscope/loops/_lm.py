"""Batched, bounded Levenberg-Marquardt: every problem of a batch is solved at once in torch.

Each problem has its own damping, its own accept/reject decision and its own convergence test;
problems that have converged leave the batch, so the work per iteration shrinks as the fit goes.
Damping is ``lambda * I`` (DESIGN section 8: Marquardt's ``lambda * diag(J^T J)`` sent poorly
constrained widths to their bounds); bounds are honoured by projecting each trial point onto the
box, and a trial is accepted only if it lowers that problem's sum of squares.
"""

from __future__ import annotations

import torch

#: Status codes of a fit (also documented on :class:`~switchscope.loops.LoopFitResult`).
STATUS_FTOL = 0          # converged: relative decrease of the cost below ftol
STATUS_XTOL = 1          # converged: step below xtol, or no further decrease possible
STATUS_MAXITER = 2       # stopped at max_iter
STATUS_TOO_FEW = 3       # not fitted: too few finite points
STATUS_CONSTANT = 4      # not fitted: constant loop
STATUS_NONFINITE = 5     # failed: non-finite result

STATUS_MESSAGES = {
    STATUS_FTOL: "converged (cost decrease below ftol)",
    STATUS_XTOL: "converged (step below xtol or no further decrease)",
    STATUS_MAXITER: "stopped at max_iter",
    STATUS_TOO_FEW: "not fitted: too few finite points",
    STATUS_CONSTANT: "not fitted: constant loop",
    STATUS_NONFINITE: "failed: non-finite result",
}

_LAM_MAX = 1e10


def levenberg_marquardt(split, p0: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
                        pixel: torch.Tensor, v_desc: torch.Tensor, v_asc: torch.Tensor,
                        lower: torch.Tensor, upper: torch.Tensor, *, max_iter: int = 200,
                        ftol: float = 1e-9, xtol: float = 1e-9, lam0: float = 1e-2):
    """Minimise ``sum(w * (f(p) - y[pixel])**2)`` for every row of ``p0`` at once.

    Parameters
    ----------
    split : callable
        ``split(p, v_desc, v_asc, jac) -> (f (b, m), J (b, n_params, m))``, the model on the
        descending steps followed by the ascending ones (:attr:`LoopModel.split`).
    p0 : tensor of shape (n_problems, n_params)
        Starting points (inside the bounds).
    y : tensor of shape (n_pixels, m)
        Data in the step order of ``split``; non-finite entries must already be replaced
        (their weight is 0).
    w : tensor of shape (n_pixels, n_steps)
        Weights, 0 or 1.
    pixel : tensor of int64, shape (n_problems,)
        Row of ``y`` that each problem fits (several starts share a pixel).
    lower, upper : tensor of shape (n_params,)
        Box bounds.

    Returns
    -------
    p : tensor (n_problems, n_params)
    cost : tensor (n_problems,)
    status : tensor of int64 (n_problems,)
    n_iter : tensor of int64 (n_problems,)
    """
    n, P = p0.shape
    dtype, device = p0.dtype, p0.device
    eye = torch.eye(P, dtype=dtype, device=device)
    p_out = p0.clone()
    cost_out = torch.full((n,), float("inf"), dtype=dtype, device=device)
    status_out = torch.full((n,), STATUS_MAXITER, dtype=torch.int64, device=device)
    iter_out = torch.zeros(n, dtype=torch.int64, device=device)

    idx = torch.arange(n, device=device)
    p = p0.clone()
    ya, wa = y[pixel], w[pixel]
    f, J = split(p, v_desc, v_asc, True)
    r = (f - ya) * wa
    J = J * wa[:, None, :]
    cost = (r * r).sum(1)
    lam = torch.full((n,), lam0, dtype=dtype, device=device)
    nu = torch.full((n,), 2.0, dtype=dtype, device=device)
    bad = ~torch.isfinite(cost)
    status_out[idx[bad]] = STATUS_NONFINITE
    keep = ~bad
    idx, p, ya, wa, r, J, cost, lam, nu = (t[keep] for t in (idx, p, ya, wa, r, J, cost, lam, nu))

    for it in range(1, max_iter + 1):
        if idx.numel() == 0:
            break
        A = torch.bmm(J, J.transpose(1, 2))
        g = torch.bmm(J, r[:, :, None])
        L, info = torch.linalg.cholesky_ex(A + lam[:, None, None] * eye)
        delta = -torch.cholesky_solve(g, L)[:, :, 0]
        p_new = torch.maximum(torch.minimum(p + delta, upper), lower)
        step = p_new - p
        f_new, J_new = split(p_new, v_desc, v_asc, True)
        r_new = (f_new - ya) * wa
        cost_new = (r_new * r_new).sum(1)
        ok = (info == 0) & torch.isfinite(cost_new) & (cost_new < cost)
        # predicted cost of the (projected) linearised step, for the MINPACK-style test
        # ||r + J s||^2 = cost + 2 s.g + s.A.s, so the prediction needs no pass over the steps
        pred = -(2.0 * (step * g[:, :, 0]).sum(1)
                 + (step * torch.bmm(A, step[:, :, None])[:, :, 0]).sum(1))
        actual = cost - cost_new
        scale = torch.clamp(cost, min=torch.finfo(dtype).tiny)
        small_f = ok & (actual <= ftol * scale) & (pred.abs() <= ftol * scale)
        small_x = ok & (step.norm(dim=1) <= xtol * (p.norm(dim=1) + xtol))

        okc = ok[:, None]
        p = torch.where(okc, p_new, p)
        r = torch.where(okc, r_new, r)
        acc = torch.nonzero(ok)[:, 0]
        J.index_copy_(0, acc, J_new[acc] * wa[acc, None, :])
        cost = torch.where(ok, cost_new, cost)
        # Nielsen's damping update: shrink by how well the linear model predicted the decrease,
        # grow geometrically on repeated rejections.
        rho = actual / torch.where(pred > 0, pred, torch.ones_like(pred))
        shrink = torch.clamp(1.0 - (2.0 * rho - 1.0) ** 3, min=1.0 / 3.0)
        lam = torch.where(ok, torch.clamp(lam * shrink, min=1e-12), lam * nu)
        nu = torch.where(ok, torch.full_like(nu, 2.0), nu * 2.0)
        stalled = lam > _LAM_MAX
        # a zero cost is a perfect fit
        perfect = cost <= torch.finfo(dtype).tiny
        done = small_f | small_x | stalled | perfect | (it == max_iter)
        if bool(done.any()):
            di = idx[done]
            p_out[di] = p[done]
            cost_out[di] = cost[done]
            iter_out[di] = it
            st = torch.full_like(di, STATUS_MAXITER)
            st = torch.where((small_x | stalled | perfect)[done], STATUS_XTOL, st)
            st = torch.where(small_f[done], STATUS_FTOL, st)
            status_out[di] = st
            keep = ~done
            idx, p, ya, wa, r, J, cost, lam, nu = (t[keep] for t in (idx, p, ya, wa, r, J, cost, lam, nu))
    return p_out, cost_out, status_out, iter_out
