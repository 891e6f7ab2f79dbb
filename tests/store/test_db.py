"""The database's files at rest (a private folder, files only gatebot's user can read), and
where a batch of writes runs (write_batch)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import threading
from pathlib import Path

import pytest

from gatebot.store import Store


async def test_the_data_dir_is_private_and_the_database_0600(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    (data_dir / "gatebot.db").touch(mode=0o644)  # as an older gatebot left them
    data_dir.chmod(0o755)
    (data_dir / "gatebot.db").chmod(0o644)
    store = await Store.open(data_dir / "gatebot.db")
    try:
        await store.tokens.create("ci", "read")  # writes: the WAL files appear
        for path in [data_dir, *data_dir.iterdir()]:
            expected = 0o700 if path.is_dir() else 0o600
            assert path.stat().st_mode & 0o777 == expected, path
    finally:
        await store.close()


async def test_a_batch_commits_on_the_event_loop_when_no_other_writer_holds_the_lock(
    tmp_path: Path,
) -> None:
    store = await Store.open(tmp_path / "g.db")
    try:
        ran_on = await store.db.write_batch(lambda conn: _insert_token(conn, "a"))
        assert ran_on == threading.get_ident()  # the loop's thread: no hand-off
        assert _committed_tokens(tmp_path / "g.db") == ["a"]
    finally:
        await store.close()


@pytest.mark.parametrize("holder", ["sqlite", "flock"])
async def test_a_batch_waits_on_its_thread_while_another_writer_holds_the_lock(
    tmp_path: Path, holder: str
) -> None:
    """Another connection's write transaction (SQLite's lock) or another process's batch (the
    writers' flock): the batch waits for it on the write thread, while the loop goes on, and
    commits once it is released."""
    store = await Store.open(tmp_path / "g.db")
    other = sqlite3.connect(tmp_path / "g.db", isolation_level=None)
    turns = os.open(tmp_path / "g.db-writers", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if holder == "sqlite":
            other.execute("BEGIN IMMEDIATE")
        else:
            fcntl.flock(turns, fcntl.LOCK_EX)
        batch = asyncio.ensure_future(store.db.write_batch(lambda conn: _insert_token(conn, "b")))
        ticks = 0
        for _ in range(20):  # the loop keeps running while the batch waits
            await asyncio.sleep(0.01)
            ticks += 1
        assert ticks == 20 and not batch.done()
        if holder == "sqlite":
            other.execute("COMMIT")
        else:
            fcntl.flock(turns, fcntl.LOCK_UN)
        ran_on = await asyncio.wait_for(batch, 10)
        assert ran_on != threading.get_ident()
        assert _committed_tokens(tmp_path / "g.db") == ["b"]
    finally:
        os.close(turns)
        other.close()
        await store.close()


def _insert_token(conn: sqlite3.Connection, name: str) -> int:
    conn.execute(
        "INSERT INTO tokens (name, lookup, hash, scope, created_at) VALUES (?, ?, ?, 'read', ?)",
        (name, name, name, "2026-01-01T00:00:00"),
    )
    return threading.get_ident()


def _committed_tokens(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:  # a connection of its own: only what was committed
        return [name for (name,) in conn.execute("SELECT name FROM tokens ORDER BY id")]
