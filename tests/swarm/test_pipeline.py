"""The deploy pipeline on the test swarm (tests/support/swarm.py), end to end: a project with
runtime = "swarm" and 2 replicas, deployed, switched, refused and rolled back by the same
pipeline as on one host, through a real nginx on 127.0.0.1 whose upstreams are the nodes'
addresses (reached from the root namespace through the test's own veth)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gatebot.api.v1 import project_summary
from gatebot.errors import StageFailed
from gatebot.model import Color, Status
from gatebot.pipeline.deploy import deploy
from gatebot.pipeline.engine import Engine, slot_of
from gatebot.pipeline.journal import CRASH_AFTER_ENV
from gatebot.pipeline.reconcile import reconcile
from gatebot.pipeline.rollback import rollback
from gatebot.pipeline.upstreams import refresh_upstreams
from gatebot.settings import Settings
from gatebot.wiring import open_engine
from tests.support.cli import gatebot
from tests.support.deploys import eventually_live, live_version
from tests.support.http import get_text, steady_load
from tests.support.real import free_port
from tests.support.settings import build_settings, write_config
from tests.support.setup import Setup
from tests.support.swarm import Swarm

pytestmark = pytest.mark.swarm

CRASHING = """#!/bin/sh
echo "fatal: no database configured" >&2
exit 3
"""


def swarm_tables(swarm: Swarm) -> dict[str, dict[str, Any]]:
    return {
        "docker": {"host": swarm.manager.socket},
        "swarm": {
            "registry": f"{swarm.registry}/e2e",
            "network": swarm.network,
            "registry_username": swarm.registry_user,
            "registry_password": swarm.registry_password,
            "start_timeout": 60,
        },
    }


def swarm_project(setup: Setup, **overrides: Any) -> dict[str, Any]:
    return setup.project(runtime="swarm", replicas=2, network="bridge", **overrides)


def swarm_settings(setup: Setup, swarm: Swarm, **overrides: Any) -> Settings:
    return build_settings(
        setup.data_dir,
        [swarm_project(setup, **overrides)],
        nginx=setup.nginx,
        **swarm_tables(swarm),
    )


@pytest.fixture
def services(swarm: Swarm, setup: Setup) -> Iterator[None]:
    """The project's services are removed after the test."""
    yield
    swarm.remove_services(setup.name)


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
    view = await project_summary(engine, project)  # GET /api/v1/projects/{name}
    assert sorted((t["node"], t["address"], t["state"]) for t in view["active"]["tasks"]) == [
        (n.name, n.address, "running") for n in swarm.nodes
    ]

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


async def until(check: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {seconds}s for {what}")
        await asyncio.sleep(0.25)


@pytest.mark.faults
async def test_a_dead_node_drops_out_of_the_upstream_and_the_live_color_stays(
    engine: Engine, setup: Setup, swarm: Swarm
) -> None:
    """n2's dockerd killed: its task cannot move (n1 holds the slot port already), the
    service is degraded, served from n1; the refresh rewrites the upstream to n1 alone
    without touching the route, reconciliation leaves the live service be; n2 back, both."""
    project = engine.settings.project(setup.name)
    blue = slot_of(project, Color.BLUE)
    n1, n2 = swarm.nodes
    setup.repo.commit("v1")
    first = await deploy(engine, setup.name, trigger="test")
    assert upstream_servers(setup, Color.BLUE) == [f"{n.address}:{blue.port}" for n in swarm.nodes]

    swarm.kill_node(n2.name)
    try:

        async def dropped() -> bool:
            await refresh_upstreams(engine)
            return upstream_servers(setup, Color.BLUE) == [f"{n1.address}:{blue.port}"]

        await until(dropped, 60, "the refresh to drop n2")
        assert engine.proxy.route(setup.name) is Color.BLUE
        assert await eventually_live(setup, "v1") == "v1"
        stop = asyncio.Event()
        load = asyncio.create_task(steady_load([f"{setup.site_url}/version"], stop))
        await asyncio.sleep(1.0)
        stop.set()
        result = await load
        assert result.failures == [] and result.ok > 20, result.failures[:3]
        state = await engine.runtime_for(setup.name).state(blue.container)
        assert state is not None and state.degraded
        report = await reconcile(engine)
        assert (report.restarted, report.lost, report.removed_containers) == ([], [], [])
        active = await engine.store.deployments.active(setup.name)
        assert active is not None and active.id == first.id
        tasks = await engine.live_tasks(active)
        assert {t.node for t in tasks if t.state == "running"} == {"n1"}
    finally:
        swarm.restart_node(n2.name)

    async def both() -> bool:
        await refresh_upstreams(engine)
        return upstream_servers(setup, Color.BLUE) == [
            f"{n.address}:{blue.port}" for n in swarm.nodes
        ]

    await until(both, 90, "n2 back in the upstream")
    assert await node_answers(swarm, blue.port) == ["v1", "v1"]


@pytest.mark.faults
async def test_reconciliation_scales_the_live_service_back_up_and_removes_a_stray_one(
    engine: Engine, setup: Setup, swarm: Swarm
) -> None:
    """Swarm-mode reconciliation: the live service scaled to 0 behind gatebot's back is
    scaled up again and health-checked on both nodes; a gatebot service that belongs to no
    deployment the database knows (a stray) is removed; the route stays on the live color."""
    project = engine.settings.project(setup.name)
    runtime = engine.runtime_for(setup.name)
    blue, green = slot_of(project, Color.BLUE), slot_of(project, Color.GREEN)
    setup.repo.commit("v1")
    first = await deploy(engine, setup.name, trigger="test")
    assert first.image is not None
    stray = replace(first, id=first.id + 100)
    await runtime.run(engine.container_spec(project, stray, first.image, green))
    client = swarm.client()
    try:
        client.services.get(blue.container).scale(0)
    finally:
        client.close()

    async def scaled_away() -> bool:
        state = await runtime.state(blue.container)
        return state is not None and not state.running and not state.degraded

    await until(scaled_away, 30, "the live service to scale to 0")
    report = await reconcile(engine)
    assert report.restarted == [first.id] and report.lost == []
    assert report.removed_containers == [green.container]
    assert await runtime.state(green.container) is None, "the stray service is gone"
    assert await node_answers(swarm, blue.port) == ["v1", "v1"]
    assert engine.proxy.route(setup.name) is Color.BLUE
    assert await eventually_live(setup, "v1") == "v1"
    active = await engine.store.deployments.active(setup.name)
    assert active is not None and active.id == first.id
    notes = [s.message for s in await engine.store.deployments.steps(first.id)]
    assert any("started again and healthy" in n for n in notes), notes


@pytest.mark.faults
async def test_serve_killed_mid_deploy_is_reconciled_at_its_next_start(
    setup: Setup, swarm: Swarm, services: None
) -> None:
    """`gatebot serve` deploys v2 (polled at start-up: no webhook secret) and dies by SIGKILL
    once its health stage is done; v1 serves throughout; the next start fails the deployment,
    removes its service and keeps v1 live on both nodes."""
    async with open_engine(swarm_settings(setup, swarm)) as engine:
        await engine.ensure_files(engine.settings.projects)
        setup.repo.commit("v1")
        before = setup.nginx.worker_pids()
        first = await deploy(engine, setup.name, trigger="test")

    async def reloaded() -> bool:  # the first deploy's new upstream applied by every worker
        return not setup.nginx.worker_pids() & before

    await until(reloaded, 30, "nginx's workers from before the first deploy to exit")
    project = engine.settings.project(setup.name)
    green = slot_of(project, Color.GREEN)
    port = free_port()
    server = {"listen": f"127.0.0.1:{port}"}

    def config(**overrides: Any) -> Path:
        projects = [swarm_project(setup, **overrides)]
        path = setup.tmp_path / "gatebot.toml"
        return write_config(path, setup.data_dir, projects, nginx=setup.nginx, server=server,
                            **swarm_tables(swarm))  # fmt: skip

    setup.repo.commit("v2")
    stop = asyncio.Event()
    load = asyncio.create_task(steady_load([f"{setup.site_url}/version"], stop))
    output = setup.tmp_path / "serve.log"
    with open(output, "wb") as sink:
        killed = subprocess.Popen(
            [sys.executable, "-m", "gatebot", "-c", str(config()), "serve"],
            env={**os.environ, CRASH_AFTER_ENV: "health"},
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    try:
        code = await asyncio.to_thread(killed.wait, 120)
    except subprocess.TimeoutExpired:
        killed.kill()
        code = killed.wait()
    assert code == -signal.SIGKILL, output.read_text()[-3000:]
    async with open_engine(swarm_settings(setup, swarm)) as engine:
        interrupted = (await engine.store.deployments.history(setup.name, limit=1))[0]
        assert (interrupted.version, interrupted.status) == (2, Status.DEPLOYING)
        state = await engine.runtime_for(setup.name).state(green.container)
        assert state is not None and state.running, "v2's service was left running"

    output = setup.tmp_path / "serve-again.log"
    with open(output, "wb") as sink:
        restarted = subprocess.Popen(
            [sys.executable, "-m", "gatebot", "-c", str(config(poll_interval=0)), "serve"],
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    db = str(setup.data_dir / "gatebot.db")
    try:
        # Start-up reconciliation fails v2's deployment; the interrupted job is queued again
        # once and deploys the same commit as v3.
        async def redeployed() -> bool:
            return (3, "ACTIVE") in deployment_rows(db)

        try:
            await until(redeployed, 90, "the interrupted job to deploy again")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {output.read_text()[-4000:]}") from None
    finally:
        restarted.send_signal(signal.SIGTERM)
        await asyncio.to_thread(restarted.wait, 60)
    errors = output.read_text()
    stop.set()
    result = await load
    assert result.failures == [] and result.ok > 20, result.failures[:3]
    assert result.bodies == {"v1", "v2"}
    assert restarted.returncode == 0, errors[-2000:]
    assert deployment_rows(db) == [(1, "ROLLED_BACK"), (2, "FAILED"), (3, "ACTIVE")]
    async with open_engine(swarm_settings(setup, swarm)) as engine:
        failed = await engine.store.deployments.find(setup.name, "2")
        assert failed is not None and failed.error is not None
        assert "interrupted" in failed.error and failed.failed_stage == "health"
        runtime = engine.runtime_for(setup.name)
        kept = await runtime.state(slot_of(project, Color.BLUE).container)
        assert kept is not None and kept.retired and kept.image == first.image
        active = await engine.store.deployments.active(setup.name)
        assert active is not None and active.color is Color.GREEN
        tasks = await engine.live_tasks(active)
        assert sorted((t.node, t.state) for t in tasks) == [("n1", "running"), ("n2", "running")]
        assert len(await runtime.managed_containers(setup.name)) == 2  # blue kept, green
    assert await live_version(setup) == "v2"
    status = await asyncio.to_thread(gatebot, "-c", str(config()), "status", setup.name)
    assert status.returncode == 0, status.stderr
    for node in swarm.nodes:
        assert f"  task on {node.name} ({node.address}): running" in status.stdout


def deployment_rows(db: str) -> list[tuple[int, str]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT version, status FROM deployments ORDER BY id").fetchall()
    return [(int(v), str(st)) for v, st in rows]
