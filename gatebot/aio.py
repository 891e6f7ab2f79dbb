"""Small asyncio helpers the server's background tasks share."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
from collections.abc import Iterable


async def cancel_all(tasks: Iterable[asyncio.Task[None]]) -> None:
    """Cancel `tasks` and wait until each has ended."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def flock_within(fd: int, seconds: float) -> bool:
    """Take an exclusive flock on `fd`, trying every 50 ms for up to `seconds` (flock itself
    would block the event loop); False when another holder kept it that long."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if loop.time() > deadline:
                return False
            await asyncio.sleep(0.05)
