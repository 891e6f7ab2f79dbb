"""The blue-green deploy against a real Docker engine, a real nginx and a real git repository."""

from __future__ import annotations

import asyncio

import docker
import pytest

from gatebot.errors import LockHeld, StageFailed
from gatebot.model import Status
from gatebot.pipeline.deploy import deploy
from gatebot.pipeline.engine import Engine
from gatebot.wiring import open_engine
from tests.support.deploys import container_names, live_version
from tests.support.http import steady_load
from tests.support.setup import Setup

CRASHING = "#!/bin/sh\necho 'fatal: cannot open database' >&2\nexit 3\n"


async def test_first_deploy_is_blue_then_green_retires_blue(
    engine: Engine, setup: Setup, docker_client: docker.DockerClient
) -> None:
    sha1 = setup.repo.commit("v1")
    first = await deploy(engine, setup.name, trigger="test")
    assert (first.status, first.color, first.port, first.version) == (
        Status.ACTIVE,
        "blue",
        setup.base_port,
        1,
    )
    assert first.commit_sha == sha1
    assert first.image == f"gatebot/{setup.name}:1-{sha1[:12]}"
    assert await live_version(setup) == "v1"

    sha2 = setup.repo.commit("v2")
    second = await deploy(engine, setup.name, trigger="test")
    assert (second.color, second.port, second.version, second.commit_sha) == (
        "green",
        setup.base_port + 1,
        2,
        sha2,
    )
    assert await live_version(setup) == "v2"
    assert container_names(docker_client, setup.name) == {f"gatebot-{setup.name}-green"}
    old = await engine.store.deployments.require(first.id)
    assert old.status is Status.ROLLED_BACK
    assert await engine.runtime.image_exists(first.image or ""), "old image kept for rollback"
    stages = [s.stage for s in await engine.store.deployments.steps(second.id)]
    for stage in ("source", "build", "run", "health", "switch", "record", "drain"):
        assert stage in stages


async def test_deploy_of_an_exact_sha_that_is_not_the_head(engine: Engine, setup: Setup) -> None:
    old_sha = setup.repo.commit("v1")
    setup.repo.commit("v2")
    deployment = await deploy(engine, setup.name, sha=old_sha, trigger="test")
    assert deployment.commit_sha == old_sha
    assert await live_version(setup) == "v1"


async def test_failed_health_check_keeps_the_old_release_serving(
    engine: Engine, setup: Setup, docker_client: docker.DockerClient
) -> None:
    setup.repo.commit("v1")
    first = await deploy(engine, setup.name, trigger="test")
    setup.repo.commit("v2-broken", healthy=False)
    engine.settings = setup.settings(health={"retries": 5, "interval": 0.1})
    with pytest.raises(StageFailed) as caught:
        await deploy(engine, setup.name, trigger="test")
    assert caught.value.stage == "health"
    assert "HTTP 404" in caught.value.reason
    history = await engine.store.deployments.history(setup.name)
    assert history[0].status is Status.FAILED and history[0].failed_stage == "health"
    assert (await engine.store.deployments.require(first.id)).status is Status.ACTIVE
    assert await live_version(setup) == "v1"
    assert container_names(docker_client, setup.name) == {f"gatebot-{setup.name}-blue"}


async def test_answer_slower_than_the_latency_limit_fails(engine: Engine, setup: Setup) -> None:
    setup.repo.commit("v1")
    await deploy(engine, setup.name, trigger="test")
    setup.repo.commit("v2")
    # The sample app's /cgi-bin/slow answers 200 after half a second.
    engine.settings = setup.settings(
        health={"path": "/cgi-bin/slow", "retries": 3, "max_latency_ms": 300, "timeout": 3.0}
    )
    with pytest.raises(StageFailed) as caught:
        await deploy(engine, setup.name, trigger="test")
    assert caught.value.stage == "health"
    assert "over the 300 ms limit" in caught.value.reason
    assert await live_version(setup) == "v1"


async def test_crash_looping_container_fails_fast_with_its_logs(
    engine: Engine, setup: Setup, docker_client: docker.DockerClient
) -> None:
    setup.repo.commit("v1")
    await deploy(engine, setup.name, trigger="test")
    setup.repo.commit("v2-crash", start_script=CRASHING)
    # 600 retries at 0.1 s would take a minute; failing fast means the first inspection.
    engine.settings = setup.settings(health={"retries": 600, "interval": 0.1})
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(StageFailed) as caught:
        await deploy(engine, setup.name, trigger="test")
    assert caught.value.stage == "health"
    assert f"container gatebot-{setup.name}-green " in caught.value.reason
    # The app's log lines travel apart from the reason, which statuses and replies show.
    assert caught.value.logs is not None and "cannot open database" in caught.value.logs
    assert "cannot open database" not in caught.value.reason
    assert loop.time() - started < 30
    assert await live_version(setup) == "v1"
    assert container_names(docker_client, setup.name) == {f"gatebot-{setup.name}-blue"}
    failed = (await engine.store.deployments.history(setup.name))[0]
    assert failed.error is not None and "cannot open database" not in failed.error
    health = [s for s in await engine.store.deployments.steps(failed.id) if s.stage == "health"]
    assert "cannot open database" in (health[-1].output or "")
    assert "cannot open database" in engine.log_path(failed.id).read_text()


LEAKY = "#!/bin/sh\necho \"connecting with DB_PASSWORD=$DB_PASSWORD\" >&2\nexit 3\n"


async def test_secrets_an_app_logs_are_redacted_before_they_are_stored(
    engine: Engine, setup: Setup
) -> None:
    secret = "hunter2-database-password"
    setup.repo.commit("v1-leaky", start_script=LEAKY)
    engine.settings = setup.settings(env={"DB_PASSWORD": secret}, health={"retries": 600})
    with pytest.raises(StageFailed) as caught:
        await deploy(engine, setup.name, trigger="test")
    assert caught.value.logs is not None and "DB_PASSWORD=***" in caught.value.logs
    failed = (await engine.store.deployments.history(setup.name))[0]
    rows = [failed.error or ""] + [
        f"{s.message} {s.output}" for s in await engine.store.deployments.steps(failed.id)
    ]
    assert any("DB_PASSWORD=***" in row for row in rows)
    assert not any(secret in row for row in rows)
    log_file = engine.log_path(failed.id)
    assert "DB_PASSWORD=***" in log_file.read_text() and secret not in log_file.read_text()
    assert log_file.stat().st_mode & 0o777 == 0o600
    data_dir = engine.settings.server.data_dir
    for stored in data_dir.glob("gatebot.db*"):  # the WAL included
        assert secret.encode() not in stored.read_bytes()
    for path in [data_dir, *data_dir.iterdir(), *(data_dir / "logs").iterdir()]:
        if path.is_dir():
            assert path.stat().st_mode & 0o777 == 0o700, path
        else:
            assert path.stat().st_mode & 0o777 == 0o600, path


async def test_a_switch_needs_no_nginx_test_but_a_file_change_does(
    engine: Engine, setup: Setup
) -> None:
    """A broken file of someone else's does not stop a switch (a marker flip, no reload); it
    stops a change of the project's own files, which are put back, and v1 keeps serving."""
    setup.repo.commit("v1")
    await deploy(engine, setup.name, trigger="test")
    broken = setup.nginx.conf_dir / "zz-broken.conf"
    broken.write_text("this is not nginx syntax\n")
    try:
        setup.repo.commit("v2")
        await deploy(engine, setup.name, trigger="test")
        assert await live_version(setup) == "v2"

        conf = setup.nginx.conf_dir / f"{setup.name}.conf"
        before = conf.read_text()
        engine.settings = setup.settings(site={"listen": "127.0.0.1:1", "server_name": "x"})
        setup.repo.commit("v3")
        with pytest.raises(StageFailed) as caught:
            await deploy(engine, setup.name, trigger="test")
    finally:
        broken.unlink()
    assert caught.value.stage == "switch"
    assert "zz-broken.conf" in caught.value.reason
    assert conf.read_text() == before
    assert await live_version(setup) == "v2"
    assert (await engine.store.deployments.history(setup.name))[0].status is Status.FAILED


async def test_second_deploy_while_one_runs_fails_with_a_lock_error(
    engine: Engine, setup: Setup
) -> None:
    setup.repo.commit("v1")
    running = asyncio.Event()
    first = asyncio.create_task(
        deploy(engine, setup.name, trigger="first", listeners=[lambda _event: running.set()])
    )
    await running.wait()
    assert engine.locks.holder(setup.name) is not None
    with pytest.raises(LockHeld) as caught:
        await deploy(engine, setup.name, trigger="second")
    assert "deploy by first" in str(caught.value)
    assert (await first).status is Status.ACTIVE
    assert len(await engine.store.deployments.history(setup.name)) == 1


async def test_unknown_commit_fails_at_source_and_changes_nothing(
    engine: Engine, setup: Setup
) -> None:
    setup.repo.commit("v1")
    await deploy(engine, setup.name, trigger="test")
    with pytest.raises(StageFailed) as caught:
        await deploy(engine, setup.name, sha="0123456789abcdef0123", trigger="test")
    assert caught.value.stage == "source"
    assert await live_version(setup) == "v1"


async def test_no_failed_request_across_five_deploys(setup: Setup) -> None:
    settings = setup.settings(drain_seconds=1.0)
    async with open_engine(settings) as engine:
        setup.repo.commit("v0")
        await deploy(engine, setup.name, trigger="test")
        stop = asyncio.Event()
        urls = [f"{setup.site_url}/version", f"{setup.site_url}/cgi-bin/slow"]
        load = asyncio.create_task(steady_load(urls, stop))
        for n in range(1, 6):
            setup.repo.commit(f"v{n}")
            await deploy(engine, setup.name, trigger="test")
        await asyncio.sleep(0.5)
        stop.set()
        result = await load
    assert result.failures == []
    assert result.ok > 50
    assert {"v0", "v5"} <= result.bodies
    assert await live_version(setup) == "v5"
