"""Readers and writers: :func:`load` any supported file by its content, :func:`save` results as
NetCDF (atomically), :func:`describe` a Dataset as text.

Formats read (detected from the bytes, never the suffix alone): MATLAB v5/v7 and v7.3 ``.mat``
with the paper's variable names, NumPy ``.npy``/``.npz`` with an explicit voltage and grid,
NetCDF written by :func:`save`, USID HDF5 (:mod:`.usid`), NSID HDF5 (:mod:`.nsid`) and Zarr stores
(:mod:`.zarr`, opened lazily as dask arrays; :func:`save_zarr` writes them chunk by chunk).
"""

from ._base import PAPER_KEYS, Reader
from ._load import READERS, find_reader, load
from .config import DataConfig, load_data, parse_grid, parse_voltage
from .describe import describe
from .matlab import MatV5Reader, MatV73Reader
from .netcdf import NetCDFReader, save
from .npy import NpyReader, NpzReader
from .nsid import NSIDReader
from .usid import USIDReader
from .zarr import ZarrReader, save_zarr
from ..paper import paper_voltage

__all__ = [
    "PAPER_KEYS",
    "READERS",
    "DataConfig",
    "MatV5Reader",
    "MatV73Reader",
    "NetCDFReader",
    "NpyReader",
    "NpzReader",
    "NSIDReader",
    "USIDReader",
    "ZarrReader",
    "Reader",
    "describe",
    "find_reader",
    "load",
    "load_data",
    "paper_voltage",
    "parse_grid",
    "parse_voltage",
    "save",
    "save_zarr",
]
