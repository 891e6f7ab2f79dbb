"""A small HTTP/1.1 load client on asyncio streams, so every request's fate is known exactly:
a fresh connection per request, or keep-alive with or without the retry RFC 9112 (section
9.3.1) allows for an idempotent request when the server closed a reused connection before any
byte of the answer arrived. Each request becomes a `Record`. Loopback only."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

TIMEOUT = 10.0


class NoAnswer(Exception):
    """The connection closed before the first byte of a response."""


@dataclass(frozen=True)
class Record:
    target: str  # which proxy setup
    client: str  # fresh | keepalive-retry
    path: str
    started: float  # time.monotonic()
    ended: float
    status: int | None  # None: no answer (see error)
    error: str | None
    retried: bool

    @property
    def ok(self) -> bool:
        return self.error is None and self.status is not None and 200 <= self.status < 300

    @property
    def latency_ms(self) -> float:
        return (self.ended - self.started) * 1000


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response; (status, whether the connection may be reused)."""
    line = await reader.readline()
    if not line:
        raise NoAnswer
    status = int(line.split(b" ", 2)[1])
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n"):
            break
        if not line:
            raise asyncio.IncompleteReadError(b"", None)
        key, _, value = line.decode("latin-1").partition(":")
        headers[key.strip().lower()] = value.strip().lower()
    reusable = headers.get("connection") != "close"
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        await reader.read()
        reusable = False
    return status, reusable


def request_bytes(path: str, *, close: bool) -> bytes:
    connection = "close" if close else "keep-alive"
    return f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: {connection}\r\n\r\n".encode()


class Client:
    """One connection's worth of client: `fresh` opens a connection per request; otherwise it
    keeps one, and with `retry` sends an idempotent request again, once, on a new connection
    when the reused one closed before any byte of the answer."""

    def __init__(self, host: str, port: int, *, fresh: bool, retry: bool) -> None:
        self.host, self.port = host, port
        self.fresh, self.retry = fresh, retry
        self.conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.idle_closes = 0  # reused connections found closed before sending (not an error)

    async def close(self) -> None:
        if self.conn is not None:
            writer = self.conn[1]
            self.conn = None
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
        if self.conn is not None and self.conn[0].at_eof():
            self.idle_closes += 1
            await self.close()
        reused = self.conn is not None
        if self.conn is None:
            self.conn = await asyncio.open_connection(self.host, self.port)
        return self.conn[0], self.conn[1], reused

    async def get(self, path: str) -> tuple[int, bool]:
        """(status, retried); raises on a failure that is not retried."""
        for attempt in (1, 2):
            reader, writer, reused = await self._connection()
            try:
                writer.write(request_bytes(path, close=self.fresh))
                await writer.drain()
                status, reusable = await read_response(reader)
            except (NoAnswer, ConnectionResetError, BrokenPipeError):
                await self.close()
                if self.retry and reused and attempt == 1:
                    continue
                raise
            except BaseException:
                await self.close()
                raise
            if self.fresh or not reusable:
                await self.close()
            return status, attempt == 2
        raise AssertionError("unreachable")


async def worker(
    client: Client,
    target: str,
    kind: str,
    path: str,
    pause: float,
    stop: asyncio.Event,
    records: list[Record],
    deadline: float,
) -> None:
    """Send `path` again and again, `pause` apart, until `stop` (or the deadline)."""
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            started = time.monotonic()
            status: int | None = None
            error: str | None = None
            retried = False
            try:
                status, retried = await asyncio.wait_for(client.get(path), TIMEOUT)
            except TimeoutError:
                error = "timeout"
                await client.close()
            except (OSError, NoAnswer, asyncio.IncompleteReadError, ValueError) as exc:
                error = type(exc).__name__
            records.append(
                Record(target, kind, path, started, time.monotonic(), status, error, retried)
            )
            if pause:
                await asyncio.sleep(pause)
    finally:
        await client.close()
