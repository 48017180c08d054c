"""The loop fitter's view of the shared Levenberg-Marquardt engine (:mod:`switchscope.fit`).

The engine itself lives in :mod:`switchscope.fit._lm`; this module keeps the loops' call
signature (the voltages of the two sweeps as explicit arguments) and the loops' status messages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: torch is imported where it is used
    import torch

from ..fit._lm import (LAM0, STATUS_CONSTANT, STATUS_FTOL, STATUS_MAXITER, STATUS_NONFINITE,
                       STATUS_TOO_FEW, STATUS_XTOL)
from ..fit._lm import levenberg_marquardt as _engine

__all__ = ["LAM0", "STATUS_CONSTANT", "STATUS_FTOL", "STATUS_MAXITER", "STATUS_MESSAGES",
           "STATUS_NONFINITE", "STATUS_TOO_FEW", "STATUS_XTOL", "levenberg_marquardt"]

#: Status codes of a loop fit (also documented on :class:`~switchscope.loops.LoopFitResult`).
STATUS_MESSAGES = {
    STATUS_FTOL: "converged (cost decrease below ftol)",
    STATUS_XTOL: "converged (step below xtol or no further decrease)",
    STATUS_MAXITER: "stopped at max_iter",
    STATUS_TOO_FEW: "not fitted: too few finite points",
    STATUS_CONSTANT: "not fitted: constant loop",
    STATUS_NONFINITE: "failed: non-finite result",
}


def levenberg_marquardt(model, p0: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None,
                        pixel: torch.Tensor, v_desc: torch.Tensor, v_asc: torch.Tensor,
                        lower: torch.Tensor, upper: torch.Tensor, **kwargs):
    """:func:`switchscope.fit.levenberg_marquardt` for a :class:`~switchscope.loops.LoopModel`.

    ``v_desc`` and ``v_asc`` (the voltages of the descending and ascending steps) are passed to
    :attr:`~switchscope.loops.LoopModel.normal`, whose data ``y`` hold the descending steps
    first; every other argument and the return values are the engine's.
    """
    return _engine(model, p0, y, w, pixel, lower, upper, args=(v_desc, v_asc), **kwargs)
