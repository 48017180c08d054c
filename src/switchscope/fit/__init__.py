"""The batched least-squares engine shared by the loop fitter and the SHO fitter.

:func:`levenberg_marquardt` solves many small bounded nonlinear least-squares problems at once
in torch (CPU or GPU); a model supplies only its normal equations (DESIGN section 4).
"""

from ._lm import (LAM0, STATUS_CONSTANT, STATUS_FTOL, STATUS_MAXITER, STATUS_NONFINITE,
                  STATUS_TOO_FEW, STATUS_XTOL, levenberg_marquardt)

__all__ = ["LAM0", "STATUS_CONSTANT", "STATUS_FTOL", "STATUS_MAXITER", "STATUS_NONFINITE",
           "STATUS_TOO_FEW", "STATUS_XTOL", "levenberg_marquardt"]
