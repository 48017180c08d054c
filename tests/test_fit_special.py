"""The numba kernels' own erf and exp (switchscope.fit._special) within their stated bounds."""

from __future__ import annotations

import numpy as np
import pytest

numba = pytest.importorskip("numba")
special = pytest.importorskip("scipy.special")

from switchscope.fit import _special as sp  # noqa: E402


@numba.njit(cache=False)
def _erf_gauss_many(x, e, g):
    for i in range(x.shape[0]):
        e[i], g[i] = sp.erf_gauss(x[i])


@numba.njit(cache=False)
def _exp_neg_many(u, out):
    for i in range(u.shape[0]):
        out[i] = sp.exp_neg(u[i])


def _grid() -> np.ndarray:
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-30.0, 30.0, 600_001), rng.normal(size=200_000) * 3,
                        np.logspace(-300, 2, 10_000), -np.logspace(-300, 2, 10_000),
                        [0.0, -0.0, 1.0, -1.0, np.nextafter(1.0, 0.0), 5.999999, 6.0, 6.000001,
                         np.sqrt(sp.GAUSS_CUT), np.nextafter(np.sqrt(sp.GAUSS_CUT), 0.0),
                         1e300, -1e300]])
    return x


def test_erf_within_bound_over_the_real_line():
    x = _grid()
    e, g = np.empty_like(x), np.empty_like(x)
    _erf_gauss_many(x, e, g)
    # stated bound: absolute error <= 4e-16 everywhere
    assert np.abs(e - special.erf(x)).max() <= 4e-16
    # and relative for small arguments (erf(x) ~ 2x/sqrt(pi))
    small = (np.abs(x) < 1) & (x != 0)
    assert (np.abs(e - special.erf(x))[small] / np.abs(special.erf(x[small]))).max() <= 4e-16
    assert np.all(np.abs(e) <= 1.0)
    assert np.array_equal(np.sign(e), np.sign(x))


def test_gauss_within_bound_and_cut():
    x = _grid()
    e, g = np.empty_like(x), np.empty_like(x)
    _erf_gauss_many(x, e, g)
    with np.errstate(over="ignore"):
        inside = x * x < sp.GAUSS_CUT
    ref = np.exp(-x[inside] ** 2)
    assert (np.abs(g[inside] - ref) / ref).max() <= 1e-15
    # exactly zero past the cut (true value below exp(-GAUSS_CUT))
    assert np.all(g[~inside] == 0.0)
    assert np.exp(-sp.GAUSS_CUT) < 4e-44


def test_non_finite_inputs():
    x = np.array([np.inf, -np.inf, np.nan])
    e, g = np.empty(3), np.empty(3)
    _erf_gauss_many(x, e, g)
    assert e[0] == 1.0 and e[1] == -1.0 and np.isnan(e[2])
    assert g[0] == 0.0 and g[1] == 0.0


def test_exp_neg_within_bound():
    u = np.concatenate([np.linspace(0.0, 708.0, 1_000_001), [0.0, 1e-300, 0.5, 700.0, 708.0]])
    out = np.empty_like(u)
    _exp_neg_many(u, out)
    ref = np.exp(-u)
    assert (np.abs(out - ref) / ref).max() <= 1e-15
