"""SHO model, guesses, batched fit (against a per-spectrum scipy reference) and loop projection."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import least_squares

from switchscope._errors import ConfigError, DataError, DataWarning
from switchscope.sho import (STATUS_BOUND, _SHOModel, _sho_core, fit_sho, project_loops,
                             sho_guess, sho_jacobian, sho_response)
from switchscope.synthetic import sho_response as synthetic_sho

CUDA = torch.cuda.is_available()


def make_spectra(n, *, seed=0, noise=0.05, m=64, groups=8):
    """Spectra like a BEPS band: ``groups`` bands of ``m`` bins across ``w0 +- 3 w0 / (2 Q)``
    with centres from 300 kHz to 1.3 MHz; each spectrum's resonance inside its band's middle,
    Q 50..300, complex Gaussian noise of ``noise`` times the peak ``A Q`` per bin."""
    rng = np.random.default_rng(seed)
    out = []
    for g, fc in enumerate(np.linspace(3e5, 1.3e6, groups)):
        k = n // groups + (1 if g < n % groups else 0)
        qc = rng.uniform(80, 250)
        f = np.linspace(fc - 3 * fc / (2 * qc), fc + 3 * fc / (2 * qc), m)
        w0 = fc * (1 + rng.uniform(-1.0, 1.0, k) / (2 * qc))
        Q = rng.uniform(50, 300, k)
        A = rng.uniform(0.5, 2.0, k) * 1e-3
        phi = rng.uniform(-np.pi, np.pi, k)
        y = sho_response(f, A, w0, Q, phi)
        sig = noise * (A * Q)[:, None] / np.sqrt(2)
        y = y + sig * (rng.standard_normal(y.shape) + 1j * rng.standard_normal(y.shape))
        out.append((f, y, np.stack((A, w0, Q, phi), axis=1)))
    return out


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
def test_model_closed_form_at_resonance_and_limits():
    A, w0, Q, phi = 2e-3, 1.3e6, 180.0, 0.7
    H0 = sho_response([w0], A, w0, Q, phi)[0]
    assert np.isclose(abs(H0), A * Q, rtol=1e-12)
    assert np.isclose(np.angle(H0), phi + np.pi / 2, atol=1e-12)   # BGlib: H(w0) = i A Q e^{i phi}
    lowf = sho_response([w0 * 1e-6], A, w0, Q, phi)[0]
    assert np.isclose(lowf, -A * np.exp(1j * phi), rtol=1e-6)
    # the synthetic film uses the same formula with the phase in degrees
    f = np.linspace(1.2e6, 1.4e6, 7)
    np.testing.assert_allclose(sho_response(f, A, w0, Q, phi),
                               synthetic_sho(f, A, np.degrees(phi), w0, Q), rtol=1e-12)
    # broadcasting: parameters (2, 3) -> (2, 3, n_freq)
    assert sho_response(f, np.ones((2, 3)), w0, Q, 0.0).shape == (2, 3, 7)


@pytest.mark.parametrize("p", [(1e-3, 1.3e6, 200.0, 0.3), (5.0, 3e5, 60.0, -2.9),
                               (1.0, 1e6, 1.5, 3.1)])
def test_jacobian_matches_finite_differences(p):
    f = np.linspace(p[1] * 0.98, p[1] * 1.02, 33)
    J = sho_jacobian(f, *p)
    assert J.shape == (66, 4)

    def stacked(pp):
        h = sho_response(f, *pp)
        return np.concatenate((h.real, h.imag))

    for k in range(4):
        step = 1e-6 * max(abs(p[k]), 1e-3)
        hi, lo = list(p), list(p)
        hi[k] += step
        lo[k] -= step
        fd = (stacked(hi) - stacked(lo)) / (2 * step)
        np.testing.assert_allclose(J[:, k], fd, rtol=1e-5, atol=1e-7 * np.abs(fd).max())


def test_internal_normal_equations_match_finite_differences():
    """The fitter's complex Jacobian in internal coordinates (cost, J^T J, J^T r)."""
    rng = np.random.default_rng(1)
    m = 40
    u = torch.linspace(-1, 1, m, dtype=torch.float64)
    fc, hw = 1e6, 1e4
    q = torch.tensor([[0.1, 0.2, np.log(120.0), 0.5], [-0.3, -0.6, np.log(40.0), -2.0]],
                     dtype=torch.float64)
    y = torch.as_tensor(rng.standard_normal((2, m)) + 1j * rng.standard_normal((2, m)))
    cost, A, g = _SHOModel.normal(q, u, fc, hw, y, None)

    def res(qq):
        r = (_sho_core(qq, u, fc, hw)[0] - y).numpy()
        return np.concatenate((r.real, r.imag), axis=1)

    r0 = res(q)
    J = np.empty((2, 2 * m, 4))
    for k in range(4):
        d = torch.zeros_like(q)
        d[:, k] = 1e-6
        J[:, :, k] = (res(q + d) - res(q - d)) / 2e-6
    np.testing.assert_allclose(cost.numpy(), (r0**2).sum(1), rtol=1e-12)
    np.testing.assert_allclose(A.numpy(), np.einsum("nmi,nmj->nij", J, J), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(g.numpy(), np.einsum("nmi,nm->ni", J, r0), rtol=1e-6, atol=1e-8)


# --------------------------------------------------------------------------------------------
# Guesses
# --------------------------------------------------------------------------------------------
def test_guesses_exact_on_noise_free_spectra():
    f = np.linspace(1.29e6, 1.35e6, 64)
    p = np.array([[1e-3, 1.32e6, 200.0, 0.3], [2e-3, 1.30e6, 80.0, -2.5]])
    y = sho_response(f, *p.T)
    # two exact bins determine the model: BGlib's complex-plane estimate is exact
    np.testing.assert_allclose(sho_guess(y, f, method="complex"), p, rtol=1e-8)
    peak = sho_guess(y, f, method="peak")
    np.testing.assert_allclose(peak[:, 1], p[:, 1], rtol=2e-3)
    np.testing.assert_allclose(peak[:, 2], p[:, 2], rtol=0.2)
    np.testing.assert_allclose(sho_guess(y, f), p, rtol=1e-8)


def test_best_guess_is_never_worse_than_either():
    (f, y, _), = make_spectra(300, groups=1, noise=0.1)

    def cost(p):
        return (np.abs(sho_response(f, *p.T) - y) ** 2).sum(1)

    best, cx, pk = (cost(sho_guess(y, f, method=k)) for k in ("best", "complex", "peak"))
    assert np.all(best <= np.minimum(cx, pk) * (1 + 1e-9))


# --------------------------------------------------------------------------------------------
# Batched fit against an independent per-spectrum scipy fit
# --------------------------------------------------------------------------------------------
def _scipy_fit(f, y, p0, q_bounds=(1.0, 1e4)):
    """One ``least_squares`` (trf, analytic Jacobian) per spectrum, from the same guess."""
    out = np.empty_like(p0)
    lo = [0.0, f.min(), q_bounds[0], -np.inf]
    hi = [np.inf, f.max(), q_bounds[1], np.inf]
    s = np.abs(y).max(1)
    for i in range(y.shape[0]):
        yi = y[i] / s[i]

        def fun(p):
            h = sho_response(f, *p) - yi
            return np.concatenate((h.real, h.imag))

        def jac(p):
            return sho_jacobian(f, *p)

        x0 = p0[i].copy()
        x0[0] /= s[i]
        r = least_squares(fun, x0, jac=jac, bounds=(lo, hi), method="trf", x_scale="jac",
                          ftol=1e-10, xtol=1e-10, gtol=1e-10)
        out[i] = r.x
        out[i, 0] *= s[i]
    return out


def _r2(f, y, p):
    h = sho_response(f, *p.T)
    return 1 - (np.abs(h - y) ** 2).sum(1) / (np.abs(y - y.mean(1, keepdims=True)) ** 2).sum(1)


N_SCIPY = 2000 if os.environ.get("SWITCHSCOPE_SLOW") else 500


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_batched_fit_agrees_with_scipy(dtype):
    groups = make_spectra(N_SCIPY, seed=3, noise=0.05)
    diffs = []
    for f, y, _ in groups:
        res = fit_sho(y, f, dtype=dtype)
        ref = _scipy_fit(f, y, sho_guess(y, f))
        r2_ref = _r2(f, y, ref)
        # our R2 (computed by the fitter) against R2 recomputed independently at our params
        np.testing.assert_allclose(res.r2, _r2(f, y, res.params), atol=1e-5 if dtype == torch.float32 else 1e-10)
        diffs.append(res.r2 - r2_ref)
    d = np.concatenate(diffs)
    assert np.mean(np.abs(d) <= 1e-3) >= 0.99, np.sort(d)[:10]
    assert np.median(d) > -1e-6


def test_recovers_truth_at_realistic_noise():
    stats = {k: [] for k in ("A", "w0", "Q", "phi")}
    for f, y, truth in make_spectra(2000, seed=5, noise=0.05):
        res = fit_sho(y, f)
        assert res.converged.mean() > 0.99
        p = res.params
        stats["A"].append(np.abs(p[:, 0] / truth[:, 0] - 1))
        stats["w0"].append(np.abs(p[:, 1] / truth[:, 1] - 1))
        stats["Q"].append(np.abs(p[:, 2] / truth[:, 2] - 1))
        stats["phi"].append(np.degrees(np.abs(np.angle(np.exp(1j * (p[:, 3] - truth[:, 3]))))))
    med = {k: float(np.median(np.concatenate(v))) for k, v in stats.items()}
    # reached (5 % noise per bin relative to the peak): w0 ~2e-5, Q ~1 %, A ~0.8 %, phase ~0.5 deg
    assert med["w0"] < 1e-3 and med["Q"] < 0.05 and med["A"] < 0.02 and med["phi"] < 2.0, med


def test_stderr_matches_the_spread_of_repeated_fits():
    rng = np.random.default_rng(7)
    f = np.linspace(1.30e6, 1.34e6, 64)
    p = (1e-3, 1.32e6, 200.0, 0.3)
    y0 = sho_response(f, *p)
    y = y0 + 0.05 * 0.2 * (rng.standard_normal((3000, 64)) + 1j * rng.standard_normal((3000, 64)))
    res = fit_sho(y, f)
    spread = res.params.std(0)
    np.testing.assert_allclose(np.median(res.stderr, 0), spread, rtol=0.1)


def test_float32_and_threads_and_shape():
    (f, y, _), = make_spectra(3000, groups=1, seed=9)
    y = y.reshape(3, 1000, 64)
    r64 = fit_sho(y, f)
    assert r64.params.shape == (3, 1000, 4) and r64.r2.shape == (3, 1000)
    r1 = fit_sho(y, f, threads=1)
    np.testing.assert_array_equal(r1.params, r64.params)      # blocks are independent
    r32 = fit_sho(y.astype(np.complex64), f, dtype=torch.float32)
    np.testing.assert_allclose(r32.r2, r64.r2, atol=1e-4)
    np.testing.assert_allclose(r32.resonance, r64.resonance, rtol=1e-6)
    small = fit_sho(y, f, chunk=700)
    np.testing.assert_array_equal(small.params, r64.params)
    assert np.all((r64.phase > -np.pi) & (r64.phase <= np.pi))


@pytest.mark.skipif(not CUDA, reason="no CUDA device")
def test_gpu_matches_cpu():
    (f, y, _), = make_spectra(2000, groups=1, seed=11)
    cpu = fit_sho(y, f)
    gpu = fit_sho(torch.as_tensor(y).cuda(), f)
    np.testing.assert_allclose(gpu.r2, cpu.r2, atol=1e-8)
    np.testing.assert_allclose(gpu.params, cpu.params, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("guess", ["best", "complex", "peak"])
def test_numba_kernel_matches_torch_path(guess):
    """The numba CPU kernel (default on CPU) against the batched torch path, float64: the same
    guess, LM iterations and statuses, results equal to rounding."""
    for f, y, _ in make_spectra(600, seed=13, noise=0.08, groups=3):
        a = fit_sho(y, f, guess=guess)
        b = fit_sho(y, f, guess=guess, backend="torch")
        np.testing.assert_array_equal(a.status, b.status)
        np.testing.assert_array_equal(a.n_iter, b.n_iter)
        np.testing.assert_array_equal(a.guess_source, b.guess_source)
        np.testing.assert_allclose(a.guess, b.guess, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(a.r2, b.r2, atol=1e-10)
        np.testing.assert_allclose(a.params, b.params, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(a.stderr, b.stderr, rtol=1e-7)


def test_numba_kernel_float32_tolerances_and_threads():
    """dtype=float32 keeps the numba kernel in float64 with float32's looser tolerances: close
    to the float32 torch path and to float64; numba's thread count does not change results."""
    (f, y, _), = make_spectra(1000, groups=1, seed=17)
    a32 = fit_sho(y.astype(np.complex64), f, dtype=torch.float32)
    t32 = fit_sho(y.astype(np.complex64), f, dtype=torch.float32, backend="torch")
    a64 = fit_sho(y, f)
    np.testing.assert_allclose(a32.r2, t32.r2, atol=1e-5)
    np.testing.assert_allclose(a32.r2, a64.r2, atol=1e-5)
    np.testing.assert_array_equal(fit_sho(y, f, threads=1).params, a64.params)
    with pytest.raises(ConfigError, match="backend must be one of auto, numba, torch"):
        fit_sho(y, f, backend="cuda")
    with pytest.raises(ConfigError, match="backend='numba' runs on the CPU only"):
        fit_sho(y, f, backend="numba", device="cuda")


# --------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_bad_spectra_are_flagged_not_fatal(backend):
    f = np.linspace(1.30e6, 1.34e6, 64)
    good = sho_response(f, [1e-3] * 3, [1.32e6] * 3, [200.0] * 3, [0.3] * 3)
    rng = np.random.default_rng(0)
    y = np.concatenate([good, np.zeros((6, 64), complex)])
    y[3] = np.nan                                   # NaN spectrum
    y[4] = 0.0                                      # all zeros
    y[5] = 0.2 + 0.1j                               # flat, constant
    y[6] = 0.2 + 1e-3 * np.linspace(-1, 1, 64) + 1e-5 * rng.standard_normal(64)   # flat, no peak
    y[7] = np.nan
    y[7, :2] = 1.0                                  # two finite bins
    y[8] = good[0]
    y[8, ::3] = np.nan + 1j                         # a third of the bins missing: still fitted
    with pytest.warns(DataWarning, match=r"2 spectra with fewer than 3 finite bins and 2 constant "
                                         r"spectra were not fitted .* 1 ended with w0 on a band edge"):
        res = fit_sho(y, f, backend=backend)
    st = np.where(res.status <= 1, 0, res.status)        # 0 or 1: converged
    assert st.tolist() == [0, 0, 0, 3, 4, 4, STATUS_BOUND, 3, 0]
    assert np.isnan(res.params[[3, 4, 5, 7]]).all() and np.isfinite(res.params[[0, 6, 8]]).all()
    np.testing.assert_allclose(res.params[8], [1e-3, 1.32e6, 200.0, 0.3], rtol=1e-8)
    assert res.converged.tolist() == [True] * 3 + [False] * 5 + [True]


def test_frequencies_out_of_order_are_sorted():
    (f, y, _), = make_spectra(200, groups=1, seed=2)
    perm = np.random.default_rng(0).permutation(f.size)
    a, b = fit_sho(y, f), fit_sho(y[:, perm], f[perm])
    np.testing.assert_allclose(b.params, a.params, rtol=1e-9)
    np.testing.assert_array_equal(b.freq, f)


def test_band_of_fewer_than_three_bins():
    f = np.array([1.0e6, 1.01e6])
    with pytest.warns(DataWarning, match="4 spectra with fewer than 3 finite bins"):
        res = fit_sho(np.ones((2, 2, 2), complex), f)
    assert (res.status == 3).all() and res.params.shape == (2, 2, 4)


@pytest.mark.parametrize("freq, match", [
    (np.r_[1.0, 1.0, 2.0, 3.0], "repeated values"),
    (np.r_[1.0, np.nan, 2.0, 3.0], "NaN or Inf"),
    (np.r_[1.0, 2.0, 3.0], r"shape \(4,\)"),
    (np.r_[-1.0, 1.0, 2.0, 3.0], "must be positive"),
])
def test_bad_frequencies_refused(freq, match):
    with pytest.raises(DataError, match=match):
        fit_sho(np.ones((2, 4), complex), freq)


def test_bad_options_and_real_input_refused():
    f = np.linspace(1, 2, 8)
    with pytest.raises(DataError, match="spectra must be complex"):
        fit_sho(np.ones((2, 8)), f)
    with pytest.raises(ConfigError, match="dtype must be"):
        fit_sho(np.ones((2, 8), complex), f, dtype=torch.float16)
    with pytest.raises(ConfigError, match="q_bounds"):
        fit_sho(np.ones((2, 8), complex), f, q_bounds=(0, 10))
    with pytest.raises(ConfigError, match="guess must be one of"):
        fit_sho(np.ones((2, 8), complex), f, guess="x")


# --------------------------------------------------------------------------------------------
# Loop projection
# --------------------------------------------------------------------------------------------
def _loops(n, seed=0, m=96):
    v = np.r_[np.linspace(16, -16, m // 2 + 1)[:-1], np.linspace(-16, 16, m // 2 + 1)[:-1]]
    rng = np.random.default_rng(seed)
    desc = np.r_[np.ones(m // 2, bool), np.zeros(m // 2, bool)]
    vc = np.where(desc, -rng.uniform(2, 6, (n, 1)), rng.uniform(2, 6, (n, 1)))
    h = rng.uniform(0.5, 2.0, (n, 1))
    # response high at +V: the loop runs counterclockwise (positive area), BGlib's orientation
    P = h * np.tanh((v - vc) / 1.5) + 0.02 * v + 0.02 * rng.standard_normal((n, m))
    return v, P


def _reference_projection(amp, phase, v):
    """Per pixel: regress the complex loop on the voltage, principal axis of the residuals by
    an eigen-decomposition, project, orient by the signed area over consecutive steps."""
    prs, angles, offs = [], [], []
    X = np.stack((np.ones_like(v), v), axis=1)
    for a, p in zip(amp, phase):
        z = a * np.exp(1j * p)
        pts = np.stack((z.real, z.imag), axis=1)
        coef, *_ = np.linalg.lstsq(X, pts, rcond=None)
        res = pts - X @ coef
        _, vecs = np.linalg.eigh(res.T @ res)
        axis = vecs[:, -1]
        pr = pts @ axis
        area = sum(v[k] * pr[k + 1] - v[k + 1] * pr[k] for k in range(v.size - 1))
        if area < 0:
            axis, pr = -axis, -pr
        mean = pts.mean(0)
        normal = np.array([-axis[1], axis[0]])
        prs.append(pr)
        angles.append(np.arctan2(axis[1], axis[0]))
        offs.append(abs(mean @ normal))
    return np.array(prs), np.array(angles), np.array(offs)


def test_projection_matches_reference_and_recovers_rotation():
    v, P = _loops(200)
    rng = np.random.default_rng(1)
    theta = rng.uniform(-np.pi, np.pi, (200, 1))
    perp = rng.uniform(-0.3, 0.3, (200, 1))          # offset across the axis
    z = (P + 1j * perp) * np.exp(1j * theta)
    z = z + 0.01 * (rng.standard_normal(z.shape) + 1j * rng.standard_normal(z.shape))
    res = project_loops(np.abs(z), np.angle(z), v, phase_units="rad")
    ref_pr, ref_angle, ref_off = _reference_projection(np.abs(z), np.angle(z), v)
    np.testing.assert_allclose(res.piezoresponse, ref_pr, atol=1e-9)
    np.testing.assert_allclose(np.exp(1j * res.angle), np.exp(1j * ref_angle), atol=1e-9)
    np.testing.assert_allclose(res.offset, ref_off, atol=1e-9)
    # the rotation comes back: the angle is theta and the loop is P (to the noise)
    np.testing.assert_allclose(np.angle(np.exp(1j * (res.angle - theta[:, 0]))), 0, atol=0.03)
    np.testing.assert_allclose(res.offset, np.abs(perp[:, 0]), atol=0.01)
    assert np.abs(res.piezoresponse - P).max() < 0.1
    # degrees in: same answer
    deg = project_loops(np.abs(z), np.degrees(np.angle(z)), v, phase_units="deg")
    np.testing.assert_allclose(deg.piezoresponse, res.piezoresponse, atol=1e-12)


def test_projection_cos_and_orientation():
    v, P = _loops(5)
    amp, phase = np.abs(P), np.where(P >= 0, 0.0, 180.0)
    cos = project_loops(amp, phase, v, phase_units="deg", method="cos")
    np.testing.assert_allclose(cos.piezoresponse, P, atol=1e-12)
    assert (cos.angle == 0).all()
    # a loop that runs clockwise comes back flipped (positive area), its angle turned by pi
    flipped = project_loops(amp, np.where(P >= 0, 180.0, 0.0), v, phase_units="deg")
    np.testing.assert_allclose(flipped.piezoresponse, P, atol=1e-9)
    np.testing.assert_allclose(np.abs(flipped.angle), np.pi, atol=1e-9)
    with pytest.raises(ConfigError, match="phase_units"):
        project_loops(amp, phase, v, phase_units="grad")
    with pytest.raises(DataError, match="one voltage per step"):
        project_loops(amp, phase, v[:-1], phase_units="deg")


def test_fit_then_project_end_to_end():
    """Spectra of loops -> SHO fit -> projection gives the loops back."""
    v, P = _loops(20, m=32)
    f = np.linspace(1.30e6, 1.34e6, 48)
    amp, phi = np.abs(P) * 1e-3, np.where(P >= 0, 0.4, 0.4 + np.pi)
    y = sho_response(f, amp, 1.32e6, 200.0, phi)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = fit_sho(y, f)
    proj = project_loops(res.amplitude, res.phase, v, phase_units="rad")
    np.testing.assert_allclose(proj.piezoresponse, P * 1e-3, atol=1e-9)
    np.testing.assert_allclose(proj.angle, 0.4, atol=1e-9)


def test_projection_keeps_the_finite_steps_of_a_loop_with_a_failed_step():
    """One NaN step (a failed SHO fit) leaves that step NaN, not the whole loop."""
    from switchscope.sho import project_loops

    rng = np.random.default_rng(5)
    v = np.concatenate([np.linspace(10, -10, 20), np.linspace(-10, 10, 20)])
    loop = np.tanh((v - np.where(np.arange(40) < 20, -3, 3)) / 2)
    angle = 0.7
    z = (loop + 0.01 * rng.normal(size=(4, 40))) * np.exp(1j * angle) + 0.2 * np.exp(1j * (angle + np.pi / 2))
    clean = project_loops(np.abs(z), np.angle(z), v, phase_units="rad")
    z_nan = z.copy()
    z_nan[:, 7] = np.nan
    got = project_loops(np.abs(z_nan), np.angle(z_nan), v, phase_units="rad")
    assert np.isnan(got.piezoresponse[:, 7]).all()
    keep = np.arange(40) != 7
    assert np.isfinite(got.piezoresponse[:, keep]).all()
    np.testing.assert_allclose(got.piezoresponse[:, keep], clean.piezoresponse[:, keep], atol=0.02)
    np.testing.assert_allclose(np.abs(got.angle), np.abs(clean.angle), atol=0.02)


def test_fit_sho_warnings_point_at_the_caller():
    import warnings

    from switchscope.sho import fit_sho

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit_sho(np.zeros((2, 8), complex), np.linspace(1.0, 2.0, 8))
    assert caught and all(w.filename == __file__ for w in caught)
