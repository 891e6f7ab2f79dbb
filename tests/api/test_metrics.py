"""GET /metrics in Prometheus' text format, and numbers that move when things happen."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from gatebot.api.keys import QUEUE
from gatebot.api.metrics import webhook_outcome
from gatebot.app import create_app
from gatebot.forges.base import (
    CommitRef,
    DeployState,
    ForgeClient,
    ForgeError,
    RepoRef,
    StatusTarget,
)
from gatebot.gate import Check
from gatebot.metrics import Metrics, counted, event_label
from tests.forges import fixture
from tests.support.deliveries import github_delivery, github_push_payload
from tests.support.http import raw_exchange, status_of
from tests.support.server import ClientFactory, auth, post_github, server_settings
from tests.support.setup import Setup, Workspace

Client = TestClient[Any, Any]


async def scrape(client: Client) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_move_when_webhooks_arrive_and_deploys_run(
    start_server: ClientFactory, setup: Setup
) -> None:
    client = await start_server(health={"retries": 5})
    before = await scrape(client)
    assert value(before, "gatebot_jobs", state="queued") == 0
    assert value(before, "gatebot_queue_depth") == 0
    assert value(before, "gatebot_deploy_duration_seconds_count", outcome="succeeded") == 0
    forge_ok = frozenset({("forge", "github"), ("outcome", "ok")})
    assert ("gatebot_forge_api_calls_total", forge_ok) in before

    # One push deploys (webhook, queue, pipeline); one badly signed delivery is refused.
    sha = setup.repo.commit("v1")
    body, headers = github_delivery("push", github_push_payload(f"acme/{setup.name}", sha))
    assert (await client.post("/webhooks/github", data=body, headers=headers)).status == 202
    body, headers = github_delivery(
        "push", github_push_payload(f"acme/{setup.name}", sha), secret="wrong"
    )
    assert (await client.post("/webhooks/github", data=body, headers=headers)).status == 401
    await client.app[QUEUE].drain()
    # A second deploy, from the API, fails its health check.
    setup.repo.commit("v2", healthy=False)
    response = await client.post(
        "/api/v1/deploy",
        json={"projectId": setup.name},
        headers=await auth(client),
    )
    assert response.status == 202
    await client.app[QUEUE].drain()

    after = await scrape(client)
    webhook = "gatebot_webhooks_received_total"
    assert value(after, webhook, forge="github", event="push", outcome="queued") == 1
    assert value(after, webhook, forge="github", event="push", outcome="unauthorized") == 1
    assert value(after, "gatebot_jobs", state="succeeded") == 1
    assert value(after, "gatebot_jobs", state="failed") == 1
    assert value(after, "gatebot_jobs_finished_total", kind="deploy", state="succeeded") == 1
    assert value(after, "gatebot_deploy_duration_seconds_count", outcome="succeeded") == 1
    assert value(after, "gatebot_deploy_duration_seconds_count", outcome="failed") == 1
    assert value(after, "gatebot_deploy_duration_seconds_sum", outcome="succeeded") > 0.5
    assert value(after, "gatebot_nginx_reloads_total", outcome="ok") >= 1
    healthy = value(after, "gatebot_health_check_latency_seconds_count", outcome="healthy")
    unhealthy = value(after, "gatebot_health_check_latency_seconds_count", outcome="unhealthy")
    assert healthy >= 1 and unhealthy >= 1  # the v2 app answers 404 at /health
    assert value(after, "gatebot_queue_depth") == 0


async def test_queue_depth_counts_waiting_jobs(start_server: ClientFactory, setup: Setup) -> None:
    client = await start_server(queue={"paused": True})
    headers = await auth(client)
    for _ in range(3):
        response = await client.post(
            "/api/v1/deploy", json={"projectId": setup.name}, headers=headers
        )
        assert response.status == 202
    samples = await scrape(client)
    assert value(samples, "gatebot_queue_depth") == 3
    assert value(samples, "gatebot_jobs", state="queued") == 3


def test_webhook_labels_are_bounded() -> None:
    assert event_label("gitlab", "Push Hook") == "push_hook"
    assert event_label("github", "push") == "push"
    assert event_label("github", "made-up-" + "x" * 500) == "other"
    assert event_label("github", None) == "none"


def test_webhook_outcome_is_what_the_handler_recorded_else_the_status() -> None:
    assert webhook_outcome(200, "duplicate") == "duplicate"
    assert webhook_outcome(200, None) == "ok"
    assert webhook_outcome(401, None) == "unauthorized"
    assert webhook_outcome(413, None) == "too_large"
    assert webhook_outcome(500, None) == "error"


async def test_each_webhook_answer_is_counted_by_the_outcome_its_handler_recorded(
    start_offline: ClientFactory, workspace: Workspace
) -> None:
    client = await start_offline(queue={"paused": True})
    repo = f"acme/{workspace.name}"
    push = github_push_payload(repo, "a" * 40)
    answers = [
        await post_github(client, "ping", fixture("github_ping.json")),
        await post_github(client, "push", push, delivery="once"),
        await post_github(client, "push", push, delivery="once"),
        await post_github(client, "push", fixture("github_push_tag.json")),
        await post_github(client, "push", push, secret="wrong"),
        await post_github(client, "push", b"{not json"),
    ]
    assert [a.status for a in answers] == [200, 202, 200, 200, 401, 400]
    samples = await scrape(client)
    counted_as = {
        (labels["event"], labels["outcome"]): count
        for (name, label_set), count in samples.items()
        if name == "gatebot_webhooks_received_total" and count
        for labels in [dict(label_set)]
    }
    assert counted_as == {
        ("ping", "ping"): 1,
        ("push", "queued"): 1,
        ("push", "duplicate"): 1,
        ("push", "ignored"): 1,
        ("push", "unauthorized"): 1,
        ("push", "bad_request"): 1,
    }


async def test_forge_calls_are_counted_by_outcome() -> None:
    class Forge:
        """Answers comments; refuses everything else, as a forge that is down would."""

        async def set_status(
            self,
            target: StatusTarget,
            state: DeployState,
            description: str,
            target_url: str | None,
        ) -> None:
            raise ForgeError("GitHub answered 502")

        async def comment(self, target: CommitRef, body: str) -> None:
            return None

        async def may_deploy(self, repo: RepoRef, username: str, user_id: int | None) -> bool:
            return username == "octocat"

        async def commit_checks(self, commit: CommitRef) -> list[Check]:
            return []

        async def close(self) -> None:
            return None

    metrics = Metrics()
    forge: ForgeClient = counted({"github": Forge()}, metrics)["github"]
    repo = RepoRef(forge="github", repo="acme/shop")
    commit = CommitRef(repo=repo, sha="a" * 40)
    assert await forge.may_deploy(repo, "octocat", None)
    await forge.comment(commit, "hello")
    with pytest.raises(ForgeError):  # the error still reaches the caller
        target = StatusTarget(commit=commit, context="gatebot/shop")
        await forge.set_status(target, "live", "", None)
    text = metrics.exposition().decode()
    assert 'gatebot_forge_api_calls_total{forge="github",outcome="ok"} 2.0' in text
    assert 'gatebot_forge_api_calls_total{forge="github",outcome="error"} 1.0' in text


async def test_a_client_gone_mid_body_is_no_error_and_a_silent_one_times_out(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    # A server as `gatebot serve` runs it: aiohttp's test server cancels the handler of a
    # client that goes away, which `serve` does not.
    settings = server_settings(setup, queue={"paused": True}, server={"body_timeout": 0.5})
    runner = web.AppRunner(create_app(settings))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    head = (
        b"POST /webhooks/github HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )
    try:
        # Headers and part of the body, then the client goes away.
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(head + b'{"ref": "refs/heads/main",')
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.close()
        await writer.wait_closed()
        # Headers and part of the body, then silence: answered 408 and disconnected in time.
        loop = asyncio.get_running_loop()
        started = loop.time()
        answer = await raw_exchange(host, port, head + b'{"ref":', timeout=5.0)
        assert status_of(answer) == 408 and b"request_timeout" in answer
        assert loop.time() - started < 3.0
        await asyncio.sleep(0.2)
        async with aiohttp.ClientSession(f"http://{host}:{port}") as session:
            samples = await scrape(session)  # type: ignore[arg-type]
    finally:
        await runner.cleanup()
    webhook = "gatebot_webhooks_received_total"
    assert value(samples, webhook, forge="github", event="push", outcome="client_closed") == 1
    assert value(samples, webhook, forge="github", event="push", outcome="timeout") == 1
    assert value(samples, webhook, forge="github", event="push", outcome="error") == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert "Traceback" not in caplog.text


async def test_405_keeps_its_allow_header(start_server: ClientFactory) -> None:
    client = await start_server(queue={"paused": True})
    response = await client.get("/webhooks/github")
    assert response.status == 405
    assert (await response.json())["error"] == "method_not_allowed"
    assert "POST" in response.headers["Allow"]
