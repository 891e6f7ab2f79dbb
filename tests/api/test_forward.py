"""Never move backwards: late or replayed push deliveries, deliveries out of order, and force
pushes, over real git, Docker, nginx and SQLite."""

from __future__ import annotations

from typing import Any

from gatebot.api.keys import ENGINE, QUEUE
from gatebot.model import JobState
from tests.support.deliveries import github_push_payload
from tests.support.deploys import eventually_live
from tests.support.server import ClientFactory, post_github
from tests.support.setup import Setup

Client = Any


async def push(client: Client, repo: str, sha: str, **extra: Any) -> Any:
    answer = await post_github(client, "push", github_push_payload(repo, sha, **extra))
    return answer.status, await answer.json()


async def test_a_late_delivery_of_a_once_live_commit_is_ignored_and_the_newer_stays(
    start_server: ClientFactory, setup: Setup
) -> None:
    client = await start_server()
    repo = f"acme/{setup.name}"
    old = setup.repo.commit("v1")
    assert (await push(client, repo, old))[0] == 202
    await client.app[QUEUE].drain()
    new = setup.repo.commit("v2")
    assert (await push(client, repo, new))[0] == 202
    await client.app[QUEUE].drain()
    assert await eventually_live(setup, "v2") == "v2"
    for sha in (old, new):  # a late push of either (not a byte-for-byte replay): nothing to do
        status, body = await push(client, repo, sha, compare=f"https://example.com/late/{sha}")
        assert (status, body) == (200, {"ignored": True, "reason": "older than the live commit"})
    await client.app[QUEUE].drain()
    assert await eventually_live(setup, "v2") == "v2"
    active = await client.app[ENGINE].store.deployments.active(setup.name)
    assert active is not None and active.commit_sha == new and active.version == 2


async def test_a_late_push_of_an_ancestor_never_deployed_ends_superseded(
    start_server: ClientFactory, setup: Setup
) -> None:
    client = await start_server()
    repo = f"acme/{setup.name}"
    old = setup.repo.commit("v1")  # its delivery is late
    new = setup.repo.commit("v2")
    assert (await push(client, repo, new))[0] == 202
    await client.app[QUEUE].drain()
    status, body = await push(client, repo, old)  # never live: the database cannot tell
    assert status == 202
    await client.app[QUEUE].drain()
    job = await client.app[ENGINE].store.jobs.get(body["queued"][0]["job"])
    assert job is not None and job.state is JobState.SUPERSEDED
    assert job.error == f"{old[:12]} is not newer than the live commit {new[:12]}"
    assert await eventually_live(setup, "v2") == "v2"
    assert len(await client.app[ENGINE].store.deployments.history(setup.name)) == 1


async def test_between_pending_pushes_the_descendant_wins_not_the_later_arrival(
    start_server: ClientFactory, setup: Setup
) -> None:
    client = await start_server(queue={"paused": True})
    repo = f"acme/{setup.name}"
    old = setup.repo.commit("v1")
    new = setup.repo.commit("v2")
    _, newer = await push(client, repo, new)
    _, late = await push(client, repo, old)  # arrives last, supersedes the newer on arrival
    jobs = client.app[ENGINE].store.jobs
    newer_id, late_id = newer["queued"][0]["job"], late["queued"][0]["job"]
    assert (await jobs.require(newer_id)).state is JobState.SUPERSEDED
    queue = client.app[QUEUE]
    queue.paused = False
    queue.wake()
    await queue.drain()
    assert await eventually_live(setup, "v2") == "v2"
    assert (await jobs.require(late_id)).state is JobState.SUPERSEDED
    assert (await jobs.require(late_id)).superseded_by == newer_id
    assert (await jobs.require(newer_id)).state is JobState.SUCCEEDED


async def test_a_force_push_deploys_as_usual(start_server: ClientFactory, setup: Setup) -> None:
    client = await start_server()
    repo = f"acme/{setup.name}"
    base = setup.repo.commit("v1")
    assert (await push(client, repo, setup.repo.commit("v2")))[0] == 202
    await client.app[QUEUE].drain()
    assert await eventually_live(setup, "v2") == "v2"
    setup.repo.git("reset", "-q", "--hard", base)
    rewritten = setup.repo.commit("v3", push=False)
    setup.repo.git("push", "-q", "--force", "origin", "main")
    assert (await push(client, repo, rewritten))[0] == 202
    await client.app[QUEUE].drain()
    assert await eventually_live(setup, "v3") == "v3"
