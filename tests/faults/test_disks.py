"""Full disks during a deploy: conf_dir (nginx's files and route markers) and data_dir (the
database, checkouts, logs) on small tmpfs mounts filled up by the test. The live release keeps
serving, the deploy fails naming the cause, state is repaired, and once space is freed the next
deploy works."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import docker
import pytest

from gatebot.errors import StageFailed
from gatebot.pipeline.deploy import deploy
from gatebot.pipeline.engine import Engine
from gatebot.pipeline.journal import JournalEvent
from gatebot.wiring import open_engine
from tests.support.deploys import eventually_live
from tests.support.faults import assert_repaired, fill, load_through, tmpfs_on
from tests.support.http import wait_listening
from tests.support.setup import Setup

pytestmark = pytest.mark.faults


@pytest.fixture
def small_conf_dir(setup: Setup) -> Iterator[None]:
    """nginx's conf_dir (empty so far: nginx started without gatebot's files) on 1 MiB."""
    with tmpfs_on(setup.nginx.conf_dir, "1m"):
        yield


@pytest.fixture
def small_data_dir(setup: Setup) -> Iterator[None]:
    with tmpfs_on(setup.data_dir, "32m"):
        yield


@asynccontextmanager
async def v1_live_v2_pushed(setup: Setup) -> AsyncIterator[Engine]:
    """An engine for `setup`, v1 deployed and live, v2 pushed."""
    async with open_engine(setup.settings()) as engine:
        await engine.proxy.ensure(engine.settings.projects)
        await wait_listening(setup.site_port)
        setup.repo.commit("v1")
        await deploy(engine, setup.name, trigger="test")
        setup.repo.commit("v2")
        yield engine


async def test_a_full_conf_dir_fails_the_switch_naming_it_and_the_live_release_serves(
    setup: Setup, small_conf_dir: None, docker_client: docker.DockerClient
) -> None:
    conf_dir = setup.nginx.conf_dir
    async with v1_live_v2_pushed(setup) as engine:
        async with load_through(f"{setup.site_url}/version") as load:
            filler = fill(conf_dir)
            try:
                with pytest.raises(StageFailed) as failed:
                    await deploy(engine, setup.name, trigger="test")
            finally:
                filler.unlink()
        assert load.failures == [], load.failures[:3]
        assert load.ok > 0 and load.bodies == {"v1"}
        assert failed.value.stage == "switch"
        assert failed.value.reason.startswith(
            f"cannot set the route marker of {setup.name}: No space left on device [ENOSPC] "
            f"({conf_dir}/"
        ), failed.value.reason
        active = await assert_repaired(engine.store.deployments, docker_client, setup.name)
        assert active.version == 1
        assert not list(conf_dir.glob(".*.tmp")), "no half-written file left"

        setup.repo.commit("v3")
        assert (await deploy(engine, setup.name, trigger="test")).version == 3
        assert await eventually_live(setup, "v3") == "v3"


async def test_a_full_data_dir_fails_the_deploy_naming_it_and_the_live_release_serves(
    setup: Setup, small_data_dir: None, docker_client: docker.DockerClient
) -> None:
    async with v1_live_v2_pushed(setup) as engine:
        fillers: list[Path] = []

        def disk_full_from_health_to_the_failure(event: JournalEvent) -> None:
            if event.kind == "start" and event.stage == "health":
                fillers.append(fill(setup.data_dir))  # the new release is not live yet
            elif event.kind == "failed" and fillers:  # space comes back: the FAILED record
                fillers.pop().unlink()

        async with load_through(f"{setup.site_url}/version") as load:
            try:
                with pytest.raises(StageFailed) as failed:
                    await deploy(
                        engine,
                        setup.name,
                        trigger="test",
                        listeners=[disk_full_from_health_to_the_failure],
                    )
            finally:
                for filler in fillers:
                    filler.unlink()
        assert load.failures == [], load.failures[:3]
        assert await eventually_live(setup, "v1") == "v1"
        assert (failed.value.stage, failed.value.reason) == (
            "record",
            "database error: database or disk is full",
        )
        active = await assert_repaired(engine.store.deployments, docker_client, setup.name)
        assert active.version == 1
        v2 = await engine.store.deployments.find(setup.name, "2")
        assert v2 is not None and (v2.failed_stage, v2.error) == (
            "record",
            "database error: database or disk is full",
        )

        setup.repo.commit("v3")
        assert (await deploy(engine, setup.name, trigger="test")).version == 3
        assert await eventually_live(setup, "v3") == "v3"
