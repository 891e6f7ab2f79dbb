"""What a test reads back after a deploy: the version live through nginx, the containers."""

from __future__ import annotations

import asyncio

import docker

from tests.support.http import get_text, wait_listening
from tests.support.setup import Setup


async def live_version(setup: Setup) -> str:
    """The version nginx serves on the project's site. nginx applies a reload (one that added
    the site's server block) after its command returns: wait until the port listens."""
    await wait_listening(setup.site_port)
    status, body = await get_text(f"{setup.site_url}/version")
    assert status == 200
    return body


async def eventually_live(setup: Setup, expected: str, within: float = 5.0) -> str:
    """The version served through nginx once a reload has taken effect (nginx reloads are
    asynchronous: the command returns before the new workers answer)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    seen = await live_version(setup)
    while seen != expected and loop.time() < deadline:
        await asyncio.sleep(0.05)
        seen = await live_version(setup)
    return seen


def container_names(client: docker.DockerClient, project: str) -> set[str]:
    return {
        c.name
        for c in client.containers.list(all=True, filters={"label": f"gatebot.project={project}"})
    }
