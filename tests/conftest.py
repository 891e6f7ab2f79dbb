"""Fixtures over the real components in tests/support/, and the marks that say which tests
need them, set from the fixtures a test uses (directly or through others): one reaching the
Docker engine is marked `docker`; one starting nginx is marked `nginx` and `docker` too, since
`docker` marks every test that needs the services scripts/test provides. So
`pytest -m "not docker"` runs the rest on a machine with neither Docker nor nginx.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gatebot.app import create_app
from gatebot.pipeline.engine import Engine
from gatebot.runtime.base import LABEL_PROJECT
from gatebot.settings import Settings
from gatebot.wiring import open_engine
from tests.fakes.github import FakeGitHub
from tests.fakes.gitlab import FakeGitLab
from tests.support import swarm as swarm_harness
from tests.support.deliveries import API_TOKEN
from tests.support.http import wait_listening
from tests.support.real import BUSYBOX, Nginx, SampleRepo
from tests.support.server import ClientFactory, open_engine_without_docker, server_settings
from tests.support.setup import Setup, Workspace

_names = itertools.count(1)

# Fixtures that reach the real Docker engine or start a real nginx.
DOCKER_FIXTURES = frozenset({"docker_client"})
NGINX_FIXTURES = frozenset({"nginx"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & DOCKER_FIXTURES:
            item.add_marker(pytest.mark.docker)
        if used & NGINX_FIXTURES:
            item.add_marker(pytest.mark.nginx)
            item.add_marker(pytest.mark.docker)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    host = os.environ.get("DOCKER_HOST")
    if not host:
        pytest.exit(
            'DOCKER_HOST is not set: run the suite through scripts/test, or pytest -m "not docker"',
            returncode=2,
        )
    client = docker.DockerClient(base_url=host)
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001
        pytest.exit(f"the Docker engine at {host} does not answer: {exc}", returncode=2)
    if not BUSYBOX.exists():
        pytest.exit("/bin/busybox is missing: install busybox-static", returncode=2)
    yield client
    client.close()


@pytest.fixture(scope="session")
def swarm() -> Iterator[swarm_harness.Swarm]:
    """A real 2-node swarm (tests/support/swarm.py), built when the first test asks for it
    and torn down at the end of the session; scripts/test names the folder and removes what
    is left there at exit, also when pytest itself was killed."""
    folder = os.environ.get("GATEBOT_SWARM_DIR") or tempfile.mkdtemp(prefix="gatebot-swarm.")
    try:
        built = swarm_harness.up(folder)
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"could not build the test swarm: {exc}", pytrace=False)
    yield built
    swarm_harness.down(folder)


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Nginx]:
    server = Nginx(tmp_path / "nginx")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def sample_repo(tmp_path: Path) -> SampleRepo:
    return SampleRepo(tmp_path / "repo")


def unique_name() -> str:
    return f"t{os.getpid() % 10000}-{next(_names)}"


@pytest.fixture
def project_name(docker_client: docker.DockerClient) -> Iterator[str]:
    """A project name unique in this run; its containers are removed after the test."""
    name = unique_name()
    yield name
    for container in docker_client.containers.list(
        all=True, filters={"label": f"{LABEL_PROJECT}={name}"}
    ):
        container.remove(force=True)
    for image in docker_client.images.list(name=f"gatebot/{name}"):
        with contextlib.suppress(docker.errors.APIError):
            docker_client.images.remove(image.id, force=True)


@pytest.fixture
def setup(tmp_path: Path, nginx: Nginx, sample_repo: SampleRepo, project_name: str) -> Setup:
    return Setup(tmp_path, nginx, sample_repo, project_name)


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    """A project with no Docker, nginx or repository behind it."""
    return Workspace(tmp_path, unique_name())


@pytest.fixture
async def engine(setup: Setup) -> AsyncIterator[Engine]:
    """An engine whose project already has its nginx files (as `serve` and `reconcile` write
    them before any deploy), with nginx answering on the site's port."""
    async with open_engine(setup.settings()) as opened:
        await opened.proxy.ensure(opened.settings.projects)
        await wait_listening(setup.site_port)
        yield opened


@pytest.fixture
def start_server(aiohttp_client: Any, setup: Setup) -> ClientFactory:
    """Start gatebot (app factory, cleanup context and all) with settings for `setup`."""

    async def start(settings: Settings | None = None, **overrides: Any) -> TestClient[Any, Any]:
        client: TestClient[Any, Any] = await aiohttp_client(
            create_app(settings or server_settings(setup, **overrides))
        )
        return client

    return start


@pytest.fixture
def start_offline(aiohttp_client: Any, workspace: Workspace) -> ClientFactory:
    """Start gatebot for `workspace` as `start_server` does, but with no Docker engine to reach
    (see open_engine_without_docker): for tests of requests, never of deploys."""

    async def start(settings: Settings | None = None, **overrides: Any) -> TestClient[Any, Any]:
        app = create_app(
            settings or server_settings(workspace, **overrides),
            open_engine=open_engine_without_docker,
        )
        client: TestClient[Any, Any] = await aiohttp_client(app)
        return client

    return start


@pytest.fixture
async def github(aiohttp_server: Callable[[Any], Awaitable[TestServer]]) -> tuple[FakeGitHub, str]:
    fake = FakeGitHub(tokens=[API_TOKEN])
    server = await aiohttp_server(fake.app)
    return fake, fake.api_url(server)


@pytest.fixture
async def gitlab(aiohttp_server: Callable[[Any], Awaitable[TestServer]]) -> tuple[FakeGitLab, str]:
    fake = FakeGitLab(tokens=[API_TOKEN])
    server = await aiohttp_server(fake.app)
    return fake, fake.api_url(server)
