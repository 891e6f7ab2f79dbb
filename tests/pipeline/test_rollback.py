"""Rollback through the same slot switch as a deploy, on real Docker and nginx."""

from __future__ import annotations

import docker
import pytest

from gatebot.errors import LiveReleaseChanged, NothingToRollBack, StageFailed
from gatebot.model import Status
from gatebot.pipeline.deploy import deploy
from gatebot.pipeline.engine import Engine
from gatebot.pipeline.rollback import rollback
from tests.support.deploys import container_names, live_version
from tests.support.setup import Setup


async def deploy_versions(engine: Engine, setup: Setup, count: int) -> list[int]:
    ids = []
    for n in range(1, count + 1):
        setup.repo.commit(f"v{n}")
        ids.append((await deploy(engine, setup.name, trigger="test")).id)
    return ids


async def test_rollback_twice_walks_back_and_next_deploy_gets_a_new_version(
    engine: Engine, setup: Setup, docker_client: docker.DockerClient
) -> None:
    v1, v2, v3 = await deploy_versions(engine, setup, 3)
    assert await live_version(setup) == "v3"

    back = await rollback(engine, setup.name, trigger="test")
    assert (back.id, back.status) == (v2, Status.ACTIVE)
    assert await live_version(setup) == "v2"
    assert (await engine.store.deployments.require(v3)).status is Status.ROLLED_BACK

    again = await rollback(engine, setup.name, trigger="test")
    assert again.id == v1, "a second rollback walks further back instead of bouncing to v3"
    assert await live_version(setup) == "v1"
    assert len(container_names(docker_client, setup.name)) == 1

    with pytest.raises(NothingToRollBack):
        await rollback(engine, setup.name, trigger="test")

    setup.repo.commit("v4")
    fourth = await deploy(engine, setup.name, trigger="test")
    assert fourth.version == 4
    assert await live_version(setup) == "v4"


async def test_rollback_to_a_named_version_or_sha(engine: Engine, setup: Setup) -> None:
    v1, _v2, _v3 = await deploy_versions(engine, setup, 3)
    target = await rollback(engine, setup.name, to="v1", trigger="test")
    assert target.id == v1
    assert await live_version(setup) == "v1"
    sha3 = await engine.store.deployments.find(setup.name, "3")
    assert sha3 is not None and sha3.commit_sha
    forward = await rollback(engine, setup.name, to=sha3.commit_sha[:10], trigger="test")
    assert forward.version == 3
    assert await live_version(setup) == "v3"


async def test_rollback_never_targets_a_failed_release(engine: Engine, setup: Setup) -> None:
    await deploy_versions(engine, setup, 1)
    setup.repo.commit("v2-broken", healthy=False)
    engine.settings = setup.settings(health={"retries": 3})
    with pytest.raises(StageFailed):
        await deploy(engine, setup.name, trigger="test")
    setup.repo.commit("v3")
    await deploy(engine, setup.name, trigger="test")
    with pytest.raises(NothingToRollBack, match="never live"):
        await rollback(engine, setup.name, to="2", trigger="test")
    back = await rollback(engine, setup.name, trigger="test")
    assert back.version == 1


async def test_rollback_skips_releases_whose_image_is_gone(engine: Engine, setup: Setup) -> None:
    await deploy_versions(engine, setup, 3)
    v2 = await engine.store.deployments.find(setup.name, "2")
    assert v2 is not None and v2.image
    await engine.runtime.remove_image(v2.image)
    back = await rollback(engine, setup.name, trigger="test")
    assert back.version == 1


async def test_failed_rollback_keeps_the_current_release(
    engine: Engine, setup: Setup, docker_client: docker.DockerClient
) -> None:
    await deploy_versions(engine, setup, 2)
    # The old release answers its health check on a path the new settings ask for no more.
    engine.settings = setup.settings(health={"path": "/missing", "retries": 3})
    with pytest.raises(StageFailed) as caught:
        await rollback(engine, setup.name, trigger="test")
    assert caught.value.stage == "health"
    assert await live_version(setup) == "v2"
    v1 = await engine.store.deployments.find(setup.name, "1")
    assert v1 is not None and v1.status is Status.ROLLED_BACK
    assert len(container_names(docker_client, setup.name)) == 1


async def test_images_beyond_keep_releases_are_pruned(
    engine: Engine, setup: Setup, docker_client: docker.DockerClient
) -> None:
    engine.settings = setup.settings(keep_releases=2)
    await deploy_versions(engine, setup, 1)
    first = (await engine.store.deployments.history(setup.name))[0]
    assert first.image
    by_hand = f"gatebot/{setup.name}:tagged-by-hand"  # in gatebot's repository, not built by it
    docker_client.images.get(first.image).tag(by_hand)
    await deploy_versions(engine, setup, 4)
    images = await engine.runtime.images(f"gatebot/{setup.name}")
    history = await engine.store.deployments.history(setup.name)
    assert sorted(images) == sorted([by_hand, *(d.image for d in history[:2] if d.image)])


async def test_a_rollback_decided_against_another_live_release_is_refused_under_the_lock(
    engine: Engine, setup: Setup, docker_client: docker.DockerClient
) -> None:
    # The comment was decided while v1 was live; v2 went live before the job took the lock.
    v1, v2 = await deploy_versions(engine, setup, 2)
    with pytest.raises(LiveReleaseChanged, match="now v2"):
        await rollback(engine, setup.name, trigger="test", expect_active=v1)
    assert (await engine.store.deployments.require(v2)).status is Status.ACTIVE
    assert await live_version(setup) == "v2"
    assert len(container_names(docker_client, setup.name)) == 1, "nothing was started"
    back = await rollback(engine, setup.name, trigger="test", expect_active=v2)
    assert back.id == v1
