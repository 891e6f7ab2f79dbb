"""Release gates end to end: a gated push waits for its commit's checks on a fake GitHub (and
GitLab) API, then deploys for real (Docker, nginx, git, SQLite), or fails with a status."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from gatebot.api.keys import ENGINE, GATES, QUEUE
from gatebot.app import create_app
from gatebot.model import JobState
from tests.fakes.github import FakeGitHub
from tests.fakes.gitlab import FakeGitLab
from tests.forges import fixture
from tests.support.deliveries import github_push_payload, gitlab_delivery, gitlab_push_payload
from tests.support.deploys import eventually_live
from tests.support.server import (
    Client,
    ClientFactory,
    auth,
    forge_api,
    gitlab_api,
    post_github,
    server_settings,
    settle,
)
from tests.support.setup import Setup

FAST = {"timeout": 30, "poll": 0.2, "settle": 0.3}


def gate(checks: Sequence[str] | str = ("test", "lint"), **kw: Any) -> dict[str, Any]:
    """Project settings of a gate with tiny intervals."""
    names = checks if isinstance(checks, str) else list(checks)
    return {"gate": {"checks": names, **FAST, **kw}}


async def github_server(
    start_server: ClientFactory, setup: Setup, fake: FakeGitHub, url: str, project: dict[str, Any]
) -> tuple[Client, str]:
    repo = f"acme/{setup.name}"
    fake.add_repo(repo)
    return await start_server(
        server_settings(setup, github=forge_api(url), **project)
    ), repo


async def until(
    check: Callable[[], Awaitable[bool]], within: float = 15.0, what: str = "condition"
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def job_state(client: Client, job_id: int) -> JobState:
    job = await client.app[ENGINE].store.jobs.get(job_id)
    assert job is not None
    return JobState(job.state)


def check_event(repo: str, sha: str, name: str = "test") -> dict[str, Any]:
    payload = fixture("github_check_run.json")
    payload["repository"]["full_name"] = repo
    payload["check_run"].update(head_sha=sha, name=name)
    return payload


async def push(client: Client, repo: str, sha: str) -> int:
    answer = await post_github(client, "push", github_push_payload(repo, sha))
    assert answer.status == 202, await answer.text()
    [queued] = (await answer.json())["queued"]
    return int(queued["job"])


async def test_a_gated_push_waits_while_checks_run_then_deploys_when_they_pass_by_webhook(
    start_server: ClientFactory, setup: Setup, github: tuple[FakeGitHub, str]
) -> None:
    fake, url = github
    # poll far away: only the webhook can make the watcher look again in time
    client, repo = await github_server(start_server, setup, fake, url, project=gate(poll=3600))
    sha = setup.repo.commit("v1")
    test = fake.add_check_run(repo, sha, "test", "in_progress")
    fake.add_check_run(repo, sha, "lint", "completed", "success")
    job_id = await push(client, repo, sha)
    assert await job_state(client, job_id) is JobState.WAITING
    await until(lambda: _gate_checked(client, job_id), what="the first look")
    job = await client.app[ENGINE].store.jobs.get(job_id)
    assert job is not None and job.gate is not None
    assert job.gate["pending"] == ["test"] and job.gate["passed"] == ["lint"]
    await settle(client)
    assert await client.app[ENGINE].store.deployments.active(setup.name) is None
    statuses = fake.statuses(repo, sha)
    assert statuses[0]["state"] == "pending"
    assert statuses[0]["description"] == "waiting for checks: test, lint"
    await asyncio.sleep(0.5)
    assert await job_state(client, job_id) is JobState.WAITING  # still: test runs

    fake.update_check_run(test, "completed", "success")
    answer = await post_github(client, "check_run", check_event(repo, sha))
    assert answer.status == 200
    assert (await answer.json())["ignored"] is True
    await until(lambda: _state_is(client, job_id, JobState.SUCCEEDED), what="the deploy")
    assert await eventually_live(setup, "v1") == "v1"
    await settle(client)
    assert fake.statuses(repo, sha)[-1]["state"] == "success"


async def test_with_the_webhook_lost_the_poll_lets_it_through(
    start_server: ClientFactory, setup: Setup, github: tuple[FakeGitHub, str]
) -> None:
    fake, url = github
    client, repo = await github_server(start_server, setup, fake, url, project=gate(["test"]))
    sha = setup.repo.commit("v1")
    run = fake.add_check_run(repo, sha, "test", "queued")
    job_id = await push(client, repo, sha)
    await asyncio.sleep(0.5)
    assert await job_state(client, job_id) is JobState.WAITING
    fake.update_check_run(run, "completed", "success")  # no webhook tells gatebot
    await until(lambda: _state_is(client, job_id, JobState.SUCCEEDED), what="the deploy")
    assert await eventually_live(setup, "v1") == "v1"


async def test_a_failed_check_fails_the_job_with_a_status_and_deploys_nothing(
    start_server: ClientFactory, setup: Setup, github: tuple[FakeGitHub, str]
) -> None:
    fake, url = github
    client, repo = await github_server(start_server, setup, fake, url, project=gate())
    sha = setup.repo.commit("v1")
    fake.add_check_run(repo, sha, "test", "completed", "success")
    fake.add_check_run(repo, sha, "lint", "completed", "failure")
    job_id = await push(client, repo, sha)
    await until(lambda: _state_is(client, job_id, JobState.FAILED), what="the failure")
    job = await client.app[ENGINE].store.jobs.get(job_id)
    assert job is not None and job.error == "checks failed: lint (failure)"
    assert job.deployment_id is None
    await settle(client)
    last = fake.statuses(repo, sha)[-1]
    assert (last["state"], last["description"]) == ("failure", "checks failed: lint (failure)")
    assert await client.app[ENGINE].store.deployments.history(setup.name) == []


async def test_checks_that_never_finish_time_out(
    start_server: ClientFactory, setup: Setup, github: tuple[FakeGitHub, str]
) -> None:
    fake, url = github
    client, repo = await github_server(
        start_server, setup, fake, url, project=gate(["test"], timeout=0.6)
    )
    sha = setup.repo.commit("v1")
    fake.add_check_run(repo, sha, "test", "in_progress")
    job_id = await push(client, repo, sha)
    await until(lambda: _state_is(client, job_id, JobState.FAILED), what="the time-out")
    job = await client.app[ENGINE].store.jobs.get(job_id)
    assert job is not None and job.error == "checks not done within 0.6s: test (in_progress)"
    await settle(client)
    assert fake.statuses(repo, sha)[-1]["state"] == "failure"


async def test_an_empty_check_suite_of_another_app_does_not_block_all(
    start_server: ClientFactory, setup: Setup, github: tuple[FakeGitHub, str]
) -> None:
    fake, url = github
    client, repo = await github_server(start_server, setup, fake, url, project=gate("all"))
    sha = setup.repo.commit("v1")
    fake.add_check_suite(repo, sha, "some-other-app", "queued")  # and never any run
    fake.add_check_run(repo, sha, "build", "completed", "success")
    job_id = await push(client, repo, sha)
    suite = fixture("github_check_suite.json")
    suite["repository"]["full_name"] = repo
    suite["check_suite"].update(head_sha=sha, status="queued", conclusion=None)
    assert (await post_github(client, "check_suite", suite)).status == 200
    await until(lambda: _state_is(client, job_id, JobState.SUCCEEDED), what="the deploy")
    job = await client.app[ENGINE].store.jobs.get(job_id)
    assert job is not None and job.gate is not None and job.gate["passed"] == ["build"]


async def test_a_newer_push_supersedes_a_waiting_job(
    start_server: ClientFactory, setup: Setup, github: tuple[FakeGitHub, str]
) -> None:
    fake, url = github
    client, repo = await github_server(start_server, setup, fake, url, project=gate(["test"]))
    old = setup.repo.commit("v1")
    first = await push(client, repo, old)
    new = setup.repo.commit("v2")
    second = await push(client, repo, new)
    assert await job_state(client, first) is JobState.SUPERSEDED
    assert await job_state(client, second) is JobState.WAITING
    fake.add_check_run(repo, old, "test", "completed", "success")
    fake.add_check_run(repo, new, "test", "completed", "success")
    await until(lambda: _state_is(client, second, JobState.SUCCEEDED), what="the deploy")
    assert await eventually_live(setup, "v2") == "v2"
    assert await job_state(client, first) is JobState.SUPERSEDED
    await settle(client)
    assert fake.statuses(repo, old)[-1]["description"] == f"superseded by {new[:7]}"


async def test_a_restart_keeps_the_job_waiting_and_looks_again(
    aiohttp_client: Any, setup: Setup, github: tuple[FakeGitHub, str]
) -> None:
    fake, url = github
    repo = f"acme/{setup.name}"
    fake.add_repo(repo)
    settings = server_settings(setup, github=forge_api(url), **gate(["test"]))
    client = await aiohttp_client(create_app(settings))
    sha = setup.repo.commit("v1")
    run = fake.add_check_run(repo, sha, "test", "in_progress")
    job_id = await push(client, repo, sha)
    await until(lambda: _gate_checked(client, job_id), what="the first look")
    await client.close()  # gatebot stops: the job stays waiting in the database

    fake.update_check_run(run, "completed", "success")
    again = await aiohttp_client(create_app(settings))
    assert (await again.app[ENGINE].store.jobs.get(job_id)) is not None
    await until(lambda: _state_is(again, job_id, JobState.SUCCEEDED), what="the deploy")
    assert await eventually_live(setup, "v1") == "v1"
    assert again.app[GATES] is not None and again.app[QUEUE].started


async def _state_is(client: Client, job_id: int, state: JobState) -> bool:
    return await job_state(client, job_id) is state


async def _gate_checked(client: Client, job_id: int) -> bool:
    job = await client.app[ENGINE].store.jobs.get(job_id)
    return job is not None and job.gate is not None and job.gate.get("checkedAt") is not None


async def test_an_api_deploy_of_a_gated_project_waits_unless_it_skips_the_gate(
    start_server: ClientFactory, setup: Setup, github: tuple[FakeGitHub, str]
) -> None:
    fake, url = github
    client, repo = await github_server(start_server, setup, fake, url, gate(["test"]))
    sha = setup.repo.commit("v1")
    headers = await auth(client, "deploy")
    answer = await client.post("/api/v1/deploy", json={"projectId": setup.name}, headers=headers)
    assert answer.status == 202
    waiting = await answer.json()
    assert waiting["state"] == "waiting" and waiting["sha"] == sha  # the head, by ls-remote
    assert waiting["gate"]["required"] == ["test"]
    bad = {"projectId": setup.name, "skipGate": "yes"}
    assert (await client.post("/api/v1/deploy", json=bad, headers=headers)).status == 400

    skip = {"projectId": setup.name, "sha": sha, "skipGate": True}
    answer = await client.post("/api/v1/deploy", json=skip, headers=headers)
    assert answer.status == 202
    skipped = await answer.json()
    assert skipped["state"] == "queued" and skipped["gate"] is None
    assert await job_state(client, waiting["id"]) is JobState.WAITING  # not a push: stays
    await until(lambda: _state_is(client, skipped["id"], JobState.SUCCEEDED), what="the deploy")
    assert await eventually_live(setup, "v1") == "v1"
    audit = await client.app[ENGINE].store.audit.recent()
    details = [entry.detail for entry in audit]
    assert f"sha {sha}, gate skipped" in details
    assert "head of main, waiting for checks" in details


async def test_a_gated_gitlab_push_deploys_when_its_pipeline_passes(
    start_server: ClientFactory, setup: Setup, gitlab: tuple[FakeGitLab, str]
) -> None:
    fake, url = gitlab
    repo = f"acme/{setup.name}"
    fake.add_project(repo, 15)  # the fixture's project id
    settings = server_settings(
        setup, gitlab=gitlab_api(url), forge="gitlab", **gate(["test"], poll=3600)
    )
    client = await start_server(settings)
    sha = setup.repo.commit("v1")
    job = fake.add_pipeline_job(15, sha, "test", "running")
    body, headers = gitlab_delivery(gitlab_push_payload(repo, sha))
    answer = await client.post("/webhooks/gitlab", data=body, headers=headers)
    assert answer.status == 202
    job_id = (await answer.json())["queued"][0]["job"]
    await until(lambda: _gate_checked(client, job_id), what="the first look")
    assert await job_state(client, job_id) is JobState.WAITING
    fake.update_pipeline_job(job, "success")
    hook = fixture("gitlab_pipeline.json")
    hook["project"]["path_with_namespace"] = repo
    hook["object_attributes"]["sha"] = sha
    body, headers = gitlab_delivery(hook, event="Pipeline Hook")
    assert (await client.post("/webhooks/gitlab", data=body, headers=headers)).status == 200
    await until(lambda: _state_is(client, job_id, JobState.SUCCEEDED), what="the deploy")
    assert await eventually_live(setup, "v1") == "v1"
    await settle(client)
    names = {s["name"] for s in fake.statuses(15, sha)}
    assert names == {"test", f"gatebot/{setup.name}"}


async def test_a_polled_commit_of_a_gated_project_waits_for_its_checks_too(
    start_server: ClientFactory, setup: Setup, github: tuple[FakeGitHub, str]
) -> None:
    fake, url = github
    sha = setup.repo.commit("v1")  # no webhook: polling finds it at start-up
    client, repo = await github_server(
        start_server, setup, fake, url, {**gate(["test"]), "poll_interval": 3600}
    )
    await until(lambda: _has_jobs(client), what="the polled job")
    [job] = await client.app[ENGINE].store.jobs.recent(project=setup.name)
    assert (job.trigger, job.state) == ("poll:main", JobState.WAITING)
    fake.add_check_run(repo, sha, "test", "completed", "success")
    await until(lambda: _state_is(client, job.id, JobState.SUCCEEDED), what="the deploy")
    assert await eventually_live(setup, "v1") == "v1"


async def _has_jobs(client: Client) -> bool:
    return bool(await client.app[ENGINE].store.jobs.recent(limit=1))
