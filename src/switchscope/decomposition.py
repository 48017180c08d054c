"""Linear baselines: PCA, NMF and the paper's divisive k-means over loops (DESIGN section 2.4).

These are the references the autoencoder is judged against, so they follow the paper
(Agar et al., Nat. Commun. 10, 4809 (2019), and its published analysis code):

* **PCA**: 16 components of the cleaned curves; score maps and components.
* **NMF**: 4 components of the curves shifted by their global minimum (NMF needs non-negative data).
* **Divisive k-means**: every step is standardized over all pixels (zero mean, unit variance per
  step, as scikit-learn's ``StandardScaler``); k-means with 2 clusters on the standardized
  piezoresponse splits the c/a bands from the a1/a2 bands; then each of the two is clustered again
  (5 sub-clusters in the c/a band, 4 in the a1/a2 band in the paper), on the standardized curves of
  the analysed channel, with the scaler fitted on all pixels.
* **k-means on PCA scores**: a flat k-means of the PCA scores; the paper's variant (the divisive
  k-means with the sub-clusters found on the standardized PCA scores) is ``method="divisive"``.

Everything wraps scikit-learn and is deterministic for a given seed. Cluster labels are made
stable: the top-level clusters are ordered by decreasing mean loop height (so label 0 is the
c/a-like band of larger out-of-plane response), the sub-clusters likewise inside each top cluster
and numbered globally (0..4 inside top cluster 0, 5..8 inside top cluster 1 with the defaults).

Functions accept a Dataset (with ``channel=``) or an ``(n_pixels, n_steps)`` array and return
frozen result objects whose ``to_dataset()`` gives the variables of the data model;
:func:`decompose_dataset` adds all of them to a Dataset and :func:`stage` is the pipeline stage.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from typing import Any, Literal, Sequence

import numpy as np
import xarray as xr
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.decomposition import NMF, PCA, IncrementalPCA
from sklearn.exceptions import ConvergenceWarning as _SkConvergenceWarning

from ._baselines import compare, mean_loop_mse
from ._config import StageConfig, register
from ._context import RunContext
from ._dataset import CHANNELS
from ._errors import ConfigError, ConvergenceWarning, DataError, DataWarning, NotFittedError
from ._grid import flatten, unflatten

__all__ = [
    "ClusterResult",
    "DecompositionConfig",
    "DivisiveKMeans",
    "NMFResult",
    "PCAResult",
    "decompose_dataset",
    "divisive_kmeans",
    "kmeans_pca",
    "loop_height",
    "neighbour_agreement",
    "nmf",
    "pca",
    "stage",
]

SvdSolver = Literal["auto", "full", "covariance_eigh", "randomized", "incremental"]
NmfInit = Literal["nndsvda", "nndsvd", "nndsvdar", "random"]
KMeansAlgorithm = Literal["lloyd", "elkan", "minibatch"]
PcaClusterMethod = Literal["kmeans", "divisive"]

_SVD_SOLVERS = ("auto", "full", "covariance_eigh", "randomized", "incremental")
_NMF_INITS = ("nndsvda", "nndsvd", "nndsvdar", "random")
_KMEANS_ALGORITHMS = ("lloyd", "elkan", "minibatch")
_PCA_CLUSTER_METHODS = ("kmeans", "divisive")


# ------------------------------------------------------------------------------------------------
# input handling
# ------------------------------------------------------------------------------------------------
def _as_matrix(data: Any, channel: str | None, what: str = "data") -> tuple[np.ndarray, tuple[int, ...] | None]:
    """``(X float64 (n_pixels, n_steps), grid)`` with every value finite, or a DataError."""
    X, grid = flatten(data, channel)
    X = np.asarray(X)
    if not np.issubdtype(X.dtype, np.number):
        raise DataError(f"{what} must be numeric, got dtype {X.dtype}; convert it to float")
    X = np.ascontiguousarray(X, dtype=np.float64)
    if X.shape[0] < 2 or X.shape[1] < 1:
        raise DataError(f"{what} has shape {X.shape}; give at least 2 pixels and 1 step")
    bad = ~np.isfinite(X)
    if bad.any():
        label = f"channel {channel!r}" if channel else what
        raise DataError(
            f"{label} holds {int(bad.sum())} NaN/Inf value(s); clean it first "
            "(switchscope.preprocess.clean, or the 'clean' stage) or fill them"
        )
    return X, grid


def _check_int(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if ok and value >= lo and (hi is None or value <= hi):
        return int(value)
    rng = f">= {lo}" + (f" and <= {hi}" if hi is not None else "")
    raise ConfigError(f"{name} must be an integer {rng}, got {value!r}")


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def loop_height(X: Any) -> np.ndarray:
    """Robust height of each curve: its 95th minus its 5th percentile.

    Used to order clusters (larger response first). Percentiles instead of max - min so that a
    single spike does not decide the order.

    Parameters
    ----------
    X : array of shape (n_pixels, n_steps)

    Returns
    -------
    ndarray of shape (n_pixels,)
    """
    X = np.asarray(X, dtype=float)
    lo, hi = np.percentile(X, [5.0, 95.0], axis=1)
    return hi - lo


def _order_labels(labels: np.ndarray, key: np.ndarray, n: int) -> np.ndarray:
    """Renumber labels ``0..n-1`` by decreasing mean of ``key`` over each label (ties: by size)."""
    means = np.array([key[labels == k].mean() if np.any(labels == k) else -np.inf for k in range(n)])
    sizes = np.bincount(labels, minlength=n)
    order = np.lexsort((-sizes, -means))  # primary: mean key, descending
    new = np.empty(n, dtype=np.int64)
    new[order] = np.arange(n)
    return new[labels]


def neighbour_agreement(label_map: Any) -> tuple[float, float]:
    """Spatial coherence of a label map: how often 4-neighbours share a label, and chance.

    Parameters
    ----------
    label_map : array of shape (rows, cols), int

    Returns
    -------
    observed : float
        Fraction of horizontally or vertically adjacent pixel pairs with equal labels.
    chance : float
        The same fraction expected for a spatially random map with the same label counts,
        ``sum_k p_k**2``.
    """
    g = np.asarray(label_map)
    if g.ndim != 2 or min(g.shape) < 2:
        raise DataError(f"label_map must be a 2-D grid of at least 2x2 pixels, got shape {g.shape}")
    same = np.concatenate([(g[1:] == g[:-1]).ravel(), (g[:, 1:] == g[:, :-1]).ravel()])
    _, counts = np.unique(g, return_counts=True)
    p = counts / counts.sum()
    return float(same.mean()), float(np.sum(p**2))


def _grid_da(values: np.ndarray, grid: tuple[int, ...] | None, extra: tuple[str, ...] = (),
             attrs: dict | None = None) -> xr.DataArray:
    arr = unflatten(values, grid)
    dims = (("row", "col") if grid is not None else ("pixel",)) + extra
    return xr.DataArray(arr, dims=dims, attrs=attrs or {})


def _sk_warnings_as_ours(caught: list[warnings.WarningMessage], what: str) -> None:
    for w in caught:
        if issubclass(w.category, _SkConvergenceWarning):
            warnings.warn(f"{what} did not converge ({w.message}); raise max_iter", ConvergenceWarning,
                          stacklevel=3)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


# ------------------------------------------------------------------------------------------------
# PCA
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PCAResult:
    """Principal components of a set of curves.

    Attributes
    ----------
    scores : ndarray of shape (n_pixels, n_components)
        Projection of each centred curve on each component.
    components : ndarray of shape (n_components, n_steps)
        Orthonormal components; each has its largest-magnitude entry positive.
    explained_variance : ndarray of shape (n_components,)
        Variance along each component (``S**2 / (n_pixels - 1)``).
    explained_variance_ratio : ndarray of shape (n_components,)
        Fraction of the total variance.
    mean : ndarray of shape (n_steps,)
        Mean curve removed before the decomposition.
    grid : tuple of int or None
        ``(rows, cols)`` when the input was a grid.
    channel : str or None
    solver : str
        The solver that ran.
    """

    scores: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray
    mean: np.ndarray
    grid: tuple[int, ...] | None
    channel: str | None
    solver: str

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    def reconstruct(self, n_components: int | None = None) -> np.ndarray:
        """Curves rebuilt from the first ``n_components``, shape ``(n_pixels, n_steps)``."""
        k = self.n_components if n_components is None else _check_int("n_components", n_components, 1,
                                                                       self.n_components)
        return self.scores[:, :k] @ self.components[:k] + self.mean

    def to_dataset(self, suffix: str = "") -> xr.Dataset:
        """``pca_scores``, ``pca_components``, ``pca_explained_variance(_ratio)``, ``pca_mean``."""
        units = CHANNELS.get(self.channel or "", "")
        meta = {"channel": self.channel or "", "solver": self.solver}
        k = np.arange(self.n_components)
        return xr.Dataset(
            {
                f"pca_scores{suffix}": _grid_da(self.scores, self.grid, ("pca_component",),
                                                {**meta, "units": units, "long_name": "PCA score"}),
                f"pca_components{suffix}": xr.DataArray(self.components, dims=("pca_component", "step"),
                                                        attrs={**meta, "long_name": "PCA component"}),
                f"pca_explained_variance{suffix}": xr.DataArray(
                    self.explained_variance, dims=("pca_component",),
                    attrs={**meta, "units": f"({units})^2" if units else "", "long_name": "explained variance"}),
                f"pca_explained_variance_ratio{suffix}": xr.DataArray(
                    self.explained_variance_ratio, dims=("pca_component",),
                    attrs={**meta, "units": "1", "long_name": "fraction of variance explained"}),
                f"pca_mean{suffix}": xr.DataArray(self.mean, dims=("step",),
                                                  attrs={**meta, "units": units, "long_name": "mean curve"}),
            },
            coords={"pca_component": k},
        )


def _fix_signs(components: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # sklearn's sign convention depends on the solver; one convention for all keeps maps comparable.
    idx = np.argmax(np.abs(components), axis=1)
    s = np.sign(components[np.arange(components.shape[0]), idx])
    s[s == 0] = 1.0
    return components * s[:, None], scores * s[None, :]


def pca(data: Any, n_components: int = 16, *, channel: str | None = None,
        svd_solver: SvdSolver = "auto", batch_size: int | None = None,
        random_state: int | None = 0) -> PCAResult:
    """Principal component analysis of curves (``sklearn.decomposition.PCA``).

    Parameters
    ----------
    data : xarray.Dataset, DataArray or array of shape (n_pixels, n_steps) or (rows, cols, steps)
        The curves; a Dataset needs ``channel``.
    n_components : int, default 16
        Components to keep (the paper: 16); at most ``min(n_pixels, n_steps)``.
    channel : str, optional
        Variable of a Dataset.
    svd_solver : {"auto", "full", "covariance_eigh", "randomized", "incremental"}, default "auto"
        scikit-learn's solver; ``"auto"`` picks the covariance eigen-solver for tall data (many
        pixels, few steps), which is exact and the fastest there. ``"incremental"`` uses
        ``IncrementalPCA`` in batches of ``batch_size`` pixels (bounded memory).
    batch_size : int, optional
        Batch of ``"incremental"`` (default: sklearn's ``5 * n_steps``).
    random_state : int or None, default 0
        Seed of the randomized solver.

    Returns
    -------
    PCAResult

    Examples
    --------
    >>> X = np.random.default_rng(0).normal(size=(100, 8))
    >>> r = pca(X, 8)
    >>> bool(np.allclose(r.reconstruct(), X))
    True
    """
    X, grid = _as_matrix(data, channel)
    n_max = min(X.shape)
    n_components = _check_int("n_components", n_components, 1, n_max)
    _check_choice("svd_solver", svd_solver, _SVD_SOLVERS)
    if svd_solver == "incremental":
        if batch_size is not None:
            batch_size = _check_int("batch_size", batch_size, n_components)
        model: Any = IncrementalPCA(n_components=n_components, batch_size=batch_size)
    else:
        model = PCA(n_components=n_components, svd_solver=svd_solver, random_state=random_state)
    scores = model.fit_transform(X)
    components, scores = _fix_signs(np.asarray(model.components_, dtype=float), scores)
    solver = "incremental" if svd_solver == "incremental" else str(getattr(model, "_fit_svd_solver", svd_solver))
    return PCAResult(scores=scores, components=components,
                     explained_variance=np.asarray(model.explained_variance_, dtype=float),
                     explained_variance_ratio=np.asarray(model.explained_variance_ratio_, dtype=float),
                     mean=np.asarray(model.mean_, dtype=float), grid=grid, channel=channel, solver=solver)


# ------------------------------------------------------------------------------------------------
# NMF
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class NMFResult:
    """Non-negative matrix factorization of min-shifted curves: ``X - shift ≈ abundances @ components``.

    Attributes
    ----------
    abundances : ndarray of shape (n_pixels, n_components)
        Non-negative weight of each endmember at each pixel (in the units of the data).
    components : ndarray of shape (n_components, n_steps)
        Non-negative endmember curves, each scaled to a maximum of 1; ordered by decreasing
        mean abundance.
    shift : float
        The global minimum of the data, subtracted before the factorization (the paper's recipe).
    relative_error : float
        ``||X - shift - W H||_F / ||X - shift||_F``.
    n_iter : int
    grid : tuple of int or None
    channel : str or None
    """

    abundances: np.ndarray
    components: np.ndarray
    shift: float
    relative_error: float
    n_iter: int
    grid: tuple[int, ...] | None
    channel: str | None

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    def reconstruct(self) -> np.ndarray:
        """The curves rebuilt in the data's units, shape ``(n_pixels, n_steps)``."""
        return self.abundances @ self.components + self.shift

    def to_dataset(self, suffix: str = "") -> xr.Dataset:
        """``nmf_abundances`` (row, col, nmf_component) and ``nmf_components`` (nmf_component, step)."""
        units = CHANNELS.get(self.channel or "", "")
        meta = {"channel": self.channel or "", "shift": float(self.shift),
                "relative_error": float(self.relative_error)}
        return xr.Dataset(
            {
                f"nmf_abundances{suffix}": _grid_da(self.abundances, self.grid, ("nmf_component",),
                                                    {**meta, "units": units, "long_name": "NMF abundance"}),
                f"nmf_components{suffix}": xr.DataArray(
                    self.components, dims=("nmf_component", "step"),
                    attrs={**meta, "units": "1", "long_name": "NMF endmember (max 1)"}),
            },
            coords={"nmf_component": np.arange(self.n_components)},
        )


def nmf(data: Any, n_components: int = 4, *, channel: str | None = None, init: NmfInit = "nndsvda",
        max_iter: int = 1000, tol: float = 1e-4, random_state: int | None = 0) -> NMFResult:
    """Non-negative matrix factorization of curves shifted by their global minimum.

    Parameters
    ----------
    data : xarray.Dataset, DataArray or array of shape (n_pixels, n_steps) or (rows, cols, steps)
    n_components : int, default 4
        Endmembers (the paper: 4).
    channel : str, optional
        Variable of a Dataset.
    init : {"nndsvda", "nndsvd", "nndsvdar", "random"}, default "nndsvda"
        scikit-learn's initialization. The paper used ``"random"``; the SVD-based default
        converges in fewer iterations and does not depend on the seed.
    max_iter : int, default 1000
    tol : float, default 1e-4
        scikit-learn's relative stopping tolerance. On the 3600 real loops 1e-4 stops after ~500
        iterations with a relative error of 0.0285 (the paper's settings: 0.0290 after 200);
        1e-3 stops after ~100 iterations at 0.0290, but on 250k synthetic loops it ends at 0.0431
        against the paper's 0.0417 (benchmarks/bench_decomposition.py).
    random_state : int or None, default 0

    Returns
    -------
    NMFResult

    Warns
    -----
    ConvergenceWarning
        The solver stopped at ``max_iter``.
    """
    X, grid = _as_matrix(data, channel)
    n_components = _check_int("n_components", n_components, 1, min(X.shape))
    _check_choice("init", init, _NMF_INITS)
    max_iter = _check_int("max_iter", max_iter, 1)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol > 0:
        raise ConfigError(f"tol must be a number > 0, got {tol!r}")
    shift = float(X.min())
    Xs = X - shift
    # The solver's stopping rule and tiny-value guards assume values near 1; raw loops are ~1e-4.
    top = float(Xs.max())
    unit = top if top > 0 else 1.0
    Xs = Xs / unit
    model = NMF(n_components=n_components, init=init, max_iter=max_iter, tol=tol, random_state=random_state)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        W = model.fit_transform(Xs)
    _sk_warnings_as_ours(caught, f"NMF ({n_components} components)")
    W = W * unit
    Xs = Xs * unit
    H = np.asarray(model.components_, dtype=float)
    # Scale freedom: put the units into the abundances, keep endmembers in [0, 1].
    scale = H.max(axis=1)
    scale[scale <= 0] = 1.0
    H = H / scale[:, None]
    W = W * scale[None, :]
    order = np.argsort(-W.mean(axis=0), kind="stable")
    W, H = W[:, order], H[order]
    norm = np.linalg.norm(Xs)
    rel = float(np.linalg.norm(Xs - W @ H) / norm) if norm > 0 else 0.0
    return NMFResult(abundances=W, components=H, shift=shift, relative_error=rel,
                     n_iter=int(model.n_iter_), grid=grid, channel=channel)


# ------------------------------------------------------------------------------------------------
# Clustering
# ------------------------------------------------------------------------------------------------
def _standardize(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-step standardization over all pixels (``StandardScaler``); constant steps keep scale 1."""
    mean = X.mean(axis=0)
    std = X.std(axis=0)
    std[std == 0] = 1.0
    return (X - mean) / std, mean, std


def _make_kmeans(n_clusters: int, algorithm: str, n_init: int, random_state: Any, batch_size: int) -> Any:
    if algorithm == "minibatch":
        return MiniBatchKMeans(n_clusters=n_clusters, n_init=n_init, random_state=random_state,
                               batch_size=batch_size)
    return KMeans(n_clusters=n_clusters, n_init=n_init, random_state=random_state, algorithm=algorithm)


class DivisiveKMeans(ClusterMixin, BaseEstimator):
    """The paper's divisive k-means: a top-level split, then k-means inside each top cluster.

    The top split runs on ``split_data`` (the paper: the piezoresponse loops), the sub-clusters on
    ``X`` (the analysed channel, or its PCA scores). Both are standardized per step over all
    pixels first, as the paper does. Top clusters are ordered by decreasing mean loop height of
    the split data (label 0 = larger response, the c/a-like band of the paper's film), sub-clusters
    by decreasing mean loop height of ``X`` inside their top cluster; sub-cluster ids are global.

    Parameters
    ----------
    n_clusters : int, default 2
        Top-level clusters.
    n_subclusters : sequence of int, default (5, 4)
        Sub-clusters inside top cluster 0, 1, ... (one entry per top cluster; 1 = no split). The
        paper: 5 in the c/a band, 4 in the a1/a2 band.
    standardize : bool, default True
        Standardize every step over all pixels before clustering.
    n_init : int, default 10
        k-means restarts (best inertia wins).
    algorithm : {"lloyd", "elkan", "minibatch"}, default "lloyd"
        ``KMeans`` algorithm, or ``MiniBatchKMeans`` for very many pixels.
    batch_size : int, default 4096
        Batch of ``"minibatch"``.
    random_state : int or None, default 0

    Attributes
    ----------
    labels_ : ndarray of shape (n_pixels,)
        Global sub-cluster id of each pixel.
    top_labels_ : ndarray of shape (n_pixels,)
        Top-level cluster of each pixel.
    parent_ : ndarray of shape (n_subclusters_total_,)
        Top cluster of each sub-cluster id.
    n_subclusters_ : tuple of int
        Sub-clusters found inside each top cluster (smaller than asked when a top cluster has
        fewer pixels).
    top_model_, sub_models_ : fitted scikit-learn estimators (on the standardized data)

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = np.r_[rng.normal(0, 1, (50, 4)), rng.normal(8, 1, (50, 4))]
    >>> model = DivisiveKMeans(n_clusters=2, n_subclusters=(2, 2), random_state=0).fit(X)
    >>> sorted(np.bincount(model.top_labels_).tolist())
    [50, 50]
    """

    def __init__(self, n_clusters: int = 2, n_subclusters: Sequence[int] = (5, 4), *,
                 standardize: bool = True, n_init: int = 10, algorithm: KMeansAlgorithm = "lloyd",
                 batch_size: int = 4096, random_state: int | None = 0) -> None:
        self.n_clusters = n_clusters
        self.n_subclusters = n_subclusters
        self.standardize = standardize
        self.n_init = n_init
        self.algorithm = algorithm
        self.batch_size = batch_size
        self.random_state = random_state

    def _check_params(self) -> tuple[int, tuple[int, ...]]:
        owner = type(self).__name__
        k = _check_int(f"{owner}.n_clusters", self.n_clusters, 1)
        subs = self.n_subclusters
        if isinstance(subs, (int, np.integer)) and not isinstance(subs, bool):
            subs = (int(subs),) * k
        try:
            subs = tuple(_check_int(f"{owner}.n_subclusters[{i}]", s, 1) for i, s in enumerate(subs))
        except TypeError:
            raise ConfigError(f"{owner}.n_subclusters must be a sequence of integers >= 1, "
                              f"got {self.n_subclusters!r}") from None
        if len(subs) != k:
            raise ConfigError(f"{owner}.n_subclusters must have one entry per top cluster "
                              f"(n_clusters={k}), got {self.n_subclusters!r}")
        _check_int(f"{owner}.n_init", self.n_init, 1)
        _check_int(f"{owner}.batch_size", self.batch_size, 1)
        _check_choice(f"{owner}.algorithm", self.algorithm, _KMEANS_ALGORITHMS)
        return k, subs

    def _prepare(self, X: Any, what: str) -> np.ndarray:
        X, _ = _as_matrix(X, None, what)
        return X

    def fit(self, X: Any, y: Any = None, *, split_data: Any = None, height: Any = None) -> DivisiveKMeans:
        """Cluster the pixels.

        Parameters
        ----------
        X : array of shape (n_pixels, n_features)
            Curves (or PCA scores) for the sub-clusters.
        y : ignored
        split_data : array of shape (n_pixels, n_steps), optional
            Curves for the top-level split (default ``X``).
        height : array of shape (n_pixels,), optional
            Value whose cluster means order the sub-clusters (default: :func:`loop_height` of
            ``X``; give the curves' loop height when ``X`` holds PCA scores).

        Returns
        -------
        self
        """
        k, subs = self._check_params()
        X = self._prepare(X, "X")
        S = X if split_data is None else self._prepare(split_data, "split_data")
        if S.shape[0] != X.shape[0]:
            raise DataError(f"split_data has {S.shape[0]} pixels but X has {X.shape[0]}; "
                            "give one row per pixel in both")
        if X.shape[0] < k:
            raise DataError(f"cannot make {k} clusters of {X.shape[0]} pixels; give more pixels "
                            "or fewer clusters")
        Xz, self.mean_, self.scale_ = _standardize(X) if self.standardize else (X, np.zeros(X.shape[1]),
                                                                                 np.ones(X.shape[1]))
        Sz, self.split_mean_, self.split_scale_ = (
            _standardize(S) if self.standardize else (S, np.zeros(S.shape[1]), np.ones(S.shape[1])))
        rs = self.random_state
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            top = _make_kmeans(k, self.algorithm, self.n_init, rs, self.batch_size).fit(Sz)
            raw_top = top.labels_.astype(np.int64)
            top_labels = _order_labels(raw_top, loop_height(S), k)
            # Map ordered label -> the fitted model's own label, for predict().
            self._top_map = np.zeros(k, dtype=np.int64)
            self._top_map[raw_top] = top_labels  # fitted label -> ordered label
            if height is None:
                height = loop_height(X) if X.shape[1] > 1 else X[:, 0]
            else:
                height = np.asarray(height, dtype=float).ravel()
                if height.shape[0] != X.shape[0]:
                    raise DataError(f"height has {height.shape[0]} values but X has {X.shape[0]} pixels; "
                                    "give one value per pixel")
            labels = np.empty(X.shape[0], dtype=np.int64)
            sub_models: list[Any] = []
            sub_maps: list[np.ndarray] = []
            n_found: list[int] = []
            offset = 0
            for t in range(k):
                idx = np.flatnonzero(top_labels == t)
                n_sub = min(subs[t], idx.size)
                if n_sub < subs[t]:
                    warnings.warn(f"top cluster {t} has only {idx.size} pixel(s); making {n_sub} "
                                  f"sub-cluster(s) instead of {subs[t]}", DataWarning, stacklevel=2)
                if n_sub <= 1:
                    local = np.zeros(idx.size, dtype=np.int64)
                    model = None
                    local_map = np.zeros(1, dtype=np.int64)
                else:
                    model = _make_kmeans(n_sub, self.algorithm, self.n_init, rs, self.batch_size).fit(Xz[idx])
                    raw = model.labels_.astype(np.int64)
                    local = _order_labels(raw, height[idx], n_sub)
                    local_map = np.zeros(n_sub, dtype=np.int64)
                    local_map[raw] = local
                labels[idx] = local + offset
                sub_models.append(model)
                sub_maps.append(local_map + offset)
                n_found.append(max(n_sub, 1) if idx.size else 0)
                offset += n_found[-1]
        _sk_warnings_as_ours([w for w in caught if w.category is not DataWarning], "k-means")
        for w in caught:
            if w.category is DataWarning:
                warnings.warn(w.message, DataWarning, stacklevel=2)
        self.top_model_ = top
        self.sub_models_ = sub_models
        self._sub_maps = sub_maps
        self.top_labels_ = top_labels
        self.labels_ = labels
        self.n_subclusters_ = tuple(n_found)
        self.parent_ = np.repeat(np.arange(k), n_found)
        self.n_features_in_ = X.shape[1]
        return self

    def fit_predict(self, X: Any, y: Any = None, *, split_data: Any = None, height: Any = None) -> np.ndarray:
        """Fit and return ``labels_``."""
        return self.fit(X, split_data=split_data, height=height).labels_

    def predict(self, X: Any, *, split_data: Any = None) -> np.ndarray:
        """Global sub-cluster id of new pixels (standardized with the training statistics).

        Parameters
        ----------
        X : array of shape (n_pixels, n_features)
        split_data : array of shape (n_pixels, n_steps), optional

        Returns
        -------
        ndarray of shape (n_pixels,)
        """
        if not hasattr(self, "labels_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(X) first")
        X = self._prepare(X, "X")
        S = X if split_data is None else self._prepare(split_data, "split_data")
        if X.shape[1] != self.n_features_in_:
            raise DataError(f"X has {X.shape[1]} features but the model was fitted with "
                            f"{self.n_features_in_}; give curves of the same length")
        top = self._top_map[self.top_model_.predict((S - self.split_mean_) / self.split_scale_)]
        Xz = (X - self.mean_) / self.scale_
        out = np.empty(X.shape[0], dtype=np.int64)
        for t, (model, smap) in enumerate(zip(self.sub_models_, self._sub_maps)):
            idx = np.flatnonzero(top == t)
            if idx.size == 0:
                continue
            out[idx] = smap[0] if model is None else smap[model.predict(Xz[idx])]
        return out


@dataclasses.dataclass(frozen=True)
class ClusterResult:
    """Cluster labels of every pixel.

    Attributes
    ----------
    name : str
        Variable name is ``cluster_<name>``.
    labels : ndarray of shape (n_pixels,), int
    top_labels : ndarray of shape (n_pixels,), int, or None
        Top-level split of a divisive clustering.
    grid : tuple of int or None
    channel : str or None
    model : fitted estimator
    """

    name: str
    labels: np.ndarray
    top_labels: np.ndarray | None
    grid: tuple[int, ...] | None
    channel: str | None
    model: Any

    @property
    def n_clusters(self) -> int:
        return int(self.labels.max()) + 1

    def to_dataset(self, suffix: str = "") -> xr.Dataset:
        """``cluster_<name>`` (row, col) and, for a divisive clustering, ``cluster_<name>_top``."""
        meta: dict[str, Any] = {"channel": self.channel or "", "n_clusters": self.n_clusters}
        if isinstance(self.model, DivisiveKMeans):
            meta["parent"] = np.asarray(self.model.parent_, dtype=np.int64)
        out = {f"cluster_{self.name}{suffix}": _grid_da(self.labels, self.grid, (),
                                                        {**meta, "long_name": f"{self.name} cluster"})}
        if self.top_labels is not None:
            out[f"cluster_{self.name}_top{suffix}"] = _grid_da(
                self.top_labels, self.grid, (),
                {"channel": self.channel or "", "n_clusters": int(self.top_labels.max()) + 1,
                 "long_name": f"{self.name} top-level cluster"})
        return xr.Dataset(out)


def divisive_kmeans(data: Any, *, channel: str | None = None, split_channel: str | None = None,
                    split_data: Any = None, n_clusters: int = 2, n_subclusters: Sequence[int] = (5, 4),
                    n_init: int = 10, algorithm: KMeansAlgorithm = "lloyd",
                    random_state: int | None = 0) -> ClusterResult:
    """The paper's divisive k-means of curves (see :class:`DivisiveKMeans`).

    Parameters
    ----------
    data : xarray.Dataset, DataArray or array of shape (n_pixels, n_steps) or (rows, cols, steps)
        Curves for the sub-clusters; a Dataset needs ``channel``.
    channel : str, optional
        Variable of a Dataset for the sub-clusters.
    split_channel : str, optional
        Variable of the same Dataset for the top split (the paper: piezoresponse).
    split_data : array, optional
        Curves for the top split when ``data`` is an array (default: ``data``).
    n_clusters, n_subclusters, n_init, algorithm, random_state
        As in :class:`DivisiveKMeans`.

    Returns
    -------
    ClusterResult
        ``name="divisive"`` with ``top_labels``.
    """
    X, grid = _as_matrix(data, channel)
    S = None
    if split_channel is not None:
        if not isinstance(data, xr.Dataset):
            raise ConfigError("split_channel needs a Dataset as data; pass split_data=<array> instead")
        S, _ = _as_matrix(data, split_channel)
    elif split_data is not None:
        S, _ = _as_matrix(split_data, None, "split_data")
    model = DivisiveKMeans(n_clusters=n_clusters, n_subclusters=n_subclusters, n_init=n_init,
                           algorithm=algorithm, random_state=random_state).fit(X, split_data=S)
    return ClusterResult(name="divisive", labels=model.labels_, top_labels=model.top_labels_, grid=grid,
                         channel=channel, model=model)


def kmeans_pca(data: Any, n_clusters: int = 9, *, channel: str | None = None, n_components: int = 16,
               scores: PCAResult | None = None, n_init: int = 10, algorithm: KMeansAlgorithm = "lloyd",
               random_state: int | None = 0) -> ClusterResult:
    """k-means of the PCA scores of curves.

    Clusters are ordered by decreasing mean loop height of the curves.

    Parameters
    ----------
    data : xarray.Dataset, DataArray or array of shape (n_pixels, n_steps) or (rows, cols, steps)
    n_clusters : int, default 9
        The default matches the paper's 5 + 4 divisive sub-clusters, for comparison.
    channel : str, optional
    n_components : int, default 16
        PCA components (ignored when ``scores`` is given).
    scores : PCAResult, optional
        A PCA of the same curves, to reuse.
    n_init, algorithm, random_state
        As in :class:`DivisiveKMeans`.

    Returns
    -------
    ClusterResult
        ``name="kmeans_pca"``.
    """
    X, grid = _as_matrix(data, channel)
    n_clusters = _check_int("n_clusters", n_clusters, 1, X.shape[0])
    _check_int("n_init", n_init, 1)
    _check_choice("algorithm", algorithm, _KMEANS_ALGORITHMS)
    if scores is None:
        scores = pca(X, min(n_components, min(X.shape)), random_state=random_state)
    elif scores.scores.shape[0] != X.shape[0]:
        raise DataError(f"scores hold {scores.scores.shape[0]} pixels but data has {X.shape[0]}; "
                        "give the PCA of the same curves")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = _make_kmeans(n_clusters, algorithm, n_init, random_state, 4096).fit(scores.scores)
    _sk_warnings_as_ours(caught, "k-means")
    labels = _order_labels(model.labels_.astype(np.int64), loop_height(X), n_clusters)
    return ClusterResult(name="kmeans_pca", labels=labels, top_labels=None, grid=grid, channel=channel,
                         model=model)


# ------------------------------------------------------------------------------------------------
# Stage
# ------------------------------------------------------------------------------------------------
@register("decomposition")
@dataclasses.dataclass(frozen=True, kw_only=True)
class DecompositionConfig(StageConfig):
    """Options of the ``decomposition`` stage (TOML section ``[decomposition]``).

    Attributes
    ----------
    channel : str, default "piezoresponse"
        Channel for PCA, NMF and the sub-clusters; its variables get the plain names
        (``pca_scores``, ``cluster_divisive``...).
    extra_channels : tuple of str, default ()
        Further channels decomposed the same way; their variables end in ``_<channel>``.
        Channels absent from the data are skipped.
    split_channel : str, default "piezoresponse"
        Channel of the top-level divisive split (the paper: piezoresponse).
    n_pca : int, default 16
    pca_solver : {"auto", "full", "covariance_eigh", "randomized", "incremental"}, default "auto"
    n_nmf : int, default 4
    nmf_init : {"nndsvda", "nndsvd", "nndsvdar", "random"}, default "nndsvda"
    nmf_max_iter : int, default 1000
    nmf_tol : float, default 1e-4
        Stopping tolerance; 1e-3 is ~5x faster for a slightly larger error.
    n_top_clusters : int, default 2
    n_subclusters : tuple of int, default (5, 4)
        Sub-clusters in top cluster 0 (larger loops, c/a-like) and 1 (a1/a2-like).
    kmeans_pca_clusters : int, default 9
    kmeans_pca_method : {"kmeans", "divisive"}, default "kmeans"
        ``"divisive"`` is the paper's "PCA + clustering": the divisive k-means with sub-clusters
        on the standardized PCA scores (then ``kmeans_pca_clusters`` is unused).
    kmeans_algorithm : {"lloyd", "elkan", "minibatch"}, default "lloyd"
    n_init : int, default 10
    seed : int or None, default None
        Seed of every estimator; None uses the run's seed (0 outside a run).
    """

    channel: str = "piezoresponse"
    extra_channels: tuple[str, ...] = ()
    split_channel: str = "piezoresponse"
    n_pca: int = 16
    pca_solver: SvdSolver = "auto"
    n_nmf: int = 4
    nmf_init: NmfInit = "nndsvda"
    nmf_max_iter: int = 1000
    nmf_tol: float = 1e-4
    n_top_clusters: int = 2
    n_subclusters: tuple[int, ...] = (5, 4)
    kmeans_pca_clusters: int = 9
    kmeans_pca_method: PcaClusterMethod = "kmeans"
    kmeans_algorithm: KMeansAlgorithm = "lloyd"
    n_init: int = 10
    seed: int | None = None

    presets = {
        "paper": {
            "channel": "piezoresponse",
            "split_channel": "piezoresponse",
            "n_pca": 16,
            "n_nmf": 4,
            "nmf_init": "random",
            "n_top_clusters": 2,
            "n_subclusters": (5, 4),
            "kmeans_pca_method": "divisive",
            "seed": 42,
        }
    }

    def __post_init__(self) -> None:
        # TOML gives lists; keep the frozen config hashable and comparable.
        for name in ("extra_channels", "n_subclusters"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                object.__setattr__(self, name, tuple(value))
        super().__post_init__()

    def validate(self) -> None:
        channels = tuple(CHANNELS)
        self.check_choice("channel", channels)
        self.check_choice("split_channel", channels)
        if not isinstance(self.extra_channels, tuple) or any(c not in CHANNELS for c in self.extra_channels):
            self._fail("extra_channels", "a list of channels from " + ", ".join(channels), self.extra_channels)
        self.check_number("n_pca", lo=1, hi=1000, integer=True)
        self.check_choice("pca_solver", _SVD_SOLVERS)
        self.check_number("n_nmf", lo=1, hi=100, integer=True)
        self.check_choice("nmf_init", _NMF_INITS)
        self.check_number("nmf_max_iter", lo=1, hi=100_000, integer=True)
        self.check_number("nmf_tol", lo=0, lo_open=True, hi=1)
        self.check_number("n_top_clusters", lo=1, hi=100, integer=True)
        subs = self.n_subclusters
        if (not isinstance(subs, tuple) or len(subs) != self.n_top_clusters
                or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in subs)):
            self._fail("n_subclusters", f"a list of {self.n_top_clusters} integers >= 1 "
                       "(one per top cluster)", subs)
        self.check_number("kmeans_pca_clusters", lo=1, hi=1000, integer=True)
        self.check_choice("kmeans_pca_method", _PCA_CLUSTER_METHODS)
        self.check_choice("kmeans_algorithm", _KMEANS_ALGORITHMS)
        self.check_number("n_init", lo=1, hi=1000, integer=True)
        self.check_number("seed", lo=0, hi=2**32 - 1, integer=True, optional=True)


def _channel_matrix(ds: xr.Dataset, channel: str) -> tuple[np.ndarray, tuple[int, ...] | None, str]:
    """Curves of ``<channel>_clean`` when present, else of the raw channel (NaNs interpolated)."""
    name = f"{channel}_clean" if f"{channel}_clean" in ds else channel
    if name not in ds:
        raise DataError(f"channel {channel!r} is not in the data (has: {', '.join(map(str, ds.data_vars))}); "
                        "choose another with [decomposition] channel")
    X, grid = flatten(ds, name)
    X = np.asarray(X, dtype=np.float64)
    bad = ~np.isfinite(X)
    if bad.any():
        from .preprocess import interpolate_nans

        warnings.warn(f"{name} holds {int(bad.sum())} NaN/Inf value(s); interpolated along the steps "
                      "for the decomposition (run the clean stage first to avoid this)", DataWarning,
                      stacklevel=3)
        X = interpolate_nans(np.where(bad, np.nan, X))
    return X, grid, name


def _eta_squared(values: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None) -> float:
    """Fraction of the variance of ``values`` explained by ``labels`` (within ``groups``)."""
    values = np.asarray(values, dtype=float)
    groups = np.zeros_like(labels) if groups is None else groups
    ss_tot = ss_res = 0.0
    for g in np.unique(groups):
        v, lab = values[groups == g], labels[groups == g]
        ss_tot += float(((v - v.mean()) ** 2).sum())
        for k in np.unique(lab):
            vk = v[lab == k]
            ss_res += float(((vk - vk.mean()) ** 2).sum())
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")


def _decompose_channel(ds: xr.Dataset, channel: str, config: DecompositionConfig, seed: int,
                       suffix: str) -> tuple[xr.Dataset, dict[str, Any]]:
    X, grid, source = _channel_matrix(ds, channel)
    S = X if config.split_channel == channel else _channel_matrix(ds, config.split_channel)[0]
    summary: dict[str, Any] = {"source": source}
    t = time.perf_counter()
    n_pca = min(config.n_pca, *X.shape)
    p = pca(X, n_pca, svd_solver=config.pca_solver, random_state=seed)
    p = dataclasses.replace(p, grid=grid, channel=channel)
    summary["pca_seconds"] = round(time.perf_counter() - t, 4)
    summary["pca_explained_variance_ratio"] = [round(float(v), 6) for v in p.explained_variance_ratio]
    summary["pca_cumulative_ratio"] = round(float(p.explained_variance_ratio.sum()), 6)
    t = time.perf_counter()
    n = nmf(X, min(config.n_nmf, *X.shape), init=config.nmf_init, max_iter=config.nmf_max_iter,
            tol=config.nmf_tol, random_state=seed)
    n = dataclasses.replace(n, grid=grid, channel=channel)
    summary["nmf_seconds"] = round(time.perf_counter() - t, 4)
    summary["nmf_relative_error"] = round(n.relative_error, 6)
    t = time.perf_counter()
    kw = dict(n_clusters=config.n_top_clusters, n_subclusters=config.n_subclusters, n_init=config.n_init,
              algorithm=config.kmeans_algorithm, random_state=seed)
    model = DivisiveKMeans(**kw).fit(X, split_data=S)
    div = ClusterResult("divisive", model.labels_, model.top_labels_, grid, channel, model)
    summary["divisive_seconds"] = round(time.perf_counter() - t, 4)
    t = time.perf_counter()
    if config.kmeans_pca_method == "divisive":
        m2 = DivisiveKMeans(**kw).fit(p.scores, split_data=S, height=loop_height(X))
        kp = ClusterResult("kmeans_pca", m2.labels_, None, grid, channel, m2)
    else:
        kp = kmeans_pca(X, config.kmeans_pca_clusters, scores=p, n_init=config.n_init,
                        algorithm=config.kmeans_algorithm, random_state=seed)
        kp = dataclasses.replace(kp, grid=grid, channel=channel)
    summary["kmeans_pca_seconds"] = round(time.perf_counter() - t, 4)
    summary["baselines"] = _baselines(X, p, n, channel)
    summary["divisive_sizes"] = np.bincount(div.labels).tolist()
    summary["divisive_top_sizes"] = np.bincount(div.top_labels).tolist()  # type: ignore[arg-type]
    summary["kmeans_pca_sizes"] = np.bincount(kp.labels).tolist()
    if grid is not None and min(grid) >= 2:
        obs, chance = neighbour_agreement(unflatten(div.top_labels, grid))
        summary["divisive_top_neighbour_agreement"] = round(obs, 4)
        summary["divisive_top_neighbour_agreement_chance"] = round(chance, 4)
        _truth_scores(ds, div, kp, summary)
    out = xr.merge([p.to_dataset(suffix), n.to_dataset(suffix), div.to_dataset(suffix), kp.to_dataset(suffix)])
    out[f"cluster_divisive{suffix}"].attrs["source"] = source
    return out, summary


def _baselines(X: np.ndarray, p: PCAResult, n: NMFResult, channel: str) -> dict[str, Any]:
    """PCA and NMF reconstruction against the mean loop, as fractions of the variance of ``X``
    (all pixels, on which both were fitted); a DataWarning for a model not clearly better."""
    ml = mean_loop_mse(X, X)
    out: dict[str, Any] = {"evaluated_on": "all pixels (the ones fitted)"}
    for key, res, label in (("pca", p, f"PCA ({p.n_components} components)"),
                            ("nmf", n, f"NMF ({n.n_components} components)")):
        mse = float(np.mean((X - res.reconstruct()) ** 2))
        out[key] = compare(mse, X, mean_loop=ml, model=label, channel=channel)
        if "warning" in out[key]:
            warnings.warn(out[key]["warning"], DataWarning, stacklevel=4)
    return out


def _truth_scores(ds: xr.Dataset, div: ClusterResult, kp: ClusterResult, summary: dict[str, Any]) -> None:
    """Scores against the synthetic ground truth, where the data has it."""
    from sklearn.metrics import adjusted_rand_score

    if "truth_domain" in ds:
        truth = np.asarray(ds["truth_domain"].values).ravel()
        if np.all(np.isfinite(truth)):
            summary["ari_top_vs_truth_domain"] = round(float(adjusted_rand_score(truth, div.top_labels)), 4)
            summary["ari_kmeans_pca_vs_truth_domain"] = round(float(adjusted_rand_score(truth, kp.labels)), 4)
    if "truth_three_state" in ds:
        ts = np.asarray(ds["truth_three_state"].values, dtype=float).ravel()
        if np.all(np.isfinite(ts)):
            summary["eta2_three_state_by_subcluster_within_top"] = round(
                _eta_squared(ts, div.labels, div.top_labels), 4)


def decompose_dataset(ds: xr.Dataset, config: DecompositionConfig | None = None, *,
                      seed: int | None = None, summary: dict[str, Any] | None = None) -> xr.Dataset:
    """PCA, NMF, divisive k-means and k-means of PCA scores of a Dataset's channel(s).

    Uses ``<channel>_clean`` when present, else the raw channel (NaN/Inf interpolated with a
    DataWarning).

    Parameters
    ----------
    ds : xarray.Dataset
        Dims ``(row, col, step)``.
    config : DecompositionConfig, optional
        Defaults when None.
    seed : int, optional
        Used when ``config.seed`` is None (default 0).
    summary : dict, optional
        Filled with key numbers (explained variance, timings, cluster sizes, truth scores).

    Returns
    -------
    xarray.Dataset
        A new Dataset: the input plus ``pca_scores``, ``pca_components``, ``pca_explained_variance``,
        ``pca_explained_variance_ratio``, ``pca_mean``, ``nmf_abundances``, ``nmf_components``,
        ``cluster_divisive``, ``cluster_divisive_top``, ``cluster_kmeans_pca`` (and the same with
        ``_<channel>`` for each extra channel).
    """
    if not isinstance(ds, xr.Dataset):
        raise DataError(f"decompose_dataset needs an xarray.Dataset, got {type(ds).__name__}; "
                        "use pca()/nmf()/divisive_kmeans() for arrays")
    config = DecompositionConfig() if config is None else config
    if not isinstance(config, DecompositionConfig):
        raise ConfigError(f"config must be a DecompositionConfig, got {type(config).__name__}")
    seed = config.seed if config.seed is not None else (0 if seed is None else int(seed))
    summary = {} if summary is None else summary
    summary.update({"channel": config.channel, "split_channel": config.split_channel, "seed": seed})
    new, ch_summary = _decompose_channel(ds, config.channel, config, seed, "")
    summary.update(ch_summary)
    parts = [new]
    for ch in config.extra_channels:
        if ch == config.channel:
            continue
        if ch not in ds and f"{ch}_clean" not in ds:
            warnings.warn(f"extra channel {ch!r} is not in the data; skipped", DataWarning, stacklevel=2)
            continue
        extra, extra_summary = _decompose_channel(ds, ch, config, seed, f"_{ch}")
        parts.append(extra)
        summary[ch] = extra_summary
    added = xr.merge(parts)
    clash = [v for v in added.data_vars if v in ds.data_vars]
    base = ds.drop_vars(clash) if clash else ds
    if clash:
        warnings.warn(f"replacing earlier decomposition results: {', '.join(map(str, clash))}", DataWarning,
                      stacklevel=2)
    return xr.merge([base, added], combine_attrs="override")


def stage(ds: xr.Dataset, config: DecompositionConfig, ctx: RunContext) -> xr.Dataset:
    """Pipeline stage ``decomposition``: :func:`decompose_dataset` and its summary.

    Adds ``ctx.summary["decomposition"]``, with ``baselines`` (per channel): PCA's and NMF's
    reconstruction error against the mean loop's, as fractions of the data variance (see
    :mod:`switchscope._baselines`; a DataWarning and a note in the report when one is not clearly
    better); the report draws ``pca.png``, ``nmf.png``,
    ``clusters_divisive.png`` and ``clusters_kmeans_pca.png`` (plus ``_<channel>`` versions for
    extra channels) from the results.
    """
    summary: dict[str, Any] = {}
    out = decompose_dataset(ds, config, seed=ctx.seed, summary=summary)
    ctx.summary["decomposition"] = summary
    return out
