"""Zarr stores (a folder of chunks), read lazily and written chunk by chunk: the format of scans
larger than memory.

:class:`ZarrReader` opens a store written by :func:`save_zarr` (or by ``xarray.Dataset.to_zarr``
with dims ``row, col, step`` and a ``voltage`` coordinate) as dask arrays in the store's chunks;
nothing is read until a stage computes a chunk. :func:`save_zarr` writes a Dataset (lazy or in
memory) chunk by chunk under a temporary name beside the destination and renames it into place;
it replaces only a store that switchscope wrote. Attributes go through the same JSON encoding as
the NetCDF files (:func:`switchscope.io.netcdf.encode_attrs`), so a save/load round trip is
exact.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import xarray as xr

from .._errors import DataError, FormatError, OutputError
from .._output import WRITER_ATTR
from ._base import PathLike, Reader, oneline
from .netcdf import _map_attrs, dead_temporaries, decode_attrs, encode_attrs, finish_own

#: Files that mark the root of a Zarr store (format 3, then format 2).
_ROOT_FILES = ("zarr.json", ".zgroup", ".zattrs")
#: Root attribute with the order of the variables (a store lists its arrays alphabetically).
ORDER_ATTR = "switchscope_variables"


def is_zarr_store(path: PathLike) -> bool:
    """Whether ``path`` is a folder holding a Zarr store (its root metadata file)."""
    p = Path(path)
    return p.is_dir() and any((p / name).is_file() for name in _ROOT_FILES)


def _root_attrs(path: Path) -> dict[str, Any]:
    """The store's own attributes, read from its metadata file (no zarr import, no chunk read)."""
    try:
        meta = path / "zarr.json"
        if meta.is_file():
            return dict(json.loads(meta.read_text(encoding="utf-8")).get("attributes") or {})
        attrs = path / ".zattrs"
        if attrs.is_file():
            return dict(json.loads(attrs.read_text(encoding="utf-8")))
    except (OSError, ValueError, AttributeError, TypeError):
        pass
    return {}


def written_by_switchscope_zarr(path: PathLike) -> bool:
    """True when ``path`` is a Zarr store that switchscope wrote (it carries :data:`WRITER_ATTR`)."""
    p = Path(path)
    if p.is_symlink() or not is_zarr_store(p):
        return False
    mark = _root_attrs(p).get(WRITER_ATTR)
    return isinstance(mark, str) and mark.startswith("switchscope")


class ZarrReader(Reader):
    """Zarr stores (folders) with dims ``row, col, step`` (and ``freq`` for raw spectra), opened
    lazily as dask arrays chunked as stored."""

    name = "zarr"
    description = "Zarr store (a folder; switchscope results.zarr or any xarray store)"
    options = frozenset({"voltage", "normalized"})

    def guess_can_open(self, path: PathLike) -> bool:
        return is_zarr_store(path)

    def check_size(self, path: PathLike) -> None:
        return None  # chunks are read on demand: nothing to hold in memory up front

    def open(self, path: PathLike, *, voltage: Any = None, normalized: bool = False) -> xr.Dataset:
        fname = Path(path).name
        import warnings

        try:
            with warnings.catch_warnings():
                # a store without consolidated metadata is read from its arrays' own, as it should be
                warnings.simplefilter("ignore", RuntimeWarning)
                ds = xr.open_zarr(path, chunks={}, consolidated=None)
        except Exception as exc:  # noqa: BLE001 - zarr raises many types for damaged stores
            raise FormatError(f"'{fname}' is a Zarr store that cannot be read ({oneline(exc)}); "
                              "it is corrupt or incomplete: write it again") from None
        ds = _in_order(_map_attrs(ds, lambda a, _owner: decode_attrs(a)))
        return finish_own(ds, path, voltage=voltage, normalized=normalized, fmt=self.name,
                          hint="write it with switchscope.io.save_zarr or with those dims and a voltage per step")


def open_store(store: PathLike) -> xr.Dataset:
    """A store this run is writing, lazily, attributes decoded (no checks: it is ours)."""
    ds = xr.open_zarr(store, chunks={}, consolidated=False)
    ds = _in_order(_map_attrs(ds, lambda a, _owner: decode_attrs(a)))
    ds.attrs.pop(WRITER_ATTR, None)
    return ds


def _in_order(ds: xr.Dataset) -> xr.Dataset:
    """The variables in the order they were written (:data:`ORDER_ATTR`), then any others."""
    try:
        order = [v for v in json.loads(str(ds.attrs.pop(ORDER_ATTR, "[]"))) if v in ds.data_vars]
    except ValueError:
        order = []
    rest = [v for v in ds.data_vars if v not in order]
    return ds[order + rest] if order else ds


def update_attrs(store: PathLike, ds: xr.Dataset) -> None:
    """Give the variables of ``store`` (and the store) the attributes they have in ``ds``:
    results written chunk by chunk before their attributes were known get them now."""
    import zarr

    enc = _encoded(ds)
    group = zarr.open_group(str(store), mode="r+")
    group.attrs.update(dict(enc.attrs))
    names = set(group.array_keys())
    for name in enc.variables:
        if name in names:
            # merged, not replaced: xarray's own encoding attributes (e.g. of booleans) stay
            group[name].attrs.update(dict(enc.variables[name].attrs))


def check_output_store(path: PathLike, force: bool, inputs: Any = ()) -> Path:
    """Refuse, with one line, a Zarr store that may not be written (before any work)."""
    path = Path(path)
    for item in inputs or ():
        if item is not None and Path(item).exists() and path.exists() and Path(item).resolve() == path.resolve():
            raise OutputError(f"--out '{path}' is the input store; write to another name")
    if not path.resolve().parent.is_dir():
        raise OutputError(f"the folder of '{path}' does not exist; create it first")
    if path.exists() or path.is_symlink():
        if not force:
            raise OutputError(f"output store '{path}' already exists; pass --force to replace it")
        if not written_by_switchscope_zarr(path):
            raise OutputError(f"--force replaces only a Zarr store written by switchscope, and '{path}' is not "
                              "one; choose another --out (it is kept)")
    return path


def _sweep_dead(path: Path) -> None:
    """Remove the temporary stores that killed writers left for ``path`` (ours only)."""
    for dead in dead_temporaries(path):
        if is_zarr_store(dead):
            shutil.rmtree(dead, ignore_errors=True)


def _encoded(ds: xr.Dataset) -> xr.Dataset:
    from .. import __version__

    out = _map_attrs(ds, encode_attrs)
    out.attrs[WRITER_ATTR] = f"switchscope {__version__}"
    out.attrs[ORDER_ATTR] = json.dumps([str(v) for v in ds.data_vars])
    for name in out.variables:
        # chunking of the source store, if any, is not the chunking of this one
        out.variables[name].encoding = {}
    return out


def write_zarr(ds: xr.Dataset, store: PathLike, *, append: bool = False, progress: bool = False) -> None:
    """Write ``ds`` into ``store`` chunk by chunk (its dask chunks; in-memory arrays as one),
    on the active dask scheduler; ``append`` adds variables to a store this run is writing."""
    enc = _encoded(ds)
    if append:
        # the store already holds the coordinates; rewriting them would race the chunk writes
        enc = enc.drop_vars([c for c in enc.coords if c in _stored_names(store)])
    import warnings

    with warnings.catch_warnings():
        # text coordinates (param names) have no Zarr v3 data type spec yet; zarr-python reads them
        warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification")
        delayed = enc.to_zarr(store, mode="a" if append else "w-", compute=False, consolidated=False,
                              zarr_format=3)
        _compute(delayed, progress)


def _stored_names(store: PathLike) -> set[str]:
    p = Path(store)
    return {child.name for child in p.iterdir() if child.is_dir()} if p.is_dir() else set()


def _compute(delayed: Any, progress: bool) -> None:
    """Run a dask computation, with a progress bar over its chunks when asked."""
    from .._progress import compute_with_progress

    compute_with_progress(delayed, progress=progress)


def save_zarr(ds: xr.Dataset, path: PathLike, *, overwrite: bool = False, progress: bool = False) -> Path:
    """Write ``ds`` to a Zarr store that :func:`switchscope.io.load` reads back exactly (lazily).

    Written chunk by chunk (the dask chunks of ``ds``) into a temporary folder beside ``path``
    and renamed into place, so a failure never leaves a half-written store and never destroys
    an existing one. ``overwrite`` replaces only a store that switchscope wrote.
    """
    if not isinstance(ds, xr.Dataset):
        raise DataError(f"save_zarr needs an xarray.Dataset, got {type(ds).__name__}")
    path = Path(path)
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise OutputError(f"'{path}' already exists; pass overwrite=True (--force) to replace it")
        if not written_by_switchscope_zarr(path):
            raise OutputError(f"'{path}' was not written by switchscope, so it is not replaced; "
                              "choose another name")
    if not path.parent.is_dir():
        raise OutputError(f"folder '{path.parent}' does not exist; create it first")
    _sweep_dead(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        write_zarr(ds, tmp, progress=progress)
        consolidate(tmp)
        replace_store(tmp, path)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write '{path}' ({oneline(exc)}); check the folder's permissions "
                              "and free space") from None
        raise
    return path


def consolidate(store: PathLike) -> None:
    """One metadata file for the whole store (readers open it without listing every array)."""
    import warnings

    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr notes that consolidated metadata is not in the v3 spec yet
        zarr.consolidate_metadata(str(store))


def replace_store(tmp: Path, path: Path) -> None:
    """Move the finished store ``tmp`` to ``path``, setting an old store of ours aside first
    (a folder cannot be renamed over a non-empty one)."""
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
        os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        if old is not None:
            os.replace(old, path)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
