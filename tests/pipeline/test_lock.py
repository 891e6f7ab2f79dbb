"""Per-project flock locks: exclusive, released on exit, visible to and from other processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gatebot.errors import LockHeld
from gatebot.pipeline.lock import ProjectLocks
from tests.support.faults import fill, tmpfs_on
from tests.support.real import ROOT

HOLDER = """
import asyncio, sys, time
from pathlib import Path
from gatebot.pipeline.lock import ProjectLocks

async def main() -> None:
    async with ProjectLocks(Path(sys.argv[1])).hold(sys.argv[2], sys.argv[3]):
        print("locked", flush=True)
        time.sleep(60)

asyncio.run(main())
"""

PROBE = """
import sys
from pathlib import Path
from gatebot.pipeline.lock import ProjectLocks

locks = ProjectLocks(Path(sys.argv[1]))
print("probing", flush=True)
while True:
    locks.holder(sys.argv[2])
"""


@pytest.fixture
def locks(tmp_path: Path) -> ProjectLocks:
    return ProjectLocks(tmp_path / "locks")


@contextmanager
def spawn(script: str, *args: str, ready: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == ready
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture
def other_process(locks: ProjectLocks) -> Iterator[subprocess.Popen[str]]:
    """Another gatebot process that holds the lock of project "shop" until it is killed."""
    with spawn(HOLDER, str(locks.lock_dir), "shop", "deploy by cli", ready="locked") as proc:
        yield proc


async def test_second_hold_raises_lock_held_naming_the_purpose(locks: ProjectLocks) -> None:
    async with locks.hold("shop", "deploy by alice"):
        with pytest.raises(LockHeld) as caught:
            async with locks.hold("shop", "rollback by bob"):
                pytest.fail("the lock was taken twice")
        assert caught.value.project == "shop"
        assert caught.value.holder == f"deploy by alice (pid {os.getpid()})"
        assert "deploy by alice" in str(caught.value)
        assert "'shop' is busy" in str(caught.value)


async def test_released_after_the_block(locks: ProjectLocks) -> None:
    async with locks.hold("shop", "first"):
        pass
    async with locks.hold("shop", "second"):
        assert locks.holder("shop") == f"second (pid {os.getpid()})"
    assert locks.holder("shop") is None


async def test_released_when_the_block_raises(locks: ProjectLocks) -> None:
    with pytest.raises(RuntimeError):
        async with locks.hold("shop", "doomed"):
            raise RuntimeError("boom")
    assert locks.holder("shop") is None
    async with locks.hold("shop", "next"):
        pass


async def test_holder_reports(locks: ProjectLocks) -> None:
    assert locks.holder("shop") is None
    async with locks.hold("shop", "deploy by push"):
        assert locks.holder("shop") == f"deploy by push (pid {os.getpid()})"
        assert locks.holder("blog") is None
    assert locks.holder("shop") is None


async def test_projects_are_independent(locks: ProjectLocks) -> None:
    async with locks.hold("shop", "a"), locks.hold("blog", "b"):
        assert locks.holder("shop") == f"a (pid {os.getpid()})"
        assert locks.holder("blog") == f"b (pid {os.getpid()})"


async def test_lock_held_by_another_process_conflicts(
    locks: ProjectLocks, other_process: subprocess.Popen[str]
) -> None:
    assert locks.holder("shop") == f"deploy by cli (pid {other_process.pid})"
    with pytest.raises(LockHeld) as caught:
        async with locks.hold("shop", "deploy by server"):
            pytest.fail("took a lock another process holds")
    assert caught.value.holder == f"deploy by cli (pid {other_process.pid})"
    async with locks.hold("blog", "unrelated"):
        pass


async def test_killed_holder_frees_the_lock_at_once(
    locks: ProjectLocks, other_process: subprocess.Popen[str]
) -> None:
    assert locks.holder("shop") is not None
    os.kill(other_process.pid, signal.SIGKILL)
    assert other_process.wait(timeout=10) == -signal.SIGKILL
    assert locks.holder("shop") is None
    async with locks.hold("shop", "deploy after crash"):
        assert locks.holder("shop") == f"deploy after crash (pid {os.getpid()})"


async def test_asking_who_holds_a_lock_never_makes_taking_it_fail(locks: ProjectLocks) -> None:
    attempts, refused = 0, []
    with spawn(PROBE, str(locks.lock_dir), "shop", ready="probing"):
        loop = asyncio.get_running_loop()
        end = loop.time() + 1.0
        while loop.time() < end:
            attempts += 1
            try:
                async with locks.hold("shop", "deploy"):
                    pass
            except LockHeld as exc:
                refused.append(exc.holder)
    assert attempts > 100
    assert refused == [], f"{len(refused)} of {attempts} deploys refused: {refused[0]!r}"


async def test_a_full_disk_does_not_keep_anyone_from_taking_a_lock(tmp_path: Path) -> None:
    with tmpfs_on(tmp_path / "locks", "64k") as folder:
        locks = ProjectLocks(folder)
        filler = fill(folder)  # not even the holder's name fits now
        try:
            async with locks.hold("shop", "deploy by test"):
                with pytest.raises(LockHeld):
                    async with locks.hold("shop", "a second deploy"):
                        pass
        finally:
            filler.unlink()
