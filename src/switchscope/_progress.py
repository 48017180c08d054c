"""Progress over the chunks of a dask computation, on whichever scheduler runs it."""

from __future__ import annotations

import sys
from typing import Any


def active_client() -> Any:
    """The ``dask.distributed`` client computations go to now, or None (local schedulers)."""
    import dask

    if dask.config.get("scheduler", None) not in (None, "dask.distributed", "distributed"):
        return None  # a local scheduler was asked for explicitly (e.g. to write one HDF5 file)
    try:
        from distributed import default_client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    try:
        return default_client()
    except ValueError:
        return None


def compute_with_progress(*objs: Any, progress: bool = False, desc: str = "chunks") -> tuple:
    """``dask.compute(*objs)``, with a bar over its tasks when ``progress``: tqdm's dask callback
    on the local schedulers, ``distributed.progress`` on a cluster."""
    import dask

    if not progress or not sys.stderr.isatty():  # bars redrawn in a log file are noise
        return dask.compute(*objs)
    client = active_client()
    if client is None:
        from tqdm.dask import TqdmCallback

        with TqdmCallback(desc=desc, file=sys.stderr, leave=False, mininterval=0.5):
            return dask.compute(*objs)
    from distributed import progress as distributed_progress

    futures = client.compute(list(objs))
    distributed_progress(futures, notebook=False)
    return tuple(client.gather(futures))
