"""Trivial baselines that every learning stage is compared with (issue 14).

A model of the loops is worth its figures only if it reconstructs them better than what needs no
learning: the *mean loop* (every curve predicted by the mean curve of the training pixels) and,
for a network with ``k`` active neurons, *PCA with k components* fitted on the same training
pixels. Errors are mean squared errors over the evaluated pixels and steps, reported as fractions
of the variance of the evaluated values (``numpy.var`` over all of them): 1 is no better than
predicting one number, and the mean loop's fraction is the share of the variance that is not the
common loop shape.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: A model is *clearly better* than the mean loop when its error is at most this fraction of the
#: mean loop's error.
MEAN_LOOP_RATIO = 0.8


def mean_loop_mse(train: np.ndarray, evaluate: np.ndarray) -> float:
    """MSE of predicting every curve of ``evaluate`` by the mean curve of ``train`` (n, n_steps)."""
    return float(np.mean((evaluate - train.mean(axis=0)) ** 2))


def pca_mse(train: np.ndarray, evaluate: np.ndarray, n_components: int) -> float:
    """MSE of ``evaluate`` rebuilt by PCA with ``n_components`` fitted on ``train`` (0: the mean loop).

    Solved exactly (SVD of the centred training curves), so the number depends on the data only.
    """
    mu = train.mean(axis=0)
    k = int(min(n_components, *train.shape))
    if k <= 0:
        return mean_loop_mse(train, evaluate)
    _, _, vt = np.linalg.svd(train - mu, full_matrices=False)
    V = vt[:k]
    rebuilt = (evaluate - mu) @ V.T @ V + mu
    return float(np.mean((evaluate - rebuilt) ** 2))


def compare(model_mse: float, evaluate: np.ndarray, *, mean_loop: float,
            pca: float | None = None, pca_components: int | None = None, model: str = "the model",
            channel: str = "") -> dict[str, Any]:
    """The baseline record of one model: fractions of the variance and, when the model is not
    clearly better, a one-sentence ``warning``.

    Not clearly better means: its error above ``MEAN_LOOP_RATIO`` (0.8) times the mean loop's,
    i.e. it learned little beyond the common loop shape. Whether it beats PCA is recorded
    (``beats_pca``) but raises no warning: PCA with as many components as a network's active
    neurons is the optimal linear code for the squared error and usually wins on it (the
    synthetic film, 20 x 20 pixels, 40 epochs: network 0.018, PCA with its 7 components 0.0024,
    mean loop 0.085 of the variance); the network is there for its interpretable sparse code.

    Returns
    -------
    dict
        ``variance``, ``model_fraction``, ``mean_loop_fraction``, ``pca_fraction``,
        ``pca_components`` and ``beats_pca`` (when given), ``clearly_better`` (bool) and
        ``warning`` (str, only when not clearly better).
    """
    var = float(np.var(evaluate))

    def frac(mse: float) -> float:
        return float(mse / var) if var > 0 else float("nan")

    out: dict[str, Any] = {"variance": var, "model_fraction": frac(model_mse),
                           "mean_loop_fraction": frac(mean_loop)}
    if pca is not None:
        out.update(pca_fraction=frac(pca), pca_components=int(pca_components or 0), beats_pca=bool(model_mse < pca))
    out["clearly_better"] = bool(model_mse <= MEAN_LOOP_RATIO * mean_loop)
    if not out["clearly_better"]:
        where = f"{channel}: " if channel else ""
        out["warning"] = (f"{where}{model} is not clearly better than the mean loop: its reconstruction error is "
                          f"{frac(model_mse):.3g} of the data variance, predicting every curve by the mean loop gives "
                          f"{frac(mean_loop):.3g} (a model should stay below {MEAN_LOOP_RATIO:g} x that)")
    return out
