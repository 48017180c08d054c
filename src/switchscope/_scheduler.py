"""Where the chunked stages run: in this process, on a local dask cluster, or on the user's.

``--scheduler`` (TOML ``[run] scheduler``) takes

* nothing (default): in this process; data opened lazily (a Zarr store) is processed chunk by
  chunk with dask's threaded scheduler;
* ``local:N``: a :class:`distributed.LocalCluster` of N worker processes, one thread each, started
  for the run and closed after it;
* ``tcp://HOST:PORT``: the ``dask.distributed`` scheduler the user runs (``dask scheduler`` and
  ``dask worker``); its workers need switchscope installed.

The spec is checked, and a ``tcp://`` address reached, before any work starts; a bad one is a
one-line :class:`~switchscope.ConfigError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import socket
from typing import Any, Iterator

from ._config import StageConfig, register
from ._errors import ConfigError
from ._text import printable

#: Most local worker processes (a guard against typos such as local:200).
MAX_LOCAL_WORKERS = 256
#: Seconds to wait for a tcp:// scheduler to answer before giving up.
CONNECT_TIMEOUT_S = 5.0
#: Pixels per chunk of the chunked stages (about 25 MB per chunk of 96-step float64 loops with
#: their fits; raw spectra are chunked by the same pixels, all their steps and bins).
DEFAULT_CHUNK_PIXELS = 16384

_TCP = re.compile(r"^tcp://(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-_]+):(?P<port>\d{1,5})$")
_LOCAL = re.compile(r"^local:(?P<n>\d+)$")


@dataclasses.dataclass(frozen=True)
class SchedulerSpec:
    """A parsed ``--scheduler``: ``kind`` is ``"process"``, ``"local"`` or ``"tcp"``."""

    kind: str
    n_workers: int = 0
    address: str = ""

    def __str__(self) -> str:
        return {"process": "in-process", "local": f"local:{self.n_workers}"}.get(self.kind, self.address)

    @property
    def distributed(self) -> bool:
        return self.kind != "process"


def parse_scheduler(spec: Any) -> SchedulerSpec:
    """``None`` -> in-process; ``"local:N"`` -> N local worker processes; ``"tcp://HOST:PORT"``
    -> an existing cluster. Anything else is a :class:`ConfigError` naming the forms."""
    if spec is None or (isinstance(spec, str) and spec.strip() in ("", "none", "in-process")):
        return SchedulerSpec("process")
    forms = "local:N (N worker processes) or tcp://HOST:PORT (a running dask scheduler)"
    if not isinstance(spec, str):
        raise ConfigError(f"scheduler must be {forms}, got {printable(repr(spec), 60)}")
    text = spec.strip()
    m = _LOCAL.match(text)
    if m:
        n = int(m["n"])
        if not 1 <= n <= MAX_LOCAL_WORKERS:
            raise ConfigError(f"scheduler local:N needs N from 1 to {MAX_LOCAL_WORKERS}, got {printable(text, 40)}")
        return SchedulerSpec("local", n_workers=n)
    m = _TCP.match(text)
    if m:
        port = int(m["port"])
        if not 1 <= port <= 65535:
            raise ConfigError(f"scheduler {printable(text, 60)}: port must be from 1 to 65535")
        return SchedulerSpec("tcp", address=text)
    raise ConfigError(f"scheduler must be {forms}, got {printable(repr(text), 60)}")


def check_reachable(spec: SchedulerSpec, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """For ``tcp://``: refuse, in one line, an address where no scheduler listens (before work)."""
    if spec.kind != "tcp":
        return
    host, _, port = spec.address[len("tcp://"):].rpartition(":")
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ConfigError(f"no dask scheduler answers at {printable(spec.address, 60)} ({exc.strerror or exc}); "
                          "start one (`dask scheduler` and `dask worker ADDRESS`) or use --scheduler local:N") from None


def _one_thread() -> None:
    """Worker setup: the kernels on one thread (the cluster's processes are the parallelism:
    ``OMP_NUM_THREADS``, which :func:`switchscope._device.cpu_threads` and a torch loaded later
    read, and torch's setting if it is loaded already), and the per-chunk warnings silenced (the
    stages warn once from the totals)."""
    import os
    import sys

    from .chunked import quiet_chunks

    os.environ["OMP_NUM_THREADS"] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    quiet_chunks()


@contextlib.contextmanager
def scheduler(spec: SchedulerSpec | str | None, *, log=None) -> Iterator[Any]:
    """Context in which dask computations run where ``spec`` says; yields the
    :class:`distributed.Client` (None in-process). A local cluster is closed on exit; a
    ``tcp://`` cluster is left running (only the connection is closed)."""
    if not isinstance(spec, SchedulerSpec):
        spec = parse_scheduler(spec)
    if not spec.distributed:
        yield None
        return
    check_reachable(spec)
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set({"logging.distributed": "error"}):
        if spec.kind == "local":
            cluster = LocalCluster(n_workers=spec.n_workers, threads_per_worker=1, processes=True,
                                   dashboard_address=None, silence_logs=50)
            try:
                with Client(cluster) as client:
                    client.run(_one_thread)
                    if log:
                        log(f"dask: local cluster of {spec.n_workers} worker process(es)")
                    yield client
            finally:
                cluster.close()
        else:
            try:
                client = Client(spec.address, timeout=f"{int(CONNECT_TIMEOUT_S)}s")
            except (OSError, TimeoutError) as exc:
                raise ConfigError(f"cannot connect to the dask scheduler at {printable(spec.address, 60)} "
                                  f"({printable(str(exc), 80)}); check the address") from None
            with client:
                if log:
                    n = len(client.scheduler_info().get("workers", {}))
                    log(f"dask: cluster at {spec.address} with {n} worker(s)")
                yield client


@register("run")
@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig(StageConfig):
    """Options of the run itself (TOML ``[run]``).

    Attributes
    ----------
    scheduler : str or None
        Where the chunked stages run: None (in this process), ``"local:N"`` or
        ``"tcp://HOST:PORT"`` (see :mod:`switchscope._scheduler`).
    chunk_pixels : int
        Pixels per chunk of the chunked stages.
    format : {"netcdf", "zarr"}
        Format of ``OUT/results``: ``results.nc`` or ``results.zarr`` (large scans).
    """

    scheduler: str | None = None
    chunk_pixels: int = DEFAULT_CHUNK_PIXELS
    format: str = "netcdf"

    def validate(self) -> None:
        try:
            parse_scheduler(self.scheduler)
        except ConfigError as exc:
            raise ConfigError(f"[run] {exc}") from None
        self.check_number("chunk_pixels", lo=1, hi=100_000_000, integer=True)
        self.check_choice("format", ("netcdf", "zarr"))
