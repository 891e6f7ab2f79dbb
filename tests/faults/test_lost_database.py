"""A missing database at start (issue 11 defect 4): gatebot must not tear down the releases it
no longer has a record of. It refuses to reconcile or deploy, and says why in the log, on
/readyz and to every deploy, until `gatebot reconcile --adopt` records what runs."""

from __future__ import annotations

import asyncio
import logging

import docker
import pytest

from gatebot.api.keys import ENGINE, QUEUE
from gatebot.model import JobState, Status
from tests.support.cli import config_file, gatebot
from tests.support.deploys import container_names, live_version
from tests.support.faults import assert_repaired, load_through
from tests.support.server import ClientFactory, auth
from tests.support.setup import Setup

pytestmark = pytest.mark.faults


async def test_a_deleted_database_leaves_the_live_release_serving_until_it_is_adopted(
    setup: Setup,
    start_server: ClientFactory,
    docker_client: docker.DockerClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = config_file(setup)
    sha1 = setup.repo.commit("v1")
    first = await asyncio.to_thread(gatebot, "--config", str(config), "deploy", setup.name)
    assert first.returncode == 0, first.stderr
    live_container = f"gatebot-{setup.name}-blue"
    database = setup.data_dir / "gatebot.db"
    for path in setup.data_dir.glob("gatebot.db*"):
        path.unlink()

    async with load_through(f"{setup.site_url}/version") as load:
        with caplog.at_level(logging.ERROR, logger="gatebot.app"):
            client = await start_server()
        engine = client.app[ENGINE]
        assert client.app[QUEUE].alive
        [error] = [r for r in caplog.records if "records no deployment" in r.getMessage()]
        assert error.levelno == logging.ERROR
        assert f"containers {live_container}" in error.getMessage()
        assert "reconcile --adopt" in error.getMessage()

        ready = await client.get("/readyz")
        assert ready.status == 503
        check = (await ready.json())["checks"]["releases"]
        assert check.startswith(f"unrecorded: the database {database} records no deployment")
        assert live_container in check and f"live nginx routes of {setup.name}" in check

        setup.repo.commit("v2")
        headers = await auth(client)
        body = {"projectId": setup.name}
        answer = await client.post("/api/v1/deploy", json=body, headers=headers)
        assert answer.status == 202, await answer.text()
        await client.app[QUEUE].drain()
        [job] = await engine.store.jobs.recent()
        assert job.state is JobState.FAILED
        assert job.error and "records no deployment" in job.error

        refused = await asyncio.to_thread(gatebot, "--config", str(config), "deploy", setup.name)
        assert refused.returncode == 1
        [line] = refused.stderr.strip().splitlines()
        assert line.startswith(f"gatebot: the database {database} records no deployment")
        assert "Traceback" not in refused.stderr

        assert container_names(docker_client, setup.name) == {live_container}
        assert docker_client.containers.get(live_container).status == "running"
        assert await live_version(setup) == "v1"
        assert await engine.store.deployments.history(setup.name) == []

        adopted = await asyncio.to_thread(
            gatebot, "--config", str(config), "reconcile", "--adopt"
        )
        assert adopted.returncode == 0, adopted.stderr
        assert f"{setup.name}: adopted v1 ({sha1[:12]}) on blue as live\n" in adopted.stdout

    assert load.failures == [], f"{len(load.failures)} of {load.ok} failed: {load.failures[:3]}"
    assert load.ok > 20 and set(load.bodies) == {"v1"}
    status = await asyncio.to_thread(gatebot, "--config", str(config), "status", setup.name)
    assert status.stdout.startswith(f"{setup.name}: v1 {sha1[:12]} on blue")
    ready = await client.get("/readyz")  # the running server sees it at once
    assert ready.status == 200, await ready.text()

    setup.repo.commit("v3")
    answer = await client.post("/api/v1/deploy", json=body, headers=headers)
    assert answer.status == 202
    await client.app[QUEUE].drain()
    assert await live_version(setup) == "v3"
    active = await assert_repaired(engine.store.deployments, docker_client, setup.name)
    assert active.version == 2 and active.color == "green"
    history = await engine.store.deployments.history(setup.name)
    assert [(d.version, d.status) for d in history] == [
        (2, Status.ACTIVE),
        (1, Status.ROLLED_BACK),
    ]
