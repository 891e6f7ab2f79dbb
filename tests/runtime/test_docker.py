"""DockerRuntime against the real engine: build, run (host and bridge), replace, inspect, list."""

from __future__ import annotations

import asyncio
import io
import itertools
import os
import shutil
import tarfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import aiohttp
import docker
import docker.errors
import pytest

from gatebot.errors import NameConflict, RuntimeFailure, RuntimeUnavailable, SourceError
from gatebot.pipeline.deploy import build_spec
from gatebot.runtime.base import (
    LABEL_MANAGED,
    LABEL_PROJECT,
    BuildSpec,
    ContainerSpec,
)
from gatebot.runtime.docker import DockerRuntime
from gatebot.settings import ProjectSettings
from tests.support.http import get_text
from tests.support.real import BUSYBOX, SAMPLE_APP, free_port

pytestmark = pytest.mark.docker

_counter = itertools.count(1)
RUN_ID = f"rt{os.getpid() % 100000}"


def unique_name() -> str:
    return f"{RUN_ID}-{next(_counter)}"


def container_labels(project: str) -> dict[str, str]:
    """The labels that mark one of gatebot's slot containers."""
    return {LABEL_MANAGED: "true", LABEL_PROJECT: project}


def labels(project: str) -> dict[str, str]:
    """Labels for the images these tests build, so their teardown finds them (gatebot itself
    puts none on its images)."""
    return {LABEL_PROJECT: project}


def sample_context(root: Path, version: str) -> Path:
    """The sample app with busybox beside it, serving `version` at /version."""
    context = root / "context"
    shutil.copytree(SAMPLE_APP, context)
    shutil.copy2(BUSYBOX, context / "busybox")
    (context / "www" / "version").write_text(version + "\n")
    return context


def remove_by_label(client: docker.DockerClient, project: str) -> None:
    for container in client.containers.list(
        all=True, filters={"label": f"{LABEL_PROJECT}={project}"}
    ):
        container.remove(force=True)
    images = client.images.list(filters={"label": f"{LABEL_PROJECT}={project}"})
    for image in images:
        try:
            client.images.remove(image.id, force=True)
        except docker.errors.NotFound:
            pass


class Sample:
    """The sample app's image, built once for this module."""

    def __init__(self, project: str, tag: str, version: str) -> None:
        self.project = project
        self.tag = tag
        self.version = version


@pytest.fixture(scope="module")
def sample(
    docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Sample]:
    project = unique_name()
    version = f"sample {uuid.uuid4().hex[:12]}"
    context = sample_context(tmp_path_factory.mktemp("sample"), version)
    tag = f"gatebot-test/{project}:1"
    # Only the project label (to clean up by): containers made from it by hand are not gatebot's.
    docker_client.images.build(path=str(context), tag=tag, labels={LABEL_PROJECT: project}, rm=True)
    yield Sample(project, tag, version)
    remove_by_label(docker_client, project)


@pytest.fixture
def project(docker_client: docker.DockerClient) -> Iterator[Callable[[], str]]:
    """Unique project names; their containers and images are removed afterwards."""
    made: list[str] = []

    def make() -> str:
        made.append(unique_name())
        return made[-1]

    yield make
    for name in made:
        remove_by_label(docker_client, name)


@pytest.fixture
async def runtime() -> AsyncIterator[DockerRuntime]:
    opened = DockerRuntime(os.environ["DOCKER_HOST"])
    yield opened
    await opened.close()


def container_spec(
    name: str,
    sample: Sample,
    project: str,
    *,
    network: Literal["bridge", "host"] = "host",
    host_port: int | None = None,
    **extra: Any,
) -> ContainerSpec:
    return ContainerSpec(
        name=name,
        image=sample.tag,
        labels=container_labels(project),
        env=extra.pop("env", {}),
        network=network,
        host_port=host_port or free_port(),
        container_port=3000,
        **extra,
    )


async def wait_for_http(url: str, deadline: float = 10.0) -> tuple[int, str]:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while True:
        try:
            return await get_text(url, timeout=2)
        except (aiohttp.ClientError, TimeoutError):
            if loop.time() > end:
                raise
            await asyncio.sleep(0.05)


def env_of(container: Any) -> dict[str, str]:
    return dict(item.split("=", 1) for item in container.attrs["Config"]["Env"])


# --- engine -----------------------------------------------------------------------------


async def test_ping(runtime: DockerRuntime) -> None:
    await runtime.ping()


async def test_ping_missing_socket_is_runtime_unavailable(tmp_path: Path) -> None:
    url = f"unix://{tmp_path}/no-such-docker.sock"
    absent = DockerRuntime(url)
    with pytest.raises(RuntimeUnavailable) as caught:
        await absent.ping()
    assert str(caught.value).startswith(f"Docker engine at {url} is not reachable")
    await absent.close()


# --- images -------------------------------------------------------------------------------


async def test_build_streams_output_and_returns_the_id(
    runtime: DockerRuntime,
    project: Callable[[], str],
    tmp_path: Path,
    docker_client: docker.DockerClient,
) -> None:
    name = project()
    tag = f"gatebot-test/{name}:7"
    lines: list[str] = []
    image_id = await runtime.build(
        BuildSpec(
            context=sample_context(tmp_path, "built"),
            dockerfile="Dockerfile",
            tag=tag,
            labels=labels(name),
        ),
        lines.append,
    )
    await asyncio.sleep(0)  # output lines arrive through the loop
    assert image_id.startswith("sha256:")
    image = docker_client.images.get(tag)
    assert image.id == image_id
    assert image.labels[LABEL_PROJECT] == name
    assert LABEL_MANAGED not in image.labels
    assert any(line.startswith("Step 1/") for line in lines), lines
    assert all(line.strip() and "\n" not in line for line in lines)


def _project(**overrides: Any) -> ProjectSettings:
    return ProjectSettings(name="shop", repo="file:///srv/git/shop", base_port=3100, **overrides)


def _checkout_with_credentials(root: Path) -> Path:
    """A checkout as an older gatebot left it: the clone URL, password included, in .git."""
    (root / ".git").mkdir(parents=True)
    (root / ".git" / "config").write_text(
        '[remote "origin"]\n\turl = http://deploy:s3cret-pass@127.0.0.1/x.git\n'
    )
    (root / "app.txt").write_text("app\n")
    (root / "Dockerfile").write_text("FROM scratch\nCOPY . /src/\n")
    return root


def _image_files(client: docker.DockerClient, tag: str) -> tuple[set[str], bytes]:
    """The paths in an image's layers and the raw bytes of the saved image."""
    raw = b"".join(client.images.get(tag).save())
    names: set[str] = set()
    with tarfile.open(fileobj=io.BytesIO(raw)) as image:
        for member in image.getmembers():
            if member.name.endswith(".tar") or member.name.startswith("blobs/"):
                layer = image.extractfile(member)
                if layer is None:
                    continue
                try:
                    with tarfile.open(fileobj=io.BytesIO(layer.read())) as files:
                        names |= set(files.getnames())
                except tarfile.TarError:
                    continue
    return names, raw


@pytest.mark.parametrize("include_git", [False, True])
async def test_the_checkouts_git_folder_stays_out_of_the_image_unless_asked(
    runtime: DockerRuntime,
    project: Callable[[], str],
    tmp_path: Path,
    docker_client: docker.DockerClient,
    include_git: bool,
) -> None:
    name = project()
    tag = f"gatebot-test/{name}:1"
    root = _checkout_with_credentials(tmp_path / "checkout")
    spec = build_spec(root, _project(build_include_git=include_git), tag)
    await runtime.build(replace(spec, labels=labels(name)), lambda line: None)
    names, raw = _image_files(docker_client, tag)
    assert "src/app.txt" in names
    assert ("src/.git/config" in names) is include_git
    assert (b"s3cret-pass" in raw) is include_git


async def test_a_dockerfile_outside_the_context_inside_the_checkout_builds(
    runtime: DockerRuntime, project: Callable[[], str], tmp_path: Path
) -> None:
    name = project()
    root = tmp_path / "checkout"
    (root / "app").mkdir(parents=True)
    (root / "app" / "app.txt").write_text("app\n")
    (root / "docker").mkdir()
    (root / "docker" / "Dockerfile").write_text("FROM scratch\nCOPY app.txt /app.txt\n")
    spec = build_spec(root, _project(context="app", dockerfile="../docker/Dockerfile"), "x")
    tag = f"gatebot-test/{name}:1"
    await runtime.build(replace(spec, tag=tag, labels=labels(name)), lambda line: None)
    assert await runtime.image_exists(tag)


def test_a_symbolic_link_out_of_the_checkout_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "checkout"
    root.mkdir()
    (root / "up").symlink_to(tmp_path)
    (root / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(SourceError, match="context 'up/x' leads outside the checkout"):
        build_spec(root, _project(context="up/x"), "x")
    with pytest.raises(SourceError, match="dockerfile 'passwd' leads outside the checkout"):
        build_spec(root, _project(dockerfile="passwd"), "x")


async def test_build_failure_is_a_runtime_failure(
    runtime: DockerRuntime, project: Callable[[], str], tmp_path: Path
) -> None:
    name = project()
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY no-such-file /x\n")
    with pytest.raises(RuntimeFailure, match="image build failed"):
        await runtime.build(
            BuildSpec(tmp_path, "Dockerfile", f"gatebot-test/{name}:1", labels(name)),
            lambda line: None,
        )
    assert not await runtime.image_exists(f"gatebot-test/{name}:1")


async def test_image_exists_remove_and_project_images(
    runtime: DockerRuntime,
    sample: Sample,
    project: Callable[[], str],
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    mine, theirs = project(), project()
    for name, tags in ((mine, ["1-aaaa", "2-bbbb"]), (theirs, ["1-cccc"])):
        for tag in tags:
            docker_client.images.build(
                path=str(sample_context(tmp_path / f"{name}-{tag}", name)),
                tag=f"gatebot-test/{name}:{tag}",
                labels=labels(name),
                rm=True,
            )
    borrowed = f"gatebot-test/{mine}:borrowed"  # another image tagged in the same repository
    docker_client.images.get(sample.tag).tag(borrowed)
    try:
        assert await runtime.images(f"gatebot-test/{mine}") == [
            f"gatebot-test/{mine}:1-aaaa",
            f"gatebot-test/{mine}:2-bbbb",
            borrowed,
        ]
        assert await runtime.images(f"gatebot-test/{theirs}") == [f"gatebot-test/{theirs}:1-cccc"]
        assert await runtime.image_exists(f"gatebot-test/{mine}:1-aaaa")
        await runtime.remove_image(f"gatebot-test/{mine}:1-aaaa")
        assert not await runtime.image_exists(f"gatebot-test/{mine}:1-aaaa")
        assert await runtime.image_exists(f"gatebot-test/{mine}:2-bbbb")
        assert await runtime.images(f"gatebot-test/{mine}") == [
            f"gatebot-test/{mine}:2-bbbb",
            borrowed,
        ]
        await runtime.remove_image(f"gatebot-test/{mine}:1-aaaa")  # already gone: fine
        assert not await runtime.image_exists(f"gatebot-test/{mine}:never-built")
    finally:
        docker_client.images.remove(borrowed)


# --- containers ---------------------------------------------------------------------------


async def test_run_in_host_mode_serves_on_port(
    runtime: DockerRuntime,
    sample: Sample,
    project: Callable[[], str],
    docker_client: docker.DockerClient,
) -> None:
    name = project()
    port = free_port()
    spec = container_spec(
        f"gatebot-{name}-blue", sample, name, host_port=port, env={"GREETING": "hello"}
    )
    await runtime.run(spec)
    assert await wait_for_http(f"http://127.0.0.1:{port}/version") == (200, sample.version)

    container = docker_client.containers.get(spec.name)
    host_config = container.attrs["HostConfig"]
    assert host_config["NetworkMode"] == "host"
    assert host_config["RestartPolicy"]["Name"] == "unless-stopped"
    assert host_config["Init"] is True
    assert host_config["LogConfig"] == {
        "Type": "json-file",
        "Config": {"max-size": "10m", "max-file": "3"},
    }
    env = env_of(container)
    assert (env["PORT"], env["GREETING"]) == (str(port), "hello")
    assert container.labels[LABEL_MANAGED] == "true"

    state = await runtime.state(spec.name)
    assert state is not None
    assert (state.name, state.status, state.running, state.managed) == (
        spec.name,
        "running",
        True,
        True,
    )
    assert state.labels[LABEL_PROJECT] == name
    assert state.image == sample.tag


async def test_host_mode_port_wins_over_env(
    runtime: DockerRuntime,
    sample: Sample,
    project: Callable[[], str],
    docker_client: docker.DockerClient,
) -> None:
    name = project()
    port = free_port()
    spec = container_spec(
        f"gatebot-{name}-green",
        sample,
        name,
        host_port=port,
        env={"PORT": "1"},
        init=False,
        log_max_size="1m",
        log_max_files=2,
    )
    await runtime.run(spec)
    container = docker_client.containers.get(spec.name)
    assert env_of(container)["PORT"] == str(port)
    assert container.attrs["HostConfig"]["Init"] is False
    assert container.attrs["HostConfig"]["LogConfig"]["Config"] == {
        "max-size": "1m",
        "max-file": "2",
    }


async def test_run_in_bridge_mode_publishes_on_loopback(
    runtime: DockerRuntime,
    sample: Sample,
    project: Callable[[], str],
    docker_client: docker.DockerClient,
) -> None:
    name = project()
    port = free_port()
    spec = container_spec(f"gatebot-{name}-blue", sample, name, network="bridge", host_port=port)
    await runtime.run(spec)
    container = docker_client.containers.get(spec.name)
    host_config = container.attrs["HostConfig"]
    assert host_config["PortBindings"] == {
        "3000/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]
    }
    assert host_config["NetworkMode"] != "host"
    assert env_of(container)["PORT"] == "3000"


async def test_leftover_gatebot_container_is_replaced(
    runtime: DockerRuntime,
    sample: Sample,
    project: Callable[[], str],
    docker_client: docker.DockerClient,
) -> None:
    name = project()
    container_name = f"gatebot-{name}-blue"
    leftover = docker_client.containers.create(
        sample.tag, name=container_name, labels=container_labels(name), environment={"PORT": "1"}
    )
    port = free_port()
    await runtime.run(container_spec(container_name, sample, name, host_port=port))
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(leftover.id)
    replacement = docker_client.containers.get(container_name)
    assert replacement.id != leftover.id
    assert await wait_for_http(f"http://127.0.0.1:{port}/version") == (200, sample.version)


async def test_foreign_container_of_that_name_is_left_alone(
    runtime: DockerRuntime,
    sample: Sample,
    project: Callable[[], str],
    docker_client: docker.DockerClient,
) -> None:
    name = project()
    container_name = f"gatebot-{name}-blue"
    foreign = docker_client.containers.create(
        sample.tag, name=container_name, labels={"owner": "someone-else"}
    )
    try:
        with pytest.raises(NameConflict) as caught:
            await runtime.run(container_spec(container_name, sample, name))
        assert container_name in str(caught.value)
        assert "not created by gatebot" in str(caught.value)
        still = docker_client.containers.get(container_name)
        assert still.id == foreign.id
        assert still.status == "created"
        state = await runtime.state(container_name)
        assert state is not None and not state.managed
    finally:
        foreign.remove(force=True)


async def test_state_and_logs_of_a_missing_container(
    runtime: DockerRuntime, project: Callable[[], str]
) -> None:
    missing = f"gatebot-{project()}-blue"
    assert await runtime.state(missing) is None
    assert await runtime.logs(missing) == ""
    await runtime.stop_and_remove(missing, timeout=1)
    assert await runtime.state(missing) is None


async def test_logs_and_stop_and_remove(
    runtime: DockerRuntime, sample: Sample, project: Callable[[], str]
) -> None:
    name = project()
    port = free_port()
    spec = container_spec(f"gatebot-{name}-blue", sample, name, host_port=port)
    await runtime.run(spec)
    await wait_for_http(f"http://127.0.0.1:{port}/version")
    loop = asyncio.get_running_loop()
    end = loop.time() + 5
    logs = await runtime.logs(spec.name)
    while "response:200" not in logs and loop.time() < end:
        await asyncio.sleep(0.05)
        logs = await runtime.logs(spec.name)
    assert "response:200" in logs
    assert len((await runtime.logs(spec.name, tail=1)).splitlines()) == 1

    await runtime.stop_and_remove(spec.name, timeout=2)
    assert await runtime.state(spec.name) is None
    with pytest.raises(aiohttp.ClientError):
        await get_text(f"http://127.0.0.1:{port}/version", timeout=2)


async def test_managed_containers_filters_by_project(
    runtime: DockerRuntime,
    sample: Sample,
    project: Callable[[], str],
    docker_client: docker.DockerClient,
) -> None:
    mine, theirs = project(), project()
    for color in ("blue", "green"):
        docker_client.containers.create(
            sample.tag, name=f"gatebot-{mine}-{color}", labels=container_labels(mine)
        )
    docker_client.containers.create(
        sample.tag, name=f"gatebot-{theirs}-blue", labels=container_labels(theirs)
    )
    docker_client.containers.create(  # the project label alone does not make it gatebot's
        sample.tag, name=f"{mine}-by-hand", labels={LABEL_PROJECT: mine}
    )
    listed = await runtime.managed_containers(mine)
    assert sorted(c.name for c in listed) == [f"gatebot-{mine}-blue", f"gatebot-{mine}-green"]
    assert all(c.managed and not c.running and c.status == "created" for c in listed)
    assert [c.name for c in await runtime.managed_containers(theirs)] == [f"gatebot-{theirs}-blue"]
    assert await runtime.managed_containers(project()) == []


async def test_container_started_by_hand_from_a_gatebot_image_is_not_gatebots(
    runtime: DockerRuntime,
    project: Callable[[], str],
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    name = project()
    image = f"gatebot-test/{name}:1-abc"
    await runtime.build(
        BuildSpec(sample_context(tmp_path, "built"), "Dockerfile", image, labels(name)),
        lambda line: None,
    )
    by_hand = docker_client.containers.create(image, name=f"{name}-migrate")  # no labels given
    listed = [c.name for c in await runtime.managed_containers(name)]
    assert by_hand.name not in listed, "reconciliation would stop and remove it"
