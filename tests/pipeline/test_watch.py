"""The watch window: the verdict (pure), and reverts, quiet windows and a crash in the window
against real Docker, nginx and git."""

from __future__ import annotations

import asyncio
from pathlib import Path

import docker
import pytest

from gatebot.errors import StageFailed
from gatebot.model import Color, Status
from gatebot.pipeline.deploy import deploy
from gatebot.pipeline.journal import JournalEvent, Listener
from gatebot.pipeline.reconcile import reconcile
from gatebot.pipeline.rollback import rollback
from gatebot.pipeline.watch import LogFollower, Seen, count_answers, parse_access_line, verdict
from gatebot.settings import ProjectSettings
from gatebot.wiring import open_engine
from tests.support.deploys import container_names, live_version
from tests.support.http import steady_load, wait_listening
from tests.support.setup import Setup

# --- the verdict (pure) -----------------------------------------------------------------------


def policy(**extra: object) -> ProjectSettings:
    return ProjectSettings.model_validate(
        {"name": "shop", "repo": "https://example.com/a/shop.git", "base_port": 3100, **extra}
    )


def test_defaults_of_the_window() -> None:
    shop = policy()
    assert (shop.watch_seconds, shop.watch_failures, shop.max_error_rate, shop.min_requests) == (
        30.0,
        3,
        0.05,
        20,
    )


def test_failed_probes_in_a_row_revert() -> None:
    shop = policy()
    assert verdict(shop, Seen(elapsed=11.6, probes=12, failed_in_a_row=2)) is None
    assert (
        verdict(shop, Seen(elapsed=11.6, probes=12, failed_in_a_row=3))
        == "3 failed health checks 12 s after the switch"
    )


def test_error_rate_reverts_only_over_enough_requests() -> None:
    shop = policy()
    assert verdict(shop, Seen(elapsed=3, requests=19, errors=19)) is None, "too few to judge"
    assert verdict(shop, Seen(elapsed=3, requests=40, errors=2)) is None, "5 % is allowed"
    assert verdict(shop, Seen(elapsed=3, requests=40, errors=7)) == "5xx rate 18 % over 40 requests"
    strict = policy(max_error_rate=0, min_requests=1)
    assert (
        verdict(strict, Seen(elapsed=1, requests=1, errors=1)) == "5xx rate 100 % over 1 requests"
    )


def test_a_container_that_exits_reverts_at_once() -> None:
    assert (
        verdict(policy(), Seen(elapsed=4.2, gone="exited with code 3"))
        == "the container exited with code 3 4 s after the switch"
    )


def test_access_lines_count_only_the_new_slot() -> None:
    lines = [
        "1796233511.023 200 127.0.0.1:3101",
        "1796233511.024 502 127.0.0.1:3101",
        "1796233511.025 500 127.0.0.1:3100",  # a slow request still on the old slot
        "1796233511.026 503 -",  # nothing live
        "1796233511.027 504 127.0.0.1:3100, 127.0.0.1:3101",
        "garbage",
        "",
    ]
    assert parse_access_line(lines[0]) == (200, "127.0.0.1:3101")
    assert parse_access_line("garbage") is None
    assert count_answers(lines, 3101) == (3, 2)
    assert count_answers(lines, 3100) == (1, 1)


def test_log_follower_returns_complete_new_lines_only(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    follower = LogFollower(path)
    assert follower.new_lines() == [], "no file yet"
    path.write_text("a 200 x\nb 2")
    assert follower.new_lines() == ["a 200 x"]
    with open(path, "a") as fh:
        fh.write("00 y\nc 500 z\n")
    assert follower.new_lines() == ["b 200 y", "c 500 z"]
    assert follower.new_lines() == []
    later = LogFollower(path, from_end=True)  # what an earlier window left is not counted
    assert later.new_lines() == []
    with open(path, "a") as fh:
        fh.write("d 200 w\n")
    assert later.new_lines() == ["d 200 w"]


# --- real Docker, nginx and git -----------------------------------------------------------------


def on_stage(stage: str, kind: str, seen: asyncio.Event) -> list[Listener]:
    def listen(event: JournalEvent) -> None:
        if event.stage == stage and event.kind == kind:
            seen.set()

    return [listen]


async def test_release_failing_after_the_switch_is_reverted_with_no_failed_request(
    setup: Setup, docker_client: docker.DockerClient
) -> None:
    settings = setup.settings(drain_seconds=0.5)
    async with open_engine(settings) as engine:
        await engine.proxy.ensure(settings.projects)
        await wait_listening(setup.site_port)
        setup.repo.commit("v1")
        first = await deploy(engine, setup.name, trigger="test")
        assert first.color is Color.BLUE
        # v2 is watched, and goes bad 2 s after its switch.
        engine.settings = setup.settings(
            watch_seconds=20, watch_failures=3, health={"interval": 0.2}, drain_seconds=0.5
        )
        setup.repo.commit("v2")
        watching = asyncio.Event()
        stop = asyncio.Event()
        load = asyncio.create_task(steady_load([f"{setup.site_url}/version"], stop))
        task = asyncio.create_task(
            deploy(
                engine, setup.name, trigger="test", listeners=on_stage("watch", "start", watching)
            )
        )
        await asyncio.wait_for(watching.wait(), 120)
        assert await live_version(setup) == "v2"
        await asyncio.sleep(2)
        green = docker_client.containers.get(f"gatebot-{setup.name}-green")
        green.exec_run(["rm", "/www/health"])
        broke = asyncio.get_running_loop().time()
        with pytest.raises(StageFailed) as caught:
            await task
        took = asyncio.get_running_loop().time() - broke
        await asyncio.sleep(0.3)
        stop.set()
        result = await load

        assert caught.value.stage == "watch"
        assert caught.value.reason.startswith("3 failed health checks ")
        assert caught.value.reason.endswith(" s after the switch")
        assert took < 20, "reverted long before the window's end"
        assert result.failures == [], "the old release served throughout"
        assert {"v1", "v2"} <= result.bodies
        assert await live_version(setup) == "v1"
        assert engine.proxy.route(setup.name) is Color.BLUE
        history = await engine.store.deployments.history(setup.name)
        assert (history[0].status, history[0].failed_stage) == (Status.FAILED, "watch")
        assert history[0].error == caught.value.reason
        assert (history[1].id, history[1].status) == (first.id, Status.ACTIVE)
        assert container_names(docker_client, setup.name) == {first.container}
        assert not (setup.nginx.conf_dir / f"{setup.name}.watch").exists()


async def test_a_share_of_500_answers_is_reverted_by_the_error_rate(
    setup: Setup, docker_client: docker.DockerClient
) -> None:
    settings = setup.settings(watch_seconds=0)
    async with open_engine(settings) as engine:
        await engine.proxy.ensure(settings.projects)
        await wait_listening(setup.site_port)
        setup.repo.commit("v1")
        first = await deploy(engine, setup.name, trigger="test")
        # The next release answers 500 to about half of /cgi-bin/flaky; its health check is fine.
        engine.settings = setup.settings(
            watch_seconds=30,
            min_requests=20,
            health={"interval": 0.2},
            env={"ERROR_PERCENT": "50"},
        )
        setup.repo.commit("v2")
        stop = asyncio.Event()
        load = asyncio.create_task(steady_load([f"{setup.site_url}/cgi-bin/flaky"], stop))
        started = asyncio.get_running_loop().time()
        with pytest.raises(StageFailed) as caught:
            await deploy(engine, setup.name, trigger="test")
        took = asyncio.get_running_loop().time() - started
        stop.set()
        result = await load
        assert caught.value.stage == "watch"
        assert caught.value.reason.startswith("5xx rate ")
        assert " % over " in caught.value.reason
        assert took < 30
        assert any("HTTP 500" in f for f in result.failures), "the new release did fail some"
        assert await live_version(setup) == "v1"
        assert (await engine.store.deployments.active(setup.name)) == (
            await engine.store.deployments.require(first.id)
        )
        assert container_names(docker_client, setup.name) == {first.container}


async def test_quiet_window_keeps_the_release_and_then_retires_the_old_slot(
    setup: Setup, docker_client: docker.DockerClient
) -> None:
    settings = setup.settings(watch_seconds=1.5, health={"interval": 0.2})
    async with open_engine(settings) as engine:
        await engine.proxy.ensure(settings.projects)
        await wait_listening(setup.site_port)
        setup.repo.commit("v1")
        first = await deploy(engine, setup.name, trigger="test")
        setup.repo.commit("v2")
        watching = asyncio.Event()
        task = asyncio.create_task(
            deploy(
                engine, setup.name, trigger="test", listeners=on_stage("watch", "start", watching)
            )
        )
        await asyncio.wait_for(watching.wait(), 120)
        both = {f"gatebot-{setup.name}-blue", f"gatebot-{setup.name}-green"}
        assert container_names(docker_client, setup.name) == both, "old slot runs in the window"
        assert engine.locks.holder(setup.name) is not None, "the project stays locked"
        second = await task
        assert second.status is Status.ACTIVE
        assert container_names(docker_client, setup.name) == {second.container}
        steps = await engine.store.deployments.steps(second.id)
        watch = [s for s in steps if s.stage == "watch"]
        assert len(watch) == 1 and watch[0].message.startswith("quiet for 1.5s: ")
        assert (watch[0].duration or 0) >= 1.5
        stages = [s.stage for s in steps]
        assert stages.index("record") < stages.index("watch") < stages.index("drain")

        back = await rollback(engine, setup.name, trigger="test")  # the same window
        assert back.id == first.id
        assert any(s.stage == "watch" for s in await engine.store.deployments.steps(first.id))
        assert await live_version(setup) == "v1"


async def test_crash_in_the_window_keeps_the_new_release_and_removes_the_old_slot(
    setup: Setup, docker_client: docker.DockerClient
) -> None:
    settings = setup.settings(watch_seconds=60, health={"interval": 0.2})
    async with open_engine(setup.settings()) as engine:
        await engine.proxy.ensure(settings.projects)
        await wait_listening(setup.site_port)
        setup.repo.commit("v1")
        first = await deploy(engine, setup.name, trigger="test")
        engine.settings = settings
        setup.repo.commit("v2")
        watching = asyncio.Event()
        task = asyncio.create_task(
            deploy(
                engine, setup.name, trigger="test", listeners=on_stage("watch", "start", watching)
            )
        )
        await asyncio.wait_for(watching.wait(), 120)
        await asyncio.sleep(0.5)
        task.cancel()  # gatebot dies in the window: nothing after this point runs
        with pytest.raises(asyncio.CancelledError):
            await task
    (setup.nginx.conf_dir / f"{setup.name}.watch").write_text("# Managed by gatebot: left\n")

    async with open_engine(settings) as engine:
        report = await reconcile(engine)
        second = await engine.store.deployments.active(setup.name)
        assert second is not None and second.version == 2
        assert report.removed_containers == [first.container]
        assert container_names(docker_client, setup.name) == {second.container}
        assert not (setup.nginx.conf_dir / f"{setup.name}.watch").exists()
        assert await live_version(setup) == "v2"
