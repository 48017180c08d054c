"""NSID HDF5 files, as pyNSID and sidpy write them: loop cubes whose axes are HDF5 dimension scales.

Layout, read from pyNSID 0.0.7.2 (``pyNSID/io/hdf_io.py::write_nsid_dataset``,
``pyNSID/io/hdf_utils.py::link_as_main`` and ``check_if_main``) and sidpy
(``sidpy/hdf/hdf_utils.py::write_book_keeping_attrs``, ``sidpy/sid/dimension.py::DimensionType``,
``sidpy/sid/dataset.py::DataType``):

- ``write_nsid_dataset(dataset, group)`` makes a group named after the dataset inside ``group``
  (by convention ``/Measurement_000/Channel_000``) and in it the *main* dataset of the same name,
  so the main dataset sits at ``/Measurement_000/Channel_000/<name>/<name>``. Its attributes are
  ``quantity``, ``units``, ``main_data_name``, ``data_type`` (``DataType`` name, e.g.
  ``SPECTRAL_IMAGE``), ``modality``, ``source``, ``pyNSID_version`` and sidpy's book-keeping
  ``machine_id``, ``timestamp``, ``platform``, ``sidpy_version``; all strings.
- Next to it, one 1-D dataset per axis, named after the dimension, with attributes ``name``,
  ``quantity``, ``units`` and ``dimension_type`` (``DimensionType`` name: ``SPATIAL``,
  ``SPECTRAL``, ``RECIPROCAL``, ``TEMPORAL``, ``CHANNEL``, ``UNKNOWN``...). ``link_as_main`` makes
  each a dimension scale, sets the axis label (``DIMENSION_LABELS``) to the dimension's name and
  attaches the scale (``DIMENSION_LIST``).

How the axes become switchscope's dims (DESIGN section 3), by name, quantity and units, never by
position alone:

- the axis whose name, label or quantity says voltage (``Voltage``, ``DC Offset``, ``Bias``...)
  or whose units are volts (``V``, ``mV``, ``kV``, ``Volts``) becomes ``step``, its values the
  ``voltage`` coordinate in volts; an axis of type ``SPATIAL`` is never the voltage;
- axes named ``x``/``col``/``column`` become ``col``, ``y``/``row`` become ``row``; ``SPATIAL``
  axes with other names (sidpy's ``dim_0``, ``dim_1``, ``a``, ``b``) fill the missing ones in file
  order, row first, as a C-ordered ``(rows, cols)`` image is written. With length units
  (m, mm, um, µm, nm, pm, Å) their values become the ``x`` (on ``col``) and ``y`` (on ``row``)
  coordinates in metres; with pixel or generic units there is no ``x``/``y``;
- an axis whose name, label or quantity holds ``cycle`` becomes ``cycle`` (numbered from 1 in file
  order, whatever its scale holds, as :mod:`switchscope.select` counts cycles), one holding
  ``field`` becomes ``field``; the dims come out as ``(row, col, [cycle], [field], step)``;
- field labels are read from the scale: text values ``in-field``/``out-of-field`` (also ``in field``,
  ``on``, ``out of field``, ``off``, ``remanent``), or numbers where 1 is in-field and 0 out-of-field,
  BGlib's convention for its ``Field`` spectroscopic values (``be/translators/be_odf.py``);
- a missing row or col axis becomes a dim of length 1; other axes of length 1 are dropped.

Channels come from each main dataset's ``quantity`` (else its name): piezoresponse (also
``Projected piezoresponse``), amplitude, phase (rad converted to degrees), resonance (also
``Resonance frequency``, or ``Frequency`` in Hz units; converted to kHz), quality factor (``Q``).
Quantities without units (empty, ``generic``, ``a.u.``) are taken to be in switchscope's unit with
a :class:`~switchscope.DataWarning`.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import xarray as xr

from .._dataset import CHANNELS, check_channel
from .._errors import DataError, DataWarning, FormatError
from .._text import printable
from ._base import (
    HEAD_BYTES,
    MAT73_TEXT,
    PathLike,
    Reader,
    hdf5_declared,
    hdf5_offset,
    oneline,
    read_head,
    resolve_voltage,
)

#: Attributes only NSID main datasets carry (``check_if_main`` in pyNSID's ``hdf_utils.py``).
_NSID_MARKERS = ("main_data_name", "pyNSID_version")
#: Attributes that NetCDF4 (netCDF-C, h5netcdf) writes and NSID never does.
_NETCDF_MARKERS = ("_Netcdf4Dimid", "_Netcdf4Coordinates", "_NCProperties")
#: How many HDF5 objects the format sniff looks at before giving up (keeps it cheap).
_SNIFF_BUDGET = 20_000

# -- unit tables (exact spellings first, then lower case) -----------------------------------------

_NO_UNITS = {"", "generic", "a.u.", "a. u.", "au", "arb. units", "arb.u.", "arbitrary units", "none",
             "unknown", "n/a", "1", "-"}
_PIXEL_UNITS = _NO_UNITS | {"px", "pix", "pixel", "pixels", "index", "indices", "count", "counts", "points"}
_LENGTH_TO_M = {"m": 1.0, "meter": 1.0, "meters": 1.0, "metre": 1.0, "metres": 1.0, "cm": 1e-2,
                "mm": 1e-3, "um": 1e-6, "\u00b5m": 1e-6, "\u03bcm": 1e-6, "micron": 1e-6, "microns": 1e-6,
                "micrometer": 1e-6, "micrometre": 1e-6, "micrometers": 1e-6, "micrometres": 1e-6,
                "nm": 1e-9, "nanometer": 1e-9, "nanometre": 1e-9, "nanometers": 1e-9, "nanometres": 1e-9,
                "pm": 1e-12, "\u00c5": 1e-10, "\u212b": 1e-10, "angstrom": 1e-10, "angstroms": 1e-10}
_VOLT_TO_V = {"V": 1.0, "v": 1.0, "volt": 1.0, "volts": 1.0, "mV": 1e-3, "mv": 1e-3, "millivolt": 1e-3,
              "millivolts": 1e-3, "kV": 1e3, "kv": 1e3, "kilovolt": 1e3, "kilovolts": 1e3}
_HZ_TO_KHZ = {"hz": 1e-3, "khz": 1.0, "mhz": 1e3, "ghz": 1e6}  # mHz is no resonance: "mhz" is MHz
_ANGLE_TO_DEG = {"rad": 180.0 / np.pi, "radian": 180.0 / np.pi, "radians": 180.0 / np.pi,
                 "deg": 1.0, "degree": 1.0, "degrees": 1.0, "\u00b0": 1.0}

#: Quantities (lower case, letters and digits only) and the channel they hold.
_QUANTITIES: dict[str, str] = {
    "piezoresponse": "piezoresponse", "projectedpiezoresponse": "piezoresponse",
    "piezoelectricresponse": "piezoresponse", "projectedloops": "piezoresponse",
    "projectedloop": "piezoresponse", "loopdata": "piezoresponse",
    "amplitude": "amplitude", "responseamplitude": "amplitude", "piezoresponseamplitude": "amplitude",
    "shoamplitude": "amplitude",
    "phase": "phase", "responsephase": "phase", "piezoresponsephase": "phase", "shophase": "phase",
    "resonance": "resonance", "resonancefrequency": "resonance", "shoresonance": "resonance",
    "shoresonancefrequency": "resonance", "contactresonance": "resonance",
    "contactresonancefrequency": "resonance",
    "qualityfactor": "quality_factor", "q": "quality_factor", "qfactor": "quality_factor",
    "shoqualityfactor": "quality_factor",
}
_VOLTAGE_NAMES = {"voltage", "v", "vdc", "dc", "dcoffset", "dcvoltage", "dcbias", "bias", "tipbias",
                  "samplebias", "biasvoltage", "appliedvoltage", "vdcoffset", "dcoffsetvoltage"}
_IN_FIELD = {"infield", "on", "onfield", "in"}
_OUT_OF_FIELD = {"outoffield", "outfield", "off", "offfield", "out", "remanent", "remanence"}


def _compact(text: str) -> str:
    """Lower case, letters and digits only: ``'Projected  piezo_response'`` -> ``'projectedpiezoresponse'``."""
    return re.sub(r"[\W_]+", "", text.lower())


def _tokens(text: str) -> set[str]:
    return {t for t in re.split(r"[\W_]+", text.lower()) if t}


def _unit_factor(units: str, table: Mapping[str, float], *, case: bool = True) -> float | None:
    u = units.strip()
    if case and u in table:
        return table[u]
    return table.get(u.lower())


# -- attributes -----------------------------------------------------------------------------------

def _text(value: Any) -> str:
    """An attribute value as text (h5py gives str, bytes, numpy scalars or 1-element arrays)."""
    if isinstance(value, np.ndarray):
        if value.size != 1:
            return ""
        value = value.reshape(-1)[0]
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, (str, np.str_)):
        return str(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        return str(value)
    return ""


def _attr(obj: Any, key: str) -> str:
    """Attribute ``key`` of ``obj`` as stripped text ('' when absent or unreadable)."""
    try:
        if key not in obj.attrs:
            return ""
        return _text(obj.attrs[key]).strip()
    except Exception:  # noqa: BLE001 - an unreadable attribute (odd dtype, damage) counts as absent
        return ""


def _has(obj: Any, key: str) -> bool:
    try:
        return key in obj.attrs
    except Exception:  # noqa: BLE001
        return False


def _show(text: str) -> str:
    """File text made safe and short for a message."""
    return repr(printable(text, 60))


# -- finding the main datasets --------------------------------------------------------------------

def _is_scale(obj: Any) -> bool:
    return _attr(obj, "CLASS") == "DIMENSION_SCALE"


def _is_main(obj: Any) -> bool:
    """An NSID main dataset: a ``quantity``, axes (labels or scales) or pyNSID's own attributes,
    and not itself a dimension scale (scales carry a ``quantity`` too)."""
    import h5py

    if not isinstance(obj, h5py.Dataset) or not _has(obj, "quantity") or _is_scale(obj):
        return False
    has_axes = _has(obj, "DIMENSION_LIST") or _has(obj, "DIMENSION_LABELS")
    return any(_has(obj, m) for m in _NSID_MARKERS) or (has_axes and _has(obj, "data_type"))


@dataclass
class _Scan:
    """What a walk over the file found."""

    mains: list[str] = field(default_factory=list)
    foreign: str = ""  # "netcdf", "usid", "matlab" when the file belongs to another reader
    labelled: bool = False  # some main dataset has axis labels or scales


def _scan(f: Any, *, sniff: bool = False) -> _Scan:
    """Walk ``f`` for NSID main datasets; when sniffing, stop at the first marker of a format NSID
    files must not be taken for (NetCDF4, USID, MATLAB v7.3) and after :data:`_SNIFF_BUDGET` objects."""
    import h5py

    scan = _Scan()
    if sniff and any(_has(f, m) for m in _NETCDF_MARKERS):
        scan.foreign = "netcdf"
        return scan
    seen = 0

    def visit(name: str, obj: Any) -> Any:
        nonlocal seen
        seen += 1
        if not sniff:
            if _is_main(obj):
                scan.mains.append(obj.name)
            return None
        if seen > _SNIFF_BUDGET:
            return True
        if _has(obj, "MATLAB_class"):
            scan.foreign = "matlab"
            return True
        if not isinstance(obj, h5py.Dataset):
            return None
        if any(_has(obj, m) for m in _NETCDF_MARKERS[:2]):
            scan.foreign = "netcdf"
            return True
        if _has(obj, "Position_Indices"):
            scan.foreign = "usid"
            return True
        if _is_main(obj):
            scan.mains.append(obj.name)
            scan.labelled |= _has(obj, "DIMENSION_LIST") or _has(obj, "DIMENSION_LABELS")
        return None

    f.visititems(visit)
    return scan


def _sniff(path: PathLike) -> bool:
    head = read_head(path, HEAD_BYTES)
    if hdf5_offset(head) is None or head.startswith(MAT73_TEXT):
        return False
    import h5py

    try:
        with h5py.File(path, "r") as f:
            scan = _scan(f, sniff=True)
    except Exception:  # noqa: BLE001 - an unreadable HDF5 file is not ours to claim
        return False
    return not scan.foreign and bool(scan.mains) and scan.labelled


# -- axes -----------------------------------------------------------------------------------------

@dataclass
class _Axis:
    """One axis of a main dataset, as its label and attached dimension scale describe it."""

    index: int
    size: int
    label: str
    name: str = ""
    quantity: str = ""
    units: str = ""
    kind: str = ""  # dimension_type, upper case
    values: np.ndarray | None = None
    role: str = ""

    @property
    def title(self) -> str:
        return self.label or self.name or f"axis {self.index}"

    def words(self) -> list[str]:
        return [w for w in (self.label, self.name, self.quantity) if w]


def _dimension_attrs(dset: Any, where: str) -> tuple[list[str], list[Any]]:
    """Each axis's label and first scale reference, read from the ``DIMENSION_LABELS`` and
    ``DIMENSION_LIST`` attributes themselves: HDF5's dimension-scale API (``dset.dims``) crashes
    the process on damaged ones (a label array shorter than the rank), so it is never called."""
    import h5py

    rank = len(dset.shape)
    labels = [""] * rank
    scales: list[Any] = [None] * rank
    try:
        raw = dset.attrs.get("DIMENSION_LABELS")
        if raw is not None:
            arr = np.atleast_1d(np.asarray(raw, dtype=object)).ravel()
            if arr.size != rank:
                raise FormatError(f"{where}: DIMENSION_LABELS holds {arr.size} labels for {rank} axes; the file "
                                  "is damaged: write it again")
            labels = [_text(v).strip() for v in arr]
        refs = dset.attrs.get("DIMENSION_LIST")
        if refs is not None:
            arr = np.atleast_1d(np.asarray(refs, dtype=object)).ravel()
            if arr.size != rank:
                raise FormatError(f"{where}: DIMENSION_LIST holds {arr.size} entries for {rank} axes; the file "
                                  "is damaged: write it again")
            for i, entry in enumerate(arr):
                first = np.atleast_1d(np.asarray(entry, dtype=object)).ravel()
                if first.size and isinstance(first[0], h5py.Reference) and first[0]:
                    scales[i] = first[0]
    except FormatError:
        raise
    except Exception as exc:  # noqa: BLE001 - damaged attributes
        raise FormatError(f"{where}: the dimension attributes cannot be read ({oneline(exc)}); the file is "
                          "damaged: write it again") from None
    return labels, scales


def _read_axes(dset: Any, where: str) -> list[_Axis]:
    """The axes of ``dset`` from its labels and first attached dimension scale."""
    axes = []
    labels, scales = _dimension_attrs(dset, where)
    for i, size in enumerate(dset.shape):
        try:
            label = labels[i]
            scale = dset.file[scales[i]] if scales[i] is not None else None
        except Exception as exc:  # noqa: BLE001 - dangling references, damaged DIMENSION_LIST
            raise FormatError(f"{where}: the dimension scale of axis {i} cannot be read ({oneline(exc)}); "
                              "the file is damaged: write it again") from None
        ax = _Axis(index=i, size=int(size), label=label.strip())
        if scale is not None:
            ax.name = _attr(scale, "name")
            ax.quantity = _attr(scale, "quantity")
            ax.units = _attr(scale, "units")
            ax.kind = _attr(scale, "dimension_type").upper()
            ax.values = _scale_values(scale, ax, where)
        axes.append(ax)
    if not any(ax.label or ax.values is not None for ax in axes):
        raise DataError(f"{where} has no dimension scales or labels, so its axes are unknown; write it with "
                        "pyNSID (one dimension scale per axis: x, y, voltage)")
    return axes


def _scale_values(scale: Any, ax: _Axis, where: str) -> np.ndarray:
    try:
        shape = scale.shape
        values = np.asarray(scale[()]) if shape is not None else np.array([])
    except Exception as exc:  # noqa: BLE001
        raise FormatError(f"{where}: the dimension scale {_show(ax.title)} cannot be read ({oneline(exc)}); "
                          "the file is damaged: write it again") from None
    values = values.reshape(-1) if values.ndim else values.reshape(1)
    if values.size != ax.size:
        raise DataError(f"{where}: the dimension scale {_show(ax.title)} has {values.size} values but its axis "
                        f"has {ax.size}; attach a scale of one value per index")
    return values


def _numeric(ax: _Axis, where: str) -> np.ndarray:
    v = ax.values
    assert v is not None
    if v.dtype.kind not in "iuf":
        raise DataError(f"{where}: the dimension scale {_show(ax.title)} holds {v.dtype} values, not numbers; "
                        "store numbers in it")
    return v.astype(float)


def _is_voltage(ax: _Axis, where: str) -> bool:
    if ax.kind == "SPATIAL":
        return False
    named = any(_compact(w) in _VOLTAGE_NAMES or "voltage" in _compact(w) or "bias" in _tokens(w)
                for w in ax.words())
    in_volts = _unit_factor(ax.units, _VOLT_TO_V) is not None
    if named and not in_volts and ax.units.lower() not in _NO_UNITS:
        raise DataError(f"{where}: the voltage axis {_show(ax.title)} has units {_show(ax.units)}, not volts; "
                        "store the voltage in V or mV")
    return named or in_volts


def _has_word(ax: _Axis, word: str) -> bool:
    return any(word in _compact(w) for w in ax.words())


def _spatial_role(ax: _Axis) -> str:
    names = [w for w in (ax.label, ax.name) if w]
    toks = set().union(*(_tokens(w) for w in names)) if names else set()
    compact = {_compact(w) for w in names}
    if toks & {"x", "col", "cols", "column", "columns"} or compact & {"xposition", "positionx", "posx", "xpos"}:
        return "col"
    if toks & {"y", "row", "rows"} or compact & {"yposition", "positiony", "posy", "ypos"}:
        return "row"
    return ""


def _assign_roles(axes: list[_Axis], where: str, voltage_given: bool) -> dict[str, _Axis]:
    """``{role: axis}`` for row, col, step, cycle, field; refuse axes that fit none."""
    roles: dict[str, _Axis] = {}

    def take(role: str, ax: _Axis) -> None:
        if role in roles:
            raise DataError(f"{where} has two {role} axes ({_show(roles[role].title)} and {_show(ax.title)}); "
                            "give each axis a distinct name")
        ax.role = role
        roles[role] = ax

    for ax in axes:
        if _has_word(ax, "field") and ax.kind != "SPATIAL":
            take("field", ax)
        elif _has_word(ax, "cycle") and ax.kind != "SPATIAL":
            take("cycle", ax)
        elif _is_voltage(ax, where):
            take("step", ax)
        elif role := _spatial_role(ax):
            take(role, ax)
    for ax in axes:  # unnamed spatial axes fill row, then col, in file order
        if not ax.role and ax.kind == "SPATIAL":
            free = [r for r in ("row", "col") if r not in roles]
            if not free:
                raise DataError(f"{where} has more than two spatial axes (also {_show(ax.title)}); "
                                "switchscope reads a 2-D grid of pixels")
            take(free[0], ax)
    left = [ax for ax in axes if not ax.role and ax.size > 1]
    if "step" not in roles and voltage_given and len(left) == 1:
        take("step", left.pop())
    if "step" not in roles:
        names = ", ".join(_show(ax.title) for ax in axes)
        raise DataError(f"{where} has no voltage axis (axes: {names}); name the spectroscopic axis 'Voltage' "
                        "with units V, or pass voltage=<array of volts>")
    if left:
        ax = left[0]
        raise DataError(f"{where}: axis {_show(ax.title)} ({ax.kind or 'no type'}, {ax.size} values) is not "
                        "a position, voltage, cycle or field axis; switchscope reads loops on (x, y, voltage) "
                        "with optional cycle and field axes")
    return roles


# -- coordinates ----------------------------------------------------------------------------------

def _voltage(ax: _Axis, where: str) -> np.ndarray | None:
    if ax.values is None:
        return None
    v = _numeric(ax, where)
    factor = _unit_factor(ax.units, _VOLT_TO_V)
    if factor is None:
        warnings.warn(f"{where}: the voltage axis {_show(ax.title)} has no units; taken as volts",
                      DataWarning, stacklevel=4)
        factor = 1.0
    return v * factor


def _position(ax: _Axis | None, where: str) -> np.ndarray | None:
    """Positions in metres, or None for pixel units."""
    if ax is None or ax.values is None:
        return None
    factor = _unit_factor(ax.units, _LENGTH_TO_M)
    if factor is None:
        if ax.units.lower() not in _PIXEL_UNITS:
            warnings.warn(f"{where}: the spatial axis {_show(ax.title)} has units {_show(ax.units)}, not a "
                          "length; no x/y coordinates are set", DataWarning, stacklevel=4)
        return None
    if ax.values.dtype.kind not in "iuf":
        return None
    return ax.values.astype(float) * factor


def _field_labels(ax: _Axis, where: str) -> list[str]:
    v = ax.values
    if v is None:
        raise DataError(f"{where}: the field axis {_show(ax.title)} has no dimension scale, so in-field and "
                        "out-of-field cannot be told apart; attach a scale of 'in-field'/'out-of-field' "
                        "(or 1/0)")
    if v.dtype.kind in "iuf" and np.isin(v, (0, 1)).all():
        labels = ["in-field" if x == 1 else "out-of-field" for x in v]
    elif v.dtype.kind in "OSU":
        labels = []
        for x in v:
            c = _compact(_text(x))
            if c not in _IN_FIELD | _OUT_OF_FIELD:
                raise DataError(f"{where}: the field axis {_show(ax.title)} holds {_show(_text(x))}; "
                                "expected 'in-field' or 'out-of-field'")
            labels.append("in-field" if c in _IN_FIELD else "out-of-field")
    else:
        raise DataError(f"{where}: the field axis {_show(ax.title)} holds {printable(v[:4].tolist(), 60)}; "
                        "expected 'in-field'/'out-of-field' or 1 (in-field) / 0 (out-of-field)")
    if len(set(labels)) != len(labels):
        raise DataError(f"{where}: the field axis {_show(ax.title)} repeats {labels}; each field once")
    return labels


def _cycles(ax: _Axis) -> np.ndarray:
    """Cycle numbers from 1 in file order, as the USID reader and ``select`` count them."""
    return np.arange(1, ax.size + 1)


# -- channels -------------------------------------------------------------------------------------

def _channel_of(quantity: str, units: str, title: str) -> str | None:
    """The channel a main dataset holds, from its quantity, else its title (name)."""
    for text in (quantity, title):
        c = _compact(text)
        if c in _QUANTITIES:
            return _QUANTITIES[c]
        if c in ("frequency", "shofrequency") and _unit_factor(units, _HZ_TO_KHZ, case=False) is not None:
            return "resonance"
    return None


def _to_switchscope_units(channel: str, data: np.ndarray, units: str, where: str) -> tuple[np.ndarray, str]:
    """Values in switchscope's units (phase in degrees, resonance in kHz) and the units attribute."""
    table = {"phase": _ANGLE_TO_DEG, "resonance": _HZ_TO_KHZ}.get(channel)
    if table is None:
        keep = units and units.lower() not in _NO_UNITS and units.isprintable() and len(units) <= 20
        return data, (units if keep else CHANNELS[channel])
    factor = _unit_factor(units, table, case=False)
    if factor is None:
        if units.lower() not in _NO_UNITS:
            raise DataError(f"{where} holds {channel} in units {_show(units)}; switchscope reads "
                            f"{'rad or deg' if channel == 'phase' else 'Hz, kHz or MHz'}")
        warnings.warn(f"{where} gives no units for {channel}; taken as {CHANNELS[channel]}",
                      DataWarning, stacklevel=4)
        factor = 1.0
    return (data * factor if factor != 1.0 else data), CHANNELS[channel]


@dataclass
class _Cube:
    """One main dataset, placed on switchscope's dims."""

    channel: str
    path: str
    data: np.ndarray
    dims: tuple[str, ...]
    units: str
    voltage: np.ndarray | None
    coords: dict[str, np.ndarray]


def _read_cube(dset: Any, channel: str, fname: str, voltage_given: bool) -> _Cube:
    where = f"dataset {_show(dset.name)} of '{printable(fname)}'"
    if dset.shape is None or len(dset.shape) == 0 or 0 in dset.shape:
        raise DataError(f"{where} is empty or a single value (shape {dset.shape}); "
                        "give a loop cube such as (x, y, voltage)")
    kind = dset.dtype.kind
    if kind == "c":
        raise DataError(f"{where} holds complex numbers; switchscope reads real loop channels (piezoresponse, "
                        "amplitude, phase...), so fit and project raw spectra first")
    if kind not in "iuf":
        raise DataError(f"{where} holds {printable(dset.dtype, 60)} values, not real numbers; "
                        "store each channel as a numeric array")
    axes = _read_axes(dset, where)
    roles = _assign_roles(axes, where, voltage_given)
    try:
        data = np.asarray(dset[()], dtype=float)
    except Exception as exc:  # noqa: BLE001 - damaged chunks, missing filters
        raise FormatError(f"{where} cannot be read ({oneline(exc)}); the file is damaged: write it again") from None
    order = [roles[r].index for r in ("row", "col", "cycle", "field", "step") if r in roles]
    dropped = [ax.index for ax in axes if not ax.role]  # all of length 1 here
    data = data.transpose(order + dropped).reshape([axes[i].size for i in order])
    dims = tuple(r for r in ("row", "col", "cycle", "field", "step") if r in roles)
    for r, pos in (("row", 0), ("col", 1)):
        if r not in roles:
            data = np.expand_dims(data, pos)
    dims = ("row", "col") + tuple(d for d in dims if d not in ("row", "col"))
    coords: dict[str, np.ndarray] = {}
    for name, role in (("y", "row"), ("x", "col")):
        pos = _position(roles.get(role), where)
        if pos is not None:
            coords[name] = pos
    if "cycle" in roles:
        coords["cycle"] = _cycles(roles["cycle"])
    if "field" in roles:
        coords["field"] = np.array(_field_labels(roles["field"], where), dtype=object)
    data, units = _to_switchscope_units(channel, data, _attr(dset, "units"), where)
    # a voltage option replaces the file's, so its scale is neither read nor checked
    file_voltage = None if voltage_given else _voltage(roles["step"], where)
    return _Cube(channel=channel, path=dset.name, data=data, dims=dims, units=units,
                 voltage=file_voltage, coords=coords)


# -- choosing and merging ---------------------------------------------------------------------------

def _choose(f: Any, mains: Sequence[str], fname: str, channel: str | None,
            keys: Mapping[str, str] | None) -> dict[str, str]:
    """``{main dataset path: channel}`` to load."""
    def base(p: str) -> str:
        return p.rsplit("/", 1)[-1]

    if keys is not None:
        if not isinstance(keys, Mapping):
            raise DataError(f"keys must be a mapping {{dataset: channel}}, got {type(keys).__name__}")
        chosen = {}
        for src, dst in keys.items():
            check_channel(dst)
            hits = [p for p in mains if p == src or p == "/" + str(src).lstrip("/") or base(p) == src]
            if len(hits) != 1:
                raise DataError(f"dataset {_show(str(src))} named in keys is {'ambiguous' if hits else 'not'} "
                                f"in '{printable(fname)}' (main datasets: {printable(', '.join(mains), 200)}); "
                                "give its full path")
            chosen[hits[0]] = dst
    else:
        known: dict[str, str] = {}
        unknown: list[str] = []
        for p in mains:
            obj = f[p]
            c = _channel_of(_attr(obj, "quantity"), _attr(obj, "units"), _attr(obj, "main_data_name") or base(p))
            if c is None:
                unknown.append(p)
            else:
                known[p] = c
        if len(mains) == 1 and unknown:
            known = {unknown[0]: channel or "piezoresponse"}
        elif unknown and channel is None:
            what = ", ".join(f"{printable(p, 80)} ({_show(_attr(f[p], 'quantity'))})" for p in unknown)
            warnings.warn(f"'{printable(fname)}': skipped datasets whose quantity is not a switchscope channel: "
                          f"{what}; name them with keys={{path: channel}}", DataWarning, stacklevel=4)
        if not known:
            raise DataError(f"'{printable(fname)}' holds no quantity switchscope recognises (main datasets: "
                            f"{printable(', '.join(mains), 200)}); set each dataset's quantity to a channel "
                            f"({', '.join(CHANNELS)}) or pass keys={{path: channel}}")
        chosen = known
    if channel is not None:
        check_channel(channel)
        have = sorted(set(chosen.values()))
        chosen = {p: c for p, c in chosen.items() if c == channel}
        if not chosen:
            raise DataError(f"channel {channel!r} is not in '{printable(fname)}' (has: {', '.join(have)}); "
                            "choose one of those")
    for c in set(chosen.values()):
        paths = [p for p, d in chosen.items() if d == c]
        if len(paths) > 1:
            raise DataError(f"'{printable(fname)}' has several datasets for {c!r} "
                            f"({printable(', '.join(paths), 200)}); choose one with keys={{path: {c!r}}}")
    return chosen


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if a.shape != b.shape:
        return False
    if a.dtype.kind in "iuf" and b.dtype.kind in "iuf":
        return bool(np.allclose(a, b, rtol=1e-9, atol=1e-12, equal_nan=True))
    return bool(np.array_equal(a, b))


def _check_same_grid(first: _Cube, other: _Cube, fname: str) -> None:
    def fail(what: str) -> DataError:
        return DataError(f"'{printable(fname)}': {printable(other.path, 80)} ({other.channel}) and "
                         f"{printable(first.path, 80)} ({first.channel}) differ in {what}; channels merge only "
                         "when they share one grid and voltage")

    if other.dims != first.dims or other.data.shape != first.data.shape:
        shape = lambda c: "x".join(f"{d}={n}" for d, n in zip(c.dims, c.data.shape))  # noqa: E731
        raise fail(f"shape ({shape(other)} vs {shape(first)})")
    if not _same(other.voltage, first.voltage):
        raise fail("voltage")
    for name in set(first.coords) | set(other.coords):
        if not _same(first.coords.get(name), other.coords.get(name)):
            raise fail(f"their {name} coordinate")


def _to_dataset(cubes: list[_Cube], v: np.ndarray, fname: str, normalized: bool) -> xr.Dataset:
    first = cubes[0]
    shape = dict(zip(first.dims, first.data.shape))
    data_vars = {}
    for cube in sorted(cubes, key=lambda c: list(CHANNELS).index(c.channel)):
        attrs: dict[str, Any] = {"units": cube.units, "long_name": cube.channel.replace("_", " "),
                                 "nsid_path": printable(cube.path)}
        if normalized:
            attrs.update(normalized=1, units="1")
        data_vars[cube.channel] = xr.DataArray(cube.data, dims=cube.dims, attrs=attrs)
    coords: dict[str, Any] = {d: np.arange(shape[d]) for d in ("row", "col", "step")}
    coords["voltage"] = ("step", v, {"units": "V", "long_name": "DC voltage"})
    if "y" in first.coords:
        coords["y"] = ("row", first.coords["y"], {"units": "m", "long_name": "y position"})
    if "x" in first.coords:
        coords["x"] = ("col", first.coords["x"], {"units": "m", "long_name": "x position"})
    if "cycle" in first.coords:
        coords["cycle"] = first.coords["cycle"]
    if "field" in first.coords:
        coords["field"] = first.coords["field"].astype(str)
    return xr.Dataset(data_vars, coords=coords, attrs={"source": fname, "format": NSIDReader.name})


# -- reader ---------------------------------------------------------------------------------------

def _open_h5(path: PathLike) -> Any:
    import h5py

    try:
        return h5py.File(path, "r")
    except Exception as exc:  # noqa: BLE001 - h5py raises OSError and others for damage
        raise FormatError(f"'{printable(Path(path).name)}' looks like an NSID HDF5 file but HDF5 cannot open it "
                          f"({oneline(exc)}); it is truncated or corrupt: copy or save it again") from None


class NSIDReader(Reader):
    """NSID HDF5 files written by pyNSID / sidpy (``write_nsid_dataset``).

    Each main dataset (one per ``Channel_###`` group) is one channel, named from its ``quantity``;
    several merge into one Dataset when they share grid and voltage. Dims are
    ``(row, col, [cycle], [field], step)``; coordinates ``voltage`` (V) and, where the spatial
    scales have length units, ``x`` and ``y`` (m). See the module notes for the rules.

    Options: ``channel`` (load only that channel, or name a single dataset whose quantity is not a
    channel; default piezoresponse), ``voltage`` (replaces the file's), ``normalized``, ``keys``
    (``{dataset path or name: channel}``, replacing the quantities).
    """

    name = "nsid"
    description = "NSID HDF5 (pyNSID/sidpy)"
    options = frozenset({"channel", "voltage", "normalized", "keys"})

    def guess_can_open(self, path: PathLike) -> bool:
        try:
            return _sniff(path)
        except Exception:  # noqa: BLE001 - a sniff never raises
            return False

    def check_size(self, path: PathLike) -> None:
        with _open_h5(path) as f:
            hdf5_declared(path, f)

    def open(self, path: PathLike, *, channel: str | None = None, voltage: Any = None,
             normalized: bool = False, keys: Mapping[str, str] | None = None) -> xr.Dataset:
        """Read the file into a Dataset with dims ``(row, col, [cycle], [field], step)``."""
        fname = Path(path).name
        with _open_h5(path) as f:
            try:
                scan = _scan(f)
            except Exception as exc:  # noqa: BLE001 - HDF5 raises many types for damaged metadata
                raise FormatError(f"'{printable(fname)}' has a damaged HDF5 structure ({oneline(exc)}); "
                                  "copy or save it again") from None
            if not scan.mains:
                raise DataError(f"'{printable(fname)}' holds no NSID main dataset (a dataset with a quantity and "
                                "dimension scales); write it with pyNSID.write_nsid_dataset")
            chosen = _choose(f, scan.mains, fname, channel, keys)
            cubes = [_read_cube(f[p], c, fname, voltage is not None) for p, c in chosen.items()]
        for other in cubes[1:]:
            _check_same_grid(cubes[0], other, fname)
        n_steps = cubes[0].data.shape[-1]
        v = resolve_voltage(voltage, cubes[0].voltage, n_steps, path)
        return _to_dataset(cubes, v, fname, normalized)


__all__ = ["NSIDReader"]
