"""Small pieces of user-facing text shared by every layer: sizes, shapes, suggestions.

One formatter each, so a shape reads ``[6,3]`` in the plan and in an error alike.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence


def human_bytes(n: float) -> str:
    """``1536`` -> ``1.5 KiB``; also rates (floats)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def shape_text(shape: Sequence[int]) -> str:
    """``(6, 3)`` -> ``[6,3]``, as the plan prints shapes."""
    return "[" + ",".join(str(d) for d in shape) + "]"


def did_you_mean(word: object, choices: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for a name close to one of ``choices``, else ``''``."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def closest(word: str, choices: Sequence[str], n: int = 3) -> str:
    """`` (closest: a, b)`` for a key that is not there: several candidates, looser match."""
    close = difflib.get_close_matches(word, list(choices), n=n, cutoff=0.5)
    return f" (closest: {', '.join(close)})" if close else ""


def printable(text: str) -> str:
    """``text`` with what could change the structure of a line escaped: control
    characters (newline, ESC of ANSI/OSC sequences), format and bidi controls, line
    separators and lone surrogates, as ``\\n``, ``\\x1b``, ``\\u202e``. Keys and names
    from files are shown through this wherever they are printed; ordinary text is
    returned as it is (the same object)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else _escape(c) for c in text)


def _escape(c: str) -> str:
    escaped = c.encode("unicode_escape", "backslashreplace").decode("ascii")
    if escaped.startswith("\\") and len(escaped) > 1:
        return escaped
    return f"\\u{ord(c):04x}"
