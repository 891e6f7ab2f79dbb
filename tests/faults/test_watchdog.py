"""The live release's container stopped while `serve` runs (issue 11 defect 5): `docker kill`,
or dockerd killed and started again (which stops the containers it finds, exit 143, and does not
start them again). The watchdog brings it back without a deploy; /readyz says while it is down.
The dockerd test runs its own dockerd: the suite's must stay up for the other tests."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from gatebot.api.keys import ENGINE, QUEUE
from gatebot.pipeline.deploy import deploy
from gatebot.pipeline.engine import Engine
from gatebot.watchdog import Watchdog
from tests.support.deliveries import GITHUB_SECRET, GITLAB_TOKEN
from tests.support.dockerd import Dockerd
from tests.support.faults import assert_repaired, eventually_serving
from tests.support.server import Client, ClientFactory, auth, wait_until, workspace_settings
from tests.support.setup import Setup

pytestmark = pytest.mark.faults


async def deployed_v1(client: Client, setup: Setup) -> int:
    """Deploy v1 through the server's queue; the deployment's id."""
    setup.repo.commit("v1")
    answer = await client.post(
        "/api/v1/deploy", json={"projectId": setup.name}, headers=await auth(client)
    )
    assert answer.status == 202, await answer.text()
    await client.app[QUEUE].drain()
    assert await eventually_serving(f"{setup.site_url}/version", "v1") == (200, "v1")
    active = await client.app[ENGINE].store.deployments.active(setup.name)
    assert active is not None and active.version == 1
    return int(active.id)


def kill_with_sigterm(docker_client: docker.DockerClient, name: str) -> None:
    """`docker kill --signal TERM`: exit 143, and Docker does not restart it (a kill counts as
    stopped by hand, as a dockerd restart leaves it)."""
    docker_client.containers.get(name).kill(signal="SIGTERM")


async def readiness(client: Client) -> tuple[int, dict[str, Any]]:
    response = await client.get("/readyz")
    return response.status, await response.json()


async def test_readyz_names_a_live_release_whose_container_is_down(
    setup: Setup, start_server: ClientFactory, docker_client: docker.DockerClient
) -> None:
    client = await start_server(server={"reconcile_interval": 0})  # no watchdog
    await deployed_v1(client, setup)
    assert (await readiness(client))[0] == 200
    container = f"gatebot-{setup.name}-blue"
    kill_with_sigterm(docker_client, container)
    await wait_until(lambda: asyncio.to_thread(exited, docker_client, container))
    status, body = await readiness(client)
    assert status == 503
    assert body["checks"]["releases"] == f"down: {setup.name} (v1, {container} exited)"
    assert body["checks"]["docker"] == "ok" and body["checks"]["queue"] == "ok"


def exited(client: docker.DockerClient, name: str) -> bool:
    return bool(client.containers.get(name).status == "exited")


async def test_the_watchdog_starts_a_killed_live_container_again_without_a_deploy(
    setup: Setup, start_server: ClientFactory, docker_client: docker.DockerClient
) -> None:
    client = await start_server(server={"reconcile_interval": 3600})  # Docker's events only
    deployment = await deployed_v1(client, setup)
    container = docker_client.containers.get(f"gatebot-{setup.name}-blue")
    before = started_at(container)
    kill_with_sigterm(docker_client, container.name)
    await wait_until(lambda: asyncio.to_thread(started_again, container, before), timeout=20)
    assert await eventually_serving(f"{setup.site_url}/version", "v1") == (200, "v1")
    assert (await readiness(client))[0] == 200
    store = client.app[ENGINE].store
    active = await assert_repaired(store.deployments, docker_client, setup.name)
    assert active.id == deployment and len(await store.deployments.history(setup.name)) == 1
    steps = await store.deployments.steps(deployment)
    assert steps[-1].stage == "reconcile" and "started again and healthy" in steps[-1].message


def started_at(container: Any) -> str:
    container.reload()
    return str(container.attrs["State"]["StartedAt"])


def started_again(container: Any, before: str) -> bool:
    """Whether the container runs, started after the start it had at `before`."""
    container.reload()
    state = container.attrs["State"]
    return bool(state["Running"]) and state["StartedAt"] != before


async def test_the_watchdog_timer_alone_brings_a_stopped_live_container_back(
    engine: Engine, setup: Setup, docker_client: docker.DockerClient
) -> None:
    setup.repo.commit("v1")
    await deploy(engine, setup.name, trigger="test")
    container = docker_client.containers.get(f"gatebot-{setup.name}-blue")
    before = started_at(container)
    watchdog = Watchdog(dataclasses.replace(engine, events=None), 0.2, ready=lambda: True)
    watchdog.start()
    try:
        await asyncio.to_thread(container.stop, timeout=1)  # docker stop: no event followed
        await wait_until(lambda: asyncio.to_thread(started_again, container, before), timeout=20)
    finally:
        await watchdog.stop()
    assert await eventually_serving(f"{setup.site_url}/version", "v1") == (200, "v1")


@pytest.fixture
def own_dockerd() -> Iterator[Dockerd]:
    dockerd = Dockerd()
    try:
        dockerd.start()
        yield dockerd
    finally:
        dockerd.remove()


async def test_after_dockerd_is_killed_and_started_again_the_live_release_serves_again(
    setup: Setup, start_server: ClientFactory, own_dockerd: Dockerd
) -> None:
    settings = workspace_settings(
        setup,
        [setup.project(forge_repo=f"acme/{setup.name}")],
        docker={"host": own_dockerd.host},
        server={"reconcile_interval": 3600},  # the event stream's return, not the timer
        github={"webhook_secret": GITHUB_SECRET},
        gitlab={"webhook_token": GITLAB_TOKEN},
    )
    client = await start_server(settings)
    deployment = await deployed_v1(client, setup)
    engine_client = docker.DockerClient(base_url=own_dockerd.host)
    try:
        container = engine_client.containers.get(f"gatebot-{setup.name}-blue")
        before = started_at(container)
        await asyncio.to_thread(own_dockerd.kill)
        await asyncio.to_thread(own_dockerd.start)
        await wait_until(lambda: asyncio.to_thread(started_again, container, before), timeout=30)
        assert await eventually_serving(f"{setup.site_url}/version", "v1") == (200, "v1")
        status, body = await readiness(client)
        assert status == 200, body
        store = client.app[ENGINE].store
        active = await assert_repaired(store.deployments, engine_client, setup.name)
        assert active.id == deployment and len(await store.deployments.history(setup.name)) == 1
    finally:
        engine_client.close()

