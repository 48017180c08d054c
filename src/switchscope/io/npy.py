"""NumPy ``.npy`` and ``.npz`` files with an explicit voltage and grid."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .._errors import DataError, FormatError
from ._base import (
    NUMPY_MAGIC,
    ZIP_MAGIC,
    PathLike,
    Reader,
    assemble,
    check_declared_size,
    oneline,
    read_head,
)


def _npy_header(fh: Any, where: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and header length of the ``.npy`` stream ``fh``, without reading its data."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(fh)
        else:
            shape, _, dtype = fmt.read_array_header_2_0(fh)
    except Exception as exc:  # noqa: BLE001 - the header is Python literal text; damage raises many types
        raise FormatError(f"{where} has a damaged NumPy header ({oneline(exc)}); save it again") from None
    if dtype.hasobject:
        raise DataError(f"{where} holds Python objects (pickle), which switchscope refuses to load; "
                        "save a numeric array (np.save(path, np.asarray(x, dtype=float)))")
    return tuple(shape), dtype, fh.tell()


def _np_load(path: PathLike) -> Any:
    fname = Path(path).name
    try:
        # Never unpickle: a file is data, not code.
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise DataError(
                f"'{fname}' holds Python objects (pickle), which switchscope refuses to load; "
                "save a numeric array (np.save(path, np.asarray(x, dtype=float)))"
            ) from None
        raise FormatError(f"'{fname}' is a damaged NumPy file ({oneline(exc)}); save it again") from None
    except Exception as exc:  # noqa: BLE001 - numpy raises many types for damaged files
        raise FormatError(f"'{fname}' is a damaged NumPy file ({oneline(exc)}); save it again") from None


class NpyReader(Reader):
    """A single ``.npy`` array of shape (rows, cols, steps) or (pixels, steps).

    Options: ``channel`` (default piezoresponse), ``voltage`` (array or ``"paper"``, required),
    ``grid=(rows, cols)`` (required for 2-D data), ``normalized``.
    """

    name = "npy"
    description = "NumPy .npy"
    options = frozenset({"channel", "voltage", "grid", "normalized"})

    def guess_can_open(self, path: PathLike) -> bool:
        return read_head(path, len(NUMPY_MAGIC)) == NUMPY_MAGIC

    def check_size(self, path: PathLike) -> None:
        import os

        with open(path, "rb") as fh:
            shape, dtype, offset = _npy_header(fh, f"'{Path(path).name}'")
        check_declared_size(path, [("the array", shape, dtype.itemsize)],
                            stored_bytes=os.stat(path).st_size - offset)

    def open(self, path: PathLike, **options: Any) -> xr.Dataset:
        arr = _np_load(path)
        if arr.dtype.kind == "O":  # belt and braces: np.load already refuses these
            raise DataError(f"'{Path(path).name}' holds Python objects; save a numeric array")
        # a neutral name, so the channel comes from the channel option and never from the file name
        return assemble(["array"], lambda _key: arr, path, self.name, **options)


class NpzReader(Reader):
    """A ``.npz`` archive: arrays named after channels (or the paper's MATLAB names) and an
    optional ``voltage`` array; a single unnamed array takes ``channel`` (default piezoresponse).

    Options: ``channel`` (select one channel, or name the single array), ``voltage`` (overrides
    the archive's), ``grid`` (for 2-D arrays), ``normalized``, ``keys`` ({array name: channel}).
    """

    name = "npz"
    description = "NumPy .npz"
    options = frozenset({"channel", "voltage", "grid", "normalized", "keys"})

    def guess_can_open(self, path: PathLike) -> bool:
        if read_head(path, len(ZIP_MAGIC)) != ZIP_MAGIC:
            return False
        try:
            with zipfile.ZipFile(path) as z:
                members = z.namelist()
        except (zipfile.BadZipFile, OSError):
            return False
        # any zip is not an npz: np.savez writes only <name>.npy members
        return bool(members) and all(m.endswith(".npy") for m in members)

    def check_size(self, path: PathLike) -> None:
        fname = Path(path).name
        arrays = []
        try:
            with zipfile.ZipFile(path) as z:
                for info in z.infolist():
                    where = f"array {info.filename[:-4]!r} of '{fname}'"
                    with z.open(info) as fh:
                        shape, dtype, offset = _npy_header(fh, where)
                    n = int(np.prod(shape, dtype=object))
                    if n * dtype.itemsize > info.file_size - offset:
                        raise FormatError(f"{where} declares {n * dtype.itemsize} bytes but holds "
                                          f"{max(info.file_size - offset, 0)}; the file is damaged: save it again")
                    arrays.append((repr(info.filename[:-4]), shape, dtype.itemsize))
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, NotImplementedError,
                RuntimeError) as exc:
            raise FormatError(f"'{fname}' is a damaged .npz archive ({oneline(exc)}); save it again") from None
        check_declared_size(path, arrays)

    def open(self, path: PathLike, **options: Any) -> xr.Dataset:
        with _np_load(path) as npz:
            names = list(npz.files)

            def get(key: str) -> np.ndarray:
                try:
                    return npz[key]
                except Exception as exc:  # noqa: BLE001 - zip and numpy raise many types for damage
                    if isinstance(exc, ValueError) and ("allow_pickle" in str(exc) or "Object arrays" in str(exc)):
                        raise DataError(
                            f"array {key!r} of '{Path(path).name}' holds Python objects (pickle), which "
                            "switchscope refuses to load; save numeric arrays"
                        ) from None
                    raise FormatError(f"array {key!r} of '{Path(path).name}' is damaged "
                                      f"({oneline(exc)}); save it again") from None

            return assemble(names, get, path, self.name, **options)
