"""Tests of switchscope.decomposition: PCA, NMF, the paper's divisive k-means, the stage."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from sklearn.base import clone
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score
from threadpoolctl import threadpool_limits

from switchscope import ConfigError, DataError, DataWarning, NotFittedError, make_dataset
from switchscope.stages import STAGE_CONFIGS
from switchscope.stages import RunContext
from switchscope.decomposition import (
    DecompositionConfig,
    DivisiveKMeans,
    decompose_dataset,
    divisive_kmeans,
    kmeans_pca,
    loop_height,
    neighbour_agreement,
    nmf,
    pca,
    stage,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The test machine is shared; k-means/NMF thread pools oversubscribe it badly.
    with threadpool_limits(1):
        yield


def _fill_nans(X: np.ndarray) -> np.ndarray:
    """Per-pixel linear interpolation of NaNs (slow, independent of switchscope.preprocess)."""
    X = X.copy()
    steps = np.arange(X.shape[1])
    for i in np.flatnonzero(np.isnan(X).any(axis=1)):
        bad = np.isnan(X[i])
        X[i, bad] = np.interp(steps[bad], steps[~bad], X[i, ~bad])
    return X


@pytest.fixture(scope="module")
def real_loops(mat_path):
    import scipy.io

    m = scipy.io.loadmat(mat_path)
    raw = m["Loopdata_mixed"].astype(float)
    X = _fill_nans(raw.reshape(-1, raw.shape[2]))
    return X, m["Voltagedata_mixed"].ravel().astype(float), raw


@pytest.fixture(scope="module")
def real_divisive(real_loops):
    X, _, _ = real_loops
    return DivisiveKMeans(n_clusters=2, n_subclusters=(5, 4), random_state=0).fit(X)


def _low_rank(n=80, m=12, rank=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, rank)) @ rng.normal(size=(rank, m)) + 0.01 * rng.normal(size=(n, m)) + 3.0


# ------------------------------------------------------------------------------------------------
# PCA
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", ["auto", "full", "covariance_eigh", "incremental"])
def test_pca_with_all_components_reconstructs_input_exactly(solver):
    X = _low_rank()
    r = pca(X, X.shape[1], svd_solver=solver)
    np.testing.assert_allclose(r.reconstruct(), X, rtol=0, atol=1e-9 * np.abs(X).max())
    # fewer components: a worse, but still close, reconstruction
    err4 = np.linalg.norm(r.reconstruct(4) - X)
    err1 = np.linalg.norm(r.reconstruct(1) - X)
    assert err4 < err1


def test_pca_matches_numpy_svd_of_centered_real_loops(real_loops):
    X, _, _ = real_loops
    r = pca(X, 16)
    Xc = X - X.mean(axis=0)
    _, S, Vt = np.linalg.svd(Xc, full_matrices=False)
    np.testing.assert_allclose(r.explained_variance, S[:16] ** 2 / (X.shape[0] - 1), rtol=1e-8)
    np.testing.assert_allclose(r.explained_variance_ratio, S[:16] ** 2 / np.sum(S**2), rtol=1e-8)
    np.testing.assert_allclose(r.mean, X.mean(axis=0), rtol=1e-12)
    for i in range(6):  # well separated singular values: components equal up to sign
        v = Vt[i] * np.sign(Vt[i] @ r.components[i])
        np.testing.assert_allclose(r.components[i], v, atol=1e-7)
        # sign convention: the largest-magnitude entry is positive
        assert r.components[i][np.argmax(np.abs(r.components[i]))] > 0
    np.testing.assert_allclose(r.scores, Xc @ r.components.T, atol=1e-12 * np.abs(Xc).max() * 96)
    # the real film: two components hold ~90% of the variance (c/a bands and the a1/a2 regions)
    assert r.explained_variance_ratio[:2].sum() > 0.85


def test_randomized_and_incremental_pca_agree_with_exact(real_loops):
    X, _, _ = real_loops
    exact = pca(X, 4, svd_solver="full")
    for solver in ("randomized", "incremental"):
        r = pca(X, 4, svd_solver=solver, batch_size=500)
        np.testing.assert_allclose(r.explained_variance[:3], exact.explained_variance[:3], rtol=1e-3)
        assert np.all(np.abs(np.sum(r.components[:3] * exact.components[:3], axis=1)) > 0.999)


# ------------------------------------------------------------------------------------------------
# NMF
# ------------------------------------------------------------------------------------------------
def test_nmf_recovers_a_planted_nonnegative_factorization():
    rng = np.random.default_rng(1)
    steps = np.linspace(0, 1, 40)
    H = np.stack([np.exp(-((steps - c) / 0.08) ** 2) for c in (0.2, 0.5, 0.8)])  # peaks, max 1
    W = rng.gamma(2.0, 1.0, size=(300, 3)) * np.array([3.0, 2.0, 1.0])  # distinct mean abundances
    offset = -5.0
    X = W @ H + offset
    r = nmf(X, 3, max_iter=3000, tol=1e-5)
    assert r.shift == pytest.approx(X.min())
    assert r.relative_error < 1e-2
    np.testing.assert_allclose(r.reconstruct(), X, atol=0.05 * np.abs(X - offset).max())
    assert np.all(r.abundances >= 0) and np.all(r.components >= 0)
    np.testing.assert_allclose(r.components.max(axis=1), 1.0)
    # ordered by decreasing mean abundance -> the planted order (peak at 0.2, then 0.5, then 0.8)
    assert np.all(np.diff(r.abundances.mean(axis=0)) < 0)
    for i, c in enumerate((0.2, 0.5, 0.8)):
        assert abs(steps[np.argmax(r.components[i])] - c) < 0.03
    # the reported error is the real one
    Xs = X - r.shift
    assert r.relative_error == pytest.approx(np.linalg.norm(Xs - r.abundances @ r.components) / np.linalg.norm(Xs))


def test_nmf_deterministic_and_scale_invariant(real_loops):
    X, _, _ = real_loops
    X = X[::4]  # 900 loops keep this fast
    a = nmf(X, 4, random_state=0, tol=1e-3)
    b = nmf(X, 4, random_state=0, tol=1e-3)
    np.testing.assert_array_equal(a.abundances, b.abundances)
    c = nmf(X * 1e4, 4, random_state=0, tol=1e-3)  # raw loops are ~1e-4; scaling must not change the answer
    np.testing.assert_allclose(c.components, a.components, atol=1e-6)
    np.testing.assert_allclose(c.abundances, a.abundances * 1e4, rtol=1e-5, atol=1e-6 * c.abundances.max())
    assert a.relative_error < 0.05


# ------------------------------------------------------------------------------------------------
# divisive k-means
# ------------------------------------------------------------------------------------------------
def _planted(seed=0):
    """Two top groups (large and small curves), with 3 and 2 sub-groups: (X, top, sub)."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 2 * np.pi, 30)
    X, top, sub = [], [], []
    shapes = [np.sin(t), np.sin(t) + 0.8 * np.cos(2 * t), np.sign(np.sin(t)), np.cos(t), np.cos(t) + np.sin(3 * t)]
    amps = [5.0, 5.0, 5.0, 1.0, 1.0]
    parents = [0, 0, 0, 1, 1]
    for k, (shape, amp, parent) in enumerate(zip(shapes, amps, parents)):
        n = 40 + 10 * k
        X.append(amp * shape + 0.05 * rng.normal(size=(n, t.size)))
        top += [parent] * n
        sub += [k] * n
    perm = rng.permutation(len(top))
    return np.concatenate(X)[perm], np.array(top)[perm], np.array(sub)[perm]


def test_divisive_kmeans_recovers_planted_hierarchy_with_ordered_labels():
    X, top, sub = _planted()
    m = DivisiveKMeans(n_clusters=2, n_subclusters=(3, 2), random_state=0).fit(X)
    # label 0 = the larger curves
    np.testing.assert_array_equal(m.top_labels_, top)
    assert adjusted_rand_score(sub, m.labels_) == 1.0
    assert m.n_subclusters_ == (3, 2)
    np.testing.assert_array_equal(m.parent_, [0, 0, 0, 1, 1])
    # ids are global and each sub-cluster lies inside its parent
    for s in range(5):
        assert np.all(m.top_labels_[m.labels_ == s] == m.parent_[s])
    # inside a parent, sub-clusters run by decreasing mean loop height
    h = loop_height(X)
    for parent in (0, 1):
        ids = np.flatnonzero(m.parent_ == parent)
        means = [h[m.labels_ == s].mean() for s in ids]
        assert means == sorted(means, reverse=True)
    np.testing.assert_array_equal(m.predict(X), m.labels_)
    np.testing.assert_array_equal(m.fit_predict(X), m.labels_)


def test_divisive_kmeans_is_the_papers_recipe_on_real_loops(real_loops, real_divisive):
    """Reference: StandardScaler per step over all pixels, KMeans(2), then KMeans inside each."""
    from sklearn.preprocessing import StandardScaler

    X, _, _ = real_loops
    Z = StandardScaler().fit_transform(X)
    ref_top = KMeans(2, n_init=10, random_state=0).fit_predict(Z)
    assert adjusted_rand_score(ref_top, real_divisive.top_labels_) == 1.0
    for parent, k in ((0, 5), (1, 4)):
        idx = real_divisive.top_labels_ == parent
        ref = KMeans(k, n_init=10, random_state=0).fit_predict(Z[idx])
        assert adjusted_rand_score(ref, real_divisive.labels_[idx]) == 1.0
    assert np.bincount(real_divisive.labels_).size == 9


def test_real_top_split_gives_spatially_coherent_bands(real_loops, real_divisive):
    X, _, _ = real_loops
    top = real_divisive.top_labels_
    grid = top.reshape(60, 60)
    observed, chance = neighbour_agreement(grid)
    shuffled, _ = neighbour_agreement(np.random.default_rng(0).permutation(top).reshape(60, 60))
    # measured: observed 0.90, chance 0.55, shuffled ~0.55
    assert observed > 0.85
    assert observed > chance + 0.25
    assert abs(shuffled - chance) < 0.03
    # both clusters are large regions (the bands), not a few outliers
    assert np.bincount(top).min() > 0.2 * top.size
    # label 0 is the band of larger loops (c/a)
    h = loop_height(X)
    assert h[top == 0].mean() > 1.2 * h[top == 1].mean()


def test_divisive_kmeans_sklearn_contract_and_determinism():
    X, _, _ = _planted(1)
    m = DivisiveKMeans(n_clusters=2, n_subclusters=(3, 2), random_state=3)
    assert not hasattr(m, "labels_")
    with pytest.raises(NotFittedError, match="not fitted"):
        m.predict(X)
    assert m.fit(X) is m
    c = clone(m)
    assert c.get_params() == m.get_params() and not hasattr(c, "labels_")
    np.testing.assert_array_equal(c.fit(X).labels_, m.labels_)
    # top split on other data (split_data) than the sub-clusters
    m2 = DivisiveKMeans(n_clusters=2, n_subclusters=(1, 1)).fit(X[:, :5], split_data=X)
    np.testing.assert_array_equal(m2.labels_, m.top_labels_)


def test_divisive_kmeans_small_cluster_warns_and_reduces():
    X = np.r_[[[100.0, 0, 0], [101.0, 0, 0]], np.random.default_rng(0).normal(size=(30, 3))]
    with pytest.warns(DataWarning, match="top cluster 0 has only 2 pixel"):
        m = DivisiveKMeans(n_clusters=2, n_subclusters=(3, 2)).fit(X)
    assert m.n_subclusters_ == (2, 2)


@pytest.mark.parametrize("kwargs, match", [
    ({"n_subclusters": (3,)}, "one entry per top cluster"),
    ({"n_clusters": 0}, "n_clusters must be an integer >= 1"),
    ({"n_subclusters": (0, 2)}, r"n_subclusters\[0\] must be an integer >= 1"),
    ({"algorithm": "fast"}, "algorithm must be one of"),
])
def test_divisive_kmeans_bad_params(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DivisiveKMeans(**kwargs).fit(np.random.default_rng(0).normal(size=(20, 4)))


def test_kmeans_pca_labels_ordered_and_reproducible(real_loops):
    X, _, _ = real_loops
    a = kmeans_pca(X[::3], 5, n_components=8)
    b = kmeans_pca(X[::3], 5, n_components=8)
    np.testing.assert_array_equal(a.labels, b.labels)
    h = loop_height(X[::3])
    means = [h[a.labels == k].mean() for k in range(5)]
    assert means == sorted(means, reverse=True)


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------
def test_bad_inputs_raise_one_line_errors():
    X = _low_rank()
    X[3, 4] = np.nan
    with pytest.raises(DataError, match=r"holds 1 NaN/Inf value\(s\); clean it first"):
        pca(X)
    with pytest.raises(DataError, match="NaN/Inf"):
        DivisiveKMeans().fit(X)
    with pytest.raises(ConfigError, match=r"n_components must be an integer >= 1 and <= 12, got 20"):
        pca(_low_rank(), 20)
    with pytest.raises(ConfigError, match="svd_solver must be one of"):
        pca(_low_rank(), 2, svd_solver="magic")
    with pytest.raises(DataError, match="shape"):
        nmf(np.zeros(5))
    ds = make_dataset({"piezoresponse": np.zeros((3, 3, 8))}, np.arange(8))
    with pytest.raises(DataError, match="without a channel name"):
        pca(ds)
    with pytest.raises(DataError, match="'resonance' is not in the data"):
        decompose_dataset(ds, DecompositionConfig(channel="resonance"))
    with pytest.raises(DataError, match="split_data has 4 pixels but X has 5"):
        DivisiveKMeans(n_clusters=2, n_subclusters=(1, 1)).fit(np.ones((5, 3)), split_data=np.ones((4, 3)))


# ------------------------------------------------------------------------------------------------
# config
# ------------------------------------------------------------------------------------------------
def test_config_registered_validated_and_from_toml_lists():
    assert STAGE_CONFIGS["decomposition"] is DecompositionConfig
    c = DecompositionConfig.from_dict({"n_subclusters": [3, 2], "extra_channels": ["resonance"]})
    assert c.n_subclusters == (3, 2) and c.extra_channels == ("resonance",)
    p = DecompositionConfig.preset("paper")
    assert (p.n_pca, p.n_nmf, p.n_subclusters, p.kmeans_pca_method) == (16, 4, (5, 4), "divisive")
    with pytest.raises(ConfigError, match=r"\[decomposition\] n_subclusters must be a list of 3 integers"):
        DecompositionConfig(n_top_clusters=3)
    with pytest.raises(ConfigError, match=r"\[decomposition\] channel must be one of"):
        DecompositionConfig(channel="height")
    with pytest.raises(ConfigError, match=r"\[decomposition\] n_pca must be an integer >= 1 and <= 1000, got 0"):
        DecompositionConfig(n_pca=0)
    with pytest.raises(ConfigError, match="pca_solver"):
        DecompositionConfig(pca_solver="svd")


# ------------------------------------------------------------------------------------------------
# Dataset level: synthetic ground truth, stage, figures
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic():
    from switchscope.synthetic import make_dataset as make_synthetic

    return make_synthetic(48, 48, seed=0, artifacts=False)


@pytest.fixture(scope="module")
def synthetic_decomposed(synthetic):
    summary: dict = {}
    out = decompose_dataset(synthetic, DecompositionConfig(n_init=4, extra_channels=("resonance",)),
                            summary=summary)
    return out, summary


def test_synthetic_top_split_recovers_truth_domain(synthetic, synthetic_decomposed):
    out, summary = synthetic_decomposed
    truth = synthetic["truth_domain"].values.ravel()
    top = out["cluster_divisive_top"].values.ravel()
    ari = adjusted_rand_score(truth, top)
    assert ari >= 0.9  # measured 0.96 on 60x60, seed 0
    assert summary["ari_top_vs_truth_domain"] == pytest.approx(ari, abs=1e-4)
    # label 0 (larger loops) is the c/a band, truth_domain 0
    assert np.mean(top == truth) > 0.95


def test_synthetic_subclusters_separate_three_state_better_than_chance(synthetic, synthetic_decomposed):
    out, summary = synthetic_decomposed
    ts = synthetic["truth_three_state"].values.ravel()
    sub = out["cluster_divisive"].values.ravel()
    top = out["cluster_divisive_top"].values.ravel()

    def eta2_within(labels):  # fraction of three-state variance inside each top cluster explained
        tot = res = 0.0
        for g in (0, 1):
            v, lab = ts[top == g], labels[top == g]
            tot += ((v - v.mean()) ** 2).sum()
            res += sum(((v[lab == k] - v[lab == k].mean()) ** 2).sum() for k in np.unique(lab))
        return 1 - res / tot

    observed = eta2_within(sub)
    rng = np.random.default_rng(0)
    null = []
    for _ in range(30):
        perm = sub.copy()
        for g in (0, 1):
            idx = np.flatnonzero(top == g)
            perm[idx] = rng.permutation(sub[idx])
        null.append(eta2_within(perm))
    # measured: 0.64 against a shuffled-label maximum of 0.005 (60x60, seed 0)
    assert observed > 0.4
    assert observed > 20 * max(null)
    assert summary["eta2_three_state_by_subcluster_within_top"] == pytest.approx(observed, abs=1e-4)


def test_decompose_dataset_adds_contract_variables_and_keeps_inputs(synthetic, synthetic_decomposed):
    out, _ = synthetic_decomposed
    for name in synthetic.data_vars:
        xr.testing.assert_identical(out[name], synthetic[name])
    dims = {
        "pca_scores": ("row", "col", "pca_component"),
        "pca_components": ("pca_component", "step"),
        "pca_explained_variance": ("pca_component",),
        "nmf_abundances": ("row", "col", "nmf_component"),
        "nmf_components": ("nmf_component", "step"),
        "cluster_divisive": ("row", "col"),
        "cluster_divisive_top": ("row", "col"),
        "cluster_kmeans_pca": ("row", "col"),
        "pca_scores_resonance": ("row", "col", "pca_component"),
        "cluster_divisive_resonance": ("row", "col"),
    }
    for name, d in dims.items():
        assert out[name].dims == d, name
    assert out.sizes["pca_component"] == 16 and out.sizes["nmf_component"] == 4
    assert np.issubdtype(out["cluster_divisive"].dtype, np.integer)
    assert out["pca_scores"].attrs["channel"] == "piezoresponse"
    assert sorted(np.unique(out["cluster_divisive"]).tolist()) == list(range(9))
    # the PCA scores reproduce the curves they came from
    X = synthetic["piezoresponse"].values.reshape(-1, synthetic.sizes["step"])
    rec = out["pca_scores"].values.reshape(X.shape[0], -1) @ out["pca_components"].values + out["pca_mean"].values
    assert np.linalg.norm(rec - X) / np.linalg.norm(X - X.mean(0)) < 0.05


def test_decompose_dataset_prefers_clean_and_interpolates_raw_nans(real_loops):
    X, v, raw = real_loops
    ds = make_dataset({"piezoresponse": raw}, v)
    cfg = DecompositionConfig(n_init=1, n_pca=4, n_nmf=2, nmf_max_iter=50, n_subclusters=(2, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        with pytest.warns(DataWarning, match="3 NaN/Inf value"):
            out_raw = decompose_dataset(ds, cfg)
    assert out_raw["cluster_divisive"].attrs["source"] == "piezoresponse"
    clean = ds.assign(piezoresponse_clean=(("row", "col", "step"), X.reshape(raw.shape)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", category=DataWarning)
        warnings.simplefilter("ignore", category=UserWarning)
        out = decompose_dataset(clean, cfg)
    assert out["cluster_divisive"].attrs["source"] == "piezoresponse_clean"
    np.testing.assert_array_equal(out["piezoresponse"].values, ds["piezoresponse"].values)  # NaNs kept
    np.testing.assert_allclose(out["pca_explained_variance"].values, out_raw["pca_explained_variance"].values,
                               rtol=1e-6)


def test_stage_writes_summary_and_figures(tmp_path: Path):
    from switchscope.synthetic import make_dataset as make_synthetic

    ds = make_synthetic(20, 20, seed=1)  # with artifacts: raw NaNs are interpolated with a warning
    ctx = RunContext(workdir=tmp_path, seed=5)
    cfg = DecompositionConfig(n_init=2, n_pca=6, nmf_max_iter=200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = stage(ds, cfg, ctx)
    s = ctx.summary["decomposition"]
    json.dumps(s)  # JSON-serialisable
    assert s["seed"] == 5 and len(s["pca_explained_variance_ratio"]) == 6
    assert sum(s["divisive_top_sizes"]) == 400
    assert not (tmp_path / "report").exists()  # the stage computes; the report draws
    from switchscope.report.figures import decomposition as figures

    drawn = figures.draw(out, tmp_path)
    assert {p.name for _, p in drawn} == {f"{n}.png" for n in ("pca", "nmf", "clusters_divisive",
                                                                 "clusters_kmeans_pca")}
    for _, png in drawn:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "cluster_divisive" in out and "cluster_divisive" not in ds
    # the same config and seed give the same labels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = decompose_dataset(ds, cfg, seed=5)
    np.testing.assert_array_equal(again["cluster_divisive"].values, out["cluster_divisive"].values)


def test_figures_need_decomposition_results(tmp_path):
    from switchscope.report.figures.decomposition import plot_clusters, plot_pca

    ds = make_dataset({"piezoresponse": np.zeros((3, 3, 8))}, np.arange(8))
    with pytest.raises(DataError, match="run switchscope.decomposition.decompose_dataset first"):
        plot_pca(ds, tmp_path / "x.png")
    with pytest.raises(DataError, match="cluster_divisive"):
        plot_clusters(ds, tmp_path / "x.png")


def test_divisive_kmeans_function_on_dataset_with_split_channel(synthetic):
    r = divisive_kmeans(synthetic, channel="resonance", split_channel="piezoresponse",
                        n_subclusters=(2, 2), n_init=2)
    truth = synthetic["truth_domain"].values.ravel()
    assert adjusted_rand_score(truth, r.top_labels) >= 0.9  # the split used the piezoresponse
    d = r.to_dataset()
    assert d["cluster_divisive"].dims == ("row", "col") and d["cluster_divisive_top"].dims == ("row", "col")
    with pytest.raises(ConfigError, match="split_channel needs a Dataset"):
        divisive_kmeans(np.ones((4, 3)), split_channel="piezoresponse")


def test_paper_pca_clustering_is_divisive_on_scores_with_the_same_top_split():
    from switchscope.synthetic import make_dataset as make_synthetic

    ds = make_synthetic(24, 24, seed=3, artifacts=False)
    cfg = DecompositionConfig.preset("paper", n_init=2, nmf_max_iter=100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = decompose_dataset(ds, cfg)
    top = out["cluster_divisive_top"].values.ravel()
    labels = out["cluster_kmeans_pca"].values.ravel()
    parent = out["cluster_kmeans_pca"].attrs["parent"]
    # ids 0..4 inside the c/a-like top cluster, 5..8 inside the other, as for cluster_divisive
    np.testing.assert_array_equal(parent[labels], top)
    assert np.unique(labels).size == 9
    h = loop_height(ds["piezoresponse"].values.reshape(top.size, -1))
    for p in (0, 1):
        ids = np.flatnonzero(parent == p)
        means = [h[labels == k].mean() for k in ids]
        assert means == sorted(means, reverse=True)
