"""The one place that binds gatebot's interfaces to real implementations."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from gatebot.pipeline.engine import Engine
from gatebot.pipeline.lock import ProjectLocks
from gatebot.proxy.nginx import NginxProxy
from gatebot.runtime.docker import DockerRuntime
from gatebot.settings import Settings
from gatebot.store import Store
from gatebot.vcs import GitSource


@asynccontextmanager
async def open_engine(settings: Settings) -> AsyncIterator[Engine]:
    """Open the database and the Docker client for `settings`; close both afterwards."""
    data_dir = settings.server.data_dir
    store = await Store.open(data_dir / "gatebot.db")
    runtime = DockerRuntime(settings.docker_host)
    try:
        yield Engine(
            settings=settings,
            store=store,
            runtime=runtime,
            proxy=NginxProxy(
                settings.nginx.conf_dir, settings.nginx.test_cmd, settings.nginx.reload_cmd
            ),
            source=GitSource(data_dir / "checkouts"),
            locks=ProjectLocks(data_dir / "locks"),
            logs_dir=data_dir / "logs",
        )
    finally:
        await runtime.close()
        await store.close()
