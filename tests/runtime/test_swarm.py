"""SwarmRuntime against a real 2-node swarm (tests/support/swarm.py): a service across both
nodes answering on each node's address, an update, a failing release reported with its log
lines, scale to 0 and back up from the kept spec, a node's dockerd killed."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from gatebot.errors import HealthCheckFailed, NameConflict, RuntimeFailure
from gatebot.pipeline.health import wait_healthy
from gatebot.runtime.base import LABEL_MANAGED, LABEL_PROJECT, BuildSpec, ContainerSpec, Endpoint
from gatebot.runtime.swarm import SwarmRuntime
from gatebot.settings import HealthSettings, SwarmSettings
from tests.support.real import BUSYBOX, SAMPLE_APP
from tests.support.swarm import Swarm

pytestmark = pytest.mark.swarm

_names = itertools.count(1)
_ports = itertools.count(3100, 2)
FAILING_START = """#!/bin/sh
echo "booting release $RELEASE"
echo "fatal: DATABASE_URL is not set" >&2
exit 3
"""


def test_the_test_swarm_has_two_ready_nodes_a_registry_and_an_overlay(swarm: Swarm) -> None:
    client = swarm.client()
    try:
        nodes = client.nodes.list()
        assert sorted(n.attrs["Description"]["Hostname"] for n in nodes) == ["n1", "n2"]
        assert {n.attrs["Status"]["State"] for n in nodes} == {"ready"}
        assert len({n.id for n in nodes}) == 2
        network = client.networks.get(swarm.network)
        assert network.attrs["Driver"] == "overlay"
        assert network.attrs["IPAM"]["Config"][0]["Subnet"].startswith("10.213.")
    finally:
        client.close()
    with pytest.raises(urllib.error.HTTPError, match="401"):
        urllib.request.urlopen(f"http://{swarm.registry}/v2/", timeout=2)


@pytest.fixture
async def runtime(swarm: Swarm) -> AsyncIterator[SwarmRuntime]:
    settings = SwarmSettings(
        registry=f"{swarm.registry}/t",
        network=swarm.network,
        registry_username=swarm.registry_user,
        registry_password=swarm.registry_password,
    )
    opened = SwarmRuntime(swarm.manager.socket, settings)
    yield opened
    await opened.close()


@pytest.fixture
def project(swarm: Swarm) -> Iterator[str]:
    """A project name unique in this run; its services are removed afterwards."""
    name = f"sw{next(_names)}"
    yield name
    swarm.remove_services(name)


def context(tmp: Path, version: str, *, failing: bool = False) -> Path:
    """The sample app (busybox httpd FROM scratch) serving `version` at /version."""
    folder = tmp / f"context-{version}"
    shutil.copytree(SAMPLE_APP, folder)
    shutil.copy2(BUSYBOX, folder / "busybox")
    (folder / "www" / "version").write_text(version + "\n")
    if failing:
        (folder / "start.sh").write_text(FAILING_START)
    return folder


async def build(runtime: SwarmRuntime, project: str, tmp: Path, version: str, **kw: bool) -> str:
    tag = f"{runtime.image_repository(project)}:{version}-0123456789ab"
    output: list[str] = []
    await runtime.build(
        BuildSpec(context=context(tmp, version, **kw), dockerfile="Dockerfile", tag=tag),
        output.append,
    )
    await asyncio.sleep(0)  # the output lines are delivered through the loop
    assert any("digest: sha256:" in line for line in output), output
    return tag


def slot(project: str, image: str, port: int, replicas: int = 2) -> ContainerSpec:
    return ContainerSpec(
        name=f"gatebot-{project}-blue",
        image=image,
        labels={LABEL_MANAGED: "true", LABEL_PROJECT: project, "gatebot.deployment": "1"},
        env={"RELEASE": image},
        network="bridge",
        host_port=port,
        container_port=3000,
        replicas=replicas,
        stop_timeout=2,
    )


def fetch(address: str, port: int, path: str = "/version") -> str:
    """One GET from the root namespace to a node's address (through the test's own veth)."""
    with urllib.request.urlopen(f"http://{address}:{port}{path}", timeout=2) as answer:
        return str(answer.read().decode().strip())


def answers(address: str, port: int) -> bool:
    try:
        fetch(address, port)
    except OSError:
        return False
    return True


async def until(check: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {seconds}s for {what}")
        await asyncio.sleep(0.25)


async def test_two_replicas_run_a_task_on_each_node_each_answering_on_its_address(
    swarm: Swarm, runtime: SwarmRuntime, project: str, tmp_path: Path
) -> None:
    image = await build(runtime, project, tmp_path, "v1")
    assert await runtime.image_exists(image)
    assert not await runtime.image_exists(image.replace(":v1-", ":v9-"))
    port = next(_ports)

    await runtime.run(slot(project, image, port))

    state = await runtime.state(f"gatebot-{project}-blue")
    assert state is not None
    assert (state.running, state.status, state.restart_count) == (True, "running", 0)
    assert state.image == image and state.managed
    endpoints = await runtime.endpoints(f"gatebot-{project}-blue", port)
    assert endpoints == [Endpoint(n.address, port, n.name) for n in swarm.nodes]
    for endpoint in endpoints:
        assert fetch(endpoint.address, port) == "v1"
    listed = await runtime.managed_containers(project)
    assert [s.name for s in listed] == [f"gatebot-{project}-blue"]
    tasks = await runtime.tasks(f"gatebot-{project}-blue")
    assert sorted((t.node, t.address, t.state) for t in tasks) == [
        ("n1", swarm.nodes[0].address, "running"),
        ("n2", swarm.nodes[1].address, "running"),
    ]

    # The service as created: host-mode port, dnsrr, init, on the overlay, pinned image.
    client = swarm.client()
    try:
        attrs = client.services.get(f"gatebot-{project}-blue").attrs["Spec"]
    finally:
        client.close()
    assert attrs["EndpointSpec"]["Mode"] == "dnsrr"
    assert attrs["EndpointSpec"]["Ports"][0]["PublishMode"] == "host"
    assert attrs["TaskTemplate"]["ContainerSpec"]["Init"] is True
    assert attrs["TaskTemplate"]["ContainerSpec"]["Image"].startswith(f"{image}@sha256:")
    assert attrs["TaskTemplate"]["ContainerSpec"]["StopGracePeriod"] == 2_000_000_000

    # A second release on the same service: every node answers with it.
    image2 = await build(runtime, project, tmp_path, "v2")
    await runtime.run(slot(project, image2, port))
    state = await runtime.state(f"gatebot-{project}-blue")
    assert state is not None and state.running and state.image == image2
    assert [fetch(n.address, port) for n in swarm.nodes] == ["v2", "v2"]


async def test_a_failing_release_is_reported_with_its_log_lines(
    swarm: Swarm, runtime: SwarmRuntime, project: str, tmp_path: Path
) -> None:
    image = await build(runtime, project, tmp_path, "bad", failing=True)
    port = next(_ports)
    name = f"gatebot-{project}-blue"

    started = time.monotonic()
    await runtime.run(slot(project, image, port))
    assert time.monotonic() - started < 30  # returns at the first exit, not at start_timeout

    state = await runtime.state(name)
    assert state is not None
    assert not state.running and state.restart_count >= 1 and state.exit_code == 3
    logs = await runtime.logs(name)
    assert "fatal: DATABASE_URL is not set" in logs
    assert f"booting release {image}" in logs  # the project's env reached the task
    assert "[n1]" in logs or "[n2]" in logs
    assert "task failed: task: non-zero exit (3)" in logs
    # The pipeline's health check, unchanged, fails at once with those lines.
    with pytest.raises(HealthCheckFailed, match="restarted") as failed:
        await wait_healthy(runtime, name, port, HealthSettings(retries=3, interval=0.1))
    assert "fatal: DATABASE_URL is not set" in (failed.value.logs or "")
    assert "DATABASE_URL" not in str(failed.value), "log lines travel apart from the reason"
    # A crash-looping task is "running" for an instant between restarts: its node must drop
    # out of the endpoints once it has failed again.
    seen = [await runtime.endpoints(name, port)]
    while seen[-1] and len(seen) < 50:
        await asyncio.sleep(0.1)
        seen.append(await runtime.endpoints(name, port))
    assert seen[-1] == [], seen


async def test_scale_to_zero_keeps_the_spec_and_start_scales_it_back_up(
    swarm: Swarm, runtime: SwarmRuntime, project: str, tmp_path: Path
) -> None:
    image = await build(runtime, project, tmp_path, "v1")
    port = next(_ports)
    name = f"gatebot-{project}-blue"
    await runtime.run(slot(project, image, port))

    await runtime.retire(name, timeout=2)

    state = await runtime.state(name)
    assert state is not None
    assert (state.running, state.retired, state.image) == (False, True, image)
    assert await runtime.endpoints(name, port) == []
    assert not any(answers(n.address, port) for n in swarm.nodes)

    await runtime.start(name)

    state = await runtime.state(name)
    assert state is not None and state.running and state.image == image
    assert [fetch(n.address, port) for n in swarm.nodes] == ["v1", "v1"]
    await runtime.retire(f"gatebot-{project}-green", timeout=1)  # absent is fine

    # stop_and_remove: for what must not come back; every node's port is free afterwards.
    await runtime.stop_and_remove(name, timeout=1)
    assert await runtime.state(name) is None
    assert not any(answers(n.address, port) for n in swarm.nodes)
    await runtime.stop_and_remove(name, timeout=1)  # absent is fine


async def test_wrong_registry_credentials_fail_the_push_and_the_error_does_not_show_them(
    swarm: Swarm, project: str, tmp_path: Path
) -> None:
    wrong = f"not-{swarm.registry_password}"
    settings = SwarmSettings(
        registry=f"{swarm.registry}/t",
        network=swarm.network,
        registry_username=swarm.registry_user,
        registry_password=wrong,
    )
    runtime = SwarmRuntime(swarm.manager.socket, settings)
    try:
        with pytest.raises(RuntimeFailure) as caught:
            await build(runtime, project, tmp_path, "v1")
    finally:
        await runtime.close()
    assert "401" in str(caught.value) or "unauthorized" in str(caught.value).lower()
    assert wrong not in str(caught.value)


async def test_a_service_gatebot_did_not_create_is_left_alone(
    swarm: Swarm, runtime: SwarmRuntime, project: str, tmp_path: Path
) -> None:
    image = await build(runtime, project, tmp_path, "v1")
    client = swarm.client()
    try:
        client.services.create(
            image, name=f"gatebot-{project}-blue", labels={LABEL_PROJECT: project}
        )
    finally:
        client.close()
    with pytest.raises(NameConflict, match="not created by gatebot"):
        await runtime.run(slot(project, image, next(_ports)))


async def test_a_dead_nodes_task_is_rescheduled_and_its_endpoint_dropped(
    swarm: Swarm, runtime: SwarmRuntime, project: str, tmp_path: Path
) -> None:
    """Two services: `one` with 1 replica (on n2: n1 is drained while it starts) moves to n1
    when n2's dockerd dies; `both` with 2 replicas cannot move its n2 task (n1 holds the
    host-mode port already), so it runs on n1 alone until n2 is back."""
    image = await build(runtime, project, tmp_path, "v1")
    one, one_port = f"gatebot-{project}-blue", next(_ports)
    both, both_port = f"gatebot-{project}-green", next(_ports)
    manager, worker = swarm.nodes
    client = swarm.client()
    try:
        n1 = next(n for n in client.nodes.list() if n.attrs["Description"]["Hostname"] == "n1")
        n1.update({**n1.attrs["Spec"], "Availability": "drain"})
        try:
            await runtime.run(slot(project, image, one_port, replicas=1))
        finally:
            n1.reload()
            n1.update({**n1.attrs["Spec"], "Availability": "active"})
        await runtime.run(replace(slot(project, image, both_port), name=both))
        assert await runtime.endpoints(one, one_port) == [Endpoint(worker.address, one_port, "n2")]
        assert len(await runtime.endpoints(both, both_port)) == 2

        swarm.kill_node(worker.name)
        try:

            async def moved() -> bool:
                return await runtime.endpoints(one, one_port) == [
                    Endpoint(manager.address, one_port, "n1")
                ]

            await until(moved, 60, "the task to move to n1")
            assert fetch(manager.address, one_port) == "v1"
            state = await runtime.state(one)
            assert state is not None and state.running
            assert await runtime.endpoints(both, both_port) == [
                Endpoint(manager.address, both_port, "n1")
            ]
            state = await runtime.state(both)
            assert state is not None and not state.running and state.restart_count == 0
        finally:
            swarm.restart_node(worker.name)

        async def both_back() -> bool:
            state = await runtime.state(both)
            return state is not None and state.running

        await until(both_back, 60, "n2 back with its task of the 2-replica service")
        assert [fetch(n.address, both_port) for n in swarm.nodes] == ["v1", "v1"]
    finally:
        client.close()
