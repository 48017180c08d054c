"""Damaged files of every format: truncated, bit-flipped, header-edited. Property: `switchscope
info` ends in success or in exit code 2 with one line on stderr, never a traceback, never a
hang (each case under an alarm) and never a large allocation (peak RSS bounded)."""

from __future__ import annotations

import functools
import os
import resource
import signal
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from switchscope.cli import main
from switchscope.io import save
from switchscope.io._load import UNEXPECTED_READ_ERROR
from switchscope.synthetic import make_dataset

SECONDS_PER_CASE = 20
RSS_GROWTH_LIMIT_MB = 1500
# The suite runs a fixed, reproducible set of cases; a deeper random search:
#   SWITCHSCOPE_FUZZ_EXAMPLES=2000 python -m pytest tests/test_fuzz_readers.py
_DEEP = int(os.environ.get("SWITCHSCOPE_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=_DEEP or 60, deadline=None, derandomize=not _DEEP, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _small():
    ds = make_dataset(rows=4, cols=3, seed=2, artifacts=False)
    return ds["piezoresponse"].values, ds["resonance"].values, ds["voltage"].values


def write_mat5(path: Path, compress: bool) -> None:
    loops, res, v = _small()
    scipy.io.savemat(path, {"Loopdata_mixed": loops, "Outw2_mixed": res, "Voltagedata_mixed": v[:, None]},
                     do_compression=compress)


def write_mat73(path: Path) -> None:
    loops, _, v = _small()
    tmp = path.with_suffix(".h5")
    with h5py.File(tmp, "w", userblock_size=512) as f:
        for name, arr in (("Loopdata_mixed", loops), ("Voltagedata_mixed", v[:, None])):
            d = f.create_dataset(name, data=np.ascontiguousarray(arr.T))  # MATLAB is column-major
            d.attrs["MATLAB_class"] = np.bytes_(b"double")
    body = tmp.read_bytes()
    tmp.unlink()
    path.write_bytes(b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(128, b" ") + body[128:])


def write_npy(path: Path) -> None:
    np.save(path, _small()[0])


def write_npz(path: Path) -> None:
    loops, res, v = _small()
    np.savez(path, piezoresponse=loops, resonance=res, voltage=v)


def write_netcdf(path: Path) -> None:
    save(make_dataset(rows=3, cols=3, seed=4), path)


def write_usid(path: Path) -> None:
    from switchscope.io.usid_write import make_usid_example

    make_usid_example(path, rows=3, cols=3, n_steps=16, n_fields=2, n_cycles=2, n_freq=4, spectra=True)


def write_nsid(path: Path) -> None:
    from test_nsid import _file  # the NSID layout written with plain h5py

    built = _file(path.parent)
    os.replace(built, path)


WRITERS = {
    "mat5.mat": lambda p: write_mat5(p, compress=False),
    "mat5z.mat": lambda p: write_mat5(p, compress=True),
    "mat73.mat": write_mat73,
    "loops.npy": write_npy,
    "loops.npz": write_npz,
    "results.nc": write_netcdf,
    "usid.h5": write_usid,
    "nsid.h5": write_nsid,
}


@functools.cache
def seed_bytes(name: str) -> bytes:
    """The intact file of format ``name`` (made once; not a fixture, so that hypothesis does not
    print its bytes with every failing example)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        WRITERS[name](path)
        return path.read_bytes()


def check_info(path: Path, capsys, *extra: str) -> None:
    def alarm(signum, frame):
        raise TimeoutError(f"`switchscope info` on {path.name} ran past {SECONDS_PER_CASE} s")

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(SECONDS_PER_CASE)
    try:
        code = main(["info", str(path), *extra])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    err = capsys.readouterr().err
    assert grown_mb < RSS_GROWTH_LIMIT_MB, f"peak memory grew by {grown_mb:.0f} MB"
    assert "Traceback" not in err
    if code != 0:
        lines = [ln for ln in err.strip().splitlines() if not ln.startswith("switchscope: warning:")]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("switchscope: error:"), (code, err)
        # every damage a reader meets should have its own message, not the catch-all one
        assert UNEXPECTED_READ_ERROR not in err, err


def test_seed_files_load(tmp_path, capsys):
    for name in WRITERS:
        p = tmp_path / name
        p.write_bytes(seed_bytes(name))
        extra = ("--voltage", "paper") if name.endswith(".npy") else ()
        assert main(["info", str(p), *extra]) == 0, capsys.readouterr().err


def _mutate(data: bytes, kind: str, where: float, value: int, span: int) -> bytes:
    pos = min(int(where * len(data)), len(data) - 1)
    if kind == "truncate":
        return data[:pos]
    b = bytearray(data)
    if kind == "flip":
        for k in range(span):
            i = (pos + 37 * k) % len(b)
            b[i] ^= 1 << ((value + k) % 8)
        return bytes(b)
    if kind == "header":  # rewrite bytes of the first KiB, where every format keeps its header
        start = int(where * min(len(b), 1024))
        for k in range(span):
            if start + k < len(b):
                b[start + k] = (value * (k + 1) * 131) % 256
        return bytes(b)
    if kind == "max":  # sizes and counts set to their largest value
        for k in range(min(span, 8)):
            if pos + k < len(b):
                b[pos + k] = 0xFF if value % 2 else 0x7F
        return bytes(b)
    raise AssertionError(kind)


MUTATION = st.tuples(st.sampled_from(["truncate", "flip", "header", "max"]), st.floats(0, 1),
                     st.integers(0, 255), st.integers(1, 16))


@pytest.mark.parametrize("name", list(WRITERS))
@FUZZ
@given(mutation=MUTATION)
def test_damaged_file_is_one_line_or_success(tmp_path, capsys, name, mutation):
    p = tmp_path / name
    p.write_bytes(_mutate(seed_bytes(name), *mutation))
    extra = ("--voltage", "paper") if name.endswith(".npy") else ()
    check_info(p, capsys, *extra)


@FUZZ
@given(mutation=MUTATION)
def test_damaged_real_mat(tmp_path, capsys, mutation):
    from conftest import MAT

    if not MAT.exists():
        pytest.skip(f"real data not found at {MAT}")
    data = MAT.read_bytes()
    p = tmp_path / "real.mat"
    p.write_bytes(_mutate(data, *mutation))
    check_info(p, capsys)


def test_data_files_that_are_not_regular(tmp_path, capsys):
    fifo = tmp_path / "v.fifo"
    os.mkfifo(fifo)
    for target in (fifo, Path("/dev/zero")):
        check_info(target, capsys)
