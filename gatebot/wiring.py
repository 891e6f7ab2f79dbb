"""The one place that binds gatebot's interfaces to real implementations."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from gatebot.pipeline.engine import Engine, EngineListeners
from gatebot.pipeline.lock import ProjectLocks
from gatebot.proxy.base import ReloadListener
from gatebot.proxy.nginx import NginxProxy
from gatebot.runtime.base import Runtime
from gatebot.runtime.docker import DockerRuntime
from gatebot.runtime.swarm import SwarmRuntime
from gatebot.settings import Settings
from gatebot.store import Store
from gatebot.vcs import GitSource

if TYPE_CHECKING:
    from gatebot.forges.base import ForgeClient


@asynccontextmanager
async def open_forges(settings: Settings) -> AsyncIterator[dict[str, ForgeClient]]:
    """A client for each forge whose API credentials are configured, sharing one session.

    The forge libraries are imported here, not at the top: CLI commands never need them, and
    they cost a noticeable part of a CLI deploy's start-up."""
    import aiohttp

    from gatebot.forges.github.client import GitHubClient
    from gatebot.forges.gitlab.client import GitLabClient

    async with aiohttp.ClientSession() as session:
        clients: dict[str, ForgeClient] = {}
        github, gitlab = settings.github, settings.gitlab
        if github.token is not None or github.app_id is not None:
            clients["github"] = GitHubClient(github, session)
        if gitlab.token is not None:
            clients["gitlab"] = GitLabClient(gitlab, session)
        try:
            yield clients
        finally:
            for client in clients.values():
                await client.close()


def open_proxy(settings: Settings, *, on_reload: ReloadListener | None = None) -> NginxProxy:
    """nginx for `settings`: files and markers in conf_dir, watch logs in data_dir/nginx."""
    nginx = settings.nginx
    return NginxProxy(
        nginx.conf_dir,
        nginx.test_cmd,
        nginx.reload_cmd,
        log_dir=settings.server.data_dir / "nginx",
        on_reload=on_reload,
    )


@asynccontextmanager
async def open_engine(
    settings: Settings, listeners: EngineListeners | None = None
) -> AsyncIterator[Engine]:
    """Open the database and the Docker client for `settings` (and a Swarm runtime on the
    same engine, a manager, for projects with runtime = "swarm"); close them afterwards."""
    listeners = listeners or EngineListeners()
    data_dir = settings.server.data_dir
    store = await Store.open(data_dir / "gatebot.db")
    runtime = DockerRuntime(settings.docker_host)
    swarm = (
        SwarmRuntime(settings.docker_host, settings.swarm) if settings.swarm is not None else None
    )
    runtimes: dict[str, Runtime] = {
        p.name: swarm for p in settings.projects if p.runtime == "swarm" and swarm is not None
    }
    source = GitSource(data_dir / "checkouts")
    try:
        yield Engine(
            settings=settings,
            store=store,
            runtime=runtime,
            proxy=open_proxy(settings, on_reload=listeners.nginx_reload),
            source=source,
            locks=ProjectLocks(data_dir / "locks"),
            logs_dir=data_dir / "logs",
            on_probe=listeners.health_probe,
            runtimes=runtimes,
            events=runtime,
        )
    finally:
        await source.close()  # no git outlives the engine
        if swarm is not None:
            await swarm.close()
        await runtime.close()
        await store.close()
