"""What every reader shares: byte sniffing, the reader interface, and turning named arrays into
the switchscope Dataset (channel names, grid, voltage)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, Mapping, Sequence, Union

import numpy as np
import xarray as xr

from .._dataset import CHANNELS, check_channel, check_voltage, make_dataset
from .._errors import DataError, FormatError
from .._grid import unflatten
from ..paper import paper_voltage

PathLike = Union[str, os.PathLike]
#: A voltage option: an array of volts (one per step) or ``"paper"`` for :func:`paper_voltage`.
VoltageLike = Union[Sequence[float], np.ndarray, Literal["paper"]]

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
MAT5_TEXT = b"MATLAB 5.0 MAT-file"
MAT73_TEXT = b"MATLAB 7.3 MAT-file"
NUMPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
HEAD_BYTES = 1024

#: The paper's MATLAB variable names (also accepted with a ``_mixed`` suffix) and what they hold.
PAPER_KEYS: dict[str, str] = {
    "Loopdata": "piezoresponse",
    "OutA2": "amplitude",
    "OutPhi1": "phase",
    "Outw2": "resonance",
    "OutQ2": "quality_factor",
    "Voltagedata": "voltage",
}


def read_head(path: PathLike, n: int = HEAD_BYTES) -> bytes:
    """The first ``n`` bytes of a file (empty when it cannot be read)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except OSError:
        return b""


def hdf5_offset(head: bytes) -> int | None:
    """Where the HDF5 superblock starts (0, or 512 after a MATLAB v7.3 header), else None."""
    for offset in (0, 512):
        if head[offset:offset + len(HDF5_SIGNATURE)] == HDF5_SIGNATURE:
            return offset
    return None


def available_memory() -> int:
    """Bytes of memory this process can still use (``MemAvailable``; 8 GiB where unknown)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} EB"  # pragma: no cover


def check_declared_size(path: PathLike, arrays: Sequence[tuple[str, tuple[int, ...], int]], *,
                        stored_bytes: int | None = None) -> None:
    """Refuse a file whose arrays, as its headers declare them, cannot be real or cannot fit.

    ``arrays`` holds ``(name, shape, itemsize)`` read from the file's metadata, before any data.
    With ``stored_bytes`` (uncompressed formats: the bytes after the header), arrays that declare
    more than the file holds are a truncated or damaged file. Every array is read as float64,
    so their total at 8 bytes a value must fit in half the memory available now.
    """
    fname = Path(path).name
    total_values = 0
    total_stored = 0
    for name, shape, itemsize in arrays:
        n = 1
        for d in shape:
            if int(d) < 0:
                raise FormatError(f"'{fname}': {name} declares a negative size {tuple(shape)}; the file is damaged")
            n *= int(d)
        total_values += n
        total_stored += n * int(itemsize)
    if stored_bytes is not None and total_stored > stored_bytes:
        raise FormatError(
            f"'{fname}' declares {human_bytes(total_stored)} of data but holds only {human_bytes(stored_bytes)}; "
            "it is truncated or its header is damaged: copy or save it again"
        )
    need = 8 * total_values
    avail = available_memory()
    if need > avail // 2:
        shapes = ", ".join(f"{name} {tuple(int(d) for d in shape)}" for name, shape, _ in arrays[:3])
        raise DataError(
            f"'{fname}' declares {human_bytes(need)} of data ({shapes}) but this machine has "
            f"{human_bytes(avail)} of memory available; use a machine with more memory, or split the file"
        )


def check_regular_file(path: PathLike) -> None:
    """Refuse anything but a regular file (a FIFO or a device would block or never end)."""
    import stat

    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise DataError(f"file '{p}' does not exist; check the path") from None
    except OSError as exc:
        raise DataError(f"cannot read '{p}' ({oneline(exc)}); check the path and its permissions") from None
    if stat.S_ISDIR(st.st_mode):
        raise DataError(f"'{p}' is a folder (directory); give the path of a data file inside it")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else
                "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else
                "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise DataError(f"'{p}' is {kind}; give a regular data file")


def hdf5_declared(path: PathLike, f: Any) -> None:
    """:func:`check_declared_size` over every dataset of an open ``h5py.File``."""
    import h5py

    arrays: list[tuple[str, tuple[int, ...], int]] = []
    contiguous_bytes = 0
    all_contiguous = True

    def visit(name: str, obj: Any) -> None:
        nonlocal contiguous_bytes, all_contiguous
        if isinstance(obj, h5py.Dataset) and obj.shape is not None:
            itemsize = obj.dtype.itemsize if obj.dtype.kind != "O" else 8
            arrays.append((repr(name), tuple(obj.shape), itemsize))
            if obj.chunks is None and obj.compression is None:
                contiguous_bytes += int(np.prod(obj.shape, dtype=object)) * itemsize
            else:
                all_contiguous = False

    try:
        f.visititems(visit)
    except Exception as exc:  # noqa: BLE001 - HDF5 raises many types for damaged metadata
        raise FormatError(f"'{Path(path).name}' has a damaged HDF5 structure ({oneline(exc)}); "
                          "copy or save it again") from None
    size = os.stat(path).st_size
    if all_contiguous and contiguous_bytes > size:
        raise FormatError(
            f"'{Path(path).name}' declares {human_bytes(contiguous_bytes)} of data but holds only "
            f"{human_bytes(size)}; it is truncated or damaged: copy or save it again"
        )
    check_declared_size(path, arrays)


def oneline(exc: BaseException) -> str:
    """An exception's text squeezed onto one line (library messages may span several)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


class Reader:
    """A file format switchscope reads.

    Subclasses set :attr:`name` (used in ``ds.attrs["format"]``), :attr:`description` (for error
    messages) and :attr:`options` (the keyword options of :func:`switchscope.io.load` they use),
    and implement :meth:`guess_can_open` from the file's bytes and :meth:`open`.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    options: ClassVar[frozenset[str]] = frozenset()

    def guess_can_open(self, path: PathLike) -> bool:  # pragma: no cover - interface
        """True when the file's content (never its suffix alone) is in this format."""
        raise NotImplementedError

    def open(self, path: PathLike, **options: Any) -> xr.Dataset:  # pragma: no cover - interface
        """Read the file into a Dataset with dims ``(row, col, step)``."""
        raise NotImplementedError

    def check_size(self, path: PathLike) -> None:  # pragma: no cover - interface
        """Read only the file's metadata and refuse (one line) arrays that it cannot hold or that
        would not fit in memory (see :func:`check_declared_size`)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}: {self.description}>"


# -- from named arrays to a Dataset --------------------------------------------------------------

def _target_of(name: str) -> str | None:
    if name in CHANNELS or name == "voltage":
        return name
    base = name[: -len("_mixed")] if name.endswith("_mixed") else name
    return PAPER_KEYS.get(base)


def resolve_keys(names: Sequence[str], path: PathLike, keys: Mapping[str, str] | None,
                 channel: str | None) -> dict[str, str]:
    """Map the file's array names to channel names (and ``"voltage"``).

    With ``keys`` only that mapping is used; otherwise the paper's MATLAB names (with or without
    ``_mixed``) and arrays named after channels are recognised, and a file with one single
    unrecognised array names it ``channel`` (default piezoresponse).
    """
    fname = Path(path).name
    if keys is not None:
        if not isinstance(keys, Mapping):
            raise DataError(f"keys must be a mapping {{file variable: channel}}, got {type(keys).__name__}")
        mapping: dict[str, str] = {}
        for src, dst in keys.items():
            if dst != "voltage":
                check_channel(dst)
            if src not in names:
                raise DataError(
                    f"variable {src!r} named in keys is not in '{fname}' (has: {', '.join(names) or 'nothing'}); "
                    "fix the keys mapping"
                )
            mapping[src] = dst
    else:
        mapping = {n: t for n in names if (t := _target_of(n)) is not None}
        if not any(t != "voltage" for t in mapping.values()):
            others = [n for n in names if n not in mapping]
            if len(others) == 1:
                mapping[others[0]] = channel or "piezoresponse"
    targets = list(mapping.values())
    for t in set(targets):
        if targets.count(t) > 1:
            srcs = [s for s, d in mapping.items() if d == t]
            raise DataError(
                f"'{fname}' has several variables for {t!r} ({', '.join(srcs)}); "
                f"choose one with keys={{{srcs[0]!r}: {t!r}}}"
            )
    if not any(t != "voltage" for t in targets):
        raise DataError(
            f"'{fname}' holds no channel switchscope recognises (has: {', '.join(names) or 'nothing'}); "
            "name arrays after a channel (" + ", ".join(CHANNELS) + ") or pass keys={'name': 'piezoresponse'}"
        )
    if channel is not None:
        check_channel(channel)
        chosen = {s: d for s, d in mapping.items() if d in (channel, "voltage")}
        if channel not in chosen.values():
            have = [d for d in targets if d != "voltage"]
            raise DataError(
                f"channel {channel!r} is not in '{fname}' (has: {', '.join(have)}); choose one of those"
            )
        mapping = chosen
    return mapping


def numeric_array(arr: Any, what: str) -> np.ndarray:
    """``arr`` as a float array, refusing text, objects, booleans and complex numbers."""
    a = np.asarray(arr)
    if a.dtype.kind not in "iuf":
        raise DataError(f"{what} has dtype {a.dtype}; switchscope reads arrays of real numbers")
    return a.astype(float, copy=False)


def check_grid(grid: Any) -> tuple[int, int] | None:
    """``grid`` as ``(rows, cols)`` of positive integers (None stays None)."""
    if grid is None:
        return None
    try:
        rows, cols = grid
        ok = all(not isinstance(g, bool) and float(g).is_integer() and g > 0 for g in (rows, cols))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise DataError(f"grid must be two positive integers (rows, cols), got {grid!r}; e.g. grid=(60, 60)")
    return int(rows), int(cols)


def to_grid(arr: np.ndarray, grid: tuple[int, int] | None, what: str) -> np.ndarray:
    """Place ``(rows, cols, steps)`` or ``(pixels, steps)`` data on the grid."""
    if arr.ndim == 3:
        if grid is not None and tuple(arr.shape[:2]) != grid:
            raise DataError(
                f"{what} is already on a {arr.shape[0]}x{arr.shape[1]} grid but grid={grid[0]}x{grid[1]} "
                "was given; drop the grid option"
            )
        return arr
    if arr.ndim == 2:
        n_pixels = arr.shape[0]
        if grid is None:
            raise DataError(
                f"{what} is 2-D ({n_pixels} pixels x {arr.shape[1]} steps) with no grid; "
                "pass grid=(rows, cols) (--grid ROWSxCOLS)"
            )
        if grid[0] * grid[1] != n_pixels:
            raise DataError(
                f"grid {grid[0]}x{grid[1]} has {grid[0] * grid[1]} pixels but {what} has {n_pixels}; "
                "pass a grid whose rows*cols equals the number of pixels"
            )
        return unflatten(arr, grid)
    raise DataError(
        f"{what} has shape {arr.shape}; expected (rows, cols, steps) or (pixels, steps)"
    )


def resolve_voltage(voltage: VoltageLike | None, from_file: np.ndarray | None, n_steps: int,
                    path: PathLike) -> np.ndarray:
    """The voltage to use: an explicit option wins over the file's; ``"paper"`` is the paper's waveform."""
    fname = Path(path).name
    if isinstance(voltage, str):
        if voltage != "paper":
            raise DataError(f"voltage must be an array of volts or 'paper', got {voltage!r}")
        return paper_voltage(n_steps)
    if voltage is not None:
        v = numeric_array(voltage, "the voltage option")
    elif from_file is not None:
        v = from_file
    else:
        raise DataError(
            f"'{fname}' holds no voltage; pass voltage=<array of {n_steps} volts> or voltage='paper' "
            "(--voltage paper) for the paper's +16 V -> -16 V -> +16 V waveform"
        )
    try:
        return check_voltage(v, n_steps)
    except DataError as exc:
        raise DataError(f"'{fname}': {exc}") from None


def assemble(names: Sequence[str], get: Callable[[str], Any], path: PathLike, fmt: str, *,
             channel: str | None = None, voltage: VoltageLike | None = None, grid: Any = None,
             normalized: bool = False, keys: Mapping[str, str] | None = None) -> xr.Dataset:
    """Build the Dataset from a file's named arrays (``get(name)`` reads one)."""
    fname = Path(path).name
    grid_t = check_grid(grid)
    mapping = resolve_keys(list(names), path, keys, channel)
    channels: dict[str, np.ndarray] = {}
    file_voltage = None
    for src, dst in mapping.items():
        what = f"'{fname}'" if fmt == "npy" else f"variable {src!r} of '{fname}'"
        arr = numeric_array(get(src), what)
        if dst == "voltage":
            file_voltage = arr.ravel()
        else:
            channels[dst] = to_grid(arr, grid_t, what)
    n_steps = {a.shape[2] for a in channels.values()}
    if len(n_steps) > 1:
        raise DataError(f"the channels of '{fname}' have different numbers of steps {sorted(n_steps)}; "
                        "give channels of one measurement")
    v = resolve_voltage(voltage, file_voltage, n_steps.pop(), path)
    # already-normalized data are in standard deviations, no longer in the channel's units
    channel_attrs = {c: {"normalized": 1, "units": "1"} for c in channels} if normalized else None
    attrs = {"source": fname, "format": fmt}
    try:
        return make_dataset(channels, v, attrs=attrs, channel_attrs=channel_attrs)
    except DataError as exc:
        raise DataError(f"'{fname}': {exc}") from None
