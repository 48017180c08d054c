"""The paper's DC voltage waveform."""

from __future__ import annotations

import numpy as np

from .._errors import DataError


def paper_voltage(n_steps: int = 96, amplitude: float = 16.0) -> np.ndarray:
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
