"""The batched least-squares engine shared by the loop fitter and the SHO fitter.

:func:`levenberg_marquardt` solves many small bounded nonlinear least-squares problems at once
in torch (CPU or GPU); a model supplies only its normal equations (DESIGN section 4). On the CPU
the loop and SHO fitters run the same algorithm in numba kernels instead (``_loops_numba``,
``_sho_numba``; branch-free ``erf``/``exp`` in ``_special``), one problem at a time in cache.
"""

from ._lm import (LAM0, STATUS_CONSTANT, STATUS_FTOL, STATUS_MAXITER, STATUS_NONFINITE,
                  STATUS_TOO_FEW, STATUS_XTOL, levenberg_marquardt)

__all__ = ["LAM0", "STATUS_CONSTANT", "STATUS_FTOL", "STATUS_MAXITER", "STATUS_NONFINITE",
           "STATUS_TOO_FEW", "STATUS_XTOL", "levenberg_marquardt"]
