"""USID HDF5 files, as pycroscopy's BGlib translators and fitters write them (read with h5py only).

Layout (pyUSID ``hdf_utils.check_if_main``, ``link_as_main``; BGlib ``be/translators/be_odf.py``,
``be/translators/df_utils/be_utils.py`` ``createSpecVals``; ``be/analysis/be_sho_fitter.py``;
``be/analysis/be_loop_fitter.py``)::

    /Measurement_000/Channel_000/Raw_Data                complex spectra (n_positions, n_spectral)
    /Measurement_000/Channel_000/Raw_Data-SHO_Fit_000/Fit        compound SHO results (n_positions, n_steps)
    /.../Raw_Data-SHO_Fit_000/Fit-Loop_Fit_000/Projected_Loops  projected loops (n_positions, n_steps)

A *main* dataset has ``quantity`` and ``units`` attributes and object references to its
``Position_Indices``/``Position_Values`` (n_positions, n_pos_dims) and
``Spectroscopic_Indices``/``Spectroscopic_Values`` (n_spec_dims, n_spectral). Every index table is
read by its ``labels``, never by position: position columns are ``[X, Y]`` in older files and
``[Y, X]`` in newer ones, and the spectroscopic rows ``[Frequency, DC_Offset, Field, Cycle]`` are
not in the order in which they vary (Frequency fastest, then Field, then DC_Offset, then Cycle).

Fields: the ``Field`` *value* indexes the ``Field_parameters`` attribute of the Channel's
spectroscopic datasets (``[b'out-of-field', b'in-field']``: value 1 is in-field), while the
``Field`` *index* follows the order of appearance (in-field first). Both orders are read from the
file; neither is assumed. Result groups copy only ``labels``/``units`` of their spectroscopic
datasets, so field names are looked up in the enclosing groups. A file with one field has no
``Field`` row; its field is named by ``VS_measure_in_field_loops`` of the measurement group.
"""

from __future__ import annotations

import re
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import xarray as xr

from .._dataset import CHANNELS, check_voltage
from .._errors import DataError, FormatError, SwitchscopeError
from .._text import printable
from ._base import PathLike, Reader, check_declared_size, hdf5_offset, oneline, read_head, resolve_voltage

#: Attributes that make a dataset "main" (pyUSID ``check_if_main``).
MAIN_REFS = ("Position_Indices", "Position_Values", "Spectroscopic_Indices", "Spectroscopic_Values")

#: SHO compound fields (BGlib ``sho32``) -> (variable, scale to switchscope units, units).
SHO_FIELDS: dict[str, tuple[str, float, str]] = {
    "Amplitude [V]": ("amplitude", 1.0, "V"),
    "Frequency [Hz]": ("resonance", 1e-3, "kHz"),
    "Quality Factor": ("quality_factor", 1.0, "1"),
    "Phase [rad]": ("phase", 180.0 / np.pi, "deg"),
    "R2 Criterion": ("sho_r2", 1.0, "1"),
}

#: Spectroscopic dimension labels -> switchscope dims.
SPEC_DIMS = {"dc_offset": "step", "field": "field", "cycle": "cycle", "frequency": "freq"}

#: Positions are read in blocks of about this many bytes: bounded memory for large scans, and small
#: enough that a block read from the file is still in the CPU cache when its fields are scattered.
BLOCK_BYTES = 4 << 20

FIELD_NAMES = ("in-field", "out-of-field")


# -- small helpers ------------------------------------------------------------------------------
def _texts(value: Any) -> list[str]:
    """An attribute holding one text or an array of texts, as a list of str."""
    if value is None:
        return []
    if isinstance(value, (bytes, np.bytes_)):
        return [value.decode("utf-8", "replace")]
    if isinstance(value, str):
        return [value]
    arr = np.asarray(value).ravel()
    return [v.decode("utf-8", "replace") if isinstance(v, (bytes, np.bytes_)) else str(v) for v in arr]


def _field_name(text: str) -> str | None:
    """``in-field`` / ``out-of-field`` from the spellings files use, else None."""
    t = re.sub(r"[\s_]+", "-", text.strip().lower())
    if t in ("in-field", "infield", "on-field"):
        return "in-field"
    if t in ("out-of-field", "outfield", "off-field", "out-field"):
        return "out-of-field"
    return None


def _index_of(name: str) -> int:
    m = re.search(r"_(\d+)$", name)
    return int(m.group(1)) if m else -1


def _indexed(group: Any, prefix: str) -> list[str]:
    """Members of ``group`` named ``<prefix>_###``, oldest first."""
    import h5py

    names = [k for k in group if re.fullmatch(re.escape(prefix) + r"_\d+", k)
             and isinstance(group.get(k, getlink=False), h5py.Group)]
    return sorted(names, key=_index_of)


def _deref(f: Any, dset: Any, attr: str, what: str) -> Any:
    """The dataset an object-reference attribute of ``dset`` points to."""
    import h5py

    ref = dset.attrs.get(attr)
    if not isinstance(ref, h5py.Reference) or not ref:
        raise FormatError(
            f"'{Path(f.filename).name}': {what} {printable(dset.name, 120)} has no {attr} reference, so its "
            "pixels and steps cannot be placed; the file is not a complete USID file (write it again with "
            "pycroscopy, or export the arrays to .npy)"
        )
    try:
        target = f[ref]
    except Exception as exc:  # noqa: BLE001 - a dangling reference
        raise FormatError(f"'{Path(f.filename).name}': the {attr} reference of {printable(dset.name, 120)} is "
                          f"broken ({oneline(exc)}); the file is damaged") from None
    if not isinstance(target, h5py.Dataset):
        raise FormatError(f"'{Path(f.filename).name}': {attr} of {printable(dset.name, 120)} is not a dataset")
    return target


def is_main(obj: Any) -> bool:
    """True for a USID main dataset (``quantity``, ``units`` and the four ancillary references)."""
    import h5py

    if not isinstance(obj, h5py.Dataset):
        return False
    keys = set(obj.attrs.keys())
    return {"quantity", "units"} <= keys and set(MAIN_REFS) <= keys


# -- what a file holds ---------------------------------------------------------------------------
@dataclass
class Source:
    """One analysable result of a USID file: raw spectra, an SHO fit, or projected loops."""

    kind: str  # "raw", "sho" or "loops"
    path: str  # HDF5 path of the main dataset
    group: str  # the group that names it for --select group=...

    def label(self) -> str:
        return {"raw": "raw spectra", "sho": "SHO fit", "loops": "projected loops"}[self.kind] + f" {self.path}"


@dataclass
class Plan:
    """What :class:`USIDReader` reads: the chosen raw / SHO / loop datasets, and every choice."""

    raw: str | None = None
    sho: str | None = None
    loops: str | None = None
    channel: str = ""
    groups: list[str] = field(default_factory=list)

    @property
    def main(self) -> str:
        path = self.sho or self.loops or self.raw
        assert path is not None
        return path


def _measurements(f: Any) -> list[str]:
    """Paths of the channel groups that hold a ``Raw_Data`` main dataset or SHO results (a file
    may keep the fits without the spectra), oldest measurement first."""
    import h5py

    found: set[str] = set()

    def visit(name: str, obj: Any) -> None:
        base = name.rsplit("/", 1)[-1]
        if isinstance(obj, h5py.Dataset) and base == "Raw_Data" and is_main(obj):
            found.add(obj.parent.name)
        elif isinstance(obj, h5py.Group) and re.fullmatch(r"Raw_Data-SHO_Fit_\d+", base):
            found.add(obj.parent.name)

    f.visititems(visit)
    return sorted(found, key=lambda p: [(_index_of(part), part) for part in p.split("/")])


def _results(f: Any, channel: str) -> Iterator[tuple[str, str | None]]:
    """``(SHO Fit path, Projected_Loops path or None)`` of a channel group, newest first."""
    import h5py

    grp = f[channel]
    for sho_name in reversed(_indexed(grp, "Raw_Data-SHO_Fit")):
        sho = grp[sho_name]
        fit = sho.get("Fit")
        if not isinstance(fit, h5py.Dataset):
            continue  # a fit that never finished: its Guess is not a result
        loops = [sho[n]["Projected_Loops"].name for n in reversed(_indexed(sho, "Fit-Loop_Fit"))
                 if isinstance(sho[n].get("Projected_Loops"), h5py.Dataset)]
        yield fit.name, (loops[0] if loops else None)


def _names(p: Plan, wanted: list[str]) -> bool:
    """True when the group path ``wanted`` names ``p`` (``Raw_Data`` names the raw spectra alone)."""
    if wanted == ["Raw_Data"]:
        return p.sho is None
    n = len(wanted)
    for path in (p.channel + "/x", p.sho, p.loops):
        parts = (path or "").strip("/").split("/")[:-1]
        if any(parts[i:i + n] == wanted for i in range(len(parts) - n + 1)):
            return True
    return False


def plan(f: Any, group: str | None = None) -> Plan:
    """Choose what to read: the newest measurement, its newest SHO fit and that fit's newest loop
    fit; ``group`` (a group name such as ``Measurement_001``, ``Raw_Data-SHO_Fit_000``,
    ``Fit-Loop_Fit_001`` or ``Raw_Data``) fixes one level, the newest is taken below it."""
    fname = Path(f.filename).name
    channels = _measurements(f)
    if not channels:
        raise FormatError(f"'{fname}' is an HDF5 file without a USID Raw_Data main dataset; "
                          "formats read: see `switchscope info --help`")
    options: list[Plan] = []
    for ch in channels:
        raw = f"{ch}/Raw_Data" if is_main(f[ch].get("Raw_Data")) else None
        for sho, loops in _results(f, ch):
            options.append(Plan(raw=raw, sho=sho, loops=loops))
            if loops:
                options.append(Plan(raw=raw, sho=sho))
        if raw:
            options.append(Plan(raw=raw))
    if not options:
        raise FormatError(f"'{fname}' holds neither raw spectra nor a finished SHO fit (no Raw_Data-SHO_Fit_###/Fit); "
                          "fit it first or give another file")
    for p in options:
        p.channel = p.raw.rsplit("/", 1)[0] if p.raw else (p.sho or "").rsplit("/", 2)[0]
    groups = sorted({path.strip("/").rsplit("/", 1)[0] for p in options for path in (p.sho, p.loops) if path}
                    | {p.channel.strip("/").split("/")[0] for p in options})
    if any(p.raw for p in options):
        groups.append("Raw_Data")
    if group is None:
        found = options
    else:
        wanted = [part for part in str(group).strip("/").split("/") if part]
        found = [p for p in options if _names(p, wanted)]
        if not found:
            raise DataError(f"group {printable(repr(group), 80)} is not in '{fname}'; its groups are: "
                            f"{', '.join(printable(g, 60) for g in groups)} (--select group=NAME)")
    newest = found[-1].channel  # the newest measurement among the matches, then its first (newest) result
    chosen = next(p for p in found if p.channel == newest)
    chosen.groups = groups
    return chosen


# -- index tables --------------------------------------------------------------------------------
@dataclass
class Axes:
    """How the flat (positions, spectral) table maps onto ``(row, col, [cycle], [field], step[, freq])``."""

    rows: int
    cols: int
    pixel: np.ndarray  # flat grid index (row * cols + col) of each position
    dims: tuple[str, ...]  # spectral dims in output order
    sizes: tuple[int, ...]
    order: np.ndarray  # spectral column of each output cell (C order over dims)
    coords: dict[str, Any]


def _positions(f: Any, main: Any) -> tuple[int, int, np.ndarray, dict[str, Any]]:
    fname = Path(f.filename).name
    inds_ds = _deref(f, main, "Position_Indices", "main dataset")
    vals_ds = _deref(f, main, "Position_Values", "main dataset")
    inds = np.asarray(inds_ds[()])
    vals = np.asarray(vals_ds[()], dtype=float)
    if inds.ndim == 1:
        inds, vals = inds[:, None], vals.reshape(-1, 1)
    labels = [s.strip().lower() for s in _texts(inds_ds.attrs.get("labels"))]
    units = _texts(vals_ds.attrs.get("units")) or _texts(inds_ds.attrs.get("units"))
    n_pos = main.shape[0]
    if inds.shape[0] != n_pos or vals.shape != inds.shape:
        raise FormatError(f"'{fname}': Position_Indices {inds.shape} and Position_Values {vals.shape} do not match "
                          f"the {n_pos} positions of {printable(main.name, 120)}; the file is damaged")
    if len(labels) != inds.shape[1]:
        raise FormatError(f"'{fname}': Position_Indices has {inds.shape[1]} columns but labels "
                          f"{printable(labels, 80)}; the file is damaged")
    if inds.shape[1] > 2:
        raise DataError(f"'{fname}' has {inds.shape[1]} position dimensions ({printable(', '.join(labels), 80)}); "
                        "switchscope reads grids of X and Y")
    col_i = labels.index("x") if "x" in labels else None
    row_i = labels.index("y") if "y" in labels else None
    if inds.shape[1] == 2 and (col_i is None or row_i is None):
        row_i, col_i = 0, 1  # unnamed: slowest first, as pyUSID writes
    if inds.shape[1] == 1:
        col_i = 0
    r = inds[:, row_i].astype(np.int64) if row_i is not None else np.zeros(n_pos, np.int64)
    c = inds[:, col_i].astype(np.int64)
    if r.min(initial=0) < 0 or c.min(initial=0) < 0:
        raise FormatError(f"'{fname}': Position_Indices holds negative indices; the file is damaged")
    rows, cols = int(r.max(initial=-1)) + 1, int(c.max(initial=-1)) + 1
    pixel = r * cols + c
    if rows * cols != n_pos or np.unique(pixel).size != n_pos:
        raise DataError(f"'{fname}': the {n_pos} positions do not fill a {rows}x{cols} grid (missing or repeated "
                        "pixels); switchscope reads complete rectangular scans")
    coords: dict[str, Any] = {}
    for dim, idx, axis_i in (("y", r, row_i), ("x", c, col_i)):
        if axis_i is None:
            continue
        unit = units[axis_i].strip() if axis_i < len(units) else ""
        v = vals[:, axis_i]
        scale = {"m": 1.0, "mm": 1e-3, "um": 1e-6, "µm": 1e-6, "nm": 1e-9}.get(unit)
        n = rows if dim == "y" else cols
        axis = np.full(n, np.nan)
        axis[idx] = v
        # BGlib's ODF translator writes pixel numbers labelled 'm': no physical size is known then
        if scale is None or not np.all(np.isfinite(axis)) or np.array_equal(axis, np.arange(n)):
            continue
        coords[dim] = axis * scale
    return rows, cols, pixel, coords


def _spectral(f: Any, main: Any, fields_from: list[Any]) -> tuple[tuple[str, ...], tuple[int, ...],
                                                                       np.ndarray, dict[str, Any]]:
    fname = Path(f.filename).name
    inds_ds = _deref(f, main, "Spectroscopic_Indices", "main dataset")
    vals_ds = _deref(f, main, "Spectroscopic_Values", "main dataset")
    inds = np.atleast_2d(np.asarray(inds_ds[()]))
    vals = np.atleast_2d(np.asarray(vals_ds[()], dtype=float))
    labels = _texts(inds_ds.attrs.get("labels")) or _texts(vals_ds.attrs.get("labels"))
    n_spec = main.shape[1]
    if inds.shape != vals.shape or inds.shape[1] != n_spec:
        raise FormatError(f"'{fname}': Spectroscopic_Indices {inds.shape} / Values {vals.shape} do not match the "
                          f"{n_spec} columns of {printable(main.name, 120)}; the file is damaged")
    if len(labels) != inds.shape[0]:
        raise FormatError(f"'{fname}': the spectroscopic table of {printable(main.name, 120)} has {inds.shape[0]} "
                          f"rows but labels {printable(labels, 80)}; a row without a label cannot be placed "
                          "(the file is damaged)")
    rows: dict[str, int] = {}
    for i, lab in enumerate(labels):
        dim = SPEC_DIMS.get(lab.strip().lower())
        if dim is None:
            what = "FORC cycles" if lab.strip().upper() == "FORC" else f"spectroscopic dimension {lab!r}"
            raise DataError(f"'{fname}' has {printable(what, 80)}; switchscope reads DC switching spectroscopy "
                            "(DC_Offset, Field, Cycle, Frequency) with a bipolar triangle waveform")
        rows[dim] = i
    if "step" not in rows:
        raise DataError(f"'{fname}': {printable(main.name, 120)} has no DC_Offset dimension (has "
                        f"{printable(', '.join(labels), 80)}); it is not switching spectroscopy")
    dims = tuple(d for d in ("cycle", "field", "step", "freq") if d in rows)
    idx = np.stack([inds[rows[d]].astype(np.int64) for d in dims])
    if idx.min(initial=0) < 0:
        raise FormatError(f"'{fname}': Spectroscopic_Indices holds negative indices; the file is damaged")
    sizes = tuple(int(i.max(initial=-1)) + 1 for i in idx)
    flat = np.ravel_multi_index(tuple(idx), sizes)
    if int(np.prod(sizes)) != n_spec or np.unique(flat).size != n_spec:
        raise DataError(f"'{fname}': the spectroscopic indices of {printable(main.name, 120)} do not form a complete "
                        f"{' x '.join(f'{d} {n}' for d, n in zip(dims, sizes))} table; switchscope reads "
                        "complete measurements")
    order = np.empty(n_spec, dtype=np.int64)
    order[flat] = np.arange(n_spec)

    def per(dim: str) -> np.ndarray:
        """Values of row ``dim`` at each of its indices, checked to be the same wherever it repeats."""
        v = vals[rows[dim]]
        out = np.full(sizes[dims.index(dim)], np.nan)
        out[idx[dims.index(dim)]] = v
        if not np.allclose(out[idx[dims.index(dim)]], v, rtol=0, atol=1e-6 * max(1.0, float(np.abs(v).max()))):
            raise DataError(f"'{fname}': the {dim} values change between cycles or fields; switchscope reads one "
                            "waveform repeated (not FORC or changing amplitude)")
        return out

    coords: dict[str, Any] = {"voltage": per("step")}
    if "freq" in rows:
        coords["freq"] = per("freq")
    if "cycle" in rows:
        coords["cycle"] = np.arange(1, sizes[dims.index("cycle")] + 1)
    if "field" in rows:
        coords["field"] = _field_labels(f, per("field"), [vals_ds, *fields_from])
    return dims, sizes, order, coords


def _field_labels(f: Any, values: np.ndarray, holders: list[Any]) -> list[str]:
    """Names of the fields, by their values, from ``Field_parameters`` found on the spectroscopic
    datasets or in the enclosing groups."""
    fname = Path(f.filename).name
    names: list[str] | None = None
    for h in holders:
        for node in _up(h):
            for key in ("Field_parameters",):
                if key in node.attrs:
                    names = _texts(node.attrs[key])
                    break
            if names is None and "Spectroscopic_Values" in getattr(node, "keys", lambda: [])():
                sv = node["Spectroscopic_Values"]
                if "Field_parameters" in sv.attrs:
                    names = _texts(sv.attrs["Field_parameters"])
            if names is not None:
                break
        if names is not None:
            break
    if names is None:
        raise DataError(f"'{fname}' has a Field dimension without labels (no Field_parameters attribute), so "
                        "in-field and out-of-field cannot be told apart; add Field_parameters or export one field")
    out = []
    for v in values:
        k = int(round(float(v)))
        if not 0 <= k < len(names) or _field_name(names[k]) is None:
            raise DataError(f"'{fname}': Field value {v:g} has no known name in Field_parameters "
                            f"{printable(names, 80)}; expected in-field / out-of-field")
        out.append(_field_name(names[k]))
    if len(set(out)) != len(out):
        raise DataError(f"'{fname}': two fields carry the same name {printable(out, 80)}; the file is damaged")
    return out


def _up(obj: Any) -> Iterator[Any]:
    """``obj`` and its enclosing groups up to the root."""
    node = obj
    while True:
        yield node
        if node.name == "/":
            return
        node = node.parent


def axes(f: Any, main: Any, fields_from: list[Any]) -> Axes:
    rows, cols, pixel, pos_coords = _positions(f, main)
    dims, sizes, order, coords = _spectral(f, main, fields_from)
    coords.update(pos_coords)
    return Axes(rows=rows, cols=cols, pixel=pixel, dims=dims, sizes=sizes, order=order, coords=coords)


def _file_order(order: np.ndarray, sizes: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """``(file shape, axes)`` when the spectral columns are the output dims in another C order
    (``columns.reshape(-1, *file shape).transpose(0, *axes)`` is then the output), else None."""
    from itertools import permutations

    n = order.size
    for perm in permutations(range(len(sizes))):
        shape = tuple(sizes[d] for d in perm)
        inv = tuple(int(i) for i in np.argsort(perm))
        if np.array_equal(np.arange(n).reshape(shape).transpose(inv).ravel(), order):
            return shape, tuple(i + 1 for i in inv)
    return None


def _blocks(ds: Any) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(start, stop, rows)`` of ``ds`` in blocks of positions of about :data:`BLOCK_BYTES`, read
    into one reused buffer (a block is valid until the next one is read)."""
    n_pos = ds.shape[0]
    per = max(1, min(n_pos, BLOCK_BYTES // max(1, ds.dtype.itemsize * ds.shape[1])))
    buf = np.empty((per, ds.shape[1]), dtype=ds.dtype)
    for start in range(0, n_pos, per):
        stop = min(start + per, n_pos)
        block = buf[:stop - start]
        ds.read_direct(block, np.s_[start:stop], np.s_[0:stop - start])
        yield start, stop, block


def _read(ds: Any, ax: Axes, fields: list[str] | None = None, dtype: Any = np.float64,
          scales: list[float] | None = None, keep: Keep | None = None) -> list[np.ndarray]:
    """The dataset (or each compound field, times its scale) on ``(row, col, *dims)``.

    Read in blocks of positions into one reused buffer; each field of a block goes straight into
    its preallocated output, reordered, cast and scaled in one pass (a strided view where the
    spectral columns are a transposition of the output dims, as in every BGlib file; a gather
    otherwise). Positions stored in grid order are written as slices. With ``keep``, the field
    and cycle dims are reduced block by block (one field, one cycle or their NaN-skipping mean),
    so only the selected arrays are ever held in memory.
    """
    if keep is not None and (keep.field is not None or keep.cycle is not None):
        return _read_reduced(ds, ax, fields, dtype, scales, keep)
    n_pixels = ax.rows * ax.cols
    n_cells = int(np.prod(ax.sizes))
    shape = (ax.rows, ax.cols, *ax.sizes)
    names: list[str | None] = list(fields) if fields else [None]
    scales = list(scales) if scales else [1.0] * len(names)
    outs = [np.empty((n_pixels, n_cells), dtype=dtype) for _ in names]
    layout = _file_order(ax.order, ax.sizes)
    in_grid_order = bool(np.array_equal(ax.pixel, np.arange(n_pixels)))
    for start, stop, block in _blocks(ds):
        nb = stop - start
        for out, name, scale in zip(outs, names, scales):
            part = block if name is None else block[name]
            if layout is not None:
                src = part.reshape(nb, *layout[0]).transpose(0, *layout[1])
            else:
                src = np.take(part, ax.order, axis=1).reshape(nb, *ax.sizes)
            if in_grid_order:
                dst = out[start:stop].reshape(nb, *ax.sizes)
                if scale == 1.0:
                    np.copyto(dst, src, casting="unsafe")
                else:  # cast first, then scale, in the output's precision
                    np.multiply(src, np.asarray(scale, dtype=out.dtype), out=dst, dtype=out.dtype,
                                casting="unsafe")
            else:
                vals = src.astype(out.dtype).reshape(nb, n_cells)
                if scale != 1.0:
                    vals *= np.asarray(scale, dtype=out.dtype)
                out[ax.pixel[start:stop]] = vals
    return [o.reshape(shape) for o in outs]


def _read_reduced(ds: Any, ax: Axes, fields: list[str] | None, dtype: Any, scales: list[float] | None,
                  keep: Keep) -> list[np.ndarray]:
    """:func:`_read` with the field and cycle dims reduced as ``keep`` says, block by block."""
    import warnings

    out_ax = _reduced(ax, keep)
    n_pixels = ax.rows * ax.cols
    n_keep = int(np.prod(out_ax.sizes))
    names: list[str | None] = list(fields) if fields else [None]
    scales = list(scales) if scales else [1.0] * len(names)
    outs = [np.empty((n_pixels, n_keep), dtype=dtype) for _ in names]
    for start, stop, block in _blocks(ds):
        nb = stop - start
        where = ax.pixel[start:stop]
        for out, name, scale in zip(outs, names, scales):
            part = block if name is None else block[name]
            vals = np.take(part, ax.order, axis=1).reshape(nb, *ax.sizes).astype(dtype, copy=False)
            if keep.field is not None:
                vals = np.take(vals, keep.field, axis=1 + ax.dims.index("field"))
            if keep.cycle == "mean":
                with warnings.catch_warnings(), np.errstate(invalid="ignore"):
                    warnings.simplefilter("ignore", RuntimeWarning)  # a step NaN in every cycle stays NaN
                    vals = np.nanmean(vals, axis=1 + ax.dims.index("cycle"))
            elif keep.cycle is not None:
                vals = np.take(vals, int(keep.cycle), axis=1 + ax.dims.index("cycle"))
            vals = vals.reshape(nb, n_keep)
            if scale != 1.0:
                vals = vals * np.asarray(scale, dtype=dtype)
            out[where] = vals
    return [o.reshape(ax.rows, ax.cols, *out_ax.sizes) for o in outs]


# -- the reader ----------------------------------------------------------------------------------
class USIDReader(Reader):
    """USID HDF5 from pycroscopy (BGlib's BEPS translators, SHO fitter and loop fitter).

    Reads the SHO fit (``amplitude``, ``resonance`` in kHz, ``quality_factor``, ``phase`` in
    degrees, ``sho_r2``) and the projected loops (``piezoresponse``) of the chosen result groups;
    a file (or ``group="Raw_Data"``) without an SHO fit gives the raw complex spectra
    (``spectrum``, with a ``freq`` dim in Hz). Dims are ``(row, col, [cycle], [field], step)``.
    """

    name = "usid"
    description = "USID HDF5 (pycroscopy/BGlib)"
    options = frozenset({"channel", "voltage", "normalized", "group", "select"})

    def guess_can_open(self, path: PathLike) -> bool:
        if hdf5_offset(read_head(path)) != 0:
            return False
        import h5py

        try:
            with h5py.File(path, "r") as f:
                return _has_main(f)
        except Exception:  # noqa: BLE001 - damaged files are diagnosed elsewhere
            return False

    def check_size(self, path: PathLike) -> None:
        try:
            self._check_size(path)
        except SwitchscopeError:
            raise
        except (OSError, KeyError, ValueError, RuntimeError, TypeError, IndexError) as exc:
            raise FormatError(f"'{printable(Path(path).name)}' is a USID file whose HDF5 structure is damaged "
                              f"({oneline(exc)}); copy or save it again") from None

    def _check_size(self, path: PathLike) -> None:
        import h5py

        with h5py.File(path, "r") as f:
            p = plan(f)
            arrays = []
            for dpath in (p.sho, p.loops) if p.sho else (p.raw,):
                if dpath:
                    d = f[dpath]
                    n_fields = len(d.dtype.names or ()) or (2 if d.dtype.kind == "c" else 1)
                    arrays.append((dpath, (*d.shape, n_fields), d.dtype.itemsize // max(1, n_fields)))
            check_declared_size(path, arrays)

    def open(self, path: PathLike, **options: Any) -> xr.Dataset:
        try:
            return self._open(path, **options)
        except SwitchscopeError:
            raise
        except (OSError, KeyError, ValueError, RuntimeError, TypeError, IndexError) as exc:
            raise FormatError(f"'{printable(Path(path).name)}' is a USID file whose HDF5 content is damaged "
                              f"({oneline(exc)}); copy or save it again") from None

    def _open(self, path: PathLike, *, channel: str | None = None, voltage: Any = None, normalized: bool = False,
              group: str | None = None, select: dict[str, Any] | None = None) -> xr.Dataset:
        import h5py

        fname = Path(path).name
        with h5py.File(path, "r") as f:
            p = plan(f, group)
            attrs = _file_attrs(f, p, fname)
            raw = f[p.raw] if p.raw else None
            data_vars: dict[str, tuple[tuple[str, ...], np.ndarray, dict[str, Any]]] = {}
            main = f[p.sho] if p.sho else raw
            assert main is not None
            ax = axes(f, main, [raw] if raw is not None and p.sho else [])
            keep = _choice(ax, select, attrs)
            out_ax = _reduced(ax, keep)
            dims = ("row", "col", *out_ax.dims)
            if p.sho:
                data_vars.update(_sho_vars(main, ax, fname, keep))
                if p.loops:
                    loops = f[p.loops]
                    lax = axes(f, loops, [raw] if raw is not None else [])
                    if (lax.dims, lax.sizes) != (ax.dims, ax.sizes):
                        raise DataError(f"'{fname}': {printable(p.loops, 120)} and {printable(p.sho, 120)} have "
                                        "different steps; the file is damaged")
                    if loops.dtype.kind == "c":
                        raise DataError(f"'{fname}': {printable(p.loops, 120)} holds complex numbers; a loop channel "
                                        "must be real (project the loops first)")
                    if loops.dtype.names:
                        raise DataError(f"'{fname}': {printable(p.loops, 120)} is a compound dataset; projected "
                                        "loops are one real number per step")
                    (arr,) = _read(loops, lax, keep=keep)
                    # BGlib copies the SHO Fit's attributes (units 'compound'); the loops are in V
                    units = (_texts(loops.attrs.get("units")) or ["V"])[0]
                    units = "V" if units in ("compound", "") else printable(units, 40)
                    data_vars["piezoresponse"] = (dims, arr, {"units": units})
            else:
                if "freq" not in ax.dims:
                    raise DataError(f"'{fname}': Raw_Data has no Frequency dimension; it is not band-excitation data")
                if main.dtype.kind != "c":
                    raise DataError(f"'{fname}': Raw_Data holds {main.dtype} values; band-excitation spectra are complex")
                (arr,) = _read(main, ax, dtype=np.complex64, keep=keep)
                data_vars["spectrum"] = (dims, arr, {"units": "V"})
            truth = _truth(f, ax)
        return _dataset(truth, data_vars, out_ax, attrs, channel=channel, voltage=voltage, normalized=normalized,
                        path=path)


@dataclass(frozen=True)
class Keep:
    """What :func:`_read` keeps of the field and cycle dims: an index, ``"mean"``, or all (None)."""

    field: int | None = None
    cycle: int | str | None = None


def _choice(ax: Axes, select: dict[str, Any] | None, attrs: dict[str, Any]) -> Keep | None:
    """The selection to make while reading (None: read every field and cycle); records it in
    ``attrs`` as :func:`switchscope.select.apply_selection` does."""
    if select is None:
        return None
    from ..select import resolve

    fields = list(ax.coords["field"]) if "field" in ax.dims else None
    n_cycles = ax.sizes[ax.dims.index("cycle")] if "cycle" in ax.dims else None
    choice = resolve(select, fields, n_cycles, single_field=attrs.get("field"), source=attrs["source"])
    attrs["selection"] = ", ".join(choice.text) if choice.text else "all (one field, one cycle)"
    if fields is not None:
        attrs["fields_available"] = ", ".join(fields)
    return Keep(field=None if choice.field is None else fields.index(choice.field),
                cycle=None if choice.cycle is None else (choice.cycle if choice.cycle == "mean" else int(choice.cycle) - 1))


def _reduced(ax: Axes, keep: Keep | None) -> Axes:
    """``ax`` without the dims that ``keep`` reduces."""
    if keep is None:
        return ax
    gone = {d for d, k in (("field", keep.field), ("cycle", keep.cycle)) if k is not None}
    dims = tuple(d for d in ax.dims if d not in gone)
    sizes = tuple(n for d, n in zip(ax.dims, ax.sizes) if d not in gone)
    coords = {k: v for k, v in ax.coords.items() if k not in gone}
    return dataclasses.replace(ax, dims=dims, sizes=sizes, coords=coords)


def _has_main(f: Any) -> bool:
    """True when a USID main dataset lies within the first levels of the file."""
    import h5py

    stack: list[tuple[Any, int]] = [(f, 0)]
    seen = 0
    while stack:
        grp, depth = stack.pop()
        for key in grp:
            seen += 1
            if seen > 2000:
                return False
            obj = grp.get(key)
            if isinstance(obj, h5py.Dataset):
                if set(MAIN_REFS) <= set(obj.attrs.keys()):
                    return True
            elif isinstance(obj, h5py.Group) and depth < 5:
                stack.append((obj, depth + 1))
    return False


def _sho_vars(fit: Any, ax: Axes, fname: str,
              keep: Keep | None = None) -> dict[str, tuple[tuple[str, ...], np.ndarray, dict[str, Any]]]:
    names = fit.dtype.names or ()
    missing = [k for k in SHO_FIELDS if k not in names]
    if missing:
        raise DataError(f"'{fname}': the SHO fit {printable(fit.name, 120)} lacks the field(s) "
                        f"{printable(', '.join(missing), 120)} (has {printable(', '.join(names) or 'none', 120)}); "
                        "it is not a BGlib SHO result")
    arrays = _read(fit, ax, list(SHO_FIELDS), scales=[scale for _, scale, _ in SHO_FIELDS.values()], keep=keep)
    out = {}
    dims = ("row", "col", *_reduced(ax, keep).dims)
    for (key, (var, scale, units)), arr in zip(SHO_FIELDS.items(), arrays):
        out[var] = (dims, arr, {"units": units, "usid_field": key})
    # an interrupted fit leaves pixels after ``last_pixel`` unwritten
    last = fit.parent.attrs.get("last_pixel")
    n_pos = fit.shape[0]
    if last is not None and 0 <= int(last) < n_pos:
        import warnings

        from .._errors import DataWarning

        unfitted = np.zeros(ax.rows * ax.cols, bool)
        unfitted[ax.pixel[int(last):]] = True
        for _, arr, _ in out.values():
            arr.reshape(ax.rows * ax.cols, -1)[unfitted] = np.nan
        warnings.warn(f"'{fname}': the SHO fit stopped at pixel {int(last)} of {n_pos}; the rest are NaN",
                      DataWarning, stacklevel=4)
    return out


def _file_attrs(f: Any, p: Plan, fname: str) -> dict[str, Any]:
    attrs: dict[str, Any] = {"source": fname, "format": "usid",
                             "usid_groups": ", ".join(p.groups),
                             "usid_read": ", ".join(x for x in (p.sho, p.loops) if x) or str(p.raw)}
    meas = f[p.channel].parent if p.channel in f and f[p.channel].name != "/" else None
    if meas is not None:
        for key in ("VS_measure_in_field_loops", "VS_mode", "BE_center_frequency_[Hz]", "BE_band_width_[Hz]"):
            if key in meas.attrs:
                val = _texts(meas.attrs[key]) if isinstance(meas.attrs[key], (bytes, str, np.bytes_)) else None
                attrs[f"usid_{key}"] = printable(val[0], 120) if val else float(np.asarray(meas.attrs[key]).ravel()[0])
        single = _field_name(str(attrs.get("usid_VS_measure_in_field_loops", "")))
        if single is not None:
            attrs["field"] = single
    return attrs


def _truth(f: Any, ax: Axes) -> dict[str, tuple[tuple[str, ...], np.ndarray, dict[str, Any]]]:
    """Ground-truth maps of a switchscope synthetic film (group ``switchscope_truth``), if any."""
    import h5py

    grp = f.get("switchscope_truth")
    out = {}
    if isinstance(grp, h5py.Group):
        for name, d in grp.items():
            if (name.startswith("truth_") and isinstance(d, h5py.Dataset) and d.shape == (ax.rows, ax.cols)
                    and d.dtype.kind in "iuf"):
                out[name] = (("row", "col"), np.asarray(d[()], dtype=float),
                             {k: v for k, v in d.attrs.items() if isinstance(v, str)})
    return out


_Vars = dict[str, tuple[tuple[str, ...], np.ndarray, dict[str, Any]]]


def _dataset(truth: _Vars, data_vars: _Vars, ax: Axes,
             attrs: dict[str, Any], *, channel: str | None, voltage: Any, normalized: bool,
             path: PathLike) -> xr.Dataset:
    fname = Path(path).name
    if channel is not None:
        if channel not in data_vars:
            have = [k for k in data_vars if k in CHANNELS]
            raise DataError(f"channel {channel!r} is not in '{fname}' (has: {', '.join(have) or 'spectra only'}); "
                            "choose one of those")
        data_vars = {k: v for k, v in data_vars.items() if k == channel or k == "sho_r2"}
    n_steps = ax.sizes[ax.dims.index("step")]
    v = resolve_voltage(voltage, ax.coords["voltage"], n_steps, path)
    v = check_voltage(v, n_steps)
    coords: dict[str, Any] = {
        "row": np.arange(ax.rows), "col": np.arange(ax.cols), "step": np.arange(n_steps),
        "voltage": ("step", v, {"units": "V", "long_name": "DC voltage"}),
    }
    if "y" in ax.coords:
        coords["y"] = ("row", ax.coords["y"], {"units": "m"})
    if "x" in ax.coords:
        coords["x"] = ("col", ax.coords["x"], {"units": "m"})
    if "cycle" in ax.dims:
        coords["cycle"] = ax.coords["cycle"]
    if "field" in ax.dims:
        coords["field"] = np.array(ax.coords["field"], dtype=object).astype(str)
    if "freq" in ax.dims:
        coords["freq"] = ("freq", ax.coords["freq"], {"units": "Hz"})
    variables = {}
    for name, (dims, arr, a) in {**data_vars, **truth}.items():
        a = dict(a)
        if isinstance(a.get("units"), list):
            a["units"] = a["units"][0]
        a.setdefault("long_name", name.replace("_", " "))
        if normalized and name in CHANNELS:
            a.update(normalized=1, units="1")
        variables[name] = xr.DataArray(arr, dims=dims, attrs=a)
    return xr.Dataset(variables, coords=coords, attrs=attrs)


__all__ = ["USIDReader", "is_main", "plan"]
