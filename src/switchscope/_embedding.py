"""One definition of an *active* embedding neuron, shared by training, interpretation and report."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._errors import DataError
from ._grid import flatten


def active_neurons(embedding: Any, threshold: float = 1e-6, min_fraction: float = 1e-3) -> np.ndarray:
    """Which embedding neurons are active.

    A ReLU neuron silenced by the L1 activity penalty is 0 on every pixel. A neuron is *active*
    when its activation exceeds ``threshold`` on at least ``min_fraction`` of the pixels (and on at
    least one pixel): with the defaults, above 1e-6 on 0.1 % of the pixels, so a neuron that fires
    on a handful of noisy pixels of a 60 x 60 scan counts as inactive. NaN activations never count.

    Parameters
    ----------
    embedding : array of shape (n_pixels, n_neurons) or (rows, cols, n_neurons)

    Returns
    -------
    ndarray of bool, shape (n_neurons,)
    """
    Z, _ = flatten(embedding)
    Z = np.asarray(Z, dtype=float)
    if Z.ndim != 2 or Z.shape[0] == 0 or Z.shape[1] == 0:
        raise DataError(f"the embedding has shape {Z.shape}; it needs at least one pixel and one neuron")
    with np.errstate(invalid="ignore"):
        count = (Z > threshold).sum(axis=0)
    return count >= max(1, math.ceil(min_fraction * Z.shape[0]))
