"""Naming the stage a deployment was cut short in, and the known causes of an unexpected
error, without Docker."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import pytest

from gatebot.errors import describe
from gatebot.pipeline.journal import last_stage

pytestmark = pytest.mark.faults


def test_the_running_stage_is_the_last_line_of_the_log(tmp_path: Path) -> None:
    log = tmp_path / "7.log"
    log.write_text(
        "2026-01-01T00:00:00Z [run] started\n"
        "2026-01-01T00:00:01Z [run] started gatebot-shop-green (green) on port 9001\n"
        "2026-01-01T00:00:01Z [health] started\n"
    )
    assert last_stage(log) == "health"
    with log.open("a") as fh:
        fh.write("2026-01-01T00:00:02Z [health] GET /health -> 503 [x]\n")
    assert last_stage(log) == "health"
    assert last_stage(tmp_path / "missing.log") is None


def test_known_causes_are_named() -> None:
    locked = describe(sqlite3.OperationalError("database is locked"))
    assert locked == "database error: database is locked"
    full = describe(OSError(errno.ENOSPC, "No space left on device", "/srv/conf/shop.conf"))
    assert full == "No space left on device [ENOSPC] (/srv/conf/shop.conf)"
    assert describe(ValueError("x")) == "internal error: ValueError: x"
