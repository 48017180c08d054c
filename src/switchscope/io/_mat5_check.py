"""A structural check of MATLAB v5 files before :func:`scipy.io.loadmat` reads them.

``scipy.io.loadmat`` trusts the sizes and flags a file declares; some damaged files crash the
Python process (a segmentation fault, seen with a numeric variable whose "complex" flag is set
but which has no imaginary part). This module walks the file's element tags as the MAT-file
format documents them (MathWorks, "MAT-File Format", version 5: 128-byte header, then data
elements of an 8-byte tag ``(type, nbytes)`` or a 4-byte "small element" tag, ``miMATRIX``
elements holding array flags, dimensions, name and real/imaginary parts, ``miCOMPRESSED``
elements holding a zlib stream of one ``miMATRIX``) and refuses, with one line, every
inconsistency it finds: sizes beyond the file or the compressed stream, missing parts, part
sizes that disagree with the dimensions. Data are streamed, never held whole.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

from .._errors import FormatError

MI_MATRIX, MI_COMPRESSED = 14, 15
#: Bytes per value of each data type (miINT8 ... miUTF32).
_SIZES = {1: 1, 2: 1, 3: 2, 4: 2, 5: 4, 6: 4, 7: 4, 9: 8, 12: 8, 13: 8, 16: 1, 17: 2, 18: 4}
_NUMERIC_CLASSES = set(range(6, 16))  # mxDOUBLE ... mxUINT64
_COMPLEX_FLAG = 0x800
_CHUNK = 1 << 20


class _Damaged(Exception):
    """The structure does not hold together (turned into a FormatError naming the file)."""


class _FileStream:
    def __init__(self, fh: BinaryIO, start: int, length: int):
        self.fh, self.pos, self.end = fh, start, start + length

    def read(self, n: int) -> bytes:
        if self.pos + n > self.end:
            raise _Damaged(f"an element declares {n} bytes where {self.end - self.pos} remain")
        self.fh.seek(self.pos)
        data = self.fh.read(n)
        if len(data) != n:
            raise _Damaged("the file ends inside an element")
        self.pos += n
        return data

    def skip(self, n: int) -> None:
        if self.pos + n > self.end:
            raise _Damaged(f"an element declares {n} bytes where {self.end - self.pos} remain")
        self.pos += n

    @property
    def left(self) -> int:
        return self.end - self.pos


class _ZlibStream:
    """The decompressed bytes of a compressed element, read forward in bounded chunks."""

    def __init__(self, fh: BinaryIO, start: int, length: int):
        self.fh, self.src, self.src_end = fh, start, start + length
        self.z = zlib.decompressobj()
        self.buf = b""

    def _fill(self, n: int) -> None:
        while len(self.buf) < n:
            if self.z.unconsumed_tail:
                data = self.z.unconsumed_tail
            else:
                if self.src >= self.src_end:
                    raise _Damaged("a compressed element ends before the data it declares")
                self.fh.seek(self.src)
                data = self.fh.read(min(_CHUNK, self.src_end - self.src))
                if not data:
                    raise _Damaged("the file ends inside a compressed element")
                self.src += len(data)
            try:
                self.buf += self.z.decompress(data, max(n - len(self.buf), _CHUNK))
            except zlib.error as exc:
                raise _Damaged(f"a compressed element is corrupt ({exc})") from None
            if self.z.eof and len(self.buf) < n:
                raise _Damaged("a compressed element ends before the data it declares")

    def read(self, n: int) -> bytes:
        self._fill(n)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def skip(self, n: int) -> None:
        while n > 0:
            step = min(n, _CHUNK)
            self.read(step)
            n -= step


def _tag(stream, e: str) -> tuple[int, int, bytes | None]:
    """``(type, nbytes, small data or None)`` of the next element."""
    head = stream.read(8)
    first, second = struct.unpack(e + "II", head)
    if first >> 16:  # a small element: type and size in one word, data in the next
        n, mtype = first >> 16, first & 0xFFFF
        if n > 4:
            raise _Damaged(f"a small element declares {n} bytes (at most 4)")
        return mtype, n, head[4:4 + n]
    return first, second, None


def _payload(stream, e: str, want: int | None = None) -> tuple[int, int, bytes | None]:
    mtype, n, small = _tag(stream, e)
    if mtype not in _SIZES:
        raise _Damaged(f"an element has the unknown data type {mtype}")
    if want is not None and mtype != want:
        raise _Damaged(f"an array header element has data type {mtype}, not {want}")
    if n % _SIZES[mtype]:
        raise _Damaged(f"an element of {n} bytes does not hold whole values of {_SIZES[mtype]} bytes")
    return mtype, n, small


def _data(stream, e: str, n: int, small: bytes | None, keep: bool) -> bytes:
    if small is not None:
        return small
    padded = n + (-n % 8)
    if keep:
        data = stream.read(padded)
        return data[:n]
    stream.skip(padded)
    return b""


def _check_matrix(stream, e: str, budget: int) -> None:
    _, n, small = _payload(stream, e, want=6)  # array flags: miUINT32
    flags = _data(stream, e, n, small, keep=True)
    if len(flags) < 8:
        raise _Damaged("an array's flags element is too short")
    word = struct.unpack(e + "I", flags[:4])[0]
    cls, is_complex = word & 0xFF, bool(word & _COMPLEX_FLAG)
    _, n, small = _payload(stream, e, want=5)  # dimensions: miINT32
    dims_raw = _data(stream, e, n, small, keep=True)
    dims = struct.unpack(e + f"{len(dims_raw) // 4}i", dims_raw)
    if len(dims) < 2 or any(d < 0 for d in dims):
        raise _Damaged(f"an array declares dimensions {dims}")
    _, n, small = _payload(stream, e, want=1)  # name: miINT8
    _data(stream, e, n, small, keep=False)
    if cls not in _NUMERIC_CLASSES:
        return  # cells, structs, chars, sparse: scipy checks these (switchscope reads numbers only)
    count = 1
    for d in dims:
        count *= d
    if 8 * count > budget:
        return  # left to the size check, which says how much memory it would take
    for part in ("real", "imaginary") if is_complex else ("real",):
        mtype, n, small = _payload(stream, e)
        if n // _SIZES[mtype] != count:
            raise _Damaged(f"the {part} part of an array of {count} values holds {n // _SIZES[mtype]}")
        _data(stream, e, n, small, keep=False)


def check_mat5(path: str | os.PathLike, budget: int) -> None:
    """Refuse (one line) a MATLAB v5 file whose element structure does not hold together.

    ``budget``: arrays larger than this many bytes (as float64) are not streamed through here;
    the size check refuses them with the memory they would need.
    """
    fname = Path(path).name
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(128)
            if len(head) < 128:
                raise _Damaged("the 128-byte header is cut short")
            e = {b"IM": "<", b"MI": ">"}.get(head[126:128])
            if e is None:
                raise _Damaged("the header's byte-order mark is neither IM nor MI")
            pos = 128
            while size - pos >= 8:
                fh.seek(pos)
                mtype, n = struct.unpack(e + "II", fh.read(8))
                if pos + 8 + n > size:
                    raise _Damaged(f"the element at byte {pos} declares {n} bytes but the file ends "
                                   f"{size - pos - 8} bytes later")
                if mtype == MI_MATRIX:
                    _check_matrix(_FileStream(fh, pos + 8, n), e, budget)
                elif mtype == MI_COMPRESSED:
                    z = _ZlibStream(fh, pos + 8, n)
                    inner, inner_n, _ = _tag(z, e)
                    if inner != MI_MATRIX:
                        raise _Damaged(f"a compressed element holds data type {inner}, not a matrix")
                    _check_matrix(_LimitedStream(z, inner_n), e, budget)
                pos += 8 + n
    except _Damaged as exc:
        raise FormatError(f"'{fname}' is a truncated or damaged MATLAB v5 file ({exc}); copy or export it again") from None
    except (OSError, struct.error) as exc:
        raise FormatError(f"'{fname}' is a truncated or damaged MATLAB v5 file ({exc}); copy or export it again") from None


class _LimitedStream:
    """A stream that refuses to read past ``length`` bytes (an element's declared size)."""

    def __init__(self, inner, length: int):
        self.inner, self.left = inner, length

    def read(self, n: int) -> bytes:
        if n > self.left:
            raise _Damaged(f"an element declares {n} bytes where {self.left} remain")
        self.left -= n
        return self.inner.read(n)

    def skip(self, n: int) -> None:
        if n > self.left:
            raise _Damaged(f"an element declares {n} bytes where {self.left} remain")
        self.left -= n
        self.inner.skip(n)
