"""Per-project locks that survive nothing: an flock(2) on a file in the data directory.

The kernel drops the lock when its holder exits, however it exits, so a crashed process never
leaves a project stuck; and because flock works across processes, a CLI deploy and a running
server never deploy the same project at once. Taking a lock never waits: a busy project fails
at once with LockHeld, naming who holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from gatebot.errors import LockHeld


class ProjectLocks:
    def __init__(self, lock_dir: Path) -> None:
        self.lock_dir = lock_dir

    def path(self, project: str) -> Path:
        return self.lock_dir / f"{project}.lock"

    def holder(self, project: str) -> str | None:
        """Who holds the project's lock now, or None when it is free.

        Asking never takes the lock (that would make a concurrent deploy fail): the kernel's
        table of locks in /proc/locks answers; only where it is missing do we try the lock.
        """
        self.lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path(project), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            held = _flocked(fd)
            if held is not None:
                return (_read(fd) or "another gatebot process") if held else None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return _read(fd) or "another gatebot process"
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    @asynccontextmanager
    async def hold(self, project: str, purpose: str) -> AsyncIterator[None]:
        self.lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path(project), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LockHeld(project, _read(fd) or "another gatebot process") from None
            _note(fd, f"{purpose} (pid {os.getpid()})")
            try:
                yield
            finally:
                _note(fd, "")
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _flocked(fd: int) -> bool | None:
    """Whether any process holds an flock on fd's file, from /proc/locks; None if unknown."""
    st = os.fstat(fd)
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii") as table:
            lines = table.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if "->" in fields:  # a waiter, not a holder
            continue
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == key:
            return True
    return False


def _note(fd: int, holder: str) -> None:
    """Say who holds the lock, in its file: only a courtesy to whoever finds it busy, so a
    full disk (ENOSPC) leaves the text out and the lock, which is the flock, stands."""
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        if holder:
            os.pwrite(fd, holder.encode(), 0)


def _read(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
