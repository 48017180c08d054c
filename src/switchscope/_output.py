"""Output folders that never lose a user's file.

A run is built in a temporary folder beside its output (``.OUT.partial-PID``) and swapped into
place only when every stage has finished. Rules, all checked before any work:

- ``--force`` replaces only a folder that switchscope wrote: one that holds the marker file
  :data:`MARKER` (the run's id and the list of every file the run wrote) and nothing else. A
  folder with any other file, a folder that holds an input of the run, and the current folder
  (or one above it) are refused with one line.
- One run at a time per output: a lock file ``.OUT.lock`` beside it (``flock``, released by the
  kernel when the process dies, so it never goes stale).
- The final swap is two renames (old -> ``.OUT.old-PID``, new -> ``OUT``). A process killed
  between them leaves no ``OUT``; the next run into the same place restores the old results (or
  removes the old copy when the new ones made it). Partial folders of dead runs are removed there
  too; only folders that carry the marker are ever touched.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Iterable, Iterator

from ._errors import OutputError
from ._text import printable

#: The file in every folder switchscope writes (JSON: run id, state, files written).
MARKER = ".switchscope-run"
#: Global attribute of every NetCDF file switchscope writes (only such files are replaced).
WRITER_ATTR = "switchscope_writer"

_rename = os.replace  # one name for the swap's renames (the kill tests interrupt it)


def _q(path: Path | str) -> str:
    return repr(printable(str(path)))


def pid_alive(pid: int) -> bool:
    """True when a process ``pid`` exists (ours or another user's)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_marker(folder: Path) -> dict | None:
    """The marker of a folder switchscope wrote, or None."""
    try:
        data = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("run_id"), str):
        return None
    files = data.get("files", [])
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None  # not what switchscope writes: treated as no marker
    return data


def symlinks_in(folder: Path) -> list[str]:
    """Symbolic links below ``folder`` (relative paths): switchscope never writes through one."""
    out = []
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(root) / name
            if p.is_symlink():
                out.append(p.relative_to(folder).as_posix())
    return sorted(out)


def foreign_files(folder: Path) -> list[str]:
    """Files below a run folder that its marker does not list (the user's), and symbolic links."""
    marker = read_marker(folder)
    listed = set(marker.get("files") or []) if marker else set()
    return sorted((set(files_in(folder)) - listed) | set(symlinks_in(folder)))


def write_marker(folder: Path, *, run_id: str, state: str, files: Iterable[str] = ()) -> None:
    data = {"run_id": run_id, "state": state, "pid": os.getpid(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": sorted(files)}
    tmp = folder / f"{MARKER}.tmp"
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    _rename(tmp, folder / MARKER)


def files_in(folder: Path) -> list[str]:
    """Every file and link below ``folder`` (relative POSIX paths), the marker excluded."""
    out = []
    for root, dirs, files in os.walk(folder):
        rel = Path(root).relative_to(folder)
        for name in files + [d for d in dirs if (Path(root) / d).is_symlink()]:
            p = (rel / name).as_posix()
            if p != MARKER:
                out.append(p)
    return sorted(out)


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def check_output_place(out: str | Path, inputs: Iterable[str | Path | None] = ()) -> Path:
    """Refuse, with one line, an output place that no run may use (whatever is there now):
    the current folder or one above it, a folder holding an input, a path that is a file, a
    missing parent folder. Return ``out`` resolved."""
    out = Path(out)
    if str(out).strip() == "":
        raise OutputError("--out is empty; give the name of a new folder, e.g. --out scan-out")
    resolved = out.resolve()
    cwd = Path.cwd().resolve()
    if _is_within(cwd, resolved):
        raise OutputError(f"--out {_q(out)} is the current folder or one above it; give the name of a new "
                          "folder, e.g. --out scan-out")
    for item in inputs:
        if item is None:
            continue
        p = Path(item).resolve()
        if _is_within(p, resolved):
            raise OutputError(f"--out {_q(out)} holds the input {_q(item)}; write the results to another "
                              "folder, e.g. --out scan-out")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise OutputError(f"output path {_q(out)} exists and is not a folder; choose another --out")
    if not resolved.parent.is_dir():
        raise OutputError(f"the folder {_q(resolved.parent)} for --out does not exist; create it first")
    return resolved


def check_output_folder(out: str | Path, force: bool, inputs: Iterable[str | Path | None] = ()) -> Path:
    """Refuse, with one line, an output folder that may not be written now; return it resolved.

    Besides :func:`check_output_place`: an existing folder with files needs ``force``, and then
    must be one switchscope wrote (its marker lists every file in it).
    """
    resolved = check_output_place(out, inputs)
    out = Path(out)
    if out.exists():
        try:
            entries = list(out.iterdir())
        except OSError as exc:
            raise OutputError(f"cannot read the output folder {_q(out)} ({exc.strerror}); "
                              "check its permissions") from None
        if entries:
            if not force:
                raise OutputError(f"output folder {_q(out)} already exists; pass --force to replace it, "
                                  "or choose another --out")
            marker = read_marker(out)
            if marker is None:
                raise OutputError(f"--force replaces only a folder written by switchscope, and {_q(out)} "
                                  f"has no {MARKER} file; choose another --out (your files there are kept)")
            extra = foreign_files(out)
            if extra:
                more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
                raise OutputError(f"--force would delete {_q(extra[0])}{more} in {_q(out)}, which switchscope "
                                  "did not write; move it away or choose another --out")
    return resolved


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold the lock of output ``out`` (a second run into it refuses at once).

    The lock is ``flock`` on ``.OUT.lock`` beside ``out``: the kernel releases it when the process
    dies, so it never goes stale. The file is removed on exit; a run that opened it just before
    then finds it unlinked (another inode than the path's) and takes a fresh one.
    """
    import fcntl

    lock = out.parent / f".{out.name}.lock"
    for _ in range(5):
        try:
            fd = _open_lock(lock)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise OutputError(f"the lock file {_q(lock)} is a symbolic link; remove it (switchscope does "
                                  "not write through links)") from None
            raise OutputError(f"cannot create the lock file {_q(lock)} ({exc.strerror}); check that the "
                              "folder is writable") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputError(f"another switchscope run is writing {_q(out)} now; wait for it to "
                                  "finish or choose another --out") from None
            raise
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    else:
        raise OutputError(f"could not lock {_q(out)}; another run keeps replacing its lock file, try again")
    try:
        os.ftruncate(fd, 0)  # ours (see _open_lock): an empty file or a PID
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)  # closing releases the lock


def _open_lock(lock: Path) -> int:
    """Open (or create) a lock file switchscope owns: never through a symbolic link, and never a
    file with other content than a PID (a user's file of that name is refused, not emptied)."""
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(lock, flags, 0o644)
    try:
        st = os.fstat(fd)
        import stat as _stat

        content = os.pread(fd, 64, 0) if _stat.S_ISREG(st.st_mode) and st.st_size <= 64 else b"x" * 65
        if not _stat.S_ISREG(st.st_mode) or not (content == b"" or content.strip().isdigit()):
            raise OutputError(f"{_q(lock)} exists and was not written by switchscope; move it away (it is "
                              "the name of the lock of this --out)")
    except BaseException:
        os.close(fd)
        raise
    return fd


_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>partial|old)-(?P<pid>\d+)$")


def recover(out: Path, log=None) -> list[str]:
    """Tidy what dead runs left beside ``out`` (call with the lock held); return what was done.

    An ``.OUT.old-PID`` of a dead run is restored when ``OUT`` is missing (a run killed between
    the swap's two renames) and removed otherwise; an ``.OUT.partial-PID`` of a dead run is
    removed. Only folders that carry the marker are touched.
    """
    done: list[str] = []
    try:
        siblings = sorted(out.parent.iterdir())
    except OSError:
        return done
    olds, partials = [], []
    for p in siblings:
        m = _LEFTOVER.match(p.name)
        if not m or m["name"] != out.name or not p.is_dir() or p.is_symlink():
            continue
        if pid_alive(int(m["pid"])) or read_marker(p) is None:
            continue
        (olds if m["kind"] == "old" else partials).append(p)
    for p in olds:
        if not out.exists():
            _rename(p, out)
            done.append(f"restored the earlier results of {_q(out)} that an interrupted run had set aside")
        else:
            shutil.rmtree(p, ignore_errors=True)
            done.append(f"removed {_q(p.name)}, left by an interrupted run")
    for p in partials:
        shutil.rmtree(p, ignore_errors=True)
        done.append(f"removed {_q(p.name)}, the unfinished folder of an interrupted run")
    for line in done:
        (log or (lambda m: print(f"switchscope: note: {m}", file=sys.stderr)))(line)
    return done


def begin(out: Path) -> tuple[Path, str]:
    """Create the run's temporary folder beside ``out``; return it and the run's id."""
    run_id = uuid.uuid4().hex
    work = out.parent / f".{out.name}.partial-{os.getpid()}"
    if work.exists():  # ours, from an earlier run in this same process
        if read_marker(work) is None:
            raise OutputError(f"{_q(work)} exists and was not written by switchscope; move it away")
        shutil.rmtree(work)
    work.mkdir()
    write_marker(work, run_id=run_id, state="partial")
    return work, run_id


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM wait while the swap runs and are delivered right after it.

    Python runs signal handlers in the main thread whichever thread the signal reached, so the
    handlers are swapped for ones that only record the signal (``pthread_sigmask`` would block it
    for the calling thread only). Outside the main thread nothing can be swapped; the swap then
    relies on :func:`commit`'s roll-back."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    sigs = (signal.SIGINT, signal.SIGTERM)
    old = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in sigs}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        for s in caught:
            handler = old[s]
            if callable(handler):
                handler(s, None)
            elif handler == signal.SIG_DFL and s == signal.SIGINT:
                raise KeyboardInterrupt


class OutputChanged(OutputError):
    """Files appeared in the output folder during the run; the new results are kept aside."""


def commit(work: Path, out: Path, run_id: str, *, force: bool = False) -> None:
    """Mark ``work`` complete (with the list of its files) and swap it into place at ``out``.

    What is at ``out`` now is checked again after it is set aside: a file that appeared there
    during the run (and that switchscope did not write) puts everything back and keeps the new
    results in ``work``, with a one-line error (:class:`OutputChanged`).
    """
    write_marker(work, run_id=run_id, state="complete", files=files_in(work))
    with _signals_deferred():
        backup = None
        if out.exists() or out.is_symlink():
            backup = out.parent / f".{out.name}.old-{os.getpid()}"
            _rename(out, backup)
            entries = list(backup.iterdir()) if backup.is_dir() and not backup.is_symlink() else [backup]
            ours = backup.is_dir() and not backup.is_symlink() and read_marker(backup) is not None
            if entries and not (force and ours and not foreign_files(backup)):
                _rename(backup, out)
                raise OutputChanged(
                    f"{_q(out)} changed during the run and holds files switchscope did not write; nothing "
                    f"there was touched, and the new results are in {_q(work)}: move them before the next run")
        try:
            _rename(work, out)
        except BaseException:
            if backup is not None:
                _rename(backup, out)
            raise
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)


def discard(work: Path) -> None:
    """Remove the temporary folder of a failed run (only if it is ours)."""
    if work.exists() and read_marker(work) is not None:
        shutil.rmtree(work, ignore_errors=True)


# -- single output files ----------------------------------------------------------------------

def written_by_switchscope(path: str | Path) -> bool:
    """True when ``path`` is a NetCDF file that switchscope wrote (it carries :data:`WRITER_ATTR`)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(1024)
    except OSError:
        return False
    if not any(head[o:o + 8] == b"\x89HDF\r\n\x1a\n" for o in (0, 512)):
        return False
    import h5py

    try:
        with h5py.File(path, "r") as f:
            mark = f.attrs.get(WRITER_ATTR)
    except Exception:  # noqa: BLE001 - unreadable: not ours
        return False
    if isinstance(mark, bytes):
        mark = mark.decode("utf-8", "replace")
    return isinstance(mark, str) and mark.startswith("switchscope")


def check_output_file(path: str | Path, force: bool, inputs: Iterable[str | Path | None] = ()) -> Path:
    """Refuse, with one line, an output file that may not be written."""
    path = Path(path)
    for item in inputs:
        if item is not None and Path(item).exists() and path.exists() and Path(item).resolve() == path.resolve():
            raise OutputError(f"--out {_q(path)} is the input file; write to another file")
    if path.is_dir():
        raise OutputError(f"--out {_q(path)} is a folder; give a file name such as {_q(path / 'results.nc')}")
    if not path.resolve().parent.is_dir():
        raise OutputError(f"the folder of {_q(path)} does not exist; create it first")
    if path.exists() or path.is_symlink():
        if not force:
            raise OutputError(f"output file {_q(path)} already exists; pass --force to replace it")
        if path.is_symlink() or not path.is_file() or not written_by_switchscope(path):
            raise OutputError(f"--force replaces only a file written by switchscope, and {_q(path)} is not "
                              "one; choose another --out (your file is kept)")
    return path
