"""Faults of the Docker engine. The live release's container stopped while `serve` runs (issue
11 defect 5): `docker kill`, or dockerd killed and started again (which stops the containers it
finds, exit 143, and does not start them again); the watchdog brings it back without a deploy,
and /readyz says so while it is down. dockerd killed during a build: the deploy fails naming the
engine. The dockerd tests run a dockerd of their own: the suite's must stay up for the others."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from gatebot.api.keys import ENGINE, QUEUE
from gatebot.errors import StageFailed
from gatebot.model import Status
from gatebot.pipeline.deploy import deploy
from gatebot.pipeline.engine import Engine
from gatebot.settings import Settings
from gatebot.watchdog import Watchdog
from gatebot.wiring import open_engine
from tests.support.deliveries import GITHUB_SECRET, GITLAB_TOKEN
from tests.support.dockerd import Dockerd
from tests.support.faults import assert_repaired, eventually_serving
from tests.support.server import Client, ClientFactory, auth, wait_until, workspace_settings
from tests.support.setup import Setup

pytestmark = pytest.mark.faults
SLOW_STEP = 'RUN ["/bin/sleep", "60"]'


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
    store = client.app[ENGINE].store

    async def brought_back() -> bool:  # the health check after the start is done too
        steps = await store.deployments.steps(deployment)
        return steps[-1].stage == "reconcile" and "started again and healthy" in steps[-1].message

    await wait_until(brought_back, timeout=20)
    assert await eventually_serving(f"{setup.site_url}/version", "v1") == (200, "v1")
    assert (await readiness(client))[0] == 200
    active = await assert_repaired(store.deployments, docker_client, setup.name)
    assert active.id == deployment and len(await store.deployments.history(setup.name)) == 1


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


def on_dockerd(setup: Setup, dockerd: Dockerd, **server: Any) -> Settings:
    """Settings for `setup`'s project deployed on `dockerd`, as a server's (GitHub secret)."""
    return workspace_settings(
        setup,
        [setup.project(forge_repo=f"acme/{setup.name}")],
        docker={"host": dockerd.host},
        server=server,
        github={"webhook_secret": GITHUB_SECRET},
        gitlab={"webhook_token": GITLAB_TOKEN},
    )


async def test_after_dockerd_is_killed_and_started_again_the_live_release_serves_again(
    setup: Setup, start_server: ClientFactory, own_dockerd: Dockerd
) -> None:
    # the event stream's return brings it back, not the timer
    client = await start_server(on_dockerd(setup, own_dockerd, reconcile_interval=3600))
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



async def test_dockerd_killed_during_a_build_fails_the_deploy_naming_the_engine(
    setup: Setup, own_dockerd: Dockerd
) -> None:
    async with open_engine(on_dockerd(setup, own_dockerd)) as engine:
        await engine.proxy.ensure(engine.settings.projects)
        setup.repo.commit("v1")
        await deploy(engine, setup.name, trigger="test")
        dockerfile = setup.repo.work / "Dockerfile"
        plain = dockerfile.read_text()
        dockerfile.write_text(plain.replace("COPY start.sh", f"{SLOW_STEP}\nCOPY start.sh"))
        setup.repo.commit("v2")
        slow = asyncio.create_task(deploy(engine, setup.name, trigger="test"))

        async def sleeping() -> bool:  # the build's step that takes a minute has begun
            flying = await engine.store.deployments.with_status(
                Status.DEPLOYING, project=setup.name
            )
            log_file = engine.log_path(flying[0].id) if flying else None
            return log_file is not None and SLOW_STEP in log_file.read_text()

        await wait_until(sleeping)
        await asyncio.to_thread(own_dockerd.kill)
        with pytest.raises(StageFailed) as failed:
            await asyncio.wait_for(slow, 30)
        assert failed.value.stage == "build"
        unreachable = f"Docker engine at {own_dockerd.host} is not reachable"
        assert failed.value.reason.startswith(unreachable), failed.value.reason
        assert await eventually_serving(f"{setup.site_url}/version", "v1") == (200, "v1")

        await asyncio.to_thread(own_dockerd.start)
        dockerfile.write_text(plain)
        setup.repo.commit("v3")
        assert (await deploy(engine, setup.name, trigger="test")).version == 3
        assert await eventually_serving(f"{setup.site_url}/version", "v3") == (200, "v3")
        engine_client = docker.DockerClient(base_url=own_dockerd.host)
        try:
            await assert_repaired(engine.store.deployments, engine_client, setup.name)
        finally:
            engine_client.close()
        v2 = await engine.store.deployments.find(setup.name, "2")
        assert v2 is not None and v2.failed_stage == "build"
