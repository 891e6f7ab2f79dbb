"""Forge feedback end to end: real deploys and rollbacks behind a fake GitHub and GitLab API.

Commit statuses for successful, failed and superseded deploys; retries; GitHub App tokens;
`/rollback` comments from allowed users, read-only users, outsiders, gatebot itself, and with a
bad argument."""

from __future__ import annotations

import copy
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization

from gatebot.api.keys import ENGINE, FEEDBACK, QUEUE
from tests.fakes import rsa_key
from tests.fakes.github import FakeGitHub
from tests.fakes.gitlab import FakeGitLab
from tests.forges import fixture
from tests.support.deliveries import (
    comment_payload,
    github_push_payload,
    gitlab_delivery,
    gitlab_push_payload,
)
from tests.support.deploys import eventually_live, live_version
from tests.support.server import (
    ClientFactory,
    forge_api,
    gitlab_api,
    post_github,
    server_settings,
    settle,
)
from tests.support.setup import Setup

Client = TestClient[Any, Any]
Serve = Callable[[Any], Awaitable[TestServer]]
GITLAB_PROJECT_ID = 4242


async def github_server(
    start_server: ClientFactory, setup: Setup, fake: FakeGitHub, url: str, **kw: Any
) -> tuple[Client, str]:
    repo = f"acme/{setup.name}"
    fake.add_repo(repo)
    project = kw.pop("project", {})
    github = forge_api(url, **kw.pop("github", {}))
    settings = server_settings(setup, github=github, **kw, **project)
    return await start_server(settings), repo


async def test_statuses_of_a_successful_deploy(
    start_server: ClientFactory, setup: Setup, github: tuple[FakeGitHub, str]
) -> None:
    fake, url = github
    client, repo = await github_server(start_server, setup, fake, url)
    sha = setup.repo.commit("v1")
    assert (await post_github(client, "push", github_push_payload(repo, sha))).status == 202
    await settle(client)
    statuses = fake.statuses(repo, sha)
    assert [s["state"] for s in statuses][-1] == "success"
    assert all(s["state"] == "pending" for s in statuses[:-1]) and len(statuses) >= 2
    assert {s["context"] for s in statuses} == {f"gatebot/{setup.name}"}
    assert statuses[-1]["description"] == "v1 live on blue"
    active = await client.app[ENGINE].store.deployments.active(setup.name)
    assert active is not None
    assert statuses[-1]["target_url"] == f"http://127.0.0.1:8088/deployments/{active.id}"


async def test_statuses_of_a_failed_deploy(
    start_server: ClientFactory, setup: Setup, github: tuple[FakeGitHub, str]
) -> None:
    fake, url = github
    client, repo = await github_server(
        start_server, setup, fake, url, project={"health": {"retries": 2}}
    )
    sha = setup.repo.commit("broken", healthy=False)
    await post_github(client, "push", github_push_payload(repo, sha))
    await settle(client)
    last = fake.statuses(repo, sha)[-1]
    assert last["state"] == "failure"
    assert last["description"].startswith("health: unhealthy after 2 attempts")
    assert len(last["description"]) <= 140


async def test_superseded_deploy_gets_an_error_status_naming_the_newer_commit(
    start_server: ClientFactory, setup: Setup, github: tuple[FakeGitHub, str]
) -> None:
    fake, url = github
    client, repo = await github_server(start_server, setup, fake, url, queue={"paused": True})
    old, new = "1" * 40, "2" * 40
    await post_github(client, "push", github_push_payload(repo, old))
    await post_github(client, "push", github_push_payload(repo, new))
    await client.app[FEEDBACK].settle()
    assert fake.statuses(repo, old)[-1]["state"] == "error"
    assert fake.statuses(repo, old)[-1]["description"] == "superseded by 2222222"
    assert [s["state"] for s in fake.statuses(repo, new)] == ["pending"]


async def test_transient_failures_are_retried_and_statuses_stay_in_order(
    start_server: ClientFactory, setup: Setup, github: tuple[FakeGitHub, str]
) -> None:
    fake, url = github
    client, repo = await github_server(start_server, setup, fake, url)
    sha = setup.repo.commit("v1")
    fake.fail_next(f"/repos/{repo}/statuses", 502, times=2)
    fake.fail_next(f"/repos/{repo}/statuses", 429, times=1, retry_after=1)
    await post_github(client, "push", github_push_payload(repo, sha))
    await settle(client)
    states = [s["state"] for s in fake.statuses(repo, sha)]
    assert states[-1] == "success" and "success" not in states[:-1]
    failed = [c for c in fake.calls_to(f"/repos/{repo}/statuses") if c.status >= 400]
    assert [c.status for c in failed] == [502, 502, 429]
    assert await live_version(setup) == "v1"


async def test_a_forge_that_is_down_never_fails_the_deploy(
    start_server: ClientFactory, setup: Setup, github: tuple[FakeGitHub, str]
) -> None:
    fake, url = github
    client, repo = await github_server(
        start_server, setup, fake, url, github={"retry_for_seconds": 1}
    )
    fake.fail_next("/repos", 503, times=1000)
    sha = setup.repo.commit("v1")
    await post_github(client, "push", github_push_payload(repo, sha))
    await settle(client)
    assert fake.statuses(repo, sha) == []
    job = (await client.app[ENGINE].store.jobs.recent())[0]
    assert job.state == "succeeded"
    assert await live_version(setup) == "v1"


async def test_github_app_token_is_minted_once_and_reused(
    start_server: ClientFactory, setup: Setup, aiohttp_server: Serve, tmp_path: Path
) -> None:
    key = rsa_key("app")
    pem = tmp_path / "app.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    fake = FakeGitHub(app_id=99, public_key=key.public_key(), installations=[2311213])
    url = fake.api_url(await aiohttp_server(fake.app))
    repo = f"acme/{setup.name}"
    fake.add_repo(repo)
    app = {"api_url": url, "app_id": 99, "private_key_file": str(pem), "retry_for_seconds": 10}
    client = await start_server(server_settings(setup, github=app))
    sha = setup.repo.commit("v1")
    await post_github(client, "push", github_push_payload(repo, sha))  # installation 2311213
    await settle(client)
    assert fake.statuses(repo, sha)[-1]["state"] == "success"
    assert len(fake.issued) == 1, "one installation token, cached for every later call"
    assert len(fake.calls_to(f"/repos/{repo}/statuses", "POST")) >= 2


async def deploy_three(client: Client, setup: Setup, repo: str) -> list[str]:
    shas = []
    for n in (1, 2, 3):
        shas.append(setup.repo.commit(f"v{n}"))
        await post_github(client, "push", github_push_payload(repo, shas[-1]))
        await settle(client)
    assert await live_version(setup) == "v3"
    return shas


async def test_rollback_comment_by_a_writer_rolls_back_and_replies(
    start_server: ClientFactory, setup: Setup, github: tuple[FakeGitHub, str]
) -> None:
    fake, url = github
    client, repo = await github_server(start_server, setup, fake, url)
    _sha1, sha2, sha3 = await deploy_three(client, setup, repo)
    fake.set_permission(repo, "alice", "write")

    response = await post_github(
        client, "commit_comment", comment_payload(repo, sha3, "/rollback", "alice")
    )
    assert response.status == 202
    await settle(client)

    assert await eventually_live(setup, "v2") == "v2"
    replies = fake.comments(repo, sha3)
    assert len(replies) == 2
    assert replies[0].startswith(f"Rolling back `{setup.name}`")
    assert replies[1] == f"Rolled back `{setup.name}`: v2 ({sha2[:7]}) is live on green."
    assert fake.statuses(repo, sha2)[-1]["state"] == "success"
    job = (await client.app[ENGINE].store.jobs.recent())[0]
    assert (job.kind, job.state, job.trigger) == ("rollback", "succeeded", "comment:alice")


async def test_rollback_comment_on_an_older_commit_makes_it_live_again(
    start_server: ClientFactory, setup: Setup, github: tuple[FakeGitHub, str]
) -> None:
    fake, url = github
    client, repo = await github_server(start_server, setup, fake, url)
    sha1, _sha2, _sha3 = await deploy_three(client, setup, repo)
    fake.set_permission(repo, "alice", "admin")
    await post_github(client, "commit_comment", comment_payload(repo, sha1, "/rollback", "alice"))
    await settle(client)
    assert await eventually_live(setup, "v1") == "v1"


@pytest.mark.parametrize("permission", ["read", "none"])
async def test_rollback_comment_by_a_reader_or_outsider_is_refused(
    start_server: ClientFactory, setup: Setup, github: tuple[FakeGitHub, str], permission: str
) -> None:
    fake, url = github
    client, repo = await github_server(start_server, setup, fake, url)
    shas = await deploy_three(client, setup, repo)
    fake.set_permission(repo, "mallory", permission)
    await post_github(
        client, "commit_comment", comment_payload(repo, shas[-1], "/rollback", "mallory")
    )
    await settle(client)
    assert await live_version(setup) == "v3"
    replies = fake.comments(repo, shas[-1])
    assert len(replies) == 1 and "not allowed to roll back" in replies[0]
    history = await client.app[ENGINE].store.deployments.history(setup.name)
    assert [d.status for d in history][0] == "ACTIVE" and history[0].version == 3


async def test_allowlisted_user_may_roll_back_without_write_permission(
    start_server: ClientFactory, setup: Setup, github: tuple[FakeGitHub, str]
) -> None:
    fake, url = github
    client, repo = await github_server(
        start_server, setup, fake, url, project={"allow": ["oncall-bot"]}
    )
    shas = await deploy_three(client, setup, repo)
    await post_github(
        client, "commit_comment", comment_payload(repo, shas[-1], "/rollback to 1", "oncall-bot")
    )
    await settle(client)
    assert await eventually_live(setup, "v1") == "v1"


async def test_gatebots_own_comment_is_ignored(
    start_server: ClientFactory, setup: Setup, github: tuple[FakeGitHub, str]
) -> None:
    fake, url = github
    client, repo = await github_server(
        start_server, setup, fake, url, github={"bot_login": "gatebot-bot"}
    )
    shas = await deploy_three(client, setup, repo)
    response = await post_github(
        client, "commit_comment", comment_payload(repo, shas[-1], "/rollback", "gatebot-bot")
    )
    assert response.status == 200 and (await response.json())["ignored"] is True
    await settle(client)
    assert fake.comments(repo, shas[-1]) == []
    assert await live_version(setup) == "v3"


async def test_bad_argument_gets_a_usage_reply_and_runs_nothing(
    start_server: ClientFactory, setup: Setup, github: tuple[FakeGitHub, str]
) -> None:
    fake, url = github
    client, repo = await github_server(start_server, setup, fake, url)
    shas = await deploy_three(client, setup, repo)
    fake.set_permission(repo, "alice", "write")
    response = await post_github(
        client, "commit_comment", comment_payload(repo, shas[-1], "/rollback to yesterday", "alice")
    )
    assert response.status == 200
    await settle(client)
    replies = fake.comments(repo, shas[-1])
    assert len(replies) == 1 and "usage: `/rollback [PROJECT] [to VERSION|SHA]`" in replies[0]
    assert await live_version(setup) == "v3"
    assert len(await client.app[ENGINE].store.jobs.recent()) == 3


async def test_a_huge_version_gets_a_clear_reply_not_an_internal_error(
    start_server: ClientFactory, setup: Setup, github: tuple[FakeGitHub, str]
) -> None:
    fake, url = github
    client, repo = await github_server(start_server, setup, fake, url)
    sha = setup.repo.commit("v1")
    fake.set_permission(repo, "alice", "write")
    body = "/rollback to 99999999999999999999"  # a 20-digit version once overflowed SQLite
    response = await post_github(
        client, "commit_comment", comment_payload(repo, sha, body, "alice")
    )
    assert response.status == 202  # which release it means is decided when the job runs
    await settle(client)
    replies = fake.comments(repo, sha)
    assert len(replies) == 1 and "has no release '99999999999999999999'" in replies[0]
    assert "internal error" not in replies[0]
    [job] = await client.app[ENGINE].store.jobs.recent()
    assert job.state == "failed" and "has no release" in (job.error or "")


async def test_gitlab_statuses_and_rollback_note(
    start_server: ClientFactory, setup: Setup, gitlab: tuple[FakeGitLab, str]
) -> None:
    fake, url = gitlab
    repo = f"acme/{setup.name}"
    fake.add_project(repo, GITLAB_PROJECT_ID)
    fake.add_member(GITLAB_PROJECT_ID, user_id=1, username="root", access_level=40)
    fake.add_member(GITLAB_PROJECT_ID, user_id=2, username="guest", access_level=20)
    settings = server_settings(setup, forge="gitlab", gitlab=gitlab_api(url))
    client = await start_server(settings)

    async def push(version: str) -> str:
        sha = setup.repo.commit(version)
        payload = gitlab_push_payload(repo, sha)
        payload["project"]["id"] = payload["project_id"] = GITLAB_PROJECT_ID
        body, headers = gitlab_delivery(payload)
        assert (await client.post("/webhooks/gitlab", data=body, headers=headers)).status == 202
        await settle(client)
        return sha

    sha1 = await push("v1")
    sha2 = await push("v2")
    states = [s["status"] for s in fake.statuses(GITLAB_PROJECT_ID, sha2)]
    assert states[-1] == "success"
    assert fake.statuses(GITLAB_PROJECT_ID, sha2)[-1]["name"] == f"gatebot/{setup.name}"

    async def note(user: str, user_id: int, *, allowed: bool) -> None:
        payload = copy.deepcopy(fixture("gitlab_note_commit.json"))
        payload["project"]["path_with_namespace"] = repo
        payload["project"]["id"] = payload["project_id"] = GITLAB_PROJECT_ID
        payload["object_attributes"].update(
            note="/rollback", commit_id=sha2, project_id=GITLAB_PROJECT_ID
        )
        payload["commit"]["id"] = sha2
        payload["user"].update(username=user, id=user_id)
        body, headers = gitlab_delivery(payload, event="Note Hook")
        answer = await client.post("/webhooks/gitlab", data=body, headers=headers)
        if allowed:
            assert answer.status == 202 and (await answer.json())["queued"]
        else:  # the permission is checked before anything is queued
            assert answer.status == 200 and (await answer.json())["ignored"] is True
        await settle(client)

    jobs_before = len(await client.app[ENGINE].store.jobs.recent())
    await note("guest", 2, allowed=False)
    assert len(await client.app[ENGINE].store.jobs.recent()) == jobs_before, "nothing queued"
    assert await live_version(setup) == "v2"
    assert "not allowed" in fake.comments(GITLAB_PROJECT_ID, sha2)[-1]
    await note("root", 1, allowed=True)
    assert await eventually_live(setup, "v1") == "v1"
    assert fake.comments(GITLAB_PROJECT_ID, sha2)[-1].startswith(f"Rolled back `{setup.name}`: v1")
    assert fake.statuses(GITLAB_PROJECT_ID, sha1)[-1]["status"] == "success"


async def test_gitlab_superseded_deploy_is_canceled(
    start_server: ClientFactory, setup: Setup, gitlab: tuple[FakeGitLab, str]
) -> None:
    fake, url = gitlab
    repo = f"acme/{setup.name}"
    fake.add_project(repo, GITLAB_PROJECT_ID)
    settings = server_settings(
        setup, forge="gitlab", queue={"paused": True}, gitlab=gitlab_api(url)
    )
    client = await start_server(settings)
    for sha in ("3" * 40, "4" * 40):
        payload = gitlab_push_payload(repo, sha)
        payload["project"]["id"] = payload["project_id"] = GITLAB_PROJECT_ID
        body, headers = gitlab_delivery(payload)
        await client.post("/webhooks/gitlab", data=body, headers=headers)
    await client.app[FEEDBACK].settle()
    last = fake.statuses(GITLAB_PROJECT_ID, "3" * 40)[-1]
    assert (last["status"], last["description"]) == ("canceled", "superseded by 4444444")


async def test_failure_status_never_carries_the_apps_log_lines_or_secrets(
    start_server: ClientFactory, setup: Setup, github: tuple[FakeGitHub, str]
) -> None:
    fake, url = github
    secret = "s3cr3t-database-password"
    client, repo = await github_server(
        start_server, setup, fake, url, project={"env": {"DATABASE_URL": secret}}
    )
    leaky = '#!/bin/sh\necho "connecting with $DATABASE_URL" >&2\nexit 3\n'
    sha = setup.repo.commit("leaky", start_script=leaky)
    await post_github(client, "push", github_push_payload(repo, sha))
    await settle(client)
    last = fake.statuses(repo, sha)[-1]
    assert last["state"] == "failure"
    assert last["description"].startswith("health: container")
    assert secret not in str(fake.calls) and "connecting with" not in last["description"]


async def test_usage_replies_go_only_to_people_allowed_to_deploy(
    start_server: ClientFactory, setup: Setup, github: tuple[FakeGitHub, str]
) -> None:
    fake, url = github
    client, repo = await github_server(start_server, setup, fake, url)
    shas = await deploy_three(client, setup, repo)
    fake.set_permission(repo, "alice", "write")
    fake.set_permission(repo, "mallory", "none")
    body = "/rollback to @everyone-look-here"
    await post_github(client, "commit_comment", comment_payload(repo, shas[-1], body, "mallory"))
    await settle(client)
    assert fake.comments(repo, shas[-1]) == [], "an outsider cannot make gatebot post"
    await post_github(client, "commit_comment", comment_payload(repo, shas[-1], body, "alice"))
    await settle(client)
    replies = fake.comments(repo, shas[-1])
    assert len(replies) == 1 and replies[0].startswith("@alice ")
    assert "@everyone-look-here" not in replies[0], "the comment is not echoed back"


async def test_a_comment_decided_against_a_live_release_that_changed_is_refused(
    start_server: ClientFactory, setup: Setup, github: tuple[FakeGitHub, str]
) -> None:
    fake, url = github
    client, repo = await github_server(start_server, setup, fake, url)
    shas = await deploy_three(client, setup, repo)
    fake.set_permission(repo, "alice", "write")
    queue = client.app[QUEUE]
    queue.paused = True
    sha4 = setup.repo.commit("v4")
    await post_github(client, "push", github_push_payload(repo, sha4))  # runs first
    await post_github(
        client, "commit_comment", comment_payload(repo, shas[-1], "/rollback", "alice")
    )
    jobs = await client.app[ENGINE].store.jobs.recent()
    live = await client.app[ENGINE].store.deployments.active(setup.name)
    assert live is not None and live.version == 3
    assert (jobs[0].kind, jobs[0].origin.expect_active) == ("rollback", live.id), "decided then"
    queue.paused = False
    queue.wake()
    await settle(client)
    assert await live_version(setup) == "v4", "v4 went live after the comment: nothing rolls back"
    assert "changed since your comment" in fake.comments(repo, shas[-1])[-1]


async def test_a_busy_project_makes_a_comment_wait_without_a_word(
    start_server: ClientFactory,
    setup: Setup,
    github: tuple[FakeGitHub, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    import asyncio
    import subprocess
    import sys

    caplog.set_level(logging.INFO, logger="gatebot.queue")

    fake, url = github
    client, repo = await github_server(
        start_server, setup, fake, url, queue={"busy_retry_seconds": 0.2}
    )
    shas = await deploy_three(client, setup, repo)
    fake.set_permission(repo, "alice", "write")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import asyncio\nfrom pathlib import Path\n"
            "from gatebot.pipeline.lock import ProjectLocks\n"
            "async def main():\n"
            f"    async with ProjectLocks(Path({str(setup.data_dir / 'locks')!r})).hold("
            f"{setup.name!r}, 'deploy by cli:someone'):\n"
            "        print('locked', flush=True)\n"
            "        await asyncio.sleep(2)\n"
            "asyncio.run(main())\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        await post_github(
            client, "commit_comment", comment_payload(repo, shas[-1], "/rollback", "alice")
        )
        await asyncio.sleep(1.0)  # a handful of retries while the lock is held
        assert fake.comments(repo, shas[-1]) == []
    finally:
        holder.wait(timeout=30)
    await settle(client)
    assert await eventually_live(setup, "v2") == "v2"
    replies = fake.comments(repo, shas[-1])
    assert len(replies) == 2 and "someone" not in " ".join(replies)
    permission_checks = fake.calls_to(f"/repos/{repo}/collaborators/alice/permission")
    waits = [r for r in caplog.records if r.name == "gatebot.queue" and "waits" in r.message]
    assert len(waits) >= 2, "the job met the held lock and was retried"
    assert len(permission_checks) == 1, "asked once, not at every retry"
