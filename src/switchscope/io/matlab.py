"""MATLAB files of the paper: v5/v7 (scipy.io) and v7.3 (HDF5, via h5py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .._errors import DataError, FormatError
from ._mat5_check import check_mat5
from ._base import (
    HEAD_BYTES,
    available_memory,
    check_declared_size,
    hdf5_declared,
    MAT5_TEXT,
    MAT73_TEXT,
    PathLike,
    Reader,
    assemble,
    hdf5_offset,
    oneline,
    read_head,
)

_OPTIONS = frozenset({"channel", "voltage", "grid", "normalized", "keys"})
#: MATLAB classes whose HDF5 datasets hold plain numbers.
_ITEMSIZE = {"double": 8, "single": 4, "int8": 1, "uint8": 1, "int16": 2, "uint16": 2, "int32": 4,
             "uint32": 4, "int64": 8, "uint64": 8, "logical": 1, "char": 2}
_NUMERIC_CLASSES = {b"double", b"single", b"int8", b"uint8", b"int16", b"uint16", b"int32",
                    b"uint32", b"int64", b"uint64"}


class MatV5Reader(Reader):
    """MATLAB v5/v6/v7 ``.mat`` files (the paper's format), read with :func:`scipy.io.loadmat`.

    Variables ``Loopdata_mixed``, ``OutA2_mixed``, ``OutPhi1_mixed``, ``Outw2_mixed``,
    ``OutQ2_mixed`` (each (rows, cols, steps)) and ``Voltagedata_mixed`` (steps, 1) become
    piezoresponse, amplitude, phase, resonance, quality_factor and the voltage; the names
    without ``_mixed`` work too, and ``keys=`` maps other names.
    """

    name = "matlab-v5"
    description = "MATLAB v5/v7 .mat"
    options = _OPTIONS

    def guess_can_open(self, path: PathLike) -> bool:
        head = read_head(path, HEAD_BYTES)
        return head.startswith(MAT5_TEXT) and hdf5_offset(head) is None

    def check_size(self, path: PathLike) -> None:
        import scipy.io

        # scipy trusts the file's structure, and some damage crashes the process: check it first
        check_mat5(path, budget=available_memory() // 2)
        try:
            variables = scipy.io.whosmat(path)
        except Exception as exc:  # noqa: BLE001 - scipy raises many types for damaged headers
            raise FormatError(
                f"'{Path(path).name}' starts like a MATLAB v5 file but its variable headers cannot be read "
                f"({oneline(exc)}); it is truncated or corrupt: copy or export it again"
            ) from None
        check_declared_size(path, [(repr(name), tuple(shape), _ITEMSIZE.get(cls, 8))
                                   for name, shape, cls in variables])

    def open(self, path: PathLike, **options: Any) -> xr.Dataset:
        import scipy.io

        try:
            # only numeric variables: a cell or struct may hide arrays of any size, which the size
            # check (from the variable headers) cannot see, and switchscope reads numbers only
            numeric = [n for n, _, cls in scipy.io.whosmat(path) if cls in _ITEMSIZE and cls != "char"]
            m = scipy.io.loadmat(path, variable_names=numeric) if numeric else {}
        # scipy raises a mix of types for truncated or damaged files (even UnboundLocalError)
        except Exception as exc:  # noqa: BLE001
            raise FormatError(
                f"'{Path(path).name}' starts like a MATLAB v5 file but cannot be read ({oneline(exc)}); "
                "it is truncated or corrupt: copy or export it again"
            ) from None
        names = [k for k in m if not k.startswith("__")]
        if not names and scipy.io.whosmat(path):
            raise DataError(f"'{Path(path).name}' holds no numeric MATLAB variable (only cells, structs or text); "
                            "save the loops as numeric arrays")
        if not names:
            # a header with no variable after it is what a cut-off download looks like
            raise FormatError(f"'{Path(path).name}' is a MATLAB v5 file with no variables; it is truncated "
                              "or empty: copy or export it again")
        return assemble(names, m.__getitem__, path, self.name, **options)


def _is_mat73(path: PathLike) -> bool:
    head = read_head(path, HEAD_BYTES)
    offset = hdf5_offset(head)
    if offset is None:
        return False
    if head.startswith(MAT73_TEXT):
        return True
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return any("MATLAB_class" in obj.attrs for obj in f.values())
    except Exception:  # noqa: BLE001 - an unreadable HDF5 file is simply not ours to claim
        return False


class MatV73Reader(Reader):
    """MATLAB v7.3 ``.mat`` files (HDF5 with a 512-byte MATLAB header), read with h5py.

    MATLAB writes arrays in column-major order, so h5py sees every array with its axes reversed;
    they are transposed back to MATLAB's ``(rows, cols, steps)``. Same variable names as
    :class:`MatV5Reader`.
    """

    name = "matlab-v7.3"
    description = "MATLAB v7.3 .mat (HDF5)"
    options = _OPTIONS

    def guess_can_open(self, path: PathLike) -> bool:
        return _is_mat73(path)

    def check_size(self, path: PathLike) -> None:
        import h5py

        try:
            f = h5py.File(path, "r")
        except Exception as exc:  # noqa: BLE001
            raise FormatError(f"'{Path(path).name}' looks like a MATLAB v7.3 file but HDF5 cannot open it "
                              f"({oneline(exc)}); it is truncated or corrupt: copy or save it again") from None
        with f:
            hdf5_declared(path, f)

    def open(self, path: PathLike, **options: Any) -> xr.Dataset:
        import h5py

        fname = Path(path).name
        try:
            f = h5py.File(path, "r")
        except Exception as exc:  # noqa: BLE001 - h5py raises OSError and others for damage
            raise FormatError(
                f"'{fname}' looks like a MATLAB v7.3 file but HDF5 cannot open it ({oneline(exc)}); "
                "it is truncated or corrupt: copy or save it again"
            ) from None
        with f:
            try:
                names = [
                    k for k, obj in f.items()
                    if isinstance(k, str) and isinstance(obj, h5py.Dataset)
                    and _class_of(obj) in _NUMERIC_CLASSES
                    and "MATLAB_empty" not in obj.attrs
                ]
            except Exception as exc:  # noqa: BLE001 - HDF5 raises many types for damaged metadata
                raise FormatError(f"'{fname}' has damaged MATLAB v7.3 metadata ({oneline(exc)}); "
                                  "copy or save it again") from None

            def get(key: str) -> np.ndarray:
                try:
                    return np.asarray(f[key][()]).T
                except Exception as exc:  # noqa: BLE001
                    raise FormatError(
                        f"variable {key!r} of '{fname}' cannot be read ({oneline(exc)}); "
                        "the file is corrupt: save it again"
                    ) from None

            return assemble(names, get, path, self.name, **options)


def _class_of(obj: Any) -> bytes:
    c = obj.attrs.get("MATLAB_class", b"")
    return c.encode() if isinstance(c, str) else bytes(c)
