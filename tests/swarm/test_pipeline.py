"""The deploy pipeline on the test swarm (tests/support/swarm.py), end to end: a project with
runtime = "swarm" and 2 replicas, deployed, switched, refused and rolled back by the same
pipeline as on one host, through a real nginx on 127.0.0.1 whose upstreams are the nodes'
addresses (reached from the root namespace through the test's own veth)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from gatebot.errors import StageFailed
from gatebot.model import Color, Status
from gatebot.pipeline.deploy import deploy
from gatebot.pipeline.engine import Engine, slot_of
from gatebot.pipeline.rollback import rollback
from gatebot.pipeline.upstreams import refresh_upstreams
from gatebot.runtime.base import LABEL_PROJECT
from gatebot.settings import Settings
from gatebot.wiring import open_engine
from tests.support.deploys import eventually_live, live_version
from tests.support.http import get_text, steady_load
from tests.support.settings import build_settings
from tests.support.setup import Setup
from tests.support.swarm import Swarm

pytestmark = pytest.mark.swarm

CRASHING = """#!/bin/sh
echo "fatal: no database configured" >&2
exit 3
"""


def swarm_settings(setup: Setup, swarm: Swarm, **overrides: Any) -> Settings:
    project = setup.project(runtime="swarm", replicas=2, network="bridge", **overrides)
    return build_settings(
        setup.data_dir,
        [project],
        nginx=setup.nginx,
        docker={"host": swarm.manager.socket},
        swarm={
            "registry": f"{swarm.registry}/e2e",
            "network": swarm.network,
            "registry_username": swarm.registry_user,
            "registry_password": swarm.registry_password,
            "start_timeout": 60,
        },
    )


@pytest.fixture
def services(swarm: Swarm, setup: Setup) -> Iterator[None]:
    """The project's services are removed after the test."""
    yield
    client = swarm.client()
    try:
        for service in client.services.list(filters={"label": f"{LABEL_PROJECT}={setup.name}"}):
            service.remove()
    finally:
        client.close()


@pytest.fixture
async def engine(setup: Setup, swarm: Swarm, services: None) -> AsyncIterator[Engine]:
    async with open_engine(swarm_settings(setup, swarm, watch_seconds=1.5)) as opened:
        await opened.ensure_files(opened.settings.projects)
        yield opened


def upstream_servers(setup: Setup, color: Color) -> list[str]:
    from gatebot.proxy.nginx import rendered_servers

    text = (setup.nginx.conf_dir / f"{setup.name}.conf").read_text()
    return rendered_servers(text, setup.name, color)


async def node_answers(swarm: Swarm, port: int) -> list[str]:
    return [(await get_text(f"http://{n.address}:{port}/version"))[1] for n in swarm.nodes]


async def test_deploys_across_both_nodes_switch_under_load_refuse_a_crash_and_roll_back(
    engine: Engine, setup: Setup, swarm: Swarm
) -> None:
    project = engine.settings.project(setup.name)
    runtime = engine.runtime_for(setup.name)
    blue, green = slot_of(project, Color.BLUE), slot_of(project, Color.GREEN)
    addresses = sorted(n.address for n in swarm.nodes)

    # 1. First deploy: 2 replicas, one on each node, nginx sending to both nodes.
    setup.repo.commit("v1")
    stop = asyncio.Event()
    load = asyncio.create_task(steady_load([f"{setup.site_url}/version"], stop))
    first = await deploy(engine, setup.name, trigger="test")
    stop.set()
    await load  # 503s and 502s until v1 is live: nothing was
    assert (first.status, first.color) == (Status.ACTIVE, Color.BLUE)
    assert first.image is not None and first.image.startswith(f"{swarm.registry}/e2e/")
    assert upstream_servers(setup, Color.BLUE) == [f"{a}:{blue.port}" for a in addresses]
    assert await node_answers(swarm, blue.port) == ["v1", "v1"]
    assert await live_version(setup) == "v1"
    tasks = await engine.live_tasks(await engine.store.deployments.active(setup.name))
    assert sorted((t.node, t.address, t.state) for t in tasks) == [
        (n.name, n.address, "running") for n in swarm.nodes
    ]
    # The watch window logged which upstream answered each request through nginx: both nodes.
    log = engine.proxy.access_log(setup.name).read_text().splitlines()
    answered = {line.split()[2].rpartition(":")[0] for line in log if line.split()[1] == "200"}
    assert answered == set(addresses), log[-5:]

    # 2. Second deploy under steady load: green on both nodes, not one request failed; blue is
    # scaled to 0 with its spec kept.
    setup.repo.commit("v2")
    stop = asyncio.Event()
    load = asyncio.create_task(steady_load([f"{setup.site_url}/version"], stop))
    second = await deploy(engine, setup.name, trigger="test")
    await asyncio.sleep(0.5)
    stop.set()
    result = await load
    assert result.failures == [], result.failures[:5]
    assert result.ok > 20 and result.bodies == {"v1", "v2"}
    assert second.color is Color.GREEN
    assert await eventually_live(setup, "v2") == "v2"
    assert upstream_servers(setup, Color.GREEN) == [f"{a}:{green.port}" for a in addresses]
    assert await node_answers(swarm, green.port) == ["v2", "v2"]
    kept = await runtime.state(blue.container)
    assert kept is not None and kept.retired and kept.image == first.image

    # 3. A release whose tasks crash is refused at once, with their log lines; v2 serves on.
    setup.repo.commit("v3", start_script=CRASHING)
    with pytest.raises(StageFailed) as failed:
        await deploy(engine, setup.name, trigger="test")
    assert failed.value.stage == "health"
    assert "restarted" in failed.value.reason
    assert "fatal: no database configured" in (failed.value.logs or "")
    assert await live_version(setup) == "v2"
    assert await runtime.state(blue.container) is None, "the failed release's service is gone"
    active = await engine.store.deployments.active(setup.name)
    assert active is not None and active.id == second.id

    # 4. Rollback: v1 comes back on blue, on both nodes.
    back = await rollback(engine, setup.name, trigger="test")
    assert (back.id, back.color) == (first.id, Color.BLUE)
    assert await eventually_live(setup, "v1") == "v1"
    assert await node_answers(swarm, blue.port) == ["v1", "v1"]
    assert upstream_servers(setup, Color.BLUE) == [f"{a}:{blue.port}" for a in addresses]
    kept = await runtime.state(green.container)
    assert kept is not None and kept.retired
    assert await refresh_upstreams(engine) == [], "nothing moved: no file changes"
