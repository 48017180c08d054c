"""``load``: find the reader from the file's bytes and open it."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Mapping

import xarray as xr

from .._errors import DataError, DataWarning, FormatError, SwitchscopeError
from .._text import printable

#: Ends the message of a read error no reader foresaw (the fuzz tests look for it).
UNEXPECTED_READ_ERROR = "if it opens elsewhere, please report this"
from ._base import PathLike, Reader, VoltageLike, check_regular_file, hdf5_offset, oneline
from .matlab import MatV5Reader, MatV73Reader
from .netcdf import NetCDFReader
from .npy import NpyReader, NpzReader
from .nsid import NSIDReader
from .usid import USIDReader
from .zarr import ZarrReader, is_zarr_store

#: Every format switchscope reads, in the order they are tried (a Zarr store is a folder).
READERS: tuple[Reader, ...] = (MatV5Reader(), MatV73Reader(), NpyReader(), NpzReader(), NetCDFReader(),
                               USIDReader(), NSIDReader(), ZarrReader())


def formats() -> str:
    """The formats we read, for messages."""
    return ", ".join(r.description for r in READERS)


def find_reader(path: PathLike) -> Reader:
    """The reader that claims ``path`` from its content; a :class:`FormatError` if none does."""
    path = Path(path)
    if is_zarr_store(path):
        return READERS[-1]
    check_regular_file(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(1024)
    except OSError as exc:
        raise DataError(f"cannot read '{path}' ({oneline(exc)}); check its permissions") from None
    if size == 0:
        raise FormatError(f"'{path}' is empty (0 bytes); give a complete data file ({formats()})")
    for reader in READERS:
        if reader.guess_can_open(path):
            return reader
    raise FormatError(_why_none(path, head))


def _why_none(path: Path, head: bytes) -> str:
    """A one-line diagnosis for a file no reader claims."""
    if hdf5_offset(head) is not None:
        import h5py

        try:
            with h5py.File(path, "r"):
                pass
        except Exception as exc:  # noqa: BLE001
            return (f"'{path}' is an HDF5 file that cannot be opened ({oneline(exc)}); it is truncated "
                    "or corrupt: copy or save it again")
        return (f"'{path}' is an HDF5 file but neither a MATLAB v7.3 file, a NetCDF file written by "
                f"switchscope, a USID file (main datasets with Position_Indices references) nor an NSID file "
                f"(main datasets with labelled dimension scales); formats read: {formats()}")
    if head.startswith(b"PK"):
        return (f"'{path}' is a zip archive but not a NumPy .npz (only .npy members); "
                f"formats read: {formats()}")
    start = head[:16]
    hint = ""
    suffix = path.suffix.lower()
    if suffix in {".mat", ".npy", ".npz", ".nc", ".h5", ".hdf5"}:
        hint = f"its name ends in {suffix} but its content is not in that format; "
    return (f"'{path}' is not in a format switchscope reads (it starts with {start!r}); {hint}"
            f"formats read: {formats()}")


def load(path: PathLike, *, channel: str | None = None, voltage: VoltageLike | None = None,
         grid: tuple[int, int] | None = None, normalized: bool = False,
         keys: Mapping[str, str] | None = None, group: str | None = None,
         select: Any = None) -> xr.Dataset:
    """Read a BEPS measurement (or saved results) into a switchscope Dataset.

    The format is decided from the file's bytes, never from its suffix alone: MATLAB v5/v7 and
    v7.3 ``.mat`` (the paper's variable names), NumPy ``.npy``/``.npz``, NetCDF written by
    :func:`save`, USID HDF5 (pycroscopy/BGlib: SHO fits, projected loops, raw spectra) and NSID
    HDF5 (pyNSID/sidpy). Files with fields and cycles give ``field``/``cycle`` dims, which
    :func:`switchscope.select.apply_selection` reduces.

    Parameters
    ----------
    path : str or PathLike
        The data file.
    channel : str, optional
        For ``.npy`` (and a single unnamed array in ``.npz``/``.mat``): the channel the array holds
        (default ``"piezoresponse"``). Where the file holds several channels: load only this one.
    voltage : array of shape (n_steps,) or "paper", optional
        DC voltage per step in volts; replaces the file's voltage. Required for files without one;
        ``"paper"`` is the paper's waveform (:func:`paper_voltage`).
    grid : (rows, cols), optional
        Grid of 2-D data of shape (n_pixels, n_steps), pixels in row-major order.
    normalized : bool
        Mark the channels as already normalized (``attrs["normalized"] = 1``).
    keys : mapping of str to str, optional
        ``{variable in the file: channel or "voltage"}``, replacing the built-in names
        (``.mat``, ``.npz``; NSID: dataset path or name -> channel).
    group : str, optional
        USID files: the measurement or result group to read (e.g. ``Measurement_001``,
        ``Raw_Data-SHO_Fit_000``, ``Raw_Data``); default the newest.
    select : str, list or mapping, optional
        A selection of field and cycle (:func:`switchscope.select.parse_select`; ``{}`` for the
        defaults) made while reading, so that only the selected arrays are held in memory (USID);
        other formats are read whole (:func:`switchscope.select.apply_selection` reduces them).
        None (default): every field and cycle.

    Returns
    -------
    xarray.Dataset
        Channels with dims (row, col, step), coordinate ``voltage`` on ``step``, units in attrs,
        ``attrs["source"]`` (file name) and ``attrs["format"]`` (reader name).

    Examples
    --------
    >>> ds = load("../shared/data/mixed_pzt_piezoresponse_loops.mat")  # doctest: +SKIP
    >>> ds = load("resonance.npy", channel="resonance", grid=(60, 60), voltage="paper",
    ...           normalized=True)  # doctest: +SKIP
    """
    reader = find_reader(path)
    given = {"channel": channel, "voltage": voltage, "grid": grid,
             "normalized": normalized or None, "keys": keys, "group": group}
    if select is not None and "select" in reader.options:
        from ..select import parse_select

        given["select"] = parse_select(select)
    options: dict[str, Any] = {}
    for name, value in given.items():
        if value is None:
            continue
        if name in reader.options:
            options[name] = value
        else:
            warnings.warn(f"option {name}= does not apply to {reader.description} files; ignored",
                          DataWarning, stacklevel=2)
    try:
        reader.check_size(path)
        return reader.open(path, **options)
    except SwitchscopeError:
        raise
    except MemoryError:
        raise DataError(f"'{printable(Path(path).name)}' does not fit in the memory available; use a machine "
                        "with more memory") from None
    except Exception as exc:  # noqa: BLE001 - a damaged file must end in one line, not a traceback
        raise FormatError(
            f"'{printable(Path(path).name)}' could not be read as {reader.description} "
            f"({type(exc).__name__}: {oneline(exc)}); it is likely damaged: copy or save it again "
            f"({UNEXPECTED_READ_ERROR})"
        ) from None


__all__ = ["READERS", "find_reader", "formats", "load"]
