"""The metric functions of benchmarks/mechanisms.py on constructed cases with known answers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "mechanisms.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_mechanisms", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_best_abs_rho_finds_the_monotone_feature(bench):
    rng = np.random.default_rng(0)
    t = rng.uniform(0, 1, 400)
    # column 2 is a decreasing, nonlinear function of the truth: |Spearman rho| = 1 exactly
    F = np.column_stack([rng.standard_normal(400), np.zeros(400), -np.exp(3 * t), t + rng.standard_normal(400)])
    rho, j = bench.best_abs_rho(F, t)
    assert j == 2
    assert rho == pytest.approx(1.0, abs=1e-12)
    # the constant column (an inactive neuron) is skipped; all constant gives (nan, -1)
    rho0, j0 = bench.best_abs_rho(np.zeros((400, 3)), t)
    assert np.isnan(rho0) and j0 == -1


def test_best_abs_rho_matches_scipy(bench):
    from scipy.stats import spearmanr

    rng = np.random.default_rng(1)
    t = np.round(rng.uniform(0, 1, 300), 1)  # ties in the truth
    F = t[:, None] + rng.standard_normal((300, 5))
    rho, j = bench.best_abs_rho(F, t)
    ref = [abs(spearmanr(F[:, k], t).statistic) for k in range(5)]
    assert j == int(np.argmax(ref))
    assert rho == pytest.approx(max(ref), abs=1e-12)


def test_cv_r2_linear_case_and_noise(bench):
    rng = np.random.default_rng(2)
    # bounded features (the read-out clips each to its 0.5..99.5 training percentiles, which
    # leaves uniform ones almost unchanged); scales differ: standardized inside
    F = rng.uniform(-1, 1, (500, 4)) * [1.0, 10.0, 0.1, 1.0]
    y = 2 * F[:, 0] - 0.3 * F[:, 1] + 5 * F[:, 2]
    assert bench.cv_r2(F, y) == pytest.approx(1.0, abs=1e-3)
    # half the variance is noise the features cannot see: R² about 0.5
    noisy = F[:, 0] + rng.uniform(-1, 1, 500)
    assert bench.cv_r2(F, noisy) == pytest.approx(0.5, abs=0.1)
    # a few extreme pixels in a feature do not throw the held-out predictions out of range
    G = F.copy()
    G[:3, 3] = 1e6
    assert bench.cv_r2(G, y) == pytest.approx(1.0, abs=1e-2)
    # features unrelated to the truth: out-of-fold R² at or below 0
    assert bench.cv_r2(rng.standard_normal((500, 4)), rng.standard_normal(500)) < 0.02
