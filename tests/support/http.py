"""Small HTTP helpers for tests: one request on a fresh connection, and a steady load."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import aiohttp


async def get_text(url: str, timeout: float = 5.0) -> tuple[int, str]:
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)
    ) as session:
        async with session.get(url) as response:
            return response.status, (await response.text()).strip()


@dataclass
class LoadResult:
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    bodies: set[str] = field(default_factory=set)


async def steady_load(urls: list[str], stop: asyncio.Event, workers: int = 4) -> LoadResult:
    """GET `urls` round-robin on fresh connections until `stop` is set; record every failure."""
    result = LoadResult()

    async def worker(offset: int) -> None:
        connector = aiohttp.TCPConnector(force_close=True)
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            i = offset
            while not stop.is_set():
                url = urls[i % len(urls)]
                i += 1
                try:
                    async with session.get(url) as response:
                        body = (await response.text()).strip()
                        if response.status == 200:
                            result.ok += 1
                            result.bodies.add(body)
                        else:
                            result.failures.append(f"{url}: HTTP {response.status}")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    result.failures.append(f"{url}: {type(exc).__name__}: {exc}")

    await asyncio.gather(*(worker(n) for n in range(workers)))
    return result


async def raw_exchange(host: str, port: int, request: bytes, timeout: float = 10.0) -> bytes:
    """Send `request` byte for byte (headers aiohttp's client would refuse to send included)
    and return everything the server answers until it closes the connection."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(timeout):
            return await reader.read()
    finally:
        writer.close()


def status_of(answer: bytes) -> int:
    """The status code of a raw HTTP answer (b"HTTP/1.1 401 Unauthorized...")."""
    return int(answer.split(b" ", 2)[1])


async def wait_listening(port: int, within: float = 10.0) -> None:
    """Until 127.0.0.1:`port` accepts connections (nginx applies a reload asynchronously)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.02)
            continue
        writer.close()
        return
