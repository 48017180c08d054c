"""Tests of switchscope.loops: models, batched fitter, switching maps, stage."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import least_squares
from scipy.special import erf, erfinv

from switchscope import ConfigError, ConvergenceWarning, DataError, DataWarning, make_dataset
from switchscope.stages import RunContext
from switchscope.loops import (MODELS, LoopsConfig, bglib9, fit_loops, fit_loops_dataset,
                               levenberg_marquardt, loop_metrics, paper13, stage, sweep_masks)

torch.set_num_threads(1)

V_PAPER = np.r_[np.linspace(16, -16, 49)[:-1], np.linspace(-16, 16, 49)[:-1]]
# 0 -> +V -> -V -> 0, the other common bipolar waveform
V_ZERO = np.r_[np.linspace(0, 16, 25)[:-1], np.linspace(16, -16, 49)[:-1], np.linspace(-16, 0, 25)]


# ---------------------------------------------------------------------------------------------
# independent numpy references of the two models (written from the formulas, not from the code)
# ---------------------------------------------------------------------------------------------
def ref_paper13(p, v, desc):
    a1, a2, a3, b1, b2, b3, b4, b5, b6, b7, b8, au, al = p
    s1 = (b1 + b2) / 2 + (b2 - b1) / 2 * erf((v - b7) / b5)
    s2 = (b4 + b3) / 2 + (b3 - b4) / 2 * erf((v - b8) / b6)
    upper = (a1 + a2) / 2 + (a2 - a1) / 2 * erf((v - au) / s1) + a3 * v
    lower = (a1 + a2) / 2 + (a2 - a1) / 2 * erf((v - al) / s2) + a3 * v
    return np.where(desc, upper, lower)


def ref_bglib9(p, v, desc):
    a0, a1, a2, a3, a4, b0, b1, b2, b3 = p
    vc = np.where(desc, a2, a3)
    lo, hi = np.where(desc, b0, b2), np.where(desc, b1, b3)
    g = (hi - lo) / 2 * (erf((v - vc) * 1000.0) + 1) + lo
    y = (g * erf((v - vc) / g) + lo) / (lo + hi)
    return a0 + a1 * y + a4 * v


REFS = {"paper13": ref_paper13, "bglib9": ref_bglib9}


def random_params(model, v, rng, n):
    lo, hi = model.bounds(v)
    p = np.empty((n, model.n_params))
    for j, kind in enumerate(model.param_kinds):
        if np.isfinite(lo[j]):
            p[:, j] = rng.uniform(lo[j] + 0.02 * (hi[j] - lo[j]), hi[j] - 0.02 * (hi[j] - lo[j]), n)
        else:
            p[:, j] = rng.normal(scale=0.05 if j == model.slope_index else 1.0, size=n)
    return p


def true_loops(model, n, rng, v=V_PAPER, noise=0.0):
    """Loops from the model with known, well-posed parameters."""
    if model.name == "paper13":
        p = np.column_stack([
            rng.uniform(-1.2, -0.8, n), rng.uniform(0.8, 1.2, n), rng.uniform(-0.01, 0.01, n),
            rng.uniform(1.0, 2.0, n), rng.uniform(2.0, 3.0, n), rng.uniform(2.0, 3.0, n),
            rng.uniform(1.0, 2.0, n), rng.uniform(3, 6, n), rng.uniform(3, 6, n),
            rng.uniform(-2, 2, n), rng.uniform(-2, 2, n), rng.uniform(-9, -3, n),
            rng.uniform(3, 9, n)])
    else:
        p = np.column_stack([
            rng.uniform(-1.2, -0.8, n), rng.uniform(1.6, 2.4, n), rng.uniform(-9, -3, n),
            rng.uniform(3, 9, n), rng.uniform(-0.01, 0.01, n), rng.uniform(1, 3, n),
            rng.uniform(1, 3, n), rng.uniform(1, 3, n), rng.uniform(1, 3, n)])
    y = model(p, v) + noise * rng.normal(size=(n, v.size))
    return p, y


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
def test_model_matches_independent_formula(name):
    model = MODELS[name]
    rng = np.random.default_rng(1)
    for v in (V_PAPER, V_ZERO):
        desc = sweep_masks(v)
        p = random_params(model, v, rng, 4)
        got = model(p, v)
        for k in range(4):
            np.testing.assert_allclose(got[k], REFS[name](p[k], v, desc), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(MODELS))
def test_jacobian_matches_finite_differences(name):
    model = MODELS[name]
    rng = np.random.default_rng(2)
    v = V_PAPER
    p = random_params(model, v, rng, 20)
    J = model.jacobian(p, v)
    h = 1e-6 * np.maximum(1.0, np.abs(p))
    for j in range(model.n_params):
        dp = np.zeros_like(p)
        dp[:, j] = h[:, j]
        fd = (model(p + dp, v) - model(p - dp, v)) / (2 * h[:, j:j + 1])
        np.testing.assert_allclose(J[:, :, j], fd, rtol=1e-5, atol=1e-6 * np.abs(fd).max() + 1e-9,
                                   err_msg=f"{name}: d/d{model.param_names[j]}")


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("weighted", [False, True])
def test_normal_equations_match_finite_difference_jacobian(name, weighted):
    # the fitter only sees model.normal (cost, J^T J, J^T r built branch by branch in block
    # order): check it against the independent formula and its finite-difference Jacobian
    model = MODELS[name]
    rng = np.random.default_rng(12)
    v = V_ZERO
    desc = sweep_masks(v)
    order = np.r_[np.flatnonzero(desc), np.flatnonzero(~desc)]
    p = random_params(model, v, rng, 6)
    y = rng.normal(size=(6, v.size))
    w = (rng.uniform(size=(6, v.size)) > 0.2).astype(float) if weighted else np.ones((6, v.size))
    blk = list(model.block_order)
    cost, A, g = model.normal(torch.as_tensor(p[:, blk]), torch.as_tensor(v[desc]),
                              torch.as_tensor(v[~desc]), torch.as_tensor(y[:, order]),
                              torch.as_tensor(w[:, order]) if weighted else None)
    for k in range(6):
        J = np.empty((v.size, model.n_params))
        for j in range(model.n_params):
            h = 1e-6 * max(1.0, abs(p[k, j]))
            dq = np.zeros(model.n_params)
            dq[j] = h
            J[:, j] = (REFS[name](p[k] + dq, v, desc) - REFS[name](p[k] - dq, v, desc)) / (2 * h)
        r = (REFS[name](p[k], v, desc) - y[k]) * w[k]
        Jw = (J * w[k][:, None])[:, blk]
        assert cost[k].item() == pytest.approx(r @ r, rel=1e-10)
        np.testing.assert_allclose(A[k].numpy(), Jw.T @ Jw, rtol=1e-5,
                                   atol=1e-6 * np.abs(Jw.T @ Jw).max())
        np.testing.assert_allclose(g[k].numpy(), Jw.T @ r, rtol=1e-5,
                                   atol=1e-6 * np.abs(Jw.T @ r).max())


@pytest.mark.parametrize("name", list(MODELS))
def test_normal_equations_reuse_their_workspace(name):
    # the fitter passes one workspace through all iterations: buffers are reused (with
    # constant rows written once) and batches shrink; every call must equal a fresh one
    model = MODELS[name]
    rng = np.random.default_rng(5)
    desc = sweep_masks(V_PAPER)
    order = np.r_[np.flatnonzero(desc), np.flatnonzero(~desc)]
    vd, va = torch.as_tensor(V_PAPER[desc]), torch.as_tensor(V_PAPER[~desc])
    blk = list(model.block_order)
    ws: dict = {}
    for n, weighted in ((8, False), (3, True), (8, False), (12, True)):
        p = torch.as_tensor(random_params(model, V_PAPER, rng, n)[:, blk])
        y = torch.as_tensor(rng.normal(size=(n, V_PAPER.size))[:, order])
        w = torch.as_tensor((rng.uniform(size=y.shape) > 0.2).astype(float)) if weighted else None
        for a, b in zip(model.normal(p, vd, va, y, w, ws), model.normal(p, vd, va, y, w, None)):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=0.0)


def test_lm_goes_on_from_a_returned_state():
    # the race hands its winners to the later iterations with their damping and normal
    # equations: 3 iterations then 5 from the returned state equal 8 in one call
    rng = np.random.default_rng(8)
    p = random_params(paper13, V_PAPER, rng, 5)
    y = paper13(p, V_PAPER) + 0.02 * rng.normal(size=(5, V_PAPER.size))
    desc = sweep_masks(V_PAPER)
    order = np.r_[np.flatnonzero(desc), np.flatnonzero(~desc)]
    lo, hi = (torch.as_tensor(b) for b in paper13.bounds(V_PAPER))
    p0 = torch.as_tensor(np.clip(paper13.guess(V_PAPER, desc, y), lo.numpy() + 0.1, hi.numpy() - 0.1))
    common = (torch.as_tensor(y[:, order]), None, torch.arange(5), torch.as_tensor(V_PAPER[desc]),
              torch.as_tensor(V_PAPER[~desc]), lo, hi)
    kw = {"ftol": 1e-14, "xtol": 1e-14}
    p8, c8, _, it8 = levenberg_marquardt(paper13, p0, *common, max_iter=8, **kw)
    p3, c3, _, it3, state = levenberg_marquardt(paper13, p0, *common, max_iter=3,
                                                return_state=True, **kw)
    torch.testing.assert_close(state["cost"], c3)
    p5, c5, _, it5 = levenberg_marquardt(paper13, p3, *common, max_iter=5, state=state, **kw)
    assert torch.equal(it3 + it5, it8)
    torch.testing.assert_close(p5, p8, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(c5, c8, rtol=1e-9, atol=0.0)
    with pytest.raises(ValueError, match="state"):
        levenberg_marquardt(paper13, p3[:4], *common[:2], torch.arange(4), *common[3:],
                            max_iter=5, state=state, **kw)
    # a restart (no state) takes another path: the damping starts over
    p5r, _, _, _ = levenberg_marquardt(paper13, p3, *common, max_iter=5, **kw)
    assert not torch.allclose(p5r, p8, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", list(MODELS))
def test_model_finite_at_parameter_edges(name):
    model = MODELS[name]
    lo, hi = model.bounds(V_PAPER)
    base = random_params(model, V_PAPER, np.random.default_rng(3), 1)[0]
    rows = []
    for j in range(model.n_params):
        for edge in (lo[j], hi[j], 0.0):
            if np.isfinite(edge) and (edge != 0.0 or not np.isfinite(lo[j])):
                q = base.copy()
                q[j] = edge
                rows.append(q)
    P = np.array(rows)
    assert np.isfinite(model(P, V_PAPER)).all()
    assert np.isfinite(model.jacobian(P, V_PAPER)).all()


def test_sweep_masks_follow_the_voltage():
    d = sweep_masks(V_PAPER)
    assert d[:48].all() and not d[49:].any()
    d0 = sweep_masks(V_ZERO)
    dv = np.diff(V_ZERO)
    assert (d0[:-1][dv != 0] == (dv[dv != 0] < 0)).all()
    # starting at -V: the first half is the ascending sweep
    assert not sweep_masks(-V_PAPER)[:48].any()


@pytest.mark.parametrize("voltage, match", [
    (np.linspace(-16, 16, 96), "changes direction 0 times"),
    (np.tile(np.r_[np.linspace(16, -16, 12), np.linspace(-16, 16, 12)], 4), "not one bipolar triangle"),
    (np.r_[np.linspace(16, 1, 48), np.linspace(1, 16, 48)], "must cross 0 V"),
    (np.r_[np.linspace(16, -16, 93), np.linspace(-16, 16, 3)], "each sweep needs at least 4"),
])
def test_sweep_masks_reject_other_waveforms(voltage, match):
    with pytest.raises(DataError, match=match):
        sweep_masks(voltage)
    with pytest.raises(DataError, match=match):
        fit_loops(np.zeros((2, voltage.size)) + np.arange(voltage.size), voltage)


# ---------------------------------------------------------------------------------------------
# fitter on loops with known parameters
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("v", [V_PAPER, V_ZERO], ids=["paper", "zero-start"])
def test_fit_recovers_known_loops(name, v):
    model = MODELS[name]
    rng = np.random.default_rng(4)
    p, y = true_loops(model, 60, rng, v=v, noise=0.01)
    scale = 3e-5  # raw real loops are ~1e-4: the fit must not depend on the units
    res = fit_loops(y * scale, v, model=name)
    assert res.converged.mean() >= 0.95
    assert np.median(res.r2) > 0.998
    truth = loop_metrics(model, p * np.where(np.isin(model.param_kinds, ("offset", "scale")),
                                             scale, 1.0), v)
    for key in ("coercive_neg", "coercive_pos", "imprint"):
        err = np.abs(res.metrics[key] - truth[key])
        assert np.median(err) < 0.1, key
    np.testing.assert_allclose(res.metrics["height"], truth["height"], rtol=0.05)
    assert res.fit.shape == y.shape
    np.testing.assert_allclose(res.fit, model(res.params, v), rtol=1e-10, atol=1e-18)


def test_stderr_matches_independent_covariance():
    rng = np.random.default_rng(5)
    # width transitions at the switching voltages (the fit may still move one out of range)
    p = np.array([-1.0, 1.0, 0.005, 1.0, 2.5, 2.5, 1.0, 3.0, 3.0, -5.0, 5.0, -5.0, 5.0])
    y = paper13(p, V_PAPER) + 0.02 * rng.normal(size=(5, 96))
    res = fit_loops(y, V_PAPER, n_clusters=0)
    desc = sweep_masks(V_PAPER)
    for k in range(5):
        q = res.params[k]
        J = np.empty((V_PAPER.size, 13))
        for j in range(13):
            h = 1e-6 * max(1.0, abs(q[j]))
            dq = np.zeros(13)
            dq[j] = h
            J[:, j] = (ref_paper13(q + dq, V_PAPER, desc) - ref_paper13(q - dq, V_PAPER, desc)) / (2 * h)
        r = ref_paper13(q, V_PAPER, desc) - y[k]
        cov = np.linalg.inv(J.T @ J) * (r @ r) / (V_PAPER.size - 13)
        ref = np.sqrt(np.diag(cov))
        # a fit may end where a width transition left the voltage range: those parameters are
        # undetermined (singular J^T J), which the fitter reports as NaN (or a huge value)
        undetermined = ref > 1e6
        assert undetermined.sum() <= 2
        assert np.all(np.isnan(res.stderr[k][undetermined]) | (res.stderr[k][undetermined] > 1e6))
        np.testing.assert_allclose(res.stderr[k][~undetermined], ref[~undetermined], rtol=1e-3)


def test_optimum_beyond_a_bound_meets_the_bound_optimality_conditions():
    # switching sharper than the narrowest width allowed (all widths below 1e-3 of the span):
    # the fit must end on the lower width bound at a point that satisfies the bound-constrained
    # optimality (KKT) conditions, checked with finite differences of an independent formula:
    # moving a parameter held on its bound into the box raises the cost, and the cost is flat
    # along every free parameter
    rng = np.random.default_rng(11)
    lo, hi = paper13.bounds(V_PAPER)
    w = 0.2 * lo[3]
    p = np.array([-1.0, 1.0, 0.005, w, w, w, w, 3.0, 3.0, -5.0, 5.0, -4.1, 4.3])
    y = paper13(p, V_PAPER) + 0.01 * rng.normal(size=(3, 96))
    res = fit_loops(y, V_PAPER, n_clusters=0, ftol=1e-10, xtol=1e-12, max_iter=300)
    desc = sweep_masks(V_PAPER)
    assert np.all(res.params[:, 3:7].min(1) <= lo[3] * (1 + 1e-9))
    for k in range(3):
        q = res.params[k]

        def sse(x):
            return np.sum((ref_paper13(x, V_PAPER, desc) - y[k]) ** 2)

        base = sse(q)
        for j in range(13):
            h = 1e-6 * max(1.0, abs(q[j]))
            dq = np.zeros(13)
            dq[j] = h
            if q[j] <= lo[j]:
                assert sse(q + dq) >= base - 1e-12 * base, (k, j)
            elif q[j] >= hi[j]:
                assert sse(q - dq) >= base - 1e-12 * base, (k, j)
            else:
                grad = (sse(q + dq) - sse(q - dq)) / (2 * h)
                assert abs(grad) * max(1.0, abs(q[j])) < 1e-3 * base, (k, j, grad)


def test_race_prunes_only_clear_losers_and_keeps_the_best(monkeypatch):
    import switchscope.loops._fit as fit_mod

    rng = np.random.default_rng(3)
    p = random_params(paper13, V_PAPER, rng, 6)
    y = paper13(p, V_PAPER) + 0.01 * rng.normal(size=(6, 96))
    desc = sweep_masks(V_PAPER)
    order = np.r_[np.flatnonzero(desc), np.flatnonzero(~desc)]
    lo, hi = paper13.bounds(V_PAPER)
    # per pixel: a start near the truth, the data-driven guess, and a hopeless one (switching
    # voltages swapped, widths at their largest)
    bad = p.copy()
    bad[:, [11, 12]] = p[:, [12, 11]]
    bad[:, 3:7] = 0.9 * hi[3:7]
    starts = np.stack([p * (1 + 0.02 * rng.normal(size=p.shape)),
                       paper13.guess(V_PAPER, desc, y), bad], axis=1)
    starts = fit_mod._inside(starts, lo, hi)
    tt = dict(dtype=torch.float64)
    args = (paper13, torch.as_tensor(starts.reshape(-1, 13), **tt), torch.as_tensor(y[:, order], **tt),
            None, torch.arange(6).repeat_interleave(3), torch.as_tensor(V_PAPER[desc], **tt),
            torch.as_tensor(V_PAPER[~desc], **tt), torch.as_tensor(lo, **tt), torch.as_tensor(hi, **tt),
            {"max_iter": 100, "ftol": 1e-5, "xtol": 1e-7}, 6)
    cost, st, it = (t.reshape(6, 3) for t in fit_mod._race(*args)[1:4])
    assert torch.all(torch.isfinite(cost)) and torch.all(st != 5)
    # most hopeless starts stop after the first 2 iterations
    assert int(((it[:, 2] == 2) & (st[:, 2] == 2)).sum()) >= 4
    # a start is cut only when it is clearly behind its pixel's best
    pruned = (it == 2) & (st == 2)
    assert torch.all(cost[pruned] > cost.min(1, keepdim=True).values.expand(-1, 3)[pruned])
    # without pruning, every start runs the whole race, and no pixel's best start is much
    # better than the one picked with pruning (a pruned start may catch up a little: on pixel
    # 0 here the data-driven guess, far behind after 2 iterations, ends 6 % lower after 6)
    monkeypatch.setattr(fit_mod, "_PRUNE_RATIO", float("inf"))
    cost_all, _, it_all = (t.reshape(6, 3) for t in fit_mod._race(*args)[1:4])
    assert torch.all(it_all.max(1).values > 2)
    assert torch.all(cost.min(1).values <= 1.1 * cost_all.min(1).values)


@pytest.mark.parametrize("name", list(MODELS))
def test_race_in_float32_then_float64_matches_an_all_float64_fit(monkeypatch, name):
    # the race only picks each pixel's start: run in float32, its winners finish in float64
    # at the same optimum as a fit that races in float64
    import switchscope.loops._fit as fit_mod

    model = MODELS[name]
    _, y = true_loops(model, 24, np.random.default_rng(4), noise=0.02)
    seen = []
    real = fit_mod._race
    monkeypatch.setattr(fit_mod, "_race", lambda *a: seen.append(a[1].dtype) or real(*a))
    a = fit_loops(y, V_PAPER, model=name, ftol=1e-10, xtol=1e-12, max_iter=300,
                  backend="torch")
    assert seen == [torch.float32] and a.params.dtype == np.float64
    monkeypatch.setattr(fit_mod, "_race_dtype", lambda dtype: dtype)
    b = fit_loops(y, V_PAPER, model=name, ftol=1e-10, xtol=1e-12, max_iter=300,
                  backend="torch")
    assert seen[-1] == torch.float64
    assert np.all(a.converged) and np.all(b.converged)
    # most pixels end at the same optimum; a few at a neighbouring one, equally good
    d = np.abs(a.r2 - b.r2)
    assert np.median(d) < 1e-9 and d.max() < 1e-5


def test_race_runs_in_the_fit_dtype_when_no_iterations_follow(monkeypatch):
    # max_iter <= race length: nothing would polish a float32 race, so it runs in float64
    import switchscope.loops._fit as fit_mod

    seen = []
    real = fit_mod._race
    monkeypatch.setattr(fit_mod, "_race", lambda *a: seen.append(a[1].dtype) or real(*a))
    _, y = true_loops(paper13, 6, np.random.default_rng(2), noise=0.02)
    for max_iter in (10, 11):      # too few to converge: flagged, as the warnings say
        with pytest.warns(ConvergenceWarning, match="max_iter"):
            fit_loops(y, V_PAPER, n_clusters=0, max_iter=max_iter, backend="torch")
    assert seen == [torch.float64, torch.float32]


def test_each_winner_goes_on_exactly_as_an_uninterrupted_run_of_its_start(monkeypatch):
    # the race hands each pixel's best start, with its damping and normal equations, to the
    # later iterations: the result equals one uninterrupted LM run from that start
    import switchscope.loops._fit as fit_mod

    monkeypatch.setattr(fit_mod, "_race_dtype", lambda dtype: dtype)
    p_true, y = true_loops(paper13, 8, np.random.default_rng(9), noise=0.02)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)   # a few pixels need more than 40
        res = fit_loops(y, V_PAPER, n_clusters=0, max_iter=40, race_iter=5)
    desc = sweep_masks(V_PAPER)
    order = np.r_[np.flatnonzero(desc), np.flatnonzero(~desc)]
    c, s = y.mean(1), y.std(1)
    yn = (y - c[:, None]) / s[:, None]
    kinds = np.array(paper13.param_kinds)

    def normalized(q):
        q = q.copy()
        q[..., kinds == "offset"] = (q[..., kinds == "offset"] - c[:, None, None]) / s[:, None, None]
        q[..., kinds == "scale"] /= s[:, None, None]
        return q

    K = res.starts.shape[1]
    lo, hi = (torch.as_tensor(b) for b in paper13.bounds(V_PAPER))
    p_all, _, _, it_all = levenberg_marquardt(
        paper13, torch.as_tensor(normalized(res.starts).reshape(-1, 13)),
        torch.as_tensor(yn[:, order]), None, torch.arange(8).repeat_interleave(K),
        torch.as_tensor(V_PAPER[desc]), torch.as_tensor(V_PAPER[~desc]), lo, hi, max_iter=40,
        ftol=1e-5, xtol=1e-7)
    p_all = p_all.numpy().reshape(8, K, 13)
    fitted = normalized(res.params[:, None, :])[:, 0]
    for i in range(8):
        # (the starts went through physical units and back: equal to rounding, ~1e-11 after
        # 40 iterations, while the two starts' results differ by ~1e-2)
        match = [k for k in range(K) if np.allclose(p_all[i, k], fitted[i], rtol=1e-8, atol=1e-9)]
        assert match, (i, [np.abs(p_all[i, k] - fitted[i]).max() for k in range(K)])
        assert res.n_iter[i] == int(it_all.reshape(8, K)[i, match[0]])


def test_models_have_their_own_race_length(monkeypatch):
    import switchscope.loops._fit as fit_mod

    seen = []
    real = fit_mod._race
    monkeypatch.setattr(fit_mod, "_race", lambda *a: seen.append(a[-1]) or real(*a))
    _, y = true_loops(bglib9, 4, np.random.default_rng(0), noise=0.01)
    fit_loops(y, V_PAPER, model="bglib9", n_clusters=0, backend="torch")
    fit_loops(true_loops(paper13, 4, np.random.default_rng(0), noise=0.01)[1], V_PAPER, n_clusters=0,
              backend="torch")
    fit_loops(y, V_PAPER, model="bglib9", n_clusters=0, race_iter=4, backend="torch")
    assert seen == [2, 10, 4]


def test_metrics_closed_form_for_constant_widths():
    # paper13 with b1 = b2 = S (constant width), no slope: coercive = Au/Al, nucleation at
    # Au + S erfinv(0.94) on the descending sweep, area (a2-a1)(Al-Au), centroid (Au+Al)/2.
    S, au, al = 1.5, -4.0, 5.0
    p = np.array([[-1.0, 2.0, 0.0, S, S, S, S, 3.0, 3.0, 0.0, 0.0, au, al]])
    v = np.r_[np.linspace(40, -40, 400), np.linspace(-40, 40, 400)]
    m = loop_metrics(paper13, p, v, n_grid=40001)
    assert m["coercive_neg"][0] == pytest.approx(au, abs=1e-3)
    assert m["coercive_pos"][0] == pytest.approx(al, abs=1e-3)
    assert m["nucleation_neg"][0] == pytest.approx(au + S * erfinv(0.94), abs=1e-3)
    assert m["nucleation_pos"][0] == pytest.approx(al - S * erfinv(0.94), abs=1e-3)
    assert m["height"][0] == pytest.approx(3.0)
    assert m["width"][0] == pytest.approx(al - au, abs=2e-3)
    assert m["imprint"][0] == pytest.approx((au + al) / 2, abs=1e-3)
    assert m["area"][0] == pytest.approx(3.0 * (al - au), rel=1e-4)
    assert m["centroid_voltage"][0] == pytest.approx((au + al) / 2, abs=1e-3)
    assert m["centroid_response"][0] == pytest.approx(0.5, abs=1e-3)
    for bad in (1, 0, 2.5, True):
        with pytest.raises(ConfigError, match="n_grid"):
            loop_metrics(paper13, p, v, n_grid=bad)


def test_chunks_and_dtypes_agree():
    rng = np.random.default_rng(6)
    _, y = true_loops(bglib9, 30, rng, noise=0.01)
    a = fit_loops(y, V_PAPER, model="bglib9")
    b = fit_loops(y, V_PAPER, model="bglib9", chunk_size=7)
    np.testing.assert_allclose(a.r2, b.r2, atol=1e-9)
    c = fit_loops(torch.as_tensor(y, dtype=torch.float32), V_PAPER, model="bglib9",
                  dtype=torch.float32)
    assert np.median(c.r2) > np.median(a.r2) - 1e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_fit_on_gpu_follows_the_input_device():
    rng = np.random.default_rng(7)
    _, y = true_loops(paper13, 50, rng, noise=0.01)
    cpu = fit_loops(y, V_PAPER)
    gpu = fit_loops(torch.as_tensor(y, device="cuda"), V_PAPER)
    assert np.median(gpu.r2) > np.median(cpu.r2) - 1e-4


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
def test_bad_pixels_are_flagged_not_fatal():
    rng = np.random.default_rng(8)
    _, y = true_loops(paper13, 6, rng, noise=0.01)
    y[1] = np.nan
    y[2] = 0.7
    y[3, :90] = np.nan          # 6 finite points < 13 + 2
    y[4, [5, 50]] = np.nan      # a few NaNs: fitted on the finite points
    with pytest.warns(DataWarning, match="2 pixel\\(s\\) with too few finite points and 1 constant"):
        res = fit_loops(y, V_PAPER)
    assert list(res.status[[1, 2, 3]]) == [3, 4, 3]
    assert np.isnan(res.params[[1, 2, 3]]).all() and not res.converged[[1, 2, 3]].any()
    assert np.isnan(res.metrics["coercive_neg"][[1, 2, 3]]).all()
    assert res.converged[[0, 4, 5]].all() and (res.r2[[0, 4, 5]] > 0.99).all()


def test_max_iter_is_flagged():
    rng = np.random.default_rng(9)
    _, y = true_loops(paper13, 4, rng, noise=0.05)
    with pytest.warns(ConvergenceWarning, match="stopped at max_iter=1"):
        res = fit_loops(y, V_PAPER, max_iter=1, race_iter=1, n_clusters=0)
    assert (res.status == 2).all() and not res.converged.any()
    assert np.isfinite(res.params).all()


def test_input_errors():
    y = np.zeros((3, 96)) + np.arange(96)
    with pytest.raises(DataError, match="voltage is required with a plain array"):
        fit_loops(y)
    with pytest.raises(DataError, match="the voltage has 95 values but the data has 96 steps"):
        fit_loops(y, V_PAPER[:95])
    with pytest.raises(ConfigError, match="unknown loop model 'x'; valid models are: paper13, bglib9"):
        fit_loops(y, V_PAPER, model="x")
    with pytest.raises(ConfigError, match=r"\[loops\] max_iter must be an integer >= 1 and <= 100000, got 0"):
        fit_loops(y, V_PAPER, max_iter=0)
    with pytest.raises(ConfigError, match=r"\[loops\] model must be one of"):
        LoopsConfig(model="nine")
    with pytest.raises(ConfigError, match=r"\[loops\] ftol must be a number > 0"):
        LoopsConfig(ftol=0)
    assert LoopsConfig.preset("paper").model == "paper13"


# ---------------------------------------------------------------------------------------------
# real data: batched fit vs an independent per-pixel scipy reference
# ---------------------------------------------------------------------------------------------
def _clean_real(real_raw_loops):
    loops, voltage = real_raw_loops
    try:
        from switchscope.preprocess import clean
    except ImportError:  # preprocess not there: the simple NaN filling of the issue
        clean = None
    X = loops.reshape(-1, loops.shape[-1])
    if clean is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataWarning)
            X = clean(X, channel="piezoresponse")
    else:
        X = X.copy()
        for i in np.flatnonzero(~np.isfinite(X).all(1)):
            ok = np.isfinite(X[i])
            X[i] = np.interp(np.arange(X.shape[1]), np.flatnonzero(ok), X[i, ok])
    return X, voltage


@pytest.mark.parametrize("name, n_pixels", [("paper13", 60), ("bglib9", 40)])
def test_batched_fit_matches_per_pixel_scipy(real_raw_loops, name, n_pixels):
    X, v = _clean_real(real_raw_loops)
    X = X[::3]                           # 1200 pixels over the whole scan (k-means priors included)
    rng = np.random.default_rng(10)
    idx = np.sort(rng.choice(X.shape[0], n_pixels, replace=False))
    model = MODELS[name]
    res = fit_loops(X, v, model=name)
    desc = sweep_masks(v)
    lo, hi = model.bounds(v)
    ref = REFS[name]
    r2_ref = np.empty(idx.size)
    for k, i in enumerate(idx):
        # same model (independent code), same starts, per-pixel trust-region least squares;
        # the response is rescaled to O(1) as any careful user of least_squares would do
        s = np.std(X[i])
        scale = np.where(np.isin(model.param_kinds, ("offset", "scale")), s, 1.0)
        best = np.inf
        for p0 in res.starts[i]:
            sol = least_squares(lambda q: ref(q * scale, v, desc) / s - X[i] / s, p0 / scale,
                                bounds=(lo / scale, hi / scale), method="trf")
            best = min(best, 2 * sol.cost)
        r2_ref[k] = 1 - best / np.sum((X[i] / s - np.mean(X[i] / s)) ** 2)
    ok = res.r2[idx] >= r2_ref - 0.005
    assert ok.mean() >= 0.95, (res.r2[idx][~ok], r2_ref[~ok])
    assert np.median(res.r2) > 0.99


@pytest.mark.parametrize("name", list(MODELS))
def test_numba_backend_matches_torch_on_real_loops(real_raw_loops, monkeypatch, name):
    # the numba kernel runs the torch path's algorithm per pixel, all in float64: against
    # torch racing in float64 too, the same result on every pixel (to rounding)
    import switchscope.loops._fit as fit_mod

    X, v = _clean_real(real_raw_loops)
    X = X[::12]                          # 300 pixels over the whole scan
    a = fit_loops(X, v, model=name, backend="numba")
    b_default = fit_loops(X, v, model=name, backend="torch")
    monkeypatch.setattr(fit_mod, "_race_dtype", lambda dtype: dtype)
    b = fit_loops(X, v, model=name, backend="torch")
    np.testing.assert_allclose(a.r2, b.r2, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(a.status, b.status)
    np.testing.assert_array_equal(a.n_iter, b.n_iter)
    # (the k-means centre fits run in each backend: their results agree to rounding)
    np.testing.assert_allclose(a.starts, b.starts, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(a.params, b.params, rtol=1e-5, atol=1e-8 * np.abs(b.params).max())
    # standard errors where the normal matrix is well conditioned (near-singular ones give
    # huge or NaN errors whose digits depend on the inversion routine)
    good = np.isfinite(a.stderr).all(1) & np.isfinite(b.stderr).all(1) & (np.abs(b.stderr).max(1) < 1e3)
    assert good.mean() > 0.5
    np.testing.assert_allclose(a.stderr[good], b.stderr[good], rtol=1e-4)
    assert a.param_names == b.param_names and a.model == b.model
    # against the default torch path (race in float32): the same optimum on most pixels
    d = np.abs(a.r2 - b_default.r2)
    assert np.median(d) < 1e-9 and d.max() < 1e-3


@pytest.mark.parametrize("name", list(MODELS))
def test_compiled_curves_and_metrics_match_the_torch_evaluation(name):
    # the built-in models evaluate their curves and metrics with the numba kernel; a copy of
    # the model (not the registered object) takes the torch path: equal to rounding
    import dataclasses

    from switchscope.loops import loop_metrics

    model = MODELS[name]
    twin = dataclasses.replace(model)
    p, y = true_loops(model, 40, np.random.default_rng(5), noise=0.02)
    res = fit_loops(y, V_PAPER, model=name, n_clusters=0)
    params = np.concatenate([res.params, p, np.full((1, model.n_params), np.nan)])
    np.testing.assert_allclose(model(params, V_PAPER), twin(params, V_PAPER), rtol=1e-12,
                               atol=1e-12)
    np.testing.assert_allclose(model(params[0], V_PAPER), twin(params[0], V_PAPER), rtol=1e-12)
    a = loop_metrics(model, params, V_PAPER)
    b = loop_metrics(twin, params, V_PAPER)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-9, atol=1e-12, err_msg=key)
    assert np.isnan(a["height"][-1]) and np.isnan(a["coercive_pos"][-1])


@pytest.mark.parametrize("name", list(MODELS))
def test_numba_backend_matches_torch_on_synthetic_loops(monkeypatch, name):
    # no real data needed: numba and torch (racing in float64) from the same starts, the same
    # R² to 1e-6 and the same statuses, with a few missing points on some loops
    import switchscope.loops._fit as fit_mod

    model = MODELS[name]
    _, y = true_loops(model, 30, np.random.default_rng(21), noise=0.03)
    y[::7, 10:14] = np.nan
    a = fit_loops(y, V_PAPER, model=name, backend="numba")
    monkeypatch.setattr(fit_mod, "_race_dtype", lambda dtype: dtype)
    b = fit_loops(y, V_PAPER, model=name, backend="torch")
    np.testing.assert_allclose(a.starts, b.starts, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(a.r2, b.r2, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(a.status, b.status)
    for key in a.metrics:
        np.testing.assert_allclose(a.metrics[key], b.metrics[key], rtol=1e-4, atol=1e-6,
                                   err_msg=key)


def test_numba_backend_weights_failures_and_options():
    import switchscope.loops._fit as fit_mod

    rng = np.random.default_rng(11)
    _, y = true_loops(paper13, 12, rng, noise=0.02)
    y[1, 5:9] = np.nan                   # a few missing points: weighted normal equations
    y[2] = np.nan                        # too few points: not fitted
    y[3] = 1.0                           # constant: not fitted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        a = fit_loops(y, V_PAPER, backend="numba")
        old = fit_mod._race_dtype
        fit_mod._race_dtype = lambda dtype: dtype
        try:
            b = fit_loops(y, V_PAPER, backend="torch")
        finally:
            fit_mod._race_dtype = old
    np.testing.assert_array_equal(a.status, b.status)
    assert a.status[2] == 3 and a.status[3] == 4 and np.isnan(a.params[2:4]).all()
    np.testing.assert_allclose(a.r2, b.r2, rtol=0, atol=1e-6, equal_nan=True)
    with pytest.raises(ConfigError, match="backend must be one of"):
        fit_loops(y, V_PAPER, backend="cuda")
    with pytest.raises(ConfigError, match="CPU only"):
        fit_loops(y, V_PAPER, backend="numba", device="meta")


# ---------------------------------------------------------------------------------------------
# synthetic dataset: switching parameters against the ground truth
# ---------------------------------------------------------------------------------------------
def test_synthetic_coercive_voltages_and_imprint():
    synthetic = pytest.importorskip("switchscope.synthetic")
    preprocess = pytest.importorskip("switchscope.preprocess")
    ds = synthetic.make_dataset(rows=16, cols=16, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        ds = preprocess.clean(ds, channel="piezoresponse")
    res = fit_loops(ds)    # fits piezoresponse_clean
    for key in ("coercive_pos", "coercive_neg", "imprint"):
        err = np.abs(res.metrics[key] - ds[f"truth_{key}"].values.ravel())
        # measured: median 0.13-0.25 V (coercive), 0.04 V (imprint); the model is not the
        # generator, so a small bias remains even on noise-free curves
        assert np.nanmedian(err) < (0.5 if key != "imprint" else 0.2), key


# ---------------------------------------------------------------------------------------------
# Dataset API and stage
# ---------------------------------------------------------------------------------------------
def _small_ds():
    rng = np.random.default_rng(11)
    _, y = true_loops(paper13, 12, rng, noise=0.01)
    return make_dataset({"piezoresponse": y.reshape(3, 4, 96) * 1e-4}, V_PAPER)


def test_to_dataset_and_fit_loops_dataset():
    ds = _small_ds()
    out = fit_loops_dataset(ds, LoopsConfig(model="bglib9"))
    assert "piezoresponse" in out and out["piezoresponse"].equals(ds["piezoresponse"])
    assert out["loop_params"].dims == ("row", "col", "param")
    assert list(out["param"].values) == list(bglib9.param_names)
    assert out["loop_fit"].dims == ("row", "col", "step")
    for name in ("loop_stderr", "loop_r2", "loop_converged", "loop_height", "loop_width",
                 "loop_area", "loop_coercive_neg", "loop_coercive_pos", "loop_nucleation_neg",
                 "loop_nucleation_pos", "loop_imprint", "loop_centroid_voltage",
                 "loop_centroid_response"):
        assert name in out, name
    assert out["loop_coercive_neg"].attrs["units"] == "V"
    assert out["loop_height"].attrs["units"] == "a.u."
    assert out["loop_area"].attrs["units"] == "a.u.*V"
    flat = fit_loops(ds["piezoresponse"].values.reshape(12, 96), V_PAPER, model="bglib9")
    np.testing.assert_allclose(out["loop_r2"].values.ravel(), flat.r2)
    assert flat.to_dataset()["loop_r2"].dims == ("pixel",)
    assert "LoopFitResult(12/12 pixels converged" in repr(flat)


def test_stage_adds_variables_summary_and_figures(tmp_path):
    ds = _small_ds()
    ds["piezoresponse_clean"] = ds["piezoresponse"] * 2
    ctx = RunContext(workdir=tmp_path)
    out = stage(ds, LoopsConfig(), ctx)
    assert set(ds.data_vars) < set(out.data_vars)
    assert "loop_params" not in ds
    # the clean channel is fitted when present
    np.testing.assert_allclose(out["loop_fit"].values.reshape(12, 96),
                               2 * fit_loops(ds, channel="piezoresponse").fit,
                               rtol=1e-3, atol=1e-7)
    s = ctx.summary["loops"]
    assert s["n_pixels"] == 12 and s["median_r2"] > 0.99 and s["model"] == "paper13"
    import json
    json.dumps(s)
    assert not (tmp_path / "report").exists()  # the stage computes; the report draws
    from switchscope.report.figures import loops as figures

    assert out["loop_fit"].attrs["fitted_variable"] in ds
    drawn = figures.draw(out, tmp_path)
    assert [p.name for _, p in drawn] == ["loop_maps.png", "loop_examples.png"]
    assert all(p.stat().st_size > 1000 for _, p in drawn)
    # the result rebuilt from the variables is the one the stage computed
    res = figures.result_from_dataset(out)
    np.testing.assert_array_equal(res.r2, out["loop_r2"].values.ravel())
    assert res.model == "paper13" and res.grid == (ds.sizes["row"], ds.sizes["col"])


def test_example_pixels_include_the_worst():
    from switchscope.report.figures.loops import example_pixels

    r2 = np.array([0.9, 0.5, np.nan, 0.99, 0.7, 0.95])
    idx = example_pixels(r2, 3)
    assert idx[0] == 1 and idx[-1] == 3 and 2 not in idx
