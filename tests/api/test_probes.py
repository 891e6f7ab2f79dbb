"""/readyz and the server's start: the queue's dispatcher is part of readiness, and a start
that fails for any reason (Docker unreachable, nginx refusing the reconciled files) is tried
again while the server keeps answering, until the queue runs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from gatebot import app as app_module
from gatebot.api.keys import ENGINE, QUEUE
from gatebot.errors import ProxyError
from gatebot.model import JobKind, Origin, OriginKind
from gatebot.pipeline.engine import Engine
from gatebot.pipeline.reconcile import ReconcileReport, reconcile
from gatebot.store.jobs import NewJob
from tests.support.deliveries import github_delivery, github_push_payload
from tests.support.deploys import eventually_live
from tests.support.server import ClientFactory
from tests.support.setup import Setup, Workspace


async def eventually(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll `predicate` until it holds (a queue's state has no event to wait on)."""
    async with asyncio.timeout(timeout):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.02)


async def readiness(client: Any) -> tuple[int, dict[str, Any]]:
    response = await client.get("/readyz")
    return response.status, await response.json()


async def test_readyz_reports_the_queue_and_a_dead_dispatcher_is_not_ready(
    start_server: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await start_server()
    status, body = await readiness(client)
    assert status == 200 and body == {
        "ready": True,
        "checks": {"database": "ok", "docker": "ok", "releases": "ok", "queue": "ok"},
    }
    queue = client.app[QUEUE]
    assert queue.alive

    # The dispatcher ends (nothing it catches: a cancellation from within its store call).
    async def cancelled() -> list[Any]:
        raise asyncio.CancelledError

    monkeypatch.setattr(client.app[ENGINE].store.jobs, "queued", cancelled)
    queue.wake()
    await eventually(lambda: not queue.alive)
    status, body = await readiness(client)
    assert status == 503 and body["ready"] is False
    assert body["checks"]["queue"].startswith("stopped: the dispatcher has died")
    assert body["checks"]["database"] == "ok" and body["checks"]["docker"] == "ok"


async def test_a_paused_queue_is_ready_and_says_so(start_server: ClientFactory) -> None:
    client = await start_server(queue={"paused": True})
    status, body = await readiness(client)
    assert status == 200 and body["checks"]["queue"] == "paused"


async def test_docker_unreachable_at_start_is_reported_and_webhooks_still_queue(
    start_offline: ClientFactory, workspace: Workspace
) -> None:
    client = await start_offline()  # its Docker client points at a socket no one listens on
    status, body = await readiness(client)
    assert status == 503
    assert body["checks"]["docker"].startswith("unavailable: Docker engine at")
    assert body["checks"]["queue"].startswith("not started: waiting for the Docker engine")
    body_bytes, headers = github_delivery(
        "push", github_push_payload(f"acme/{workspace.name}", "a" * 40)
    )
    accepted = await client.post("/webhooks/github", data=body_bytes, headers=headers)
    assert accepted.status == 202  # durable: it runs once Docker answers
    assert [j.state for j in await client.app[ENGINE].store.jobs.recent()] == ["queued"]


async def test_a_start_that_fails_with_any_error_is_tried_again_until_the_queue_runs(
    start_server: ClientFactory, setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app_module, "STARTUP_RETRY_SECONDS", 0.1)
    real_reconcile = reconcile
    calls: list[int] = []
    failing = [True]

    async def nginx_refuses(engine: Engine, projects: list[str] | None = None) -> ReconcileReport:
        calls.append(1)
        if failing[0]:
            raise ProxyError("nginx rejected the configuration: test")
        return await real_reconcile(engine, projects)

    monkeypatch.setattr(app_module, "reconcile", nginx_refuses)
    client = await start_server()  # serves although the start failed
    await eventually(lambda: len(calls) >= 3)  # and it keeps trying
    queue = client.app[QUEUE]
    assert not queue.started
    status, body = await readiness(client)
    assert status == 503 and body["checks"]["docker"] == "ok"
    assert body["checks"]["queue"] == (
        "not started: start-up failed: nginx rejected the configuration: test"
    )

    sha = setup.repo.commit("v1")
    [job] = await queue.submit(
        [
            NewJob(
                project=setup.name,
                kind=JobKind.DEPLOY,
                origin=Origin(kind=OriginKind.CLI, who="t"),
                sha=sha,
            )
        ]
    )
    failing[0] = False
    await eventually(lambda: queue.alive)
    assert (await readiness(client))[0] == 200
    await asyncio.wait_for(queue.drain(), 120)
    assert (await client.app[ENGINE].store.jobs.require(job.id)).state == "succeeded"
    assert await eventually_live(setup, "v1") == "v1"
