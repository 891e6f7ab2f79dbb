"""The SQLite connection: WAL mode, versioned migrations at open, serialized transactions.

The database's folder (the data_dir) is made 0700 and the database 0600 at open, an existing
one included (SQLite gives its -wal and -shm files the database's mode): the rows hold commit
messages, errors and step output that only gatebot's user should read.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, cast

import aiosqlite

from gatebot.errors import GatebotError
from gatebot.store.migrations import MIGRATIONS

T = TypeVar("T")
log = logging.getLogger("gatebot.store")
# How long a write waits for another connection's write lock before "database is locked";
# read when a connection opens (the fault tests shorten it).
BUSY_TIMEOUT_MS = 10_000
# write_batch tries the lock on the event loop again after each of these pauses (another
# process's batch takes about a millisecond), then waits for it on its write thread.
DIRECT_RETRY_SECONDS = (0.0005, 0.001, 0.002)


async def _connect(path: Path, opened: list[aiosqlite.Connection]) -> aiosqlite.Connection:
    try:
        conn = await aiosqlite.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise GatebotError(f"cannot open database {path}: {exc}") from None
    opened.append(conn)
    conn.row_factory = aiosqlite.Row
    await conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    await conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def private_files(path: Path) -> None:
    """Create `path`'s folder 0700 and the file 0600 (or tighten them when they exist)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.parent.stat().st_mode & 0o077:
        try:
            path.parent.chmod(0o700)
        except PermissionError:  # someone else's folder: the files below are 0600 still
            log.warning("cannot make %s private (mode 0700): not its owner", path.parent)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if file.exists() and file.stat().st_mode & 0o077:
            file.chmod(0o600)


class _WriteThread:
    """One thread that runs calls in order and hands each result back to the calling loop
    with `call_soon_threadsafe`: a put on a queue there, one callback back. Half the event
    loop's share of a hand-off through a ThreadPoolExecutor (its future, locks, chaining)."""

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[
            tuple[Callable[[], Any], asyncio.AbstractEventLoop, asyncio.Future[Any]] | None
        ] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="gatebot-sqlite", daemon=True)
        self._thread.start()

    def call(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((fn, loop, future))
        return future

    def stop(self) -> None:
        """End the thread once the calls queued so far are done."""
        self._calls.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (item := self._calls.get()) is not None:
            fn, loop, future = item
            try:
                outcome: tuple[Any, BaseException | None] = (fn(), None)
            except BaseException as exc:
                outcome = (None, exc)
            try:
                loop.call_soon_threadsafe(_settle, future, *outcome)
            except RuntimeError:  # the loop is closed: nobody waits for this any more
                pass


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():  # the caller was cancelled meanwhile
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def _direct_transaction(
    conn: sqlite3.Connection, turns: int, fn: Callable[[sqlite3.Connection], T], *, wait: bool
) -> tuple[bool, T | None]:
    """(True, what `fn` returned) once its transaction is committed; (False, None) without
    `wait` when another writer holds the lock (nothing was run)."""
    try:
        fcntl.flock(turns, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False, None
    try:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if not wait and exc.sqlite_errorcode in _BUSY:
                return False, None
            raise
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    finally:
        fcntl.flock(turns, fcntl.LOCK_UN)
    return True, result


_BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Database:
    """Two connections: `conn` for writes (one transaction at a time), `reader` for reads, so a
    read never sees another coroutine's uncommitted transaction (WAL gives it the last commit);
    and write_batch's own, for a batch of writes in one call."""

    def __init__(
        self, conn: aiosqlite.Connection, reader: aiosqlite.Connection, path: Path
    ) -> None:
        self.conn = conn
        self.reader = reader
        self.path = path
        self._write = asyncio.Lock()
        # write_batch's connections, opened at the first: one for the event loop, one for
        # its write thread (each used by that thread alone), and the writers' flock file.
        self._direct_now: sqlite3.Connection | None = None
        self._direct_waits: sqlite3.Connection | None = None
        self._direct_thread: _WriteThread | None = None
        self._turns = -1

    @classmethod
    async def open(cls, path: Path) -> Database:
        try:
            private_files(path)
        except OSError as exc:
            raise GatebotError(f"cannot open database {path}: {exc.strerror}") from None
        opened: list[aiosqlite.Connection] = []
        try:
            conn = await _connect(path, opened)
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA foreign_keys=ON")
            db = cls(conn, conn, path)
            await db.migrate()
            db.reader = await _connect(path, opened)
            await db.reader.execute("PRAGMA query_only=ON")
            return db
        except BaseException as exc:
            for connection in opened:
                await connection.close()
            if isinstance(exc, sqlite3.DatabaseError):  # corrupted, not a database, full
                raise GatebotError(
                    f"cannot open database {path}: {exc}; restore it from a backup"
                ) from None
            raise

    async def close(self) -> None:
        async with self._write:
            if self._direct_thread is not None:
                await self._direct_thread.call(self._close_direct_waits)
                self._direct_thread.stop()
                self._direct_thread = None
            if self._direct_now is not None:
                self._direct_now.close()
                self._direct_now = None
            if self._turns >= 0:
                os.close(self._turns)
                self._turns = -1
        await self.conn.close()
        if self.reader is not self.conn:
            await self.reader.close()

    async def write_batch(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` as one write transaction in a single call: BEGIN IMMEDIATE,
        `fn(connection)`, COMMIT (ROLLBACK if anything raises). `transaction()` costs a round
        trip to aiosqlite's thread per statement; this costs none when the database is free,
        which is what lets webhook intake commit many deliveries at once (see
        Jobs.enqueue_superseding).

        It runs on the event loop when the write lock is free at once (a batch is a fraction
        of a millisecond of SQLite's work, less than the hand-off to a thread and back, and
        the two threads' turns at Python's lock, cost). When another process or connection
        holds it, the transaction waits for it on a thread of its own instead, so the loop
        never waits for a lock. Writes through either path take the same asyncio lock: one
        write transaction at a time."""
        async with self._write:
            if self._direct_now is None:
                self._direct_now = self._direct_connection(busy_timeout_ms=0)
            for pause in DIRECT_RETRY_SECONDS:
                done, result = _direct_transaction(self._direct_now, self._turns, fn, wait=False)
                if done:
                    return cast(T, result)
                await asyncio.sleep(pause)
            if self._direct_thread is None:
                self._direct_thread = _WriteThread()
            return await self._direct_thread.call(partial(self._direct_waiting, fn))

    def _direct_connection(self, *, busy_timeout_ms: int) -> sqlite3.Connection:
        if self._turns < 0:
            # Processes that commit deliveries at the same time (serve's intake processes)
            # take turns through this lock: a waiter is woken the moment the other commits,
            # where SQLite's busy handler would sleep for milliseconds and poll.
            self._turns = os.open(f"{self.path}-writers", os.O_RDWR | os.O_CREAT, 0o600)
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            for pragma in (
                f"busy_timeout={busy_timeout_ms}",
                "synchronous=NORMAL",
                "foreign_keys=ON",
            ):
                conn.execute(f"PRAGMA {pragma}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _direct_waiting(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """On the write thread: `fn`'s transaction, waiting for the lock as long as it takes
        (SQLite's busy timeout then)."""
        if self._direct_waits is None:
            self._direct_waits = self._direct_connection(busy_timeout_ms=BUSY_TIMEOUT_MS)
        _, result = _direct_transaction(self._direct_waits, self._turns, fn, wait=True)
        return cast(T, result)

    def _close_direct_waits(self) -> None:
        if self._direct_waits is not None:
            self._direct_waits.close()
            self._direct_waits = None

    async def schema_version(self) -> int:
        row = await self.fetchone("PRAGMA user_version")
        return int(row[0]) if row else 0

    async def migrate(self) -> None:
        """Apply every migration newer than the database, in one transaction.

        Foreign keys are off meanwhile (a table rebuild drops the old table, which other
        tables refer to) and checked before the commit, as SQLite's ALTER TABLE page asks."""
        await self.conn.execute("PRAGMA foreign_keys=OFF")
        try:
            await self._migrate()
        finally:
            await self.conn.execute("PRAGMA foreign_keys=ON")

    async def _migrate(self) -> None:
        async with self.transaction() as conn:
            row = await (await conn.execute("PRAGMA user_version")).fetchone()
            current = int(row[0]) if row else 0
            if current > len(MIGRATIONS):
                raise GatebotError(
                    f"database {self.path} has schema {current}, newer than this gatebot "
                    f"({len(MIGRATIONS)}): upgrade gatebot"
                )
            for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
                for statement in script.split(";\n"):
                    if statement.strip():
                        await conn.execute(statement)
                await conn.execute(f"PRAGMA user_version = {version}")
            broken = list(await (await conn.execute("PRAGMA foreign_key_check")).fetchall())
            if broken:
                raise GatebotError(
                    f"database {self.path}: the migration broke {len(broken)} reference(s)"
                )

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction at a time on this connection; BEGIN IMMEDIATE takes the
        database write lock up front, so concurrent processes wait instead of failing late."""
        async with self._write:
            await self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                await self.conn.execute("ROLLBACK")
                raise
            else:
                await self.conn.execute("COMMIT")

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> aiosqlite.Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[aiosqlite.Row]:
        """Run a query to its end in one call on the reader's thread. A statement left open
        between awaits would keep the reader's snapshot, and another coroutine's query would
        then miss a transaction committed meanwhile (a job just enqueued "does not exist")."""
        rows = await self.reader.execute_fetchall(sql, tuple(params))
        return list(rows)

    async def execute(self, sql: str, params: Iterable[Any] = ()) -> int:
        """Run one write statement in its own transaction; return lastrowid."""
        async with self.transaction() as conn:
            cursor = await conn.execute(sql, tuple(params))
            return cursor.lastrowid or 0
