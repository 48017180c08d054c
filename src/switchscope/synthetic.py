"""The embedded synthetic BEPS dataset, with ground truth (DESIGN section 5).

A physically plausible stand-in for the hierarchically twinned PbZr0.2Ti0.8O3 film of Agar et al.
(Nat. Commun. 10, 4809, 2019), generated in well under a second for the paper's 60 x 60 x 96 grid,
deterministic by seed and fully vectorized over pixels.

What the generator builds
-------------------------
*Geometry.* The field of view is that of the paper's 60 x 60 scan, whatever ``rows`` and ``cols``
are (a bigger grid is the same film sampled more finely). Bands run at about 45 degrees and
alternate between c/a regions (about two thirds of each period, with fine c/a stripes inside) and
a1/a2 regions; their edges are slightly wavy. ``truth_band_position`` runs from 0 at a band's peak
side to 1 at its valley side; ``truth_c_fraction`` is the pixel-averaged fraction of out-of-plane
(c) domains, modulated by the fine stripes and blurred over about half a pixel at band edges.

*Loops.* On the descending branch (+V_max -> -V_max) the response switches from + to - at
``truth_coercive_neg``; on the ascending branch it switches back at ``truth_coercive_pos``::

    p(V; c) = [erf((V - c - d/2)/w) + erf((V - c + d/2)/w)] / 2,    branch = H p + s V p^2

with height ``H`` rising with the c fraction (weaker out-of-plane response in a1/a2 bands), width
``w`` (sharp, c-like loops in c/a bands, slanted ones in a1/a2 bands), a small field-induced tilt
``s`` and a plateau of width ``d = 6 V * truth_three_state`` around zero response: the three-state
ferroelastic step. Both sub-steps sit symmetrically about ``c`` and the tilt vanishes with ``p``, so
each noise-free branch crosses zero exactly once, at its coercive voltage.

*Other channels.* The complex response ``R = P + i b`` (``b`` a small out-of-phase background) gives
``amplitude = |R| >= 0`` and ``phase = angle(R)`` in degrees, wrapped to [-90, 270) so the two
polarization states sit near 0 and 180 degrees, and ``piezoresponse = amplitude * cos(phase)``
holds exactly, noise included. The resonance frequency is a butterfly ``f0 + beta * p * V`` (``p``
the branch's normalized polarization) that softens (dips) at switching and, with strength
``truth_hardening``, hardens (rises) about 3 V before it. Q is about 230-270 and drops at switching.

*Artifacts* (``artifacts=True``): Gaussian noise, a smooth per-pixel in-phase offset (the real
film's second principal component), spikes, failed fits (NaN or Inf in every channel at a point;
never a whole pixel) and resonance values outside the paper's valid 1300-1340 kHz.

*Calibration.* Noise, switching width, coercive and imprint spreads, the offset, and the resonance
amplitudes (f0 spread over pixels against butterfly, softening, hardening and noise within a pixel)
are set so that the film's statistics match the paper's film within a factor of 1.5 where they
can (``benchmarks/synthetic_vs_real.py``, ``docs/synthetic.md``).
The noise-free curves are kept as ``truth_<channel>``.

*Spectra* (``spectra=True``): raw band-excitation responses per step from the simple harmonic
oscillator of band excitation (Jesse et al., Nanotechnology 18, 435503, 2007; the form BGlib uses)::

    S(f) = A exp(i phi) f0^2 / (f^2 - i f f0 / Q - f0^2)

split into ``spectrum_real`` and ``spectrum_imag`` (row, col, step, freq) because NetCDF has no
complex type.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import xarray as xr
from scipy.ndimage import gaussian_filter
from scipy.special import erf

from ._config import StageConfig, register
from ._context import RunContext
from ._dataset import CHANNELS
from ._dataset import make_dataset as _make_channels
from ._errors import DataError
from .paper import TRUTH_MAPS, paper_voltage  # TRUTH_MAPS re-exported
from .waveform import descending_steps, triangle_waveform

__all__ = [
    "SyntheticConfig",
    "TRUTH_MAPS",
    "make_dataset",
    "paper_waveform",
    "score_stage",
    "sho_response",
    "truth_scores",
]


# The paper's scan is 60 x 60 pixels; lengths below are in pixels of that scan.
_FOV = 60.0
_BAND_PERIOD = 18.0  # along a row, as in the real data's k-means map
_A_FRACTION = 1.0 / 3.0  # share of each period in a1/a2 bands (about 0.34 in the real data)
_STRIPE_PERIOD = 3.5
_EDGE_BLUR = 0.5
_PLATEAU_MAX = 6.0  # V, plateau width of a fully three-state pixel
_HARDENING_LEAD = 3.0  # V before the coercive voltage
_HARDENING_MAX = 1.2  # kHz (calibrated on the real film: benchmarks/synthetic_vs_real.py)
_HEIGHT = 1.0e-4  # saturation response of a pure c pixel, like the paper's raw loops
_BACKGROUND = 0.04  # out-of-phase background, in units of _HEIGHT
_OFFSET = 0.09  # std of the per-pixel in-phase offset (artifact), in units of _HEIGHT
_DIP = 1.4  # kHz, softening of the resonance at switching
_BUTTERFLY = 0.05  # kHz per V of the resonance butterfly (paper waveform)
_RESONANCE_NOISE = 10.0  # kHz of resonance noise per unit of ``noise``
_VALID_RESONANCE = (1300.0, 1340.0)


# -- configuration --------------------------------------------------------------------------------
@register("synthetic")
@dataclasses.dataclass(frozen=True, kw_only=True)
class SyntheticConfig(StageConfig):
    """Options of the synthetic dataset (section ``[synthetic]``); the keywords of :func:`make_dataset`.

    Attributes
    ----------
    rows, cols : int
        Grid size; the field of view stays that of the paper's 60 x 60 scan.
    seed : int
        Seed of every random draw.
    n_steps : int
        Voltage steps of one triangular cycle (even; the paper: 96).
    v_max : float
        Amplitude of the waveform in volts (the paper: 16).
    waveform_start : {"+max", "0", "-max"}
        Voltage of the first step (the paper: ``"+max"``); a start at 0 V needs ``n_steps`` a
        multiple of 4. The other starts are rotations of the paper's waveform by whole steps.
    rising_first : bool or None
        Direction of the first sweep; only a start at 0 V has a choice. None (the default):
        falling from +Vmax, rising from -Vmax and from 0 V (0 -> +V -> -V -> 0).
    n_cycles : int
        Cycles of the waveform, back to back along ``step`` (the same film measured again).
    noise : float
        Standard deviation of the measurement noise relative to a c-domain loop's saturation
        (piezoresponse); resonance and Q noise scale with it (10 kHz and 300 per unit). The
        default, 0.015, and the other amplitudes are calibrated on the paper's film
        (``benchmarks/synthetic_vs_real.py``, ``docs/synthetic.md``).
    artifacts : bool
        Add noise, spikes, failed fits and out-of-range resonance values.
    spectra : bool
        Add raw band-excitation spectra (``spectrum_real``/``spectrum_imag``, float32).
    n_freq : int
        Frequency bins of the spectra.
    spike_fraction, failed_fraction, out_of_range_fraction : float
        Shares of (pixel, step) points with a spike, a failed fit (NaN/Inf) and a resonance
        outside 1300-1340 kHz (only with ``artifacts``).
    """

    rows: int = 60
    cols: int = 60
    seed: int = 0
    n_steps: int = 96
    v_max: float = 16.0
    waveform_start: str = "+max"
    rising_first: bool | None = None
    n_cycles: int = 1
    noise: float = 0.015
    artifacts: bool = True
    spectra: bool = False
    n_freq: int = 24
    spike_fraction: float = 0.003
    failed_fraction: float = 0.003
    out_of_range_fraction: float = 0.004

    presets = {"paper": {"rows": 60, "cols": 60, "n_steps": 96, "v_max": 16.0}}

    def validate(self) -> None:
        self.check_number("rows", lo=1, hi=4096, integer=True)
        self.check_number("cols", lo=1, hi=4096, integer=True)
        self.check_number("seed", lo=0, hi=2**32 - 1, integer=True)
        self.check_number("n_steps", lo=8, hi=100_000, integer=True)
        if int(self.n_steps) % 2:
            self._fail("n_steps", "an even integer (half the steps go down, half go up)", self.n_steps)
        self.check_number("v_max", lo=4.0, hi=1000.0)
        self.check_choice("waveform_start", ("+max", "0", "-max"))
        self.check_choice("rising_first", (None, True, False))
        if self.waveform_start == "+max" and self.rising_first is True:
            self._fail("rising_first", "False or None with waveform_start '+max' (it can only fall first)", True)
        if self.waveform_start == "-max" and self.rising_first is False:
            self._fail("rising_first", "True or None with waveform_start '-max' (it can only rise first)", False)
        if self.waveform_start == "0" and int(self.n_steps) % 4:
            self._fail("n_steps", "a multiple of 4 with waveform_start '0' (0 V and both peaks are steps)",
                       self.n_steps)
        self.check_number("n_cycles", lo=1, hi=64, integer=True)
        self.check_number("noise", lo=0.0, hi=1.0)
        self.check_choice("artifacts", (True, False))
        self.check_choice("spectra", (True, False))
        self.check_number("n_freq", lo=4, hi=1024, integer=True)
        for name in ("spike_fraction", "failed_fraction", "out_of_range_fraction"):
            self.check_number(name, lo=0.0, hi=0.05)


# -- public helpers -------------------------------------------------------------------------------
def paper_waveform(n_steps: int = 96, v_max: float = 16.0) -> np.ndarray:
    """The paper's triangular DC waveform: +v_max down to -v_max and back.

    Index 0 is ``+v_max``, index ``n_steps // 2`` is ``-v_max``, the step is ``4 v_max / n_steps``
    (2/3 V for the paper's 96 steps); the last value is one step below ``+v_max``, as in the
    paper's ``Voltagedata_mixed``.

    Returns
    -------
    voltage : ndarray of shape (n_steps,)
    """
    cfg = SyntheticConfig(n_steps=n_steps, v_max=v_max)  # checks: an even number of steps
    return paper_voltage(int(cfg.n_steps), float(cfg.v_max))


def sho_response(freq: np.ndarray, amplitude: np.ndarray, phase_deg: np.ndarray,
                 resonance: np.ndarray, quality_factor: np.ndarray) -> np.ndarray:
    """Complex simple-harmonic-oscillator response of band excitation.

    ``S(f) = A exp(i phi) f0^2 / (f^2 - i f f0 / Q - f0^2)`` (Jesse et al. 2007), broadcast over
    the parameters' shape with a trailing frequency axis; ``|S(f0)| = A Q``.

    Parameters
    ----------
    freq : array of shape (n_freq,)
        Frequencies, same unit as ``resonance``.
    amplitude, phase_deg, resonance, quality_factor : arrays of one shape (...)
        SHO parameters; the phase in degrees.

    Returns
    -------
    ndarray of shape (..., n_freq), complex
    """
    f = np.asarray(freq, dtype=float)
    a = np.asarray(amplitude, dtype=float)[..., None]
    phi = np.deg2rad(np.asarray(phase_deg, dtype=float))[..., None]
    f0 = np.asarray(resonance, dtype=float)[..., None]
    q = np.asarray(quality_factor, dtype=float)[..., None]
    return a * np.exp(1j * phi) * f0**2 / (f**2 - 1j * f * f0 / q - f0**2)


# -- generator ------------------------------------------------------------------------------------
def _smooth_field(rng: np.random.Generator, rows: int, cols: int, scale: float) -> np.ndarray:
    """Smooth random field of unit standard deviation, correlation length ``scale`` (FOV pixels)."""
    white = rng.standard_normal((rows, cols))
    sigma = (scale * rows / _FOV, scale * cols / _FOV)
    field = gaussian_filter(white, sigma=sigma, mode="wrap")
    sd = field.std()
    return field / sd if sd > 0 else field


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _maps(cfg: SyntheticConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-pixel structure and mechanism parameters, each (rows, cols)."""
    rows, cols = int(cfg.rows), int(cfg.cols)
    # pixel centres in FOV pixels, so every grid size shows the same film
    y = (np.arange(rows)[:, None] + 0.5) * _FOV / rows
    x = (np.arange(cols)[None, :] + 0.5) * _FOV / cols
    angle = np.deg2rad(45.0 + rng.uniform(-6.0, 6.0))
    period = _BAND_PERIOD * np.sin(angle) * rng.uniform(0.93, 1.07)  # normal to the bands
    along = -x * np.sin(angle) + y * np.cos(angle)
    wave = 0.6 * np.sin(2 * np.pi * along / rng.uniform(25.0, 40.0) + rng.uniform(0, 2 * np.pi))
    normal = x * np.cos(angle) + y * np.sin(angle) + wave
    q = normal / period + rng.uniform(0.0, 1.0)
    frac = q - np.floor(q)
    in_a = frac < _A_FRACTION
    domain = in_a.astype(np.int64)
    band_pos = np.where(in_a, frac / _A_FRACTION, (frac - _A_FRACTION) / (1.0 - _A_FRACTION))
    # signed distance (FOV pixels) to the nearest band edge, positive inside c/a bands
    dist = period * np.minimum.reduce([frac, np.abs(frac - _A_FRACTION), 1.0 - frac])
    signed = np.where(in_a, -dist, dist)
    ca_weight = _sigmoid(signed / _EDGE_BLUR * 4.0)

    # fine c/a stripes, perpendicular to the bands, blurred by the tip over a pixel
    stripes = np.sin(2 * np.pi * along / _STRIPE_PERIOD + rng.uniform(0, 2 * np.pi))
    f1, f2, f3, f4, f5 = (_smooth_field(rng, rows, cols, s) for s in (4.0, 5.0, 6.0, 3.0, 8.0))
    c_in_ca = np.clip(0.78 - 0.12 * band_pos + 0.07 * stripes + 0.03 * f1, 0.45, 0.95)
    c_in_a = np.clip(0.08 + 0.02 * f1, 0.0, 0.2)
    c_fraction = ca_weight * c_in_ca + (1.0 - ca_weight) * c_in_a

    # three-state switching: ferroelastic c -> a -> c, most on the valley side of c/a bands
    three = np.clip(ca_weight * (1.05 * band_pos**1.5) + (1.0 - ca_weight) * 0.05 + 0.12 * f2, 0, 1)
    # elastic hardening: strongest next to band edges on the peak side, modulated along the bands
    near_edge = np.exp(-((dist / 2.5) ** 2)) * (1.0 - 0.6 * band_pos)
    slow = 0.5 + 0.5 * np.sin(2 * np.pi * along / 45.0 + rng.uniform(0, 2 * np.pi))
    hard = np.clip(0.75 * near_edge + 0.35 * slow + 0.1 * f3, 0.0, 1.0)

    height = _HEIGHT * (0.4 + 0.6 * c_fraction) * (1.0 + 0.04 * f4)
    width = 1.8 + 1.2 * (1.0 - ca_weight) + 0.15 * f5 ** 2
    plateau = _PLATEAU_MAX * three
    # coercive voltages in units of the paper's 16 V waveform, then kept inside the window
    scale = float(cfg.v_max) / 16.0
    imprint = scale * (0.9 + 0.8 * f4 + 0.3 * (1.0 - ca_weight))
    half = scale * (7.3 + 0.6 * f5 + 1.0 * (1.0 - ca_weight) - 0.8 * three - 0.3 * f4)
    room = float(cfg.v_max) - np.abs(imprint) - plateau / 2 - 2.0 * width
    half = np.clip(half, 1.5 * width, np.maximum(room, 1.5 * width))
    return {
        "domain": domain,
        "band_position": band_pos,
        "c_fraction": c_fraction,
        "three_state": three,
        "hardening": hard,
        "coercive_pos": imprint + half,
        "coercive_neg": imprint - half,
        "imprint": imprint,
        "height": height,
        "width": width,
        "plateau": plateau,
        "ca_weight": ca_weight,
        "f0": 1320.0 + 6.0 * (1.0 - ca_weight) + 2.5 * f2,
        "q0": 265.0 - 25.0 * (1.0 - ca_weight) + 8.0 * f3,
    }


def _curves(m: dict[str, np.ndarray], voltage: np.ndarray) -> dict[str, np.ndarray]:
    """Noise-free channels (rows, cols, n_steps) from the parameter maps."""
    v = voltage[None, None, :]
    # the branches from the voltage itself (any start, direction, cycles); the bottom turning
    # point goes with the descending sweep, as it always has here (both branches are saturated
    # there), which keeps the paper waveform's film bit for bit
    descending = (descending_steps(voltage) | (voltage <= voltage.min()))[None, None, :]
    # the descending branch switches at coercive_neg, the ascending one at coercive_pos
    c = np.where(descending, m["coercive_neg"][..., None], m["coercive_pos"][..., None])
    h, w, d = m["height"][..., None], m["width"][..., None], m["plateau"][..., None]
    state = 0.5 * (erf((v - c - d / 2) / w) + erf((v - c + d / 2) / w))  # -1 .. +1
    # the field-induced (dielectric) tilt scales with the switched polarization, so it vanishes
    # where the state is zero: zero crossings stay exactly at the coercive voltages
    slope = 0.012 * h / (voltage.max() / 16.0)
    piezo = h * state + slope * v * state**2

    b = _BACKGROUND * _HEIGHT
    amplitude = np.hypot(piezo, b)
    phase = np.rad2deg(np.arctan2(b, piezo))

    # "before" switching: at higher voltage on the way down, at lower voltage on the way up
    # (before the first sub-step of a three-state pixel, so the broad dip does not hide it)
    lead = np.where(descending, 1.0, -1.0) * (_HARDENING_LEAD * voltage.max() / 16.0 + d / 2)
    spread = np.sqrt(w**2 + (d / 2) ** 2)
    dip = _DIP * np.exp(-(((v - c) / (1.2 * spread)) ** 2))
    bump = _HARDENING_MAX * m["hardening"][..., None] * np.exp(-(((v - c - lead) / 1.3) ** 2))
    beta = _BUTTERFLY * 16.0 / voltage.max()
    resonance = m["f0"][..., None] + beta * state * v - dip + bump
    quality = m["q0"][..., None] - 55.0 * np.exp(-(((v - c) / (1.5 * spread)) ** 2)) \
        - 0.8 * np.abs(v) * 16.0 / voltage.max()
    return {
        "piezoresponse": piezo,
        "amplitude": amplitude,
        "phase": phase,
        "resonance": resonance,
        "quality_factor": np.clip(quality, 180.0, 305.0),
    }


def _corrupt(cfg: SyntheticConfig, truth: dict[str, np.ndarray],
             rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Measured channels: noise, spikes, failed fits, out-of-range resonance."""
    shape = truth["piezoresponse"].shape
    n_steps = shape[-1]
    b = _BACKGROUND * _HEIGHT
    sigma = float(cfg.noise) * _HEIGHT
    # noise on the complex response keeps piezoresponse = amplitude * cos(phase) exact
    re = truth["piezoresponse"] + sigma * rng.standard_normal(shape)
    im = b + sigma * rng.standard_normal(shape)
    resonance = truth["resonance"] + _RESONANCE_NOISE * cfg.noise * rng.standard_normal(shape)
    quality = truth["quality_factor"] + 300.0 * cfg.noise * rng.standard_normal(shape)

    # a per-pixel in-phase offset (electrostatic background), spatially smooth: the real film's
    # second principal component
    rows, cols = shape[0], shape[1]
    offset = _OFFSET * _HEIGHT * _smooth_field(rng, rows, cols, 1.5).reshape(rows, cols, *([1] * (len(shape) - 2)))
    re = re + offset

    spikes = rng.random(shape) < cfg.spike_fraction
    sign = np.where(rng.random(shape) < 0.5, -1.0, 1.0)
    re = np.where(spikes, re + sign * rng.uniform(0.6, 1.5, shape) * _HEIGHT, re)
    spikes = rng.random(shape) < cfg.spike_fraction
    resonance = np.where(spikes, resonance + sign * rng.uniform(3.0, 8.0, shape), resonance)
    spikes = rng.random(shape) < cfg.spike_fraction
    quality = np.where(spikes, quality + sign * rng.uniform(40.0, 90.0, shape), quality)

    low, high = _VALID_RESONANCE
    out = rng.random(shape) < cfg.out_of_range_fraction
    # far enough out that a robust range of the calibrated film (median +- 8 MADs) sees them too
    wild = np.where(sign < 0, rng.uniform(low - 60.0, low - 15.0, shape),
                    rng.uniform(high + 15.0, high + 60.0, shape))
    resonance = np.where(out, wild, resonance)

    amplitude = np.hypot(re, im)
    phase = np.mod(np.rad2deg(np.arctan2(im, re)) + 90.0, 360.0) - 90.0
    piezo = amplitude * np.cos(np.deg2rad(phase))

    # failed SHO fits hit every channel at a point; a pixel keeps at least 90 % of its steps
    failed = rng.random(shape) < cfg.failed_fraction
    failed &= np.cumsum(failed, axis=-1) <= max(1, n_steps // 10)
    infinite = failed & (rng.random(shape) < 0.25)
    out_ch = {"piezoresponse": piezo, "amplitude": amplitude, "phase": phase,
              "resonance": resonance, "quality_factor": quality}
    for name, arr in out_ch.items():
        arr = np.where(failed, np.nan, arr)
        if name != "phase":
            fill = sign * np.inf if name == "piezoresponse" else np.inf
            arr = np.where(infinite, fill, arr)
        out_ch[name] = arr
    return out_ch


def make_dataset(rows: int = 60, cols: int = 60, seed: int = 0, *, n_steps: int = 96,
                 v_max: float = 16.0, waveform_start: str = "+max", rising_first: bool | None = None,
                 n_cycles: int = 1, noise: float = 0.015, artifacts: bool = True,
                 spectra: bool = False, n_freq: int = 24, spike_fraction: float = 0.003,
                 failed_fraction: float = 0.003, out_of_range_fraction: float = 0.004
                 ) -> xr.Dataset:
    """Generate the synthetic BEPS dataset with its ground truth.

    Parameters are those of :class:`SyntheticConfig` (checked there; a bad one raises
    :class:`~switchscope.ConfigError`). The waveform options give any bipolar triangle (e.g.
    ``n_steps=64, waveform_start="0"``: 0 -> +V -> -V -> 0); the truth maps (coercive voltages,
    imprint) hold for every waveform, since each branch is a function of the voltage.

    Returns
    -------
    xarray.Dataset
        Channels ``piezoresponse, amplitude, phase, resonance, quality_factor`` (row, col, step)
        with a ``voltage`` coordinate on ``step``; ``truth_<channel>`` (row, col, step), the
        noise-free curves; the maps of :data:`TRUTH_MAPS` (row, col); with ``spectra``,
        ``spectrum_real``/``spectrum_imag`` (row, col, step, freq) and a ``freq`` coordinate (kHz).
        Without ``artifacts`` the channels equal the noise-free curves.

    Examples
    --------
    >>> ds = make_dataset(rows=8, cols=8, seed=1)
    >>> ds["piezoresponse"].shape
    (8, 8, 96)
    """
    cfg = SyntheticConfig(rows=rows, cols=cols, seed=seed, n_steps=n_steps, v_max=v_max,
                          waveform_start=waveform_start, rising_first=rising_first, n_cycles=n_cycles,
                          noise=noise, artifacts=artifacts, spectra=spectra, n_freq=n_freq,
                          spike_fraction=spike_fraction, failed_fraction=failed_fraction,
                          out_of_range_fraction=out_of_range_fraction)
    rng = np.random.default_rng(int(cfg.seed))
    voltage = triangle_waveform(int(cfg.n_steps), float(cfg.v_max), start=cfg.waveform_start,
                                rising_first=cfg.rising_first, n_cycles=int(cfg.n_cycles))
    maps = _maps(cfg, rng)
    truth = _curves(maps, voltage)
    # draws for the measurement come from their own stream, so the truth of a seed does not
    # change with the artifact options
    meas_rng = np.random.default_rng([int(cfg.seed), 1])
    measured = _corrupt(cfg, truth, meas_rng) if cfg.artifacts else {k: v.copy() for k, v in truth.items()}

    ds = _make_channels(
        measured, voltage,
        attrs={
            "source": "synthetic",
            "generator": "switchscope.synthetic.make_dataset",
            **{k: (int(v) if isinstance(v, bool) else v) for k, v in cfg.to_dict().items() if v is not None},
            "valid_resonance_khz": list(_VALID_RESONANCE),
        },
    )
    dims = ("row", "col", "step")
    for name, arr in truth.items():
        ds[f"truth_{name}"] = xr.DataArray(
            arr, dims=dims, attrs={"units": CHANNELS[name], "long_name": f"noise-free {name}"})
    for name, doc in TRUTH_MAPS.items():
        arr = maps[name.removeprefix("truth_")]
        units = "V" if "coercive" in name or "imprint" in name else "1"
        ds[name] = xr.DataArray(arr, dims=("row", "col"), attrs={"units": units, "long_name": doc})
    if cfg.spectra:
        f0 = truth["resonance"]
        freq = np.linspace(1305.0, 1345.0, int(cfg.n_freq))
        spec = sho_response(freq, truth["amplitude"], truth["phase"], f0, truth["quality_factor"])
        if cfg.artifacts and cfg.noise > 0:
            level = float(cfg.noise) * _HEIGHT * 250.0  # relative to the peak A*Q
            spec = spec + level * (meas_rng.standard_normal(spec.shape)
                                   + 1j * meas_rng.standard_normal(spec.shape))
        ds = ds.assign_coords(freq=("freq", freq, {"units": "kHz", "long_name": "frequency"}))
        sdims = ("row", "col", "step", "freq")
        ds["spectrum_real"] = xr.DataArray(spec.real.astype(np.float32), dims=sdims,
                                           attrs={"units": "a.u.", "long_name": "SHO response, real part"})
        ds["spectrum_imag"] = xr.DataArray(spec.imag.astype(np.float32), dims=sdims,
                                           attrs={"units": "a.u.", "long_name": "SHO response, imaginary part"})
    return ds


# -- scores against the truth ---------------------------------------------------------------------
def truth_scores(ds: xr.Dataset) -> dict[str, Any]:
    """Compare a run's results with the ground truth of a synthetic dataset.

    Uses whatever results are present: ``cluster_*`` maps (adjusted Rand index and homogeneity
    against ``truth_domain``), ``loop_coercive_pos/neg`` and ``loop_imprint`` (median absolute
    error in volts) and ``embedding_<channel>`` (for every truth map, the largest absolute Pearson
    correlation with any neuron).

    Returns
    -------
    dict
        JSON-serialisable numbers; empty when nothing to score is present.
    """
    from sklearn.metrics import adjusted_rand_score, homogeneity_score

    if "truth_domain" not in ds:
        raise DataError("the dataset has no truth_domain; scores need a synthetic dataset "
                        "(switchscope.synthetic.make_dataset)")
    domain = np.asarray(ds["truth_domain"].values).ravel()
    out: dict[str, Any] = {}
    for name in ds.data_vars:
        if str(name).startswith("cluster_") and ds[name].dims == ("row", "col"):
            labels = np.asarray(ds[name].values).ravel()
            ok = np.isfinite(labels.astype(float))
            out[f"ari_{name}"] = round(float(adjusted_rand_score(domain[ok], labels[ok])), 4)
            out[f"homogeneity_{name}"] = round(float(homogeneity_score(domain[ok], labels[ok])), 4)
    for key in ("coercive_pos", "coercive_neg", "imprint"):
        if f"loop_{key}" in ds:
            err = np.abs(np.asarray(ds[f"loop_{key}"].values, float) - ds[f"truth_{key}"].values)
            if np.isfinite(err).any():
                out[f"median_abs_error_{key}_v"] = round(float(np.nanmedian(err)), 4)
    for name in ds.data_vars:
        if str(name).startswith("embedding_") and not str(name).startswith("embedding_history"):
            emb = np.asarray(ds[name].values, float).reshape(-1, ds[name].shape[-1])
            best: dict[str, float] = {}
            for tname in TRUTH_MAPS:
                t = np.asarray(ds[tname].values, float).ravel()
                r = _abs_corr(emb, t)
                best[tname.removeprefix("truth_")] = round(float(np.nanmax(r)), 4) if np.isfinite(r).any() else 0.0
            out[f"best_neuron_corr_{str(name).removeprefix('embedding_')}"] = best
    return out


def _abs_corr(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """|Pearson r| of each column of ``x`` (n, k) with ``t`` (n,); NaN for constant columns."""
    xc = x - x.mean(axis=0)
    tc = t - t.mean()
    den = np.sqrt((xc**2).sum(axis=0) * (tc**2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.abs(xc.T @ tc) / den


def score_stage(ds: xr.Dataset, config: SyntheticConfig, ctx: RunContext) -> xr.Dataset:
    """Pipeline stage: add :func:`truth_scores` to ``ctx.summary["synthetic"]["scores"]``.

    Does nothing (but note it in the summary) when ``ds`` holds no ground truth, i.e. on real data.
    Returns a new Dataset with no added variables.
    """
    section = ctx.summary.setdefault("synthetic", {})
    if "truth_domain" not in ds:
        section["scores"] = None
        return ds.copy()
    section["scores"] = truth_scores(ds)
    section["a1a2_fraction"] = round(float(ds["truth_domain"].mean()), 4)
    return ds.copy()
