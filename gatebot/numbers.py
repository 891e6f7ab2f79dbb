"""Whole numbers from text a client sent: ASCII digits only, bounded before conversion.

`str.isdigit()` accepts "²" (which `int()` refuses) and other scripts' digits (which `int()`
takes); `int()` refuses strings over 4,300 digits; SQLite refuses values over 2**63 - 1. So
every number read from a URL, a query, a header or a body goes through `parse_count`, and a
caller answers None with its own 400, 404 or 422.
"""

from __future__ import annotations

SQLITE_MAX = 2**63 - 1  # the largest INTEGER SQLite stores


def parse_count(text: str | None, *, high: int = SQLITE_MAX) -> int | None:
    """The non-negative integer `text` spells in ASCII digits if it is at most `high`, else
    None. At most len(str(high)) digits are looked at, so any input costs the same."""
    if not text or len(text) > len(str(high)) or not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if value <= high else None
