"""A small k-means (k-means++ seeding, Lloyd iterations) for the loop fitter's priors.

The priors only need a handful of centroids of a few thousand normalized loops; scikit-learn's
``KMeans`` took 70-110 ms of CPU for the 3600 real loops (most of it fixed overhead: thread-pool
inspection, validation, the k-means++ distance updates), more than the fits of the centres it
feeds. This is the same algorithm (greedy k-means++ with ``2 + log(k)`` local trials, Lloyd
until the centres move less than ``tol`` times the data's mean variance, or the labels stop
changing), compiled, ~2 ms here. Its centroids are not bit-identical to scikit-learn's (another
random stream), so the priors, and the few fits they decide, can differ from earlier versions.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_JIT = dict(cache=True, error_model="numpy")
# the distance sums only: reassociation vectorizes them over the steps
_JIT_SUM = dict(cache=True, fastmath={"reassoc", "contract", "nsz"}, error_model="numpy")


@njit(**_JIT_SUM)
def _sqdist(X, i, C, j):
    s = 0.0
    for t in range(X.shape[1]):
        d = X[i, t] - C[j, t]
        s += d * d
    return s


@njit(**_JIT)
def _assign(X, C, labels, dist):
    """Nearest centre of every row; returns how many labels changed."""
    changed = 0
    for i in range(X.shape[0]):
        best, arg = math.inf, 0
        for j in range(C.shape[0]):
            d = _sqdist(X, i, C, j)
            if d < best:
                best, arg = d, j
        if labels[i] != arg:
            changed += 1
        labels[i] = arg
        dist[i] = best
    return changed


@njit(**_JIT)
def _lloyd(X, C, max_iter, tol, labels, dist):
    """Lloyd iterations from the centres ``C`` (updated in place); returns the iterations run."""
    k, m = C.shape
    S = np.empty((k, m))
    cnt = np.empty(k)
    for i in range(X.shape[0]):
        labels[i] = -1
    it = 0
    for it in range(1, max_iter + 1):
        changed = _assign(X, C, labels, dist)
        if changed == 0:
            break
        S[:] = 0.0
        cnt[:] = 0.0
        for i in range(X.shape[0]):
            c = labels[i]
            cnt[c] += 1.0
            for t in range(m):
                S[c, t] += X[i, t]
        shift = 0.0
        for j in range(k):
            if cnt[j] == 0:
                continue            # an empty cluster keeps its centre
            for t in range(m):
                new = S[j, t] / cnt[j]
                shift += (new - C[j, t]) ** 2
                C[j, t] = new
        if shift <= tol:
            _assign(X, C, labels, dist)
            break
    return it


@njit(**_JIT)
def _min_dist(X, C, j, dist):
    """``dist = min(dist, |X - C[j]|^2)`` row by row; returns the new total."""
    tot = 0.0
    for i in range(X.shape[0]):
        d = _sqdist(X, i, C, j)
        if d < dist[i]:
            dist[i] = d
        tot += dist[i]
    return tot


class KMeans:
    """``KMeans(n_clusters, max_iter, tol, random_state).fit(X)``: ``cluster_centers_``,
    ``labels_``, ``n_iter_`` and ``predict(X)``, as scikit-learn's ``KMeans(n_init=1)``."""

    def __init__(self, n_clusters: int = 8, *, max_iter: int = 50, tol: float = 1e-4,
                 random_state: int = 0):
        self.n_clusters = n_clusters
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state

    def fit(self, X: np.ndarray) -> "KMeans":
        X = np.ascontiguousarray(X, dtype=np.float64)
        n = X.shape[0]
        k = min(self.n_clusters, n)
        rng = np.random.default_rng(self.random_state)
        C = np.empty((k, X.shape[1]))
        # greedy k-means++ (Arthur & Vassilvitskii; scikit-learn's 2 + log(k) local trials)
        C[0] = X[rng.integers(n)]
        dist = np.full(n, np.inf)
        pot = _min_dist(X, C, 0, dist)
        trials = 2 + int(np.log(k))
        tmp = np.empty(n)
        for j in range(1, k):
            if not pot > 0:
                C[j] = X[rng.integers(n)]
                continue
            cand = np.searchsorted(np.cumsum(dist), rng.random(trials) * pot)
            cand = np.minimum(cand, n - 1)
            best, best_d, best_pot = -1, None, np.inf
            for c in cand:
                C[j] = X[c]
                tmp[:] = dist
                p = _min_dist(X, C, j, tmp)
                if p < best_pot:
                    best, best_pot, best_d = c, p, tmp.copy()
            C[j] = X[best]
            dist, pot = best_d, best_pot
        tol = self.tol * float(np.mean(np.var(X, axis=0)))
        labels = np.empty(n, np.int64)
        self.n_iter_ = int(_lloyd(X, C, self.max_iter, tol, labels, np.empty(n)))
        self.cluster_centers_ = C
        self.labels_ = labels
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = np.ascontiguousarray(X, dtype=np.float64)
        labels = np.full(X.shape[0], -1, np.int64)
        _assign(X, self.cluster_centers_, labels, np.empty(X.shape[0]))
        return labels
