"""Fixtures over the real components in tests/harness.py."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from gatebot.devtools import free_port
from gatebot.pipeline.engine import Engine
from gatebot.runtime.base import LABEL_PROJECT
from gatebot.settings import Settings
from gatebot.wiring import open_engine
from tests.harness import (
    BUSYBOX,
    Nginx,
    SampleRepo,
    free_port_pair,
    make_settings,
    project_config,
)

_names = itertools.count(1)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    host = os.environ.get("DOCKER_HOST")
    if not host:
        pytest.exit("DOCKER_HOST is not set: run the suite through scripts/test", returncode=2)
    client = docker.DockerClient(base_url=host)
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001
        pytest.exit(f"the Docker engine at {host} does not answer: {exc}", returncode=2)
    if not BUSYBOX.exists():
        pytest.exit("/bin/busybox is missing: install busybox-static", returncode=2)
    yield client
    client.close()


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Nginx]:
    server = Nginx(tmp_path / "nginx")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def sample_repo(tmp_path: Path) -> SampleRepo:
    return SampleRepo(tmp_path / "repo")


@pytest.fixture
def project_name(docker_client: docker.DockerClient) -> Iterator[str]:
    """A project name unique in this run; its containers are removed after the test."""
    name = f"t{os.getpid() % 10000}-{next(_names)}"
    yield name
    for container in docker_client.containers.list(
        all=True, filters={"label": f"{LABEL_PROJECT}={name}"}
    ):
        container.remove(force=True)
    for image in docker_client.images.list(name=f"gatebot/{name}"):
        with contextlib.suppress(docker.errors.APIError):
            docker_client.images.remove(image.id, force=True)


class Setup:
    """One project wired to a real nginx and a real repository."""

    def __init__(self, tmp_path: Path, nginx: Nginx, repo: SampleRepo, name: str) -> None:
        self.tmp_path = tmp_path
        self.nginx = nginx
        self.repo = repo
        self.name = name
        self.base_port = free_port_pair()
        self.site_port = free_port()
        self.data_dir = tmp_path / "data"

    def project(self, **overrides: Any) -> dict[str, Any]:
        return project_config(self.name, self.repo, self.base_port, self.site_port, **overrides)

    def settings(self, **overrides: Any) -> Settings:
        return make_settings(self.data_dir, self.nginx, [self.project(**overrides)])

    @property
    def site_url(self) -> str:
        return f"http://127.0.0.1:{self.site_port}"


@pytest.fixture
def setup(tmp_path: Path, nginx: Nginx, sample_repo: SampleRepo, project_name: str) -> Setup:
    return Setup(tmp_path, nginx, sample_repo, project_name)


@pytest.fixture
async def engine(setup: Setup) -> AsyncIterator[Engine]:
    """An engine whose project already has its nginx files (as `serve` and `reconcile` write
    them before any deploy), with nginx answering on the site's port."""
    async with open_engine(setup.settings()) as opened:
        await opened.proxy.ensure(opened.settings.projects)
        await wait_listening(setup.site_port)
        yield opened


async def wait_listening(port: int, within: float = 10.0) -> None:
    """Until 127.0.0.1:`port` accepts connections (nginx applies a reload asynchronously)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.02)
            continue
        writer.close()
        return
