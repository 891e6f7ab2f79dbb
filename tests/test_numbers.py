"""parse_count: ASCII digits only, bounded before int() sees them."""

from __future__ import annotations

import pytest

from gatebot.numbers import SQLITE_MAX, parse_count


@pytest.mark.parametrize(
    ("text", "high", "expected"),
    [
        ("0", 10, 0),
        ("10", 10, 10),
        ("07", 10, 7),
        (str(SQLITE_MAX), SQLITE_MAX, SQLITE_MAX),
    ],
)
def test_plain_numbers(text: str, high: int, expected: int) -> None:
    assert parse_count(text, high=high) == expected


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "11",
        "-1",
        "+1",
        " 1",
        "1 ",
        "1\n",
        "²",
        "٣",
        "1.0",
        "0x1",
        "1_0",
        str(SQLITE_MAX + 1),
        "9" * 5000,
    ],
)
def test_anything_else_is_none(text: str | None) -> None:
    assert parse_count(text, high=10 if text in ("11",) else SQLITE_MAX) is None
