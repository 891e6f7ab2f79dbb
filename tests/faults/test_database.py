"""A database that refuses writes in the middle of a deploy (locked past busy_timeout): the
deploy goes through undo and a FAILED record written once the lock is gone, never stuck
DEPLOYING with its container left running."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator

import docker
import pytest

from gatebot.errors import StageFailed
from gatebot.model import Status
from gatebot.pipeline import deploy as deploy_module
from gatebot.pipeline.deploy import deploy
from gatebot.pipeline.engine import Engine
from gatebot.pipeline.journal import JournalEvent
from gatebot.store import db
from gatebot.wiring import open_engine
from tests.support.deploys import live_version
from tests.support.faults import assert_repaired, load_through, write_lock_held
from tests.support.http import wait_listening
from tests.support.setup import Setup

pytestmark = pytest.mark.faults


@pytest.fixture
async def quick_engine(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Engine]:
    """An engine whose database gives up on a lock after 0.2 s (instead of 10 s)."""
    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 200)
    monkeypatch.setattr(deploy_module, "FAIL_RETRY_SECONDS", (0.2, 0.5, 1.0, 1.0))
    async with open_engine(setup.settings()) as engine:
        await engine.proxy.ensure(engine.settings.projects)
        await wait_listening(setup.site_port)
        yield engine


async def test_a_database_locked_during_health_fails_the_deploy_cleanly(
    quick_engine: Engine, setup: Setup, docker_client: docker.DockerClient
) -> None:
    engine = quick_engine
    setup.repo.commit("v1")
    await deploy(engine, setup.name, trigger="test")
    holders: list[threading.Thread] = []

    def lock_at_health(event: JournalEvent) -> None:
        if event.kind == "start" and event.stage == "health" and not holders:
            holder = threading.Thread(target=hold_lock, daemon=True)
            holders.append(holder)
            holder.start()

    def hold_lock() -> None:
        with write_lock_held(engine.store.db.path, 1.5):
            pass

    setup.repo.commit("v2")
    async with load_through(f"{setup.site_url}/version") as load:
        with pytest.raises(StageFailed) as caught:
            await deploy(engine, setup.name, trigger="test", listeners=[lock_at_health])
    holders[0].join()
    assert load.failures == [] and load.ok > 0, load.failures[:3]
    assert "database" in caught.value.reason
    history = await engine.store.deployments.history(setup.name, limit=10)
    v2 = next(d for d in history if d.version == 2)
    assert v2.status is Status.FAILED and v2.failed_stage == caught.value.stage
    assert v2.failed_stage in ("health", "switch", "record")
    active = await assert_repaired(engine.store.deployments, docker_client, setup.name)
    assert active.version == 1 and await live_version(setup) == "v1"
    setup.repo.commit("v3")
    await deploy(engine, setup.name, trigger="test")
    assert await live_version(setup) == "v3"
