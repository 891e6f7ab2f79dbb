"""The SQLite connection: WAL mode, versioned migrations at open, serialized transactions."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

from gatebot.errors import GatebotError
from gatebot.store.migrations import MIGRATIONS


async def _connect(path: Path, opened: list[aiosqlite.Connection]) -> aiosqlite.Connection:
    try:
        conn = await aiosqlite.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise GatebotError(f"cannot open database {path}: {exc}") from None
    opened.append(conn)
    conn.row_factory = aiosqlite.Row
    await conn.execute("PRAGMA busy_timeout=10000")
    await conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Database:
    """Two connections: `conn` for writes (one transaction at a time), `reader` for reads, so a
    read never sees another coroutine's uncommitted transaction (WAL gives it the last commit)."""

    def __init__(
        self, conn: aiosqlite.Connection, reader: aiosqlite.Connection, path: Path
    ) -> None:
        self.conn = conn
        self.reader = reader
        self.path = path
        self._write = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> Database:
        path.parent.mkdir(parents=True, exist_ok=True)
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
        except BaseException:
            for connection in opened:
                await connection.close()
            raise

    async def close(self) -> None:
        await self.conn.close()
        if self.reader is not self.conn:
            await self.reader.close()

    async def schema_version(self) -> int:
        row = await self.fetchone("PRAGMA user_version")
        return int(row[0]) if row else 0

    async def migrate(self) -> None:
        """Apply every migration newer than the database, each in its own transaction."""
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
        async with self.reader.execute(sql, tuple(params)) as cursor:
            row: aiosqlite.Row | None = await cursor.fetchone()
            return row

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[aiosqlite.Row]:
        async with self.reader.execute(sql, tuple(params)) as cursor:
            return list(await cursor.fetchall())

    async def execute(self, sql: str, params: Iterable[Any] = ()) -> int:
        """Run one write statement in its own transaction; return lastrowid."""
        async with self.transaction() as conn:
            cursor = await conn.execute(sql, tuple(params))
            return cursor.lastrowid or 0
