"""Signed webhook deliveries against the running app: verification, formats, bad input,
idempotency, and the queue behind them (coalescing, durability, end to end)."""

from __future__ import annotations

import itertools
import json
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp.test_utils import TestClient

from gatebot.api.keys import ENGINE, QUEUE
from gatebot.model import Status
from tests.forges import fixture
from tests.support.deliveries import (
    GITLAB_SIGNING_TOKEN,
    GITLAB_TOKEN,
    github_delivery,
    github_push_payload,
    github_signature,
    gitlab_delivery,
    gitlab_push_payload,
)
from tests.support.deploys import eventually_live, live_version
from tests.support.http import raw_exchange, status_of
from tests.support.server import ClientFactory, job_rows, post_github, server_settings
from tests.support.setup import Setup, Workspace

Client = TestClient[Any, Any]


async def test_github_documented_test_vector_passes_verification(
    start_offline: ClientFactory, workspace: Workspace
) -> None:
    github = {"webhook_secret": "It's a Secret to Everybody"}
    client = await start_offline(server_settings(workspace, github=github))
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": "vector-1",
        "X-Hub-Signature-256": (
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        ),
    }
    ok = await client.post("/webhooks/github", data=b"Hello, World!", headers=headers)
    # The signature is right, so the delivery gets past verification and fails as bad JSON.
    assert ok.status == 400
    headers["X-Hub-Signature-256"] = "sha256=" + "0" * 64
    bad = await client.post("/webhooks/github", data=b"Hello, World!", headers=headers)
    assert bad.status == 401


async def test_push_queues_a_deploy_of_after_in_both_content_types(
    start_offline: ClientFactory, workspace: Workspace
) -> None:
    client = await start_offline(queue={"paused": True})
    sha = "a" * 40
    payload = github_push_payload(f"acme/{workspace.name}", sha)
    response = await post_github(client, "push", payload)
    assert response.status == 202
    body = await response.json()
    assert body["queued"][0]["project"] == workspace.name and body["queued"][0]["sha"] == sha

    form = urllib.parse.urlencode({"payload": json.dumps({**payload, "after": "b" * 40})}).encode()
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": "form-1",
        "X-Hub-Signature-256": github_signature(form),
    }
    response = await client.post("/webhooks/github", data=form, headers=headers)
    assert response.status == 202
    jobs = await job_rows(client)
    assert [(j.sha, j.state) for j in jobs] == [("b" * 40, "queued"), (sha, "superseded")]
    assert jobs[0].trigger == "push:octocat" and jobs[0].delivery_id == "form-1"


async def test_bad_signatures_get_401_and_start_nothing(
    start_offline: ClientFactory, workspace: Workspace
) -> None:
    client = await start_offline(queue={"paused": True})
    payload = github_push_payload(f"acme/{workspace.name}", "c" * 40)
    body, headers = github_delivery("push", payload)

    tampered = await client.post("/webhooks/github", data=body + b" ", headers=headers)
    wrong = await post_github(client, "push", payload, secret="not-the-secret")
    missing_headers = {k: v for k, v in headers.items() if k != "X-Hub-Signature-256"}
    missing = await client.post("/webhooks/github", data=body, headers=missing_headers)

    for response in (tampered, wrong, missing):
        assert response.status == 401
        assert await response.json() == {"error": "unauthorized", "message": "invalid signature"}
    assert await job_rows(client) == []
    assert await client.app[ENGINE].store.deliveries.count() == 0


async def test_no_secret_configured_accepts_nothing(
    start_offline: ClientFactory, workspace: Workspace
) -> None:
    no_secret = server_settings(workspace, github={"webhook_secret": None}, gitlab={})
    assert no_secret.github.webhook_secret is None and no_secret.gitlab.webhook_token is None
    client = await start_offline(no_secret)
    payload = github_push_payload(f"acme/{workspace.name}", "c" * 40)
    assert (await post_github(client, "push", payload)).status == 401
    body, headers = gitlab_delivery(gitlab_push_payload(f"acme/{workspace.name}", "c" * 40))
    assert (await client.post("/webhooks/gitlab", data=body, headers=headers)).status == 401
    assert await job_rows(client) == []


async def test_ping_and_ignored_events_answer_2xx_with_the_reason(
    start_offline: ClientFactory, workspace: Workspace
) -> None:
    client = await start_offline(queue={"paused": True})
    repo = f"acme/{workspace.name}"
    ping = fixture("github_ping.json")
    ping["repository"]["full_name"] = repo
    assert (await post_github(client, "ping", ping)).status == 200

    cases = {
        "tag": github_push_payload(repo, "d" * 40) | {"ref": "refs/tags/v1.0"},
        "deleted": github_push_payload(repo, "0" * 40) | {"deleted": True},
        "not tracked": github_push_payload(repo, "d" * 40, branch="feature"),
        "no project": github_push_payload("acme/other", "d" * 40),
    }
    reasons = {}
    for name, payload in cases.items():
        response = await post_github(client, "push", payload)
        assert response.status == 200, name
        reasons[name] = (await response.json())["reason"]
    assert "tag" in reasons["tag"]
    assert "deleted" in reasons["deleted"]
    assert "feature is not tracked" in reasons["not tracked"]
    assert "no project tracks acme/other" in reasons["no project"]
    issues = await post_github(
        client, "issues", {"action": "opened", "repository": {"full_name": repo}}
    )
    assert issues.status == 200 and (await issues.json())["ignored"] is True
    assert await job_rows(client) == []


async def test_malformed_bodies_get_400_never_500(
    start_offline: ClientFactory, workspace: Workspace
) -> None:
    client = await start_offline(queue={"paused": True})
    for body in (b"{not json", b"[]", b'{"ref": 5}', b"", b'{"after": "x"}', b"\xff\xfe"):
        response = await post_github(client, "push", body)
        assert response.status == 400, body
        assert (await response.json())["error"] == "bad_request"
    missing_after = github_push_payload(f"acme/{workspace.name}", "e" * 40)
    del missing_after["after"]
    response = await post_github(client, "push", missing_after)
    assert response.status == 400 and "after" in (await response.json())["message"]
    no_delivery_body, headers = github_delivery(
        "push", github_push_payload(f"acme/{workspace.name}", "e" * 40)
    )
    del headers["X-GitHub-Delivery"]
    response = await client.post("/webhooks/github", data=no_delivery_body, headers=headers)
    assert response.status == 400
    assert await job_rows(client) == []


async def test_oversized_body_gets_413(start_offline: ClientFactory, workspace: Workspace) -> None:
    client = await start_offline(queue={"paused": True}, server={"max_body_bytes": 4096})
    payload = github_push_payload(f"acme/{workspace.name}", "f" * 40, padding="x" * 10_000)
    response = await post_github(client, "push", payload)
    assert response.status == 413

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * 1000

    body, headers = github_delivery("push", b"")
    chunked = await client.post("/webhooks/github", data=chunks(), headers=headers)
    assert chunked.status == 413
    assert await job_rows(client) == []


async def test_redelivery_is_acknowledged_and_queues_nothing(
    start_offline: ClientFactory, workspace: Workspace
) -> None:
    client = await start_offline(queue={"paused": True})
    payload = github_push_payload(f"acme/{workspace.name}", "1" * 40)
    first = await post_github(client, "push", payload, delivery="same-id")
    again = await post_github(client, "push", payload, delivery="same-id")
    assert first.status == 202
    assert again.status == 200 and (await again.json())["duplicate"] is True
    assert len(await job_rows(client)) == 1


async def test_gitlab_token_and_signing_token(
    start_offline: ClientFactory, workspace: Workspace
) -> None:
    repo = f"acme/{workspace.name}"
    shas = (f"{n:040x}" for n in itertools.count(1))  # a distinct body each time

    async def sender(gitlab: dict[str, str]) -> Callable[..., Awaitable[int]]:
        client = await start_offline(queue={"paused": True}, forge="gitlab", gitlab=gitlab)

        async def send(**kw: Any) -> int:
            body, headers = gitlab_delivery(gitlab_push_payload(repo, next(shas)), **kw)
            return (await client.post("/webhooks/gitlab", data=body, headers=headers)).status

        return send

    token_only = await sender({"webhook_token": GITLAB_TOKEN})
    assert await token_only() == 202
    assert await token_only(token="wrong") == 401
    assert await token_only(token=None) == 401

    signing_only = await sender({"webhook_signing_token": GITLAB_SIGNING_TOKEN})
    assert await signing_only(token=None, signing_token=GITLAB_SIGNING_TOKEN) == 202
    assert await signing_only(token=None, signing_token="whsec_" + "QUJD" * 8) == 401
    stale = await signing_only(
        token=None, signing_token=GITLAB_SIGNING_TOKEN, timestamp=1_000_000_000
    )
    assert stale == 401
    assert await signing_only() == 401, "a token is no signature"

    both = await sender(
        {"webhook_token": GITLAB_TOKEN, "webhook_signing_token": GITLAB_SIGNING_TOKEN}
    )
    assert await both(signing_token=GITLAB_SIGNING_TOKEN) == 202
    assert await both() == 401, "the signature cannot be stripped when both are configured"
    assert await both(token="wrong", signing_token=GITLAB_SIGNING_TOKEN) == 401


async def test_ten_quick_pushes_deploy_at_most_twice_and_the_newest_wins(
    start_server: ClientFactory, setup: Setup
) -> None:
    client = await start_server()
    repo = f"acme/{setup.name}"
    shas = [setup.repo.commit(f"v{n}") for n in range(1, 11)]
    for sha in shas:
        response = await post_github(client, "push", github_push_payload(repo, sha))
        assert response.status == 202
    await client.app[QUEUE].drain()
    engine = client.app[ENGINE]
    deployments = await engine.store.deployments.history(setup.name)
    assert 1 <= len(deployments) <= 2
    active = await engine.store.deployments.active(setup.name)
    assert active is not None and active.commit_sha == shas[-1]
    assert await live_version(setup) == "v10"
    states = [str(j.state) for j in await job_rows(client)]
    assert states.count("superseded") >= 8
    assert states.count("succeeded") == len(deployments)


async def test_queued_jobs_survive_a_restart(start_server: ClientFactory, setup: Setup) -> None:
    paused = await start_server(queue={"paused": True})
    sha = setup.repo.commit("v1")
    response = await post_github(paused, "push", github_push_payload(f"acme/{setup.name}", sha))
    job_id = (await response.json())["queued"][0]["job"]
    await paused.close()

    resumed = await start_server()
    await resumed.app[QUEUE].drain()
    job = await resumed.app[ENGINE].store.jobs.require(job_id)
    assert job.state == "succeeded" and job.deployment_id is not None
    assert await live_version(setup) == "v1"


async def test_a_job_interrupted_by_a_crash_is_failed_and_requeued_once(
    start_server: ClientFactory, setup: Setup
) -> None:
    paused = await start_server(queue={"paused": True})
    sha = setup.repo.commit("v1")
    response = await post_github(paused, "push", github_push_payload(f"acme/{setup.name}", sha))
    job_id = (await response.json())["queued"][0]["job"]
    assert await paused.app[ENGINE].store.jobs.claim(job_id)  # it was running when we "died"
    await paused.close()

    resumed = await start_server()
    await resumed.app[QUEUE].drain()
    jobs = await resumed.app[ENGINE].store.jobs.recent()
    assert [(j.id, j.state, j.retry_of) for j in jobs] == [
        (job_id + 1, "succeeded", job_id),
        (job_id, "failed", None),
    ]
    assert "interrupted" in (jobs[1].error or "")
    assert await live_version(setup) == "v1"


async def test_push_to_the_repository_goes_live_through_nginx(
    start_server: ClientFactory, setup: Setup
) -> None:
    client = await start_server()
    repo = f"acme/{setup.name}"
    for version in ("v1", "v2"):
        sha = setup.repo.commit(version)
        response = await post_github(client, "push", github_push_payload(repo, sha))
        assert response.status == 202
        await client.app[QUEUE].drain()
        assert await live_version(setup) == version
    active = await client.app[ENGINE].store.deployments.active(setup.name)
    assert active is not None and active.color == "green" and active.status is Status.ACTIVE


async def test_gitlab_push_goes_live(start_server: ClientFactory, setup: Setup) -> None:
    client = await start_server(forge="gitlab")
    sha = setup.repo.commit("v1")
    body, headers = gitlab_delivery(gitlab_push_payload(f"acme/{setup.name}", sha))
    assert (await client.post("/webhooks/gitlab", data=body, headers=headers)).status == 202
    await client.app[QUEUE].drain()
    assert await eventually_live(setup, "v1") == "v1"


async def test_health_and_readiness(start_server: ClientFactory, setup: Setup) -> None:
    client = await start_server()
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["checks"] == {
        "database": "ok",
        "docker": "ok",
        "releases": "ok",
        "queue": "ok",
    }


async def test_a_replayed_body_under_a_new_delivery_id_is_a_duplicate(
    start_offline: ClientFactory, workspace: Workspace
) -> None:
    client = await start_offline(queue={"paused": True})
    payload = github_push_payload(f"acme/{workspace.name}", "5" * 40)
    first = await post_github(client, "push", payload, delivery="original")
    replay = await post_github(client, "push", payload, delivery="forged-new-id")
    assert first.status == 202
    assert replay.status == 200 and (await replay.json())["duplicate"] is True
    assert len(await job_rows(client)) == 1


# --- bytes that are not UTF-8 -----------------------------------------------------------------


def raw_post(path: str, headers: dict[str, bytes], body: bytes) -> bytes:
    lines = [f"POST {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
    lines += [name.encode() + b": " + value for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}".encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def test_header_bytes_that_are_not_utf8_answer_4xx_never_500(
    start_server: ClientFactory, setup: Setup
) -> None:
    client = await start_server(queue={"paused": True})
    host, port = str(client.server.host), int(client.server.port or 0)
    body, headers = github_delivery("push", github_push_payload(f"acme/{setup.name}", "a" * 40))
    signed = {k: v.encode() for k, v in headers.items()}
    cases = [
        ({**signed, "X-Hub-Signature-256": b"sha256=\xff\xa0"}, 401),
        ({**signed, "X-GitHub-Delivery": b"\xff-delivery"}, 400),
        ({**signed, "X-GitHub-Event": b"pu\xffsh"}, 400),
    ]
    for hdrs, expected in cases:
        answer = await raw_exchange(host, port, raw_post("/webhooks/github", hdrs, body))
        assert status_of(answer) == expected, (hdrs, answer[:200])
    gitlab = {"Content-Type": b"application/json", "X-Gitlab-Event": b"Push Hook"}
    for name in ("X-Gitlab-Token", "webhook-id", "webhook-signature", "Idempotency-Key"):
        hdrs = {**gitlab, name: b"\xff\xa0"}
        answer = await raw_exchange(host, port, raw_post("/webhooks/gitlab", hdrs, b"{}"))
        assert status_of(answer) in (400, 401), (name, answer[:200])
    assert await client.app[ENGINE].store.jobs.recent() == []
    # The API's and the pages' token check too.
    for path in ("/api/v1/jobs", "/deployments/1"):
        request = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode()
        request += b"Authorization: Bearer gb_x\xa0\r\nCookie: gatebot_token=gb_\xff\r\n\r\n"
        assert status_of(await raw_exchange(host, port, request)) == 401, path


async def test_a_lone_surrogate_in_a_signed_payload_is_a_400(
    start_server: ClientFactory, setup: Setup
) -> None:
    client = await start_server(queue={"paused": True})
    payload = github_push_payload(f"acme/{setup.name}", "a" * 40)
    payload["sender"]["login"] = "\ud800"  # json.dumps writes it as the escape "\\ud800"
    body = json.dumps(payload)
    assert "\\ud800" in body
    response = await post_github(client, "push", body.encode())
    assert response.status == 400
    message = (await response.json())["message"]  # the JSON decoder refuses it first
    assert "not valid" in message, message
    assert await job_rows(client) == []


async def test_deliveries_older_than_the_window_are_forgotten_at_start(
    start_server: ClientFactory, setup: Setup
) -> None:
    import asyncio

    from gatebot.store import Store

    store = await Store.open(setup.data_dir / "gatebot.db")
    await store.jobs.enqueue([], delivery=("github", "old", "push", "digest-old"))
    await store.jobs.enqueue([], delivery=("github", "new", "push", "digest-new"))
    await store.db.execute(
        "UPDATE deliveries SET received_at = '2000-01-01T00:00:00.000+00:00'"
        " WHERE delivery_id = 'old'"
    )
    await store.close()
    client = await start_server(queue={"paused": True}, server={"deliveries_keep_days": 7})
    deliveries = client.app[ENGINE].store.deliveries
    for _ in range(100):
        if await deliveries.count() == 1:
            break
        await asyncio.sleep(0.05)
    assert await deliveries.count() == 1
