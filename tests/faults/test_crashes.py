"""A CLI deploy killed after each stage while `serve` runs: the next queue deploy repairs the
project under its lock first, and never replaces the container the live route points at."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import docker
import pytest

from gatebot.api.keys import ENGINE, QUEUE
from gatebot.model import Status
from gatebot.wiring import open_engine
from tests.support.cli import config_file, gatebot
from tests.support.deploys import live_version
from tests.support.faults import assert_repaired, cli_deploy_killed_after, load_through
from tests.support.server import ClientFactory, auth, wait_until
from tests.support.setup import Setup

pytestmark = pytest.mark.faults


# The stage the CLI dies after, and the release live at that moment (routed after the switch).
KILLED_AFTER = [
    ("source", "v1"),
    ("build", "v1"),
    ("run", "v1"),
    ("health", "v1"),
    ("switch", "v2"),  # routed, never recorded
    ("record", "v2"),  # recorded, the old slot never retired
]


@pytest.mark.parametrize(("stage", "serving"), KILLED_AFTER)
async def test_cli_deploy_killed_after_a_stage_then_a_queue_deploy_drops_nothing(
    setup: Setup,
    start_server: ClientFactory,
    docker_client: docker.DockerClient,
    stage: str,
    serving: str,
) -> None:
    config = config_file(setup)
    setup.repo.commit("v1")
    first = await asyncio.to_thread(gatebot, "--config", str(config), "deploy", setup.name)
    assert first.returncode == 0, first.stderr
    client = await start_server()
    engine = client.app[ENGINE]
    async with load_through(f"{setup.site_url}/version") as load:
        setup.repo.commit("v2")
        await asyncio.to_thread(cli_deploy_killed_after, stage, config, setup.name)
        assert await live_version(setup) == serving
        setup.repo.commit("v3")
        answer = await client.post(
            "/api/v1/deploy", json={"projectId": setup.name}, headers=await auth(client)
        )
        assert answer.status == 202, await answer.text()
        await client.app[QUEUE].drain()
        await asyncio.sleep(0.3)
    assert load.failures == [], f"{len(load.failures)} of {load.ok} failed: {load.failures[:3]}"
    assert load.ok > 20
    active = await assert_repaired(engine.store.deployments, docker_client, setup.name)
    assert active.version == 3
    assert await live_version(setup) == "v3"
    history = await engine.store.deployments.history(setup.name, limit=10)
    killed = next(d for d in history if d.version == 2)
    if stage == "record":  # it went live and stays in the history as the release before v3
        assert killed.status is Status.ROLLED_BACK
    else:
        assert killed.status is Status.FAILED
        assert killed.error and "interrupted" in killed.error


async def test_a_deploy_killed_while_a_stage_runs_fails_at_that_stage_not_the_last_done(
    setup: Setup, docker_client: docker.DockerClient
) -> None:
    config = config_file(setup, health={"retries": 600, "interval": 0.1})
    setup.repo.commit("v1", healthy=False)  # its health check runs until the kill
    deploy = subprocess.Popen(  # noqa: S603 - an argument list
        [sys.executable, "-m", "gatebot", "--config", str(config), "deploy", setup.name],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    log_file = setup.data_dir / "logs" / "1.log"

    async def health_running() -> bool:
        return log_file.exists() and "[health] started" in log_file.read_text()

    try:
        await wait_until(health_running)
    finally:
        deploy.kill()
        deploy.wait()
    done = await asyncio.to_thread(gatebot, "--config", str(config), "reconcile")
    assert done.returncode == 0, done.stderr
    async with open_engine(setup.settings()) as engine:
        [killed] = await engine.store.deployments.history(setup.name)
        assert (killed.status, killed.failed_stage) == (Status.FAILED, "health")
        steps = await engine.store.deployments.steps(killed.id)
        assert steps[-1].stage == "run", "the last stage done was run"
