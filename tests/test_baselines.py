"""Every learning stage against trivial baselines: the mean loop and PCA of the same size."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sklearn.decomposition import PCA

from switchscope import DataWarning, pipeline
from switchscope._baselines import MEAN_LOOP_RATIO, compare, mean_loop_mse, pca_mse
from switchscope._dataset import make_dataset
from switchscope.autoencoder import AutoencoderConfig
from switchscope.decomposition import DecompositionConfig
from switchscope.synthetic import SyntheticConfig


def test_mean_loop_and_pca_errors_match_independent_references():
    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(80, 12)), rng.normal(size=(30, 12))
    mu = train.mean(axis=0)
    assert mean_loop_mse(train, test) == pytest.approx(np.mean((test - mu) ** 2), rel=1e-12)
    for k in (1, 3, 12):
        p = PCA(k, svd_solver="full").fit(train)
        want = np.mean((test - p.inverse_transform(p.transform(test))) ** 2)
        assert pca_mse(train, test, k) == pytest.approx(want, rel=1e-9)
    assert pca_mse(train, test, 0) == mean_loop_mse(train, test)
    assert pca_mse(train, test, 12) == pytest.approx(0.0, abs=1e-20)  # a full basis rebuilds anything
    # rank-2 curves around a mean loop: PCA(2) is exact, the mean loop leaves the rank-2 part
    basis = rng.normal(size=(2, 12))
    X = mu + rng.normal(size=(50, 2)) @ basis
    assert pca_mse(X, X, 2) == pytest.approx(0.0, abs=1e-20)
    assert mean_loop_mse(X, X) == pytest.approx(np.var(X, axis=0).mean(), rel=1e-12)


def test_compare_warns_only_above_the_mean_loop_ratio():
    X = np.arange(20.0).reshape(4, 5)
    var = np.var(X)
    ok = compare(0.5 * var, X, mean_loop=var, pca=0.1 * var, pca_components=2, model="m", channel="c")
    assert ok["clearly_better"] and "warning" not in ok and not ok["beats_pca"]
    assert (ok["model_fraction"], ok["mean_loop_fraction"], ok["pca_fraction"]) == pytest.approx((0.5, 1.0, 0.1))
    bad = compare(0.81 * var, X, mean_loop=var, model="m", channel="c")
    assert not bad["clearly_better"] and "pca_fraction" not in bad
    assert bad["warning"].startswith("c: m is not clearly better than the mean loop")
    assert "\n" not in bad["warning"]
    edge = compare(MEAN_LOOP_RATIO * var, X, mean_loop=var)
    assert edge["clearly_better"]


def _run(tmp_path, ds, configs, stages):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipeline.run(ds, tmp_path / "out", configs=configs, stages=stages, progress=False, log=lambda m: None)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    page = (tmp_path / "out" / "report" / "index.html").read_text()
    texts = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    return summary, page, texts


def test_noise_loops_warn_in_terminal_and_report(tmp_path):
    rng = np.random.default_rng(1)
    noise = rng.normal(size=(20, 20, 32))
    ds = make_dataset({"piezoresponse": noise}, np.sin(np.linspace(0, 2 * np.pi, 32)))
    configs = {"decomposition": DecompositionConfig(n_pca=2, n_nmf=2, n_subclusters=(2, 2), n_init=1),
               "autoencoder": AutoencoderConfig(channels=("piezoresponse",), hidden=8, depth=1, epochs=1,
                                                refine_epochs=0, batch_size=64, threads=1)}
    summary, page, texts = _run(tmp_path, ds, configs, ["clean", "decomposition", "autoencoder", "report"])
    ae = summary["autoencoder"]["piezoresponse"]["baselines"]
    # pure noise: the mean loop explains nothing, and nothing beats it by much
    assert ae["mean_loop_fraction"] == pytest.approx(1.0, abs=0.1)
    assert not ae["clearly_better"] and ae["model_fraction"] > MEAN_LOOP_RATIO * ae["mean_loop_fraction"]
    assert ae["evaluated_on"].endswith("held-out pixels") and "pca_fraction" in ae
    pca = summary["decomposition"]["baselines"]["pca"]
    X = (noise.reshape(400, 32))
    assert pca["mean_loop_fraction"] == pytest.approx(mean_loop_mse(X, X) / np.var(X), abs=0.02)
    assert not pca["clearly_better"]
    assert any("autoencoder" in t and "not clearly better than the mean loop" in t for t in texts)
    assert any(t.startswith("piezoresponse: PCA (2 components) is not clearly better") for t in texts)
    assert page.count('class="ss-warning"') >= 2
    assert "the autoencoder (" in page and "not clearly better than the mean loop" in page


def test_synthetic_film_beats_the_mean_loop_without_warning(tmp_path):
    configs = {"synthetic": SyntheticConfig(rows=10, cols=10),
               "autoencoder": AutoencoderConfig(channels=("piezoresponse",), hidden=16, depth=1, epochs=15,
                                                refine_epochs=0, batch_size=32, lr=3e-3, threads=1)}
    summary, page, texts = _run(tmp_path, None, configs, ["clean", "decomposition", "autoencoder", "report"])
    ae = summary["autoencoder"]["piezoresponse"]["baselines"]
    assert ae["clearly_better"], ae
    for key in ("pca", "nmf"):
        assert summary["decomposition"]["baselines"][key]["clearly_better"]
    assert not [t for t in texts if "not clearly better" in t]
    assert 'class="ss-warning"' not in page
    assert "Reconstruction error against trivial baselines" in page
