"""Helpers for tests of a gatebot server built by the real app factory: its settings, the
engine opener for tests that never reach Docker, tokens, deliveries, and reading answers."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp.test_utils import TestClient

from gatebot.api.keys import ENGINE, FEEDBACK, QUEUE
from gatebot.pipeline.engine import Engine, EngineListeners
from gatebot.settings import DockerSettings, Settings
from gatebot.store.jobs import Job
from gatebot.wiring import open_engine
from tests.support.deliveries import API_TOKEN, GITHUB_SECRET, GITLAB_TOKEN, github_delivery
from tests.support.settings import build_settings
from tests.support.setup import Workspace

Client = TestClient[Any, Any]
ClientFactory = Callable[..., Awaitable[Client]]
SLOW_HEALTH = {"start_period": 1.5, "interval": 0.1}  # a deploy that takes a moment


def server_settings(
    workspace: Workspace,
    *,
    queue: dict[str, Any] | None = None,
    server: dict[str, Any] | None = None,
    github: dict[str, Any] | None = None,
    gitlab: dict[str, Any] | None = None,
    **project: Any,
) -> Settings:
    """Settings for a server with `workspace`'s project on GitHub as ``acme/<name>`` (keys in
    `project` change it), the test secrets, and the given tables merged in."""
    return workspace_settings(
        workspace,
        [workspace.project(forge_repo=f"acme/{workspace.name}", **project)],
        queue=queue or {},
        server=server or {},
        github={"webhook_secret": GITHUB_SECRET, **(github or {})},
        gitlab=gitlab if gitlab is not None else {"webhook_token": GITLAB_TOKEN},
    )


def workspace_settings(
    workspace: Workspace, projects: list[dict[str, Any]], **tables: dict[str, Any]
) -> Settings:
    return build_settings(workspace.data_dir, projects, nginx=workspace.nginx, **tables)


@asynccontextmanager
async def open_engine_without_docker(
    settings: Settings, listeners: EngineListeners | None = None
) -> AsyncIterator[Engine]:
    """gatebot's own engine (SQLite, nginx, git), its Docker client pointed at a socket no one
    listens on: the server starts as it does with Docker down (webhooks and the API answer,
    jobs queue, nothing deploys). For tests whose subject is the request (verification,
    parsing, auth, error shapes, views), never a deploy."""
    nowhere = DockerSettings(host=f"unix://{settings.server.data_dir}/no-docker.sock")
    async with open_engine(settings.model_copy(update={"docker": nowhere}), listeners) as engine:
        yield engine


async def auth(client: Client, scope: str = "deploy", name: str | None = None) -> dict[str, str]:
    """Headers with a fresh token of `scope` (named `name`, default: the scope)."""
    _, secret = await client.app[ENGINE].store.tokens.create(name or f"{scope}-token", scope)
    return {"Authorization": f"Bearer {secret}"}


async def post_github(
    client: Client, event: str, payload: dict[str, Any] | bytes, **kw: Any
) -> Any:
    body, headers = github_delivery(event, payload, **kw)
    return await client.post("/webhooks/github", data=body, headers=headers)


async def job_rows(client: Client) -> list[Job]:
    jobs: list[Job] = await client.app[ENGINE].store.jobs.recent(limit=1000)
    return jobs


async def wait_until(predicate: Callable[[], Awaitable[Any]], timeout: float = 30.0) -> Any:
    """Poll an async predicate until it returns something truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        found = await predicate()
        if found:
            return found
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def running_job(client: Client, project: str, *, with_deployment: bool = True) -> Job:
    async def find() -> Job | None:
        jobs: list[Job] = await client.app[ENGINE].store.jobs.recent(
            project=project, state="running"
        )
        if jobs and (jobs[0].deployment_id is not None or not with_deployment):
            return jobs[0]
        return None

    job: Job = await wait_until(find)
    return job


async def read_events(client: Client, path: str, headers: dict[str, str]) -> list[tuple[str, Any]]:
    """Read a server-sent event stream to its end: [(event, data)], JSON data decoded."""
    response = await client.get(path, headers={**headers, "Accept": "text/event-stream"})
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events: list[tuple[str, Any]] = []
    name, data = "", []
    async with asyncio.timeout(60):
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
            elif not line and name:
                text = "\n".join(data)
                events.append((name, text if name == "log" else json.loads(text)))
                name, data = "", []
    return events


def page_log(page: str) -> str:
    match = re.search(r'<pre id="log">(.*?)</pre>', page, re.S)
    assert match, page
    return match.group(1)


def forge_api(url: str, **extra: Any) -> dict[str, Any]:
    """A forge table whose API is the fake at `url`."""
    return {"api_url": url, "token": API_TOKEN, "retry_for_seconds": 10, **extra}


def gitlab_api(url: str) -> dict[str, Any]:
    return {"webhook_token": GITLAB_TOKEN, **forge_api(url)}


async def settle(client: Client) -> None:
    await client.app[QUEUE].drain()
    await client.app[FEEDBACK].settle()
