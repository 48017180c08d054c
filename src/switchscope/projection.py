"""Piezoresponse loops from SHO amplitude and phase: BGlib's projection onto the switching axis.

:func:`project_loops` takes the amplitude and phase of every step of every loop (from
:func:`switchscope.sho.fit_sho` or a file's SHO fit) and returns the projected loops with the
axis angle and offset of each (:class:`ProjectionResult`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import numpy as np

from ._errors import ConfigError, DataError


def wrap_angle(phi: np.ndarray) -> np.ndarray:
    """Angles to (-pi, pi]."""
    return np.pi - np.mod(np.pi - phi, 2.0 * np.pi)


@dataclasses.dataclass(frozen=True, repr=False)
class ProjectionResult:
    """Result of :func:`project_loops`.

    Attributes
    ----------
    piezoresponse : ndarray of shape (..., n_steps)
        The projected loops, in the units of the amplitude.
    angle : ndarray of shape (...)
        Angle of the switching axis in the complex plane, radians in (-pi, pi]:
        ``piezoresponse = Re[(A exp(i phi) - z_off) exp(-i angle)]`` (0 for ``"cos"``).
    offset : ndarray of shape (...)
        Distance of the switching axis from the origin of the complex plane, in the units of
        the amplitude (BGlib's ``offset_dist``; 0 for ``"cos"``). ``z_off``, the point of the
        axis nearest the origin, lies across the axis, so removing it does not change the
        projection; it is reported for the record, as BGlib does.
    method : str
    """

    piezoresponse: np.ndarray
    angle: np.ndarray
    offset: np.ndarray
    method: str

    def __repr__(self) -> str:
        return (f"ProjectionResult(method={self.method!r}, loops={self.angle.size}, "
                f"steps={self.piezoresponse.shape[-1]})")


def project_loops(amplitude: Any, phase: Any, voltage: Any, *,
                  phase_units: Literal["rad", "deg"],
                  method: Literal["bglib", "cos"] = "bglib") -> ProjectionResult:
    """Piezoresponse loops from amplitude and phase, every pixel at once.

    Parameters
    ----------
    amplitude, phase : arrays of shape (..., n_steps)
        SHO amplitude and phase of every step (e.g. :attr:`SHOFitResult.amplitude` and
        :attr:`SHOFitResult.phase` of the spectra of a loop).
    voltage : array of shape (n_steps,)
        DC voltage of each step, in the order of the steps.
    phase_units : {"rad", "deg"}
        Units of ``phase`` (required: :func:`fit_sho` gives radians, the Dataset's ``phase``
        channel holds degrees). The output angle is always in radians.
    method : {"bglib", "cos"}
        ``"cos"``: ``A cos(phi)`` (the paper's piezoresponse). ``"bglib"``: BGlib's
        ``projectLoop`` (pycroscopy/BGlib, ``BGlib/be/analysis/utils/be_loop.py``): the points
        ``(V, A cos phi, A sin phi)`` of a loop lie near a plane that holds the voltage axis;
        its trace in the complex plane is the axis of switching. The complex loop is moved by
        the point of that axis nearest the origin (the offset), rotated onto the axis, and its
        real part taken; of the two directions of the axis, the one that makes the loop's
        signed area over consecutive steps (``sum V_k P_{k+1} - V_{k+1} P_k``) positive is kept
        (BGlib's test on its centroid's area).

    Returns
    -------
    ProjectionResult

    Notes
    -----
    Where this differs from BGlib's code, on purpose:

    * BGlib fits the plane by orthogonal distance in the raw units of volts and amplitude, so
      the result depends on those units; with voltages of volts and amplitudes far below one
      (BGlib's usual data) the voltage spread dominates and the plane holds the voltage axis.
      Here that limit is taken exactly, whatever the units: the axis is the principal
      direction of the covariance of ``(A cos phi, A sin phi)`` after removing the part
      explained linearly by the voltage (``C_zz - C_zV C_Vz / C_VV``), through the loop's
      mean.
    * BGlib rotates by ``+tan(slope)`` where the axis angle is ``arctan(slope)`` and the
      rotation onto the axis is by minus that angle; both agree with ours when the axis is
      the real axis (phases near 0 and pi), otherwise BGlib returns the loop scaled by about
      ``cos(2 angle)``. Here the rotation is exact, so a loop rotated by any angle in the
      complex plane projects to the same piezoresponse, with the angle changed by the same
      amount.
    * BGlib finds the offset among 100 sampled points of the axis; here in closed form.
    """
    if phase_units not in ("rad", "deg"):
        raise ConfigError(f"project_loops: phase_units must be 'rad' or 'deg', got {phase_units!r}")
    if method not in ("bglib", "cos"):
        raise ConfigError(f"project_loops: method must be 'bglib' or 'cos', got {method!r}")
    A = np.asarray(amplitude, dtype=float)
    ph = np.asarray(phase, dtype=float)
    if A.shape != ph.shape or A.ndim < 1:
        raise DataError(f"amplitude {A.shape} and phase {ph.shape} must have one shape "
                        "(..., n_steps)")
    v = np.asarray(voltage, dtype=float)
    if v.shape != (A.shape[-1],):
        raise DataError(f"voltage has shape {v.shape}; give one voltage per step, "
                        f"shape ({A.shape[-1]},)")
    if not np.all(np.isfinite(v)):
        raise DataError("voltage holds NaN or Inf values; give a finite voltage for every step")
    if phase_units == "deg":
        ph = np.deg2rad(ph)
    z = A * np.exp(1j * ph)
    lead = A.shape[:-1]
    if method == "cos":
        return ProjectionResult(z.real, np.zeros(lead), np.zeros(lead), method)
    with np.errstate(invalid="ignore", divide="ignore"):
        # statistics over each loop's finite steps: a failed fit at one step leaves that step NaN
        ok = np.isfinite(z)
        n = ok.sum(-1)
        vb = np.broadcast_to(v, z.shape)
        zm = np.where(ok, z, 0).sum(-1) / n
        vm = np.where(ok, vb, 0.0).sum(-1) / n
        dv = np.where(ok, vb - vm[..., None], 0.0)
        dx = np.where(ok, z.real - zm.real[..., None], 0.0)
        dy = np.where(ok, z.imag - zm.imag[..., None], 0.0)
        cvv = (dv * dv).sum(-1) / n
        cxv, cyv = (dx * dv).sum(-1) / n, (dy * dv).sum(-1) / n
        cxx, cyy, cxy = (dx * dx).sum(-1) / n, (dy * dy).sum(-1) / n, (dx * dy).sum(-1) / n
        has_v = cvv > 0
        cxx = np.where(has_v, cxx - cxv**2 / cvv, cxx)
        cyy = np.where(has_v, cyy - cyv**2 / cvv, cyy)
        cxy = np.where(has_v, cxy - cxv * cyv / cvv, cxy)
        alpha = 0.5 * np.arctan2(2.0 * cxy, cxx - cyy)      # principal axis of the 2 x 2 matrix
        along = np.exp(1j * alpha)
        # signed distance of the axis (through the mean) from the origin, across the axis
        across = (zm * np.conj(along)).imag
        pr = (z * np.conj(along)[..., None]).real
        area = np.nansum(v[:-1] * pr[..., 1:] - v[1:] * pr[..., :-1], axis=-1)
        flip = area < 0
        pr = np.where(flip[..., None], -pr, pr)
        alpha = wrap_angle(np.where(flip, alpha + np.pi, alpha))
        bad = n < 2  # no axis from fewer than two points
        alpha, across = np.where(bad, np.nan, alpha), np.where(bad, np.nan, across)
    return ProjectionResult(pr, alpha, np.abs(across), method)
