"""The paper's constants, in one place (Agar et al., Nat. Commun. 10, 4809 (2019), and its code).

The waveform and its 96 steps, the published networks' activity penalties, batch size and
batch-norm epsilon, and the names of the synthetic film's ground-truth maps.
"""

from __future__ import annotations

import numpy as np

from ._errors import DataError

#: Steps of one cycle of the paper's waveform (``Voltagedata_mixed``), and its peak voltage.
PAPER_STEPS = 96
PAPER_V_MAX = 16.0

#: The published networks' activity penalties (Keras 2.1.5 ``activity_regularizer=l1(...)``).
PAPER_L1: dict[str, float] = {"piezoresponse": 1e-5, "resonance": 1e-4}
#: The paper's batch size; Keras 2.1.5 sums the activity penalty over the batch, so the paper's
#: per-loop strength is ``PAPER_L1 * PAPER_BATCH``.
PAPER_BATCH = 1800
#: BatchNormalization epsilon of the published networks (the Keras 2.1.5 default, also for the
#: refined decoders, whose files hold no configuration). Their last batch norm has tiny moving
#: variances, so this epsilon dominates there and must be exact.
KERAS_BN_EPSILON = 1e-3

#: Ground-truth maps (row, col) of the synthetic film and what they hold.
TRUTH_MAPS: dict[str, str] = {
    "truth_domain": "0 = c/a band, 1 = a1/a2 band",
    "truth_band_position": "position across the band, 0 peak side .. 1 valley side",
    "truth_c_fraction": "pixel-averaged fraction of out-of-plane (c) domains, 0..1",
    "truth_three_state": "weight of the three-state ferroelastic step, 0..1",
    "truth_hardening": "strength of elastic hardening before switching, 0..1",
    "truth_coercive_pos": "coercive voltage of the ascending branch (V)",
    "truth_coercive_neg": "coercive voltage of the descending branch (V)",
    "truth_imprint": "(coercive_pos + coercive_neg) / 2 (V)",
}


def paper_voltage(n_steps: int = PAPER_STEPS, amplitude: float = PAPER_V_MAX) -> np.ndarray:
    """The paper's triangular DC waveform: ``+amplitude`` down to ``-amplitude`` and back up.

    With the defaults this equals ``Voltagedata_mixed`` of the paper's MATLAB file (to rounding):
    16, 15.33, ..., 0, ..., -16 (step 48), -15.33, ..., 15.33 (step 95), a step of 2/3 V.

    Parameters
    ----------
    n_steps : int
        Number of voltage steps (one full cycle; the last step is one step short of the start,
        because the next cycle begins there).
    amplitude : float
        Peak voltage in volts.

    Returns
    -------
    voltage : ndarray of shape (n_steps,)
        Voltage of each step, in volts.

    Examples
    --------
    >>> v = paper_voltage()
    >>> float(v[0]), float(v[48]), round(float(v[-1]), 3)
    (16.0, -16.0, 15.333)
    """
    if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < 2:
        raise DataError(f"paper_voltage n_steps must be an integer >= 2, got {n_steps!r}")
    if not np.isfinite(amplitude) or amplitude <= 0:
        raise DataError(f"paper_voltage amplitude must be a positive number of volts, got {amplitude!r}")
    # A triangle wave written as |ramp| keeps the turning point exactly at -amplitude.
    i = np.arange(int(n_steps), dtype=float)
    return amplitude * (np.abs(4.0 * i / n_steps - 2.0) - 1.0)
