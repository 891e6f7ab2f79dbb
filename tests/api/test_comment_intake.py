"""Comment commands and unsigned bodies at intake, on a server whose Docker engine is down.

Intake reads only the database (and asks the forge whether the commenter may deploy), so a
`/rollback` comment is recorded and queued while Docker does not answer; someone not allowed
queues nothing and is answered once per commit however often they comment; and an unsigned
body is never parsed before its signature fails."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gatebot.api.keys import ENGINE, FEEDBACK, QUEUE
from gatebot.app import create_app
from gatebot.forges.github import sansio as github_sansio
from gatebot.model import Color, Slot
from gatebot.settings import Settings, parse_settings
from tests.api.test_feedback import API_TOKEN, comment_payload
from tests.deliveries import GITHUB_SECRET, github_signature
from tests.fakes.github import FakeGitHub

Client = TestClient[Any, Any]
REPO = "acme/shop"


def settings_without_docker(
    tmp_path: Path, api_url: str, server: dict[str, Any] | None = None, **project: Any
) -> Settings:
    raw = {
        "server": {"data_dir": str(tmp_path / "data"), **(server or {})},
        "docker": {"host": f"unix://{tmp_path}/no-docker-here.sock"},
        "nginx": {
            "conf_dir": str(tmp_path / "nginx"),
            "test_cmd": ["true"],
            "reload_cmd": ["true"],
        },
        "github": {
            "webhook_secret": GITHUB_SECRET,
            "api_url": api_url,
            "token": API_TOKEN,
            "retry_for_seconds": 2,
        },
        "projects": [
            {"name": "shop", "repo": f"https://github.com/{REPO}.git", "base_port": 3100, **project}
        ],
    }
    return parse_settings(raw, source=tmp_path / "gatebot.toml")


@pytest.fixture
async def fake_github(
    aiohttp_server: Callable[[Any], Awaitable[TestServer]],
) -> tuple[FakeGitHub, str]:
    fake = FakeGitHub(tokens=[API_TOKEN])
    fake.add_repo(REPO)
    server = await aiohttp_server(fake.app)
    return fake, fake.api_url(server)


async def two_releases(client: Client) -> tuple[int, str]:
    """v1 (once live) and v2 (live) of shop, recorded the way the pipeline records them."""
    deployments = client.app[ENGINE].store.deployments
    active_id, sha = 0, ""
    previous: int | None = None
    for version, color in ((1, Color.BLUE), (2, Color.GREEN)):
        sha = str(version) * 40
        new = await deployments.create("shop", "push:test")
        slot = Slot(f"gatebot-shop-{color}", color, 3100 + version - 1)
        await deployments.mark_deploying(
            new.id, commit_sha=sha, commit_message=f"v{version}", image=f"i:{version}", slot=slot
        )
        await deployments.activate(new.id, old_id=previous)
        previous = active_id = new.id
    return active_id, sha


async def post_comment(client: Client, body: dict[str, Any], delivery: str) -> Any:
    raw = json.dumps(body).encode()
    return await client.post(
        "/webhooks/github",
        data=raw,
        headers={
            "Content-Type": "application/json",
            "X-GitHub-Event": "commit_comment",
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": github_signature(raw),
        },
    )


async def test_a_rollback_comment_on_the_live_commit_is_queued_while_docker_is_down(
    aiohttp_client: Any, tmp_path: Path, fake_github: tuple[FakeGitHub, str]
) -> None:
    fake, url = fake_github
    fake.set_permission(REPO, "alice", "write")
    client: Client = await aiohttp_client(create_app(settings_without_docker(tmp_path, url)))
    assert client.app[QUEUE].start_problem is not None, "the engine really is unreachable"
    live_id, live_sha = await two_releases(client)

    response = await post_comment(
        client, comment_payload(REPO, live_sha, "/rollback", "alice"), "c1"
    )

    assert response.status == 202, await response.text()
    [job] = await client.app[ENGINE].store.jobs.recent()
    assert (job.kind, job.state, job.target) == ("rollback", "queued", None)
    assert job.origin.expect_active == live_id


async def test_comment_spam_from_someone_not_allowed_queues_nothing_and_is_answered_once(
    aiohttp_client: Any, tmp_path: Path, fake_github: tuple[FakeGitHub, str]
) -> None:
    fake, url = fake_github
    fake.set_permission(REPO, "mallory", "read")
    client: Client = await aiohttp_client(create_app(settings_without_docker(tmp_path, url)))
    _live_id, live_sha = await two_releases(client)

    for n in range(20):
        payload = comment_payload(REPO, live_sha, f"/rollback\n{n}", "mallory")
        response = await post_comment(client, payload, f"spam-{n}")
        assert response.status == 200 and (await response.json())["ignored"] is True
    await client.app[FEEDBACK].settle()

    assert await client.app[ENGINE].store.jobs.recent() == []
    assert len(fake.calls_to(f"/repos/{REPO}/collaborators/mallory/permission")) == 1
    replies = fake.comments(REPO, live_sha)
    assert len(replies) == 1 and "not allowed to roll back" in replies[0]


async def test_an_unsigned_body_is_not_parsed_before_its_signature_fails(
    aiohttp_client: Any,
    tmp_path: Path,
    fake_github: tuple[FakeGitHub, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _fake, url = fake_github
    client: Client = await aiohttp_client(create_app(settings_without_docker(tmp_path, url)))
    parsed: list[int] = []
    real_decode = github_sansio.decode_body

    def counting_decode(content_type: str | None, body: bytes) -> dict[str, Any]:
        parsed.append(len(body))
        return real_decode(content_type, body)

    monkeypatch.setattr(github_sansio, "decode_body", counting_decode)
    body = b'{"a":[' + b"{}," * 2_000_000 + b'{}], "repository": {"full_name": "acme/shop"}}'
    response = await client.post(
        "/webhooks/github",
        data=body,
        headers={
            "Content-Type": "application/json",
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": "unsigned",
            "X-Hub-Signature-256": "sha256=" + "0" * 64,
        },
    )
    assert response.status == 401
    assert parsed == [], "nothing of an unverified body is parsed"


def test_a_bounded_peek_finds_the_repository_only_near_the_start() -> None:
    near = b'{"ref": "x", "repository": {"id": 1, "full_name": "acme/shop"}, "commits": []}'
    far = b'{"pad": "' + b"x" * github_sansio.PEEK_BYTES + b'", "repository": {"full_name": "a/b"}}'
    assert github_sansio.peek_repository("application/json", near) == "acme/shop"
    assert github_sansio.peek_repository("application/json", far) is None


async def test_a_locked_database_gets_503_with_retry_after_within_the_limit_and_loses_nothing(
    aiohttp_client: Any, tmp_path: Path, fake_github: tuple[FakeGitHub, str]
) -> None:
    import asyncio
    import sqlite3
    import time

    from tests.deliveries import github_push_payload

    _fake, url = fake_github
    settings = settings_without_docker(tmp_path, url, server={"record_timeout": 1.0})
    client: Client = await aiohttp_client(create_app(settings))
    body = json.dumps(github_push_payload(REPO, "7" * 40)).encode()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": "during-the-lock",
        "X-Hub-Signature-256": github_signature(body),
    }
    holder = sqlite3.connect(tmp_path / "data" / "gatebot.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        started = time.monotonic()
        response = await client.post("/webhooks/github", data=body, headers=headers)
        waited = time.monotonic() - started
        assert response.status == 503, await response.text()
        assert response.headers["Retry-After"] == "30"
        assert (await response.json())["error"] == "unavailable"
        assert waited < 5, "answered well before the forge gives up (10 s)"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    again = await client.post("/webhooks/github", data=body, headers=headers)  # the redelivery
    assert again.status in (200, 202)
    for _ in range(100):
        jobs = await client.app[ENGINE].store.jobs.recent()
        if jobs:
            break
        await asyncio.sleep(0.05)
    assert [(j.sha, j.delivery_id) for j in jobs] == [("7" * 40, "during-the-lock")]

