"""Branch-free ``erf`` and ``exp`` for the numba kernels, so that loops over steps vectorize.

libm's ``erf`` and ``exp`` are scalar calls (numba has no SVML here): in the loop kernel they
took ~6 and ~5 ns per call, four calls per voltage step. The functions below are plain
polynomial and rational arithmetic with selects instead of branches, which LLVM vectorizes
(4 doubles per AVX2 register), and they share the ``exp(-x^2)`` that both ``erf`` and its
derivative need.

Accuracy (float64, checked against ``scipy.special`` over the whole real line in
``tests/test_fit_special.py``):

- :func:`erf_gauss` ``erf``: absolute error <= 4e-16 (measured 1.1e-16); ``erf(±inf) = ±1``,
  ``erf(nan) = nan``. The rational approximations are Cephes' (``ndtr.c``: ``x T(x^2)/U(x^2)``
  for ``|x| < 1``, ``1 - exp(-x^2) P(|x|)/Q(|x|)`` above; ``erfc(6) = 2e-17`` is below half
  an ulp of 1, so ``|x| >= 6`` gives ±1 exactly).
- :func:`erf_gauss` ``exp(-x^2)``: relative error <= 1e-15 for ``x^2 < GAUSS_CUT``, exactly 0
  above (the true value is below ``exp(-GAUSS_CUT)`` = 3.7e-44, nothing next to the other terms
  of a Jacobian, and it keeps products of Jacobian entries out of the subnormal range, whose
  microcode assists made the Gram sums of the previous kernel several times slower).
- :func:`exp_neg` ``exp(-u)`` for ``0 <= u <= 708``: relative error <= 1e-15 (measured 4.7e-16).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types
from numba.core.extending import intrinsic

#: ``exp(-x^2)`` is returned as exactly 0 where ``x^2 >= GAUSS_CUT``.
GAUSS_CUT = 100.0

_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
# "contract" lets LLVM fuse the Horner steps into FMAs (one rounding fewer per step)
_JIT = dict(cache=True, fastmath={"contract"}, error_model="numpy", inline="always")


@intrinsic
def _bits_to_f64(typingctx, x):
    """The float64 whose bit pattern is the int64 ``x`` (vectorizes, unlike a ldexp call)."""
    sig = types.float64(types.int64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float64))

    return sig, codegen


@njit(**_JIT)
def exp_neg(u):
    """``exp(-u)`` for ``0 <= u <= 708`` (not checked: the callers clamp)."""
    x = -u
    n = math.floor(x * _LOG2E + 0.5)
    r = x - n * _LN2_HI
    r = r - n * _LN2_LO
    # Taylor series of exp on |r| <= ln(2)/2: the degree-12 remainder is < 1.7e-16 relative
    p = 1.0 / 479001600.0
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    # 2^n from its bit pattern: n in [-1022, 0] keeps the exponent field normal
    return p * _bits_to_f64((np.int64(n) + 1023) << 52)


@njit(**_JIT)
def erf_gauss(x):
    """``(erf(x), exp(-x^2))``, the second exactly 0 where ``x^2 >= GAUSS_CUT``."""
    a = abs(x)
    x2 = x * x
    u = x2 if x2 < GAUSS_CUT else GAUSS_CUT          # also maps nan to the cut
    e = exp_neg(u)
    e = e if x2 < GAUSS_CUT else 0.0
    # |x| < 1: erf = x T(x^2) / U(x^2)
    ts = 9.60497373987051638749e0
    ts = ts * x2 + 9.00260197203842689217e1
    ts = ts * x2 + 2.23200534594684319226e3
    ts = ts * x2 + 7.00332514112805075473e3
    ts = ts * x2 + 5.55923013010394962768e4
    us = x2 + 3.35617141647503099647e1
    us = us * x2 + 5.21357949780152679795e2
    us = us * x2 + 4.59432382970980127987e3
    us = us * x2 + 2.26290000613890934246e4
    us = us * x2 + 4.92673942608635921086e4
    # |x| >= 1: erfc(|x|) = exp(-x^2) P(|x|) / Q(|x|), |x| capped at 6 (erfc(6) = 2e-17)
    b = a if a < 6.0 else 6.0
    pl = 2.46196981473530512524e-10
    pl = pl * b + 5.64189564831068821977e-1
    pl = pl * b + 7.46321056442269912687e0
    pl = pl * b + 4.86371970985681366614e1
    pl = pl * b + 1.96520832956077098242e2
    pl = pl * b + 5.26445194995477358631e2
    pl = pl * b + 9.34528527171957607540e2
    pl = pl * b + 1.02755188689515710272e3
    pl = pl * b + 5.57535335369399327526e2
    ql = b + 1.32281951154744992508e1
    ql = ql * b + 8.67072140885989742329e1
    ql = ql * b + 3.54937778887819891062e2
    ql = ql * b + 9.75708501743205489753e2
    ql = ql * b + 1.82390916687909736289e3
    ql = ql * b + 2.24633760818710981792e3
    ql = ql * b + 1.65666309194161350182e3
    ql = ql * b + 5.57535340817727675546e2
    small = a < 1.0
    # one division for both pieces
    q = (x * ts if small else e * pl) / (us if small else ql)
    big = 1.0 - q
    out = q if small else (big if x >= 0.0 else -big)
    return (out if a == a else x), e
