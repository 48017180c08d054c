"""The DC waveform of a BEPS measurement: what it is, whether it is a bipolar triangle, its cycles.

Labs sweep the DC voltage in many ways: starting at 0 V, at +Vmax or at -Vmax, rising or falling
first, with any number of steps, any amplitude, one cycle or several back to back, sometimes with
each value repeated (in-field and out-of-field read at the same DC step). Everything downstream
reads the branches from the voltage array itself (:func:`descending_steps`), never from the
position of a step, so all of these are handled alike.

:func:`describe_waveform` says what a voltage array is; :func:`check_bipolar` refuses anything that
is not a bipolar triangle (a ramp, a FORC waveform whose amplitude changes from cycle to cycle, a
constant, a unipolar triangle, noise) with one line that names what was found;
:func:`split_cycles` gives the steps of each cycle of a step axis that holds several;
:func:`triangle_waveform` builds one (the paper's by default).

Examples
--------
>>> from switchscope.waveform import describe_waveform, triangle_waveform
>>> print(describe_waveform(triangle_waveform()))
bipolar triangle: 1 cycle of 96 steps, -16 to 16 V, starting at +Vmax, falling first
>>> print(describe_waveform(triangle_waveform(64, 10.0, start="0", n_cycles=2)))
bipolar triangle: 2 cycles of 64 steps, -10 to 10 V, starting at 0 V, rising first
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from ._errors import DataError

__all__ = ["Waveform", "check_bipolar", "cycle_slices", "descending_steps", "describe_waveform",
           "split_cycles", "triangle_waveform"]

#: Fewest steps a bipolar loop can be read from, and fewest steps on each of its two sweeps.
MIN_STEPS = 8
MIN_SWEEP_STEPS = 4

StartName = Literal["+max", "0", "-max"]


@dataclasses.dataclass(frozen=True)
class Waveform:
    """What a voltage array is (from :func:`describe_waveform`).

    Attributes
    ----------
    n_steps : int
        Steps of the array.
    n_cycles : int
        Whole cycles (+Vmax -> -Vmax -> +Vmax or any rotation of it); 0 when the array is not a
        triangle that cycles between two fixed voltages.
    steps_per_cycle : int
        ``n_steps // n_cycles`` (``n_steps`` when ``n_cycles`` is 0).
    v_min, v_max : float
        Lowest and highest voltage (V).
    amplitude : float
        ``(v_max - v_min) / 2`` (V).
    start : str
        ``"0 V"``, ``"+Vmax"``, ``"-Vmax"``, or the first voltage (e.g. ``"15.3 V"``).
    first_direction : {"rising", "falling"} or None
        Direction of the first step that changes the voltage (None for a constant).
    kind : str
        ``"bipolar triangle"``, or what was found instead: ``"constant"``, ``"ramp"``,
        ``"irregular"``, ``"interleaved"``, ``"FORC"``, ``"unipolar triangle"``,
        ``"partial cycles"``, ``"too few steps"``.
    problem : str or None
        One phrase that names what was found when it is not a bipolar triangle (``"a ramp from
        -10 V to 10 V (it changes direction 0 times)"``); None for a bipolar triangle.
    """

    n_steps: int
    n_cycles: int
    steps_per_cycle: int
    v_min: float
    v_max: float
    amplitude: float
    start: str
    first_direction: Literal["rising", "falling"] | None
    kind: str = "bipolar triangle"
    problem: str | None = None

    @property
    def is_bipolar(self) -> bool:
        """True for a bipolar triangle of whole cycles."""
        return self.problem is None

    def __str__(self) -> str:
        if self.problem is not None:
            return f"not a bipolar triangle: {self.problem}"
        cycles = f"{self.n_cycles} cycle{'s' if self.n_cycles != 1 else ''} of {self.steps_per_cycle} steps"
        return (f"{self.kind}: {cycles}, {_v(self.v_min)} to {_v(self.v_max)} V, starting at {self.start}, "
                f"{self.first_direction} first")


# --------------------------------------------------------------------------------------------
# Building a waveform
# --------------------------------------------------------------------------------------------
def triangle_waveform(n_steps: int = 96, v_max: float = 16.0, *, start: StartName = "+max",
                      rising_first: bool | None = None, n_cycles: int = 1) -> np.ndarray:
    """A bipolar triangle waveform of ``n_cycles`` cycles of ``n_steps`` steps each.

    With the defaults this is the paper's waveform (:func:`switchscope.paper.paper_voltage`, bit
    for bit): +16 V down to -16 V (step 48) and back up to 15.33 V. Other starts are rotations of
    it by a whole number of steps, so every value lies on the same grid of ``4 v_max / n_steps``.

    Parameters
    ----------
    n_steps : int
        Steps of one cycle; even, and a multiple of 4 for ``start="0"`` (so that both peaks and
        both zero crossings are steps).
    v_max : float
        Amplitude in volts.
    start : {"+max", "0", "-max"}
        Voltage of the first step.
    rising_first : bool, optional
        Direction of the first sweep; only a start at 0 V has a choice. None: falling from
        +Vmax, rising from -Vmax and from 0 V (0 -> +V -> -V -> 0).
    n_cycles : int
        Cycles, back to back.

    Returns
    -------
    voltage : ndarray of shape (n_cycles * n_steps,)

    Examples
    --------
    >>> triangle_waveform(8, 4.0, start="0", rising_first=False).tolist()
    [0.0, -2.0, -4.0, -2.0, 0.0, 2.0, 4.0, 2.0]
    """
    if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < MIN_STEPS \
            or n_steps % 2:
        raise DataError(f"triangle_waveform n_steps must be an even integer >= {MIN_STEPS}, got {n_steps!r}")
    if isinstance(n_cycles, bool) or not isinstance(n_cycles, (int, np.integer)) or n_cycles < 1:
        raise DataError(f"triangle_waveform n_cycles must be an integer >= 1, got {n_cycles!r}")
    if not np.isfinite(v_max) or v_max <= 0:
        raise DataError(f"triangle_waveform v_max must be a positive number of volts, got {v_max!r}")
    n = int(n_steps)
    # phase shift in steps of the paper's waveform (+max, falling): 0 falling n/4, -max n/2, 0 rising 3n/4
    if start == "+max":
        if rising_first:
            raise DataError("a waveform that starts at +Vmax can only fall first; set rising_first=False "
                            "(or None), or start at '0' or '-max'")
        shift = 0
    elif start == "-max":
        if rising_first is False:
            raise DataError("a waveform that starts at -Vmax can only rise first; set rising_first=True "
                            "(or None), or start at '0' or '+max'")
        shift = n // 2
    elif start == "0":
        if n % 4:
            raise DataError(f"a waveform that starts at 0 V needs a multiple of 4 steps (so that 0 V and both "
                            f"peaks are steps), got n_steps={n}")
        shift = n // 4 if rising_first is False else 3 * n // 4
    else:
        raise DataError(f"triangle_waveform start must be one of '+max', '0', '-max', got {start!r}")
    j = (np.arange(n) + shift) % n
    # the paper's formula (paper.paper_voltage): |ramp| keeps the turning point exactly at -v_max
    one = float(v_max) * (np.abs(4.0 * j.astype(float) / n - 2.0) - 1.0)
    return np.tile(one, int(n_cycles))


# --------------------------------------------------------------------------------------------
# Reading a waveform
# --------------------------------------------------------------------------------------------
def _v(x: float) -> str:
    """A voltage for a message: 3 significant digits, no trailing zeros, no ``-0``."""
    s = f"{float(x):.3g}"
    return "0" if s in ("-0", "0") else s


def _as_voltage(voltage) -> np.ndarray:
    v = np.asarray(voltage)
    if v.dtype.kind not in "biuf":
        raise DataError(f"the voltage holds {v.dtype} values, not numbers; give one voltage in volts per step")
    v = v.astype(float).ravel()
    if not np.all(np.isfinite(v)):
        raise DataError("the voltage holds NaN or Inf values; give a finite voltage for every step")
    return v


def _directions(v: np.ndarray, tiny: float) -> np.ndarray:
    """Direction (+1/-1) of each step ``i -> i + 1``; a flat step keeps the direction before it
    (the first flat steps take the first real direction)."""
    dv = np.diff(v)
    d = np.where(np.abs(dv) <= tiny, 0.0, np.sign(dv))
    nz = np.flatnonzero(d)
    if nz.size == 0:
        return np.zeros_like(d)
    # forward fill: each step takes the direction of the last non-flat step at or before it
    last = np.maximum.accumulate(np.where(d != 0, np.arange(d.size), -1))
    return d[np.where(last < 0, nz[0], last)]


def descending_steps(voltage) -> np.ndarray:
    """Boolean mask of the steps on a falling sweep, for any number of cycles.

    A step belongs to the sweep that leaves it, so a turning point belongs to the sweep that
    starts there (at a turning point both branches are near saturation). The last step is left
    by the step back to the first one when the waveform closes on itself (the voltage comes
    back within a step and a half, as whole cycles do; the paper's 96 steps end one step below
    +16 V), so that a rotation of a cycle keeps every step's branch, the turning points
    included; otherwise it belongs to the sweep that reaches it. A repeated voltage (a flat
    step, or the out-of-field read of the same DC step) keeps the direction of the sweep it
    lies on.

    Parameters
    ----------
    voltage : array of shape (n_steps,)

    Returns
    -------
    descending : ndarray of bool, shape (n_steps,)
        All False for a constant voltage.
    """
    v = _as_voltage(voltage)
    if v.size < 2:
        return np.zeros(v.size, dtype=bool)
    flat = _flat(v)
    d = _directions(v, flat)
    out = np.empty(v.size, dtype=bool)
    out[:-1] = d < 0
    out[-1] = d[-1] < 0
    back = float(v[0] - v[-1])
    if flat < abs(back) <= 1.5 * _step(v):
        out[-1] = back < 0  # the waveform closes: the step back to the start leaves the last one
    return out


def _tiny(v: np.ndarray) -> float:
    """Voltages this close are equal (rounding of stored values)."""
    return 1e-9 * max(float(np.abs(v).max()) if v.size else 0.0, 1.0)


def _flat(v: np.ndarray) -> float:
    """Steps at or below this are flat: a quarter of a real step (the 90th percentile of the
    changes, a real step even when every DC value is read twice), so that jitter of a repeated
    DC value never turns the sweep round."""
    dv = np.abs(np.diff(v))
    return max(_tiny(v), 0.25 * float(np.percentile(dv, 90))) if dv.size else _tiny(v)


def _travelled(v: np.ndarray) -> np.ndarray:
    """Voltage travelled along the waveform up to each step: the spans of the finished sweeps
    plus the distance from the start of the current one (so jitter never accumulates)."""
    d = _directions(v, _flat(v)) if v.size > 1 else np.zeros(0)
    turns = np.flatnonzero(d[1:] != d[:-1]) + 1
    starts = np.r_[0, turns]
    run = np.searchsorted(turns, np.arange(v.size), side="right")
    done = np.r_[0.0, np.cumsum(np.abs(v[turns] - v[starts[:-1]]))]
    return done[run] + np.abs(v - v[starts[run]])


def _step(v: np.ndarray) -> float:
    """The typical voltage step (median of the steps that are not flat)."""
    dv = np.abs(np.diff(v))
    real = dv[dv > _flat(v)]
    return float(np.median(real)) if real.size else 0.0


def _start_name(v0: float, vmin: float, vmax: float) -> str:
    tol = 1e-3 * (vmax - vmin)
    if abs(v0 - vmax) <= tol:
        return "+Vmax"
    if abs(v0 - vmin) <= tol:
        return "-Vmax"
    if abs(v0) <= tol:
        return "0 V"
    return f"{_v(v0)} V"


def _interleaved(v: np.ndarray) -> str | None:
    """``"every other step is 0 V"`` when in-field and out-of-field steps alternate."""
    if v.size < 2 * MIN_STEPS:
        return None
    for a, b in ((v[0::2], v[1::2]), (v[1::2], v[0::2])):
        if np.ptp(a) <= _tiny(v) and np.ptp(b) > 4 * _tiny(v):
            return (f"every other step is {_v(a[0])} V: in-field and out-of-field steps interleaved? "
                    "select one field's steps (voltage[0::2] or voltage[1::2])")
    return None


def _turning_problem(v: np.ndarray, turns: np.ndarray, d: np.ndarray, tol: float) -> str | None:
    """What is wrong with the turning points, when they do not all sit at the two extremes."""
    vals = v[turns]
    tops = d[turns - 1] > 0              # rising into the turn: a maximum
    top_v, bot_v = vals[tops], vals[~tops]
    vmin, vmax = float(v.min()), float(v.max())
    top_ok = np.all(np.abs(top_v - vmax) <= tol)
    bot_ok = np.all(np.abs(bot_v - vmin) <= tol)
    if top_ok and bot_ok:
        return None
    # one cycle per pair of consecutive turning points (a maximum and a minimum)
    pairs = vals[: 2 * (vals.size // 2)].reshape(-1, 2)
    amps = np.abs(pairs[:, 0] - pairs[:, 1]) / 2
    if not top_ok and not bot_ok and pairs.shape[0] >= 2 and np.ptp(amps) > tol:
        listed = ", ".join(_v(a) for a in amps[:6]) + (", ..." if amps.size > 6 else "")
        return f"the amplitude changes from cycle to cycle ({listed} V): a FORC waveform"
    which, moving = ("positive", top_v) if not top_ok else ("negative", bot_v)
    listed = ", ".join(_v(x) for x in moving[:6]) + (", ..." if moving.size > 6 else "")
    return f"the {which} turning points change from cycle to cycle ({listed} V): a FORC waveform"


def describe_waveform(voltage) -> Waveform:
    """Say what a voltage array is: a bipolar triangle (its cycles, range, start, direction), or
    what else (a ramp, a FORC waveform, a constant, ...), in :attr:`Waveform.problem`.

    Repeated voltages (flat steps, or each DC value read twice as in- and out-of-field
    measurements are) keep the direction of the sweep they lie on.

    Parameters
    ----------
    voltage : array of shape (n_steps,)
        DC voltage of each step, in volts.

    Returns
    -------
    Waveform

    Raises
    ------
    DataError
        If the voltage holds non-numbers, NaN or Inf (there is nothing to describe).

    Examples
    --------
    >>> import numpy as np
    >>> describe_waveform(np.linspace(-10, 10, 50)).problem
    'a ramp from -10 V to 10 V (it changes direction 0 times)'
    """
    v = _as_voltage(voltage)
    n = int(v.size)
    if n == 0:
        raise DataError("the voltage is empty; give one voltage in volts per step")
    vmin, vmax = float(v.min()), float(v.max())
    span = vmax - vmin
    tiny = _tiny(v)
    base = dict(n_steps=n, v_min=vmin, v_max=vmax, amplitude=span / 2)

    def found(kind: str, problem: str, first=None, n_cycles: int = 0) -> Waveform:
        return Waveform(n_cycles=n_cycles, steps_per_cycle=n // max(n_cycles, 1),
                        start=_start_name(float(v[0]), vmin, vmax), first_direction=first,
                        kind=kind, problem=problem, **base)

    if span <= tiny:
        return found("constant", f"constant {_v(v[0])} V")
    d = _directions(v, _flat(v))
    first = "rising" if d[0] > 0 else "falling"
    turns = np.flatnonzero(d[1:] != d[:-1]) + 1      # steps where the direction changes
    if turns.size == 0:
        return found("ramp", f"a ramp from {_v(v[0])} V to {_v(v[-1])} V (it changes direction 0 times)", first)
    inter = _interleaved(v)
    if inter is not None:
        return found("interleaved", inter, first)
    if turns.size > n / 3:
        return found("irregular", f"irregular: it changes direction {turns.size} times in {n} steps "
                                  f"between {_v(vmin)} and {_v(vmax)} V (noise, not a triangle)", first)
    step = _step(v)
    forc = _turning_problem(v, turns, d, tol=step + 1e-6 * span)
    if forc is not None:
        return found("FORC", forc, first)
    if not (vmin < -tiny and vmax > tiny):
        side = "below" if vmin >= -tiny else "above"
        return found("unipolar triangle", f"a unipolar triangle from {_v(vmin)} V to {_v(vmax)} V, never "
                                          f"{side} 0 V (a bipolar loop must cross 0 V)", first)
    # whole cycles: the path travelled is a whole number of 2 x span, give or take the step that
    # closes the cycle (the paper's 96 steps stop one step short of +16 V)
    path = float(_travelled(v)[-1])
    cycles = path / (2 * span)
    n_cycles = max(1, int(np.floor(cycles + 0.5)))
    if abs(path - n_cycles * 2 * span) > max(1.5 * step, 0.05 * 2 * span):
        return found("partial cycles", f"{cycles:.3g} cycles between {_v(vmin)} and {_v(vmax)} V, not whole "
                                       "cycles (a sweep stops short of +Vmax or -Vmax)", first)
    desc = descending_steps(v)
    n_desc = int(desc.sum())
    if n < MIN_STEPS or min(n_desc, n - n_desc) < MIN_SWEEP_STEPS:
        return found("too few steps", f"{n} steps, {n_desc} descending and {n - n_desc} ascending (a bipolar loop "
                                      f"needs at least {MIN_STEPS} steps; each sweep needs at least "
                                      f"{MIN_SWEEP_STEPS})", first, n_cycles)
    return Waveform(n_cycles=n_cycles, steps_per_cycle=n // n_cycles,
                    start=_start_name(float(v[0]), vmin, vmax), first_direction=first, **base)


def check_bipolar(voltage, *, max_cycles: int | None = None) -> Waveform:
    """The :class:`Waveform` of ``voltage``; raise if it is not a bipolar triangle.

    Parameters
    ----------
    voltage : array of shape (n_steps,)
        DC voltage of each step, in volts.
    max_cycles : int, optional
        Most cycles accepted (1 where a stage reads one loop per pixel).

    Returns
    -------
    Waveform

    Raises
    ------
    DataError
        One line that names what was found: ``"the voltage is not a bipolar triangle: a ramp from
        -10 V to 10 V (...)"``, ``"... the amplitude changes from cycle to cycle (6, 8, 10 V): a
        FORC waveform"``, ``"... constant 0 V"``, or, past ``max_cycles``, ``"the voltage is not one
        bipolar triangle: it holds 4 cycles of 24 steps"``.

    Examples
    --------
    >>> check_bipolar(triangle_waveform(64, start="0")).start
    '0 V'
    """
    w = describe_waveform(voltage)
    if w.problem is not None:
        raise DataError(f"the voltage is not a bipolar triangle: {w.problem}; give a waveform that sweeps "
                        "+Vmax -> -Vmax -> +Vmax (any start, any length, whole cycles)")
    if max_cycles is not None and w.n_cycles > max_cycles:
        raise DataError(f"the voltage is not one bipolar triangle: it holds {w.n_cycles} cycles of "
                        f"{w.steps_per_cycle} steps; fit one cycle at a time "
                        "(switchscope.waveform.split_cycles gives their steps)")
    return w


def _cycle_of_step(v: np.ndarray, w: Waveform) -> np.ndarray:
    """Cycle index of every step: whole multiples of the path of one cycle travelled before it."""
    if w.n_cycles <= 1:
        return np.zeros(v.size, dtype=np.int64)
    step = _step(v)
    travelled = _travelled(v)
    k = np.floor((travelled + 0.5 * step) / (2 * (w.v_max - w.v_min))).astype(np.int64)
    return np.clip(k, 0, w.n_cycles - 1)


def cycle_slices(voltage) -> list[slice]:
    """The steps of each cycle of a bipolar triangle waveform, as slices (one per cycle).

    A cycle begins where the voltage has travelled a whole number of cycles (``2 (v_max - v_min)``
    each) from the first step, so every cycle starts at the same voltage, going the same way.
    Cycles may differ in length by a step (e.g. a last step that closes the last cycle).

    Raises
    ------
    DataError
        If the voltage is not a bipolar triangle (see :func:`check_bipolar`).
    """
    v = _as_voltage(voltage)
    k = _cycle_of_step(v, check_bipolar(v))
    edges = np.r_[0, np.flatnonzero(np.diff(k)) + 1, v.size]
    return [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def split_cycles(voltage) -> np.ndarray:
    """Step indices of each cycle of a step axis that holds whole cycles back to back.

    Parameters
    ----------
    voltage : array of shape (n_steps,)

    Returns
    -------
    index : ndarray of int, shape (n_cycles, steps_per_cycle)
        ``data[..., index]`` turns a step axis into ``(cycle, step)``; one row for one cycle.

    Raises
    ------
    DataError
        If the voltage is not a bipolar triangle, or its cycles differ in length or in shape.

    Examples
    --------
    >>> split_cycles(triangle_waveform(8, 4.0, n_cycles=2))
    array([[ 0,  1,  2,  3,  4,  5,  6,  7],
           [ 8,  9, 10, 11, 12, 13, 14, 15]])
    """
    v = _as_voltage(voltage)
    w = check_bipolar(v)
    parts = cycle_slices(v)
    lengths = [s.stop - s.start for s in parts]
    if len(set(lengths)) > 1:
        extra = (f"; drop the last step (it closes the last cycle at {_v(v[-1])} V)"
                 if lengths[-1] == lengths[0] + 1 and len(set(lengths[:-1])) == 1 else "")
        raise DataError(f"the {v.size} steps hold {w.n_cycles} cycles of unequal length "
                        f"({', '.join(map(str, lengths))} steps){extra}")
    index = np.arange(v.size).reshape(len(parts), lengths[0])
    step = _step(v)
    unlike = np.flatnonzero(np.abs(v[index] - v[index[0]]).max(axis=1) > 0.5 * step)
    if unlike.size:
        raise DataError(f"cycle {int(unlike[0]) + 1} of {w.n_cycles} does not follow the voltage of cycle 1 "
                        "(same start, same steps); give cycles with one waveform")
    return index


def check_dataset_voltage(ds, *, max_cycles: int | None = None) -> Waveform | None:
    """:func:`check_bipolar` on the ``voltage`` of a Dataset (each 1-D voltage when it has more
    dims than ``step``); None when the Dataset has no voltage."""
    if "voltage" not in ds.variables:
        return None
    da = ds["voltage"]
    if "step" in da.dims and da.ndim > 1:
        rows = da.transpose(..., "step").values.reshape(-1, da.sizes["step"])
        return [check_bipolar(r, max_cycles=max_cycles) for r in rows][0]
    return check_bipolar(da.values, max_cycles=max_cycles)


def check_paper_order(voltage) -> None:
    """Raise unless the steps run in the paper's order (one cycle from +Vmax, falling first).

    The published networks read the loop as a sequence, so they take the paper's step order; the
    amplitude does not matter (they see normalized loops).

    Raises
    ------
    ConfigError
        Naming the data's waveform.
    """
    from ._errors import ConfigError
    from .paper import PAPER_STEPS

    w = describe_waveform(voltage)
    if (w.n_steps, w.n_cycles, w.start, w.first_direction) != (PAPER_STEPS, 1, "+Vmax", "falling"):
        raise ConfigError(f"--pretrained paper takes the paper's waveform ({PAPER_STEPS} steps, one cycle from "
                          f"+Vmax, falling first); the data's is {w}; train instead (drop --pretrained paper)")
