"""Polling: pushes that no webhook announced are found with git ls-remote and deployed, over
real git, Docker, nginx and SQLite."""

from __future__ import annotations

import asyncio
from typing import Any

from gatebot.api.keys import ENGINE, QUEUE
from gatebot.model import JobState, OriginKind
from gatebot.poll import plan_poll
from gatebot.settings import ProjectSettings
from tests.support.deploys import eventually_live
from tests.support.server import ClientFactory, server_settings
from tests.support.setup import Setup

SHA_A = "a" * 40
SHA_B = "b" * 40


def project(**kw: Any) -> ProjectSettings:
    return ProjectSettings.model_validate(
        {"name": "shop", "repo": "https://github.com/acme/shop.git", "base_port": 3100, **kw}
    )


def test_plan_poll_queues_only_a_new_head() -> None:
    shop = project()
    job = plan_poll(shop, SHA_A, seen={SHA_B}, not_newer=False)
    assert job is not None and job.sha == SHA_A and job.gate is None
    assert job.trigger == "poll:main" and job.origin.kind is OriginKind.POLL
    assert plan_poll(shop, SHA_A, seen={SHA_A}, not_newer=False) is None  # live or on its way
    assert plan_poll(shop, SHA_A, seen=set(), not_newer=True) is None  # older than the live one
    assert plan_poll(shop, None, seen=set(), not_newer=False) is None  # no such branch


def test_a_polled_commit_of_a_gated_project_waits_for_its_checks() -> None:
    gated = project(gate={"checks": ["test"]})
    job = plan_poll(gated, SHA_A, seen=set(), not_newer=False)
    assert job is not None and job.gate is not None and job.gate["required"] == ["test"]


async def until_live(setup: Setup, version: str, within: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        try:
            if await eventually_live(setup, version, within=0.2) == version:
                return
        except (OSError, AssertionError):
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"{version} did not go live within {within}s")


async def test_a_commit_pushed_with_no_webhook_goes_live_within_one_interval(
    start_server: ClientFactory, setup: Setup
) -> None:
    client = await start_server(poll_interval=0.5)
    await asyncio.sleep(0.2)  # the start-up poll: an empty repository, nothing to do
    setup.repo.commit("v1")  # and no webhook
    await until_live(setup, "v1", within=0.5 + 15)
    sha = setup.repo.commit("v2")
    await until_live(setup, "v2", within=0.5 + 15)
    await client.app[QUEUE].drain()
    jobs = await client.app[ENGINE].store.jobs.recent(project=setup.name)
    assert [(j.sha, j.trigger, j.state) for j in jobs][0] == (sha, "poll:main", JobState.SUCCEEDED)
    assert len(jobs) == 2  # each head queued once, not once per poll
    await asyncio.sleep(1.2)
    assert len(await client.app[ENGINE].store.jobs.recent(project=setup.name)) == 2


async def test_start_up_catches_a_push_made_while_gatebot_was_stopped(
    start_server: ClientFactory, setup: Setup
) -> None:
    setup.repo.commit("v1")  # gatebot is not running
    client = await start_server(poll_interval=3600)
    await until_live(setup, "v1", within=15)
    [job] = await client.app[ENGINE].store.jobs.recent(project=setup.name)
    assert job.trigger == "poll:main"


def test_polling_is_off_by_default_with_a_webhook_secret_and_on_without(setup: Setup) -> None:
    with_secret = server_settings(setup)
    assert with_secret.poll_interval(with_secret.projects[0]) == 0
    without = setup.settings()
    assert without.poll_interval(without.projects[0]) == 60
