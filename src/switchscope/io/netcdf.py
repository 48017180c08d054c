"""NetCDF files written by switchscope (xarray + h5netcdf), read back exactly.

NetCDF attributes hold only strings, numbers and 1-D numeric arrays. Other attribute values
(``bool``, ``None``, dicts, lists, tuples, 0-d or boolean arrays) are stored as JSON text and
their names listed in the attribute ``switchscope_json_attrs``, so :func:`load` restores them.
Restored lists and tuples come back as lists, arrays inside dicts as lists; top-level arrays
come back as arrays of the same dtype.
"""

from __future__ import annotations

import json
import os
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import xarray as xr

from .._errors import DataError, DataWarning, FormatError, OutputError
from .._output import WRITER_ATTR, pid_alive, written_by_switchscope
from .._text import printable
from .._dataset import channels_in, check_voltage
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

JSON_ATTRS = "switchscope_json_attrs"
_ENGINE = "h5netcdf"


# -- attributes ---------------------------------------------------------------------------------

def _native(value: Any) -> bool:
    """True when NetCDF stores ``value`` as is and gives it back equal."""
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, str):
        return True
    if isinstance(value, (int, np.integer)):
        return -(2**63) <= int(value) < 2**63
    if isinstance(value, (float, np.floating)):
        return True
    if isinstance(value, np.ndarray):
        # one-element arrays come back as scalars, so they go through JSON
        return value.ndim == 1 and value.size > 1 and value.dtype.kind in "iuf"
    return False


def _jsonable(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, where) for v in value]
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise DataError(f"attribute {where} is a dict with non-string keys; use string keys")
        return {k: _jsonable(v, where) for k, v in value.items()}
    raise DataError(
        f"attribute {where} holds a {type(value).__name__}, which a NetCDF file cannot store; "
        "convert it to a str, number, list or dict"
    )


def encode_attrs(attrs: Mapping[str, Any], owner: str) -> dict[str, Any]:
    """Attributes ready for NetCDF: the ones it cannot hold become JSON text (see module doc)."""
    out: dict[str, Any] = {}
    as_json: list[str] = []
    for key, value in attrs.items():
        if key == JSON_ATTRS:
            continue
        if _native(value):
            out[key] = value
            continue
        where = f"{key!r} of {owner}"
        if isinstance(value, np.ndarray):
            payload: Any = {"__ndarray__": _jsonable(value, where), "dtype": value.dtype.str}
        else:
            payload = _jsonable(value, where)
        out[key] = json.dumps(payload, allow_nan=True)
        as_json.append(key)
    if as_json:
        out[JSON_ATTRS] = json.dumps(as_json)
    return out


def decode_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`encode_attrs`.

    Attributes that another program wrote or edited (``switchscope_json_attrs`` that is not a
    JSON list of names, a value that is not JSON, names an unknown dtype or nests too deeply)
    keep their stored text, with a :class:`~switchscope.DataWarning`.
    """
    out = dict(attrs)
    names = out.pop(JSON_ATTRS, None)
    if names is None:
        return out
    try:
        keys = json.loads(str(names))
    except (ValueError, RecursionError):
        keys = None
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        warnings.warn(f"attribute {JSON_ATTRS} is not a JSON list of names; the attributes are kept as "
                      "stored text", DataWarning, stacklevel=2)
        return out
    for key in keys:
        if key not in out:
            continue
        try:
            value = json.loads(str(out[key]))
            if isinstance(value, dict) and set(value) == {"__ndarray__", "dtype"}:
                dtype = np.dtype(str(value["dtype"]))
                if dtype.hasobject:
                    raise TypeError("object dtype")
                value = np.asarray(value["__ndarray__"], dtype=dtype)
        except (ValueError, TypeError, RecursionError, OverflowError):
            warnings.warn(f"attribute {printable(key, 60)!r} is not the JSON switchscope writes; kept as "
                          "stored text", DataWarning, stacklevel=2)
            continue
        out[key] = value
    return out


def _map_attrs(ds: xr.Dataset, fn: Any) -> xr.Dataset:
    out = ds.copy(deep=False)
    out.attrs = fn(ds.attrs, "the dataset")
    for name in list(out.variables):
        # assigning a new dict leaves the caller's Dataset untouched
        out.variables[name].attrs = fn(ds.variables[name].attrs, f"variable {name!r}")
    return out


# -- reader ---------------------------------------------------------------------------------------

def _is_our_netcdf(path: PathLike) -> bool:
    head = read_head(path, HEAD_BYTES)
    if hdf5_offset(head) is None or head.startswith(MAT73_TEXT):
        return False
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if any("MATLAB_class" in obj.attrs for obj in f.values()):
                return False
            if "_NCProperties" in f.attrs:
                return True
            # NetCDF4 written without _NCProperties still marks its dims as dimension scales
            return any(n in f and f[n].attrs.get("CLASS", b"") == b"DIMENSION_SCALE"
                       for n in ("row", "col", "step"))
    except Exception:  # noqa: BLE001 - an unreadable HDF5 file is not ours to claim
        return False


class NetCDFReader(Reader):
    """NetCDF4 files written by :func:`save` (xarray with the h5netcdf engine).

    Values, coordinates and attributes come back exactly; see the module notes on attributes.
    Option ``normalized=True`` marks every channel as normalized; ``voltage`` replaces the file's.
    """

    name = "netcdf"
    description = "NetCDF4 (switchscope results.nc)"
    options = frozenset({"voltage", "normalized"})

    def guess_can_open(self, path: PathLike) -> bool:
        return _is_our_netcdf(path)

    def check_size(self, path: PathLike) -> None:
        import h5py

        try:
            f = h5py.File(path, "r")
        except Exception as exc:  # noqa: BLE001
            raise FormatError(f"'{Path(path).name}' is a NetCDF file that HDF5 cannot open ({oneline(exc)}); "
                              "it is corrupt: write it again") from None
        with f:
            hdf5_declared(path, f)

    def open(self, path: PathLike, *, voltage: Any = None, normalized: bool = False) -> xr.Dataset:
        fname = Path(path).name
        try:
            with xr.open_dataset(path, engine=_ENGINE) as raw:
                ds = raw.load()
        except Exception as exc:  # noqa: BLE001 - h5netcdf/xarray raise many types for damage
            raise FormatError(f"'{fname}' is a NetCDF file that cannot be read ({oneline(exc)}); "
                              "it is corrupt: write it again") from None
        ds = _map_attrs(ds, lambda a, _owner: decode_attrs(a))
        return finish_own(ds, path, voltage=voltage, normalized=normalized, fmt=self.name,
                          hint="give a file written by switchscope.io.save")


def finish_own(ds: xr.Dataset, path: PathLike, *, voltage: Any, normalized: bool, fmt: str,
               hint: str) -> xr.Dataset:
    """The checks and coordinates that the readers of switchscope's own formats (NetCDF, Zarr)
    share: dims ``row, col, step``, a finite voltage per step (from the file or ``voltage``),
    numeric channels, and the ``source``/``format`` attributes (a file we wrote keeps the ones it
    recorded, so save/load is an exact round trip). ``hint`` ends the errors: what to give instead."""
    fname = Path(path).name
    missing = [d for d in ("row", "col", "step") if d not in ds.dims]
    if missing:
        raise DataError(f"'{fname}' has dims {tuple(ds.dims)} but switchscope needs row, col, step; {hint}")
    ds.attrs.pop(WRITER_ATTR, None)
    if voltage is not None or "voltage" not in ds.variables:
        v = resolve_voltage(voltage, None, ds.sizes["step"], path)
        ds = ds.assign_coords(voltage=("step", v, {"units": "V", "long_name": "DC voltage"}))
    else:
        if ds["voltage"].dims != ("step",):
            raise DataError(f"'{fname}': the voltage has dims {ds['voltage'].dims}, not (step,); {hint}")
        values = ds["voltage"].values
        try:
            check_voltage(values, ds.sizes["step"])  # as stored: strings are refused, not parsed
        except DataError as exc:
            raise DataError(f"'{fname}': {exc}") from None
        # an in-memory coordinate, also where a store holds it as a lazy array or a data variable
        ds = ds.assign_coords(voltage=("step", values, dict(ds["voltage"].attrs)))
    for c in channels_in(ds):
        if ds[c].dtype.kind not in "iuf":
            raise DataError(f"'{fname}': channel {c!r} holds {ds[c].dtype} values, not numbers; "
                            "give numeric data")
    if normalized:
        for c in channels_in(ds):
            ds[c].attrs.update(normalized=1, units="1")
    ds.attrs.setdefault("source", fname)
    ds.attrs.setdefault("format", fmt)
    return ds


# -- writer ---------------------------------------------------------------------------------------

def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` a temporary file beside ``path``, then rename it to ``path``: a failed or
    killed write never leaves a half-written ``path``. What dead writers left is swept first."""
    _sweep_dead_temporaries(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write '{path}' ({oneline(exc)}); check the folder's permissions "
                              "and free space") from None
        raise


def dead_temporaries(path: Path) -> list[Path]:
    """The temporary names (``.NAME.PID-HEX.tmp``) that killed writers of ``path`` left beside it."""
    import re

    pattern = re.compile(r"^\." + re.escape(path.name) + r"\.(\d+)-[0-9a-f]{8}\.tmp$")
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    return [path.parent / name for name in names
            if (m := pattern.match(name)) and not pid_alive(int(m[1]))]


def _sweep_dead_temporaries(path: Path) -> None:
    """Remove the temporary files that killed runs of :func:`save` left for ``path``."""
    for dead in dead_temporaries(path):
        try:
            os.unlink(dead)
        except OSError:
            pass


def save(ds: xr.Dataset, path: PathLike, *, overwrite: bool = False) -> Path:
    """Write ``ds`` to a NetCDF4 file that :func:`switchscope.io.load` reads back exactly.

    The file is written under a temporary name in the same folder and renamed into place, so a
    failure never leaves a half-written file and never destroys an existing one.

    Parameters
    ----------
    ds : xarray.Dataset
        Any switchscope Dataset (dims row, col, step and results).
    path : str or PathLike
        Destination, conventionally ``*.nc``.
    overwrite : bool
        Replace an existing file (the CLI's ``--force``).

    Returns
    -------
    Path
        The written file.
    """
    if not isinstance(ds, xr.Dataset):
        raise DataError(f"save needs an xarray.Dataset, got {type(ds).__name__}; "
                        "wrap arrays with switchscope.make_dataset")
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"'{path}' is a folder; give a file name such as '{path / 'results.nc'}'")
    if path.exists() and not overwrite:
        raise OutputError(f"'{path}' already exists; pass overwrite=True (--force) to replace it")
    if path.exists() and not written_by_switchscope(path):
        raise OutputError(f"'{path}' was not written by switchscope, so it is not replaced; "
                          "choose another file name")
    if not path.parent.is_dir():
        raise OutputError(f"folder '{path.parent}' does not exist; create it first")
    encoded = _map_attrs(ds, encode_attrs)
    from .. import __version__

    encoded.attrs[WRITER_ATTR] = f"switchscope {__version__}"
    write_atomically(path, lambda tmp: encoded.to_netcdf(tmp, engine=_ENGINE))
    return path
