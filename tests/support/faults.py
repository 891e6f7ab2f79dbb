"""Small pieces the fault-injection tests (tests/faults) share: a CLI deploy killed at a stage,
a steady load through nginx that is started and stopped around a fault, what a project's
state is once repaired."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import docker

from gatebot.model import IN_FLIGHT, Status
from gatebot.pipeline.journal import CRASH_AFTER_ENV
from gatebot.store.deployments import Deployment, Deployments
from tests.support.http import LoadResult, steady_load


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
