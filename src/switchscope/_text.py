"""Text from data files made safe for a terminal: one line, no control characters."""

from __future__ import annotations

import unicodedata

# bidirectional overrides and isolates can make a terminal show text in another order
_BIDI = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")


def _escape(ch: str) -> str:
    code = ord(ch)
    if ch == "\n":
        return "\\n"
    if ch == "\r":
        return "\\r"
    if ch == "\t":
        return "\\t"
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def printable(text: object, limit: int | None = None) -> str:
    """``text`` with every control character (ANSI escapes, newlines, bidi overrides) written as
    a visible escape such as ``\\x1b`` or ``\\n``, optionally cut to ``limit`` characters."""
    s = str(text)
    if s.isprintable() and not (_BIDI & set(s)):
        out = s
    else:
        out = "".join(
            _escape(ch) if (unicodedata.category(ch) in ("Cc", "Zl", "Zp") or ch in _BIDI) else ch
            for ch in s
        )
    if limit is not None and len(out) > limit:
        out = out[: max(limit - 3, 0)] + "..."
    return out
