"""Small pieces the fault-injection tests (tests/faults) share: a CLI deploy killed at a stage,
a steady load through nginx that is started and stopped around a fault, what a project's
state is once repaired, a write lock on the database held by another connection."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import aiohttp
import docker

from gatebot.model import IN_FLIGHT, Status
from gatebot.pipeline.journal import CRASH_AFTER_ENV
from gatebot.store.deployments import Deployment, Deployments
from tests.support.http import LoadResult, get_text, steady_load


def cli_deploy_killed_after(stage: str, config: Path, project: str) -> None:
    """Run `gatebot deploy` and let it die by SIGKILL once `stage` is recorded done."""
    result = subprocess.run(  # noqa: S603 - an argument list, no shell
        [sys.executable, "-m", "gatebot", "--config", str(config), "deploy", project],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, CRASH_AFTER_ENV: stage},
    )
    assert result.returncode == -signal.SIGKILL, (result.returncode, result.stderr)


@asynccontextmanager
async def load_through(url: str) -> AsyncIterator[LoadResult]:
    """A steady load on `url` for the time of the block; the result is filled in at its end."""
    stop = asyncio.Event()
    task = asyncio.create_task(steady_load([url], stop))
    outcome = LoadResult()
    try:
        yield outcome
    finally:
        stop.set()
        done = await task
        outcome.ok, outcome.failures, outcome.bodies = done.ok, done.failures, done.bodies


async def assert_repaired(
    deployments: Deployments, client: docker.DockerClient, project: str
) -> Deployment:
    """One ACTIVE release, nothing in flight, and no container but the live one's."""
    history = await deployments.history(project, limit=1000)
    active = [d for d in history if d.status is Status.ACTIVE]
    assert len(active) == 1, [(d.version, d.status) for d in history]
    assert not [d for d in history if d.status in IN_FLIGHT]
    names = {
        c.name
        for c in client.containers.list(all=True, filters={"label": f"gatebot.project={project}"})
    }
    assert names == {active[0].container}
    return active[0]


@contextmanager
def write_lock_held(db_path: Path, seconds: float) -> Iterator[threading.Thread]:
    """From the moment it is entered, a second SQLite connection holds the write lock of
    `db_path` for `seconds` (BEGIN IMMEDIATE in a thread), as a stuck writer would; the
    block's end waits for it to let go."""
    taken = threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(db_path, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            taken.set()
            time.sleep(seconds)
            conn.execute("ROLLBACK")
        finally:
            conn.close()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert taken.wait(10), "could not take the write lock"
    try:
        yield thread
    finally:
        thread.join()


def flaky_command(tmp_path: Path, name: str, real: list[str]) -> tuple[list[str], Path]:
    """`real` behind a wrapper that runs it and then, while the control file returned says
    `fail`, waits a second (nginx reloads a moment after its command returns) and exits 1 all the
same (a reload_cmd that reloads and then reports failure); the
    argument list to configure and the control file."""
    control = tmp_path / f"{name}.control"
    script = tmp_path / f"{name}.sh"
    script.write_text(
        "#!/bin/sh\n"
        '"$@"\n'
        "rc=$?\n"
        f'if [ "$(cat {control} 2>/dev/null)" = fail ]; then\n'
        f'    sleep 1; echo "{name}: told to fail"; exit 1\n'  # nginx has reloaded by then
        "fi\n"
        "exit $rc\n"
    )
    script.chmod(0o755)
    return [str(script), *real], control


async def eventually_serving(url: str, expected: str, within: float = 10.0) -> tuple[int, str]:
    """What `url` answers once it answers 200 `expected`, or at the end of `within` seconds
    (an nginx reload takes effect a moment after its command returns, any status before)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            answer = await get_text(url)
        except (aiohttp.ClientError, TimeoutError) as exc:
            answer = (0, f"{type(exc).__name__}")
        if answer == (200, expected) or loop.time() > deadline:
            return answer
        await asyncio.sleep(0.1)


@contextmanager
def tmpfs_on(path: Path, size: str = "1m", *, read_only: bool = False) -> Iterator[Path]:
    """A tmpfs of `size` mounted on `path` (made if missing; root only) for the block's time:
    a small disk to fill, or a read-only one (root writes through file modes, not through a
    read-only mount). Unmounted at the end, whatever happened."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size},mode=0755" + (",ro" if read_only else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder: Path) -> Path:
    """Fill the file system of `folder` until a write fails with ENOSPC; the filler's path
    (remove it to free the space)."""
    filler = folder / ".filler"
    chunk = b"\0" * 65536
    with open(filler, "ab", buffering=0) as fh:
        while True:
            try:
                fh.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    return filler
                chunk = chunk[: len(chunk) // 2]
