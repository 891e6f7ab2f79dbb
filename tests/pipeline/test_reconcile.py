"""Start-up reconciliation after crashes at each point of the pipeline."""

from __future__ import annotations

import docker

from gatebot.model import Status
from gatebot.pipeline.deploy import deploy
from gatebot.pipeline.engine import Engine, image_tag, pick_slot
from gatebot.pipeline.reconcile import reconcile
from gatebot.runtime.base import BuildSpec
from tests.support.deploys import container_names, eventually_live
from tests.support.http import get_text
from tests.support.setup import Setup


async def crash_after_run(engine: Engine, setup: Setup, version: str) -> int:
    """Do what deploy does up to a running new container, then "crash" (stop calling)."""
    sha = setup.repo.commit(version)
    project = engine.settings.project(setup.name)
    deployments = engine.store.deployments
    active = await deployments.active(setup.name)
    dep = await deployments.create(setup.name, "test")
    checkout = await engine.source.checkout(setup.name, project.repo, project.branch, sha)
    slot = pick_slot(project, active)
    image = image_tag(f"gatebot/{setup.name}", dep.version, sha)
    dep = await deployments.mark_deploying(
        dep.id, commit_sha=sha, commit_message="", image=image, slot=slot
    )
    await engine.runtime.build(
        BuildSpec(checkout.path, "Dockerfile", image),
        lambda _: None,
    )
    await engine.runtime.run(engine.container_spec(project, dep, image, slot))
    return dep.id


async def test_interrupted_deploy_is_failed_and_its_container_removed(
    engine: Engine, setup: Setup, docker_client: docker.DockerClient
) -> None:
    setup.repo.commit("v1")
    first = await deploy(engine, setup.name, trigger="test")
    stuck = await crash_after_run(engine, setup, "v2")
    assert len(container_names(docker_client, setup.name)) == 2

    report = await reconcile(engine)

    assert report.interrupted == [stuck]
    failed = await engine.store.deployments.require(stuck)
    assert failed.status is Status.FAILED and "interrupted" in (failed.error or "")
    assert container_names(docker_client, setup.name) == {first.container}
    assert await eventually_live(setup, "v1") == "v1"


async def test_crash_between_switch_and_record_routes_back_to_active(
    engine: Engine, setup: Setup, docker_client: docker.DockerClient
) -> None:
    setup.repo.commit("v1")
    first = await deploy(engine, setup.name, trigger="test")
    stuck = await crash_after_run(engine, setup, "v2")
    project = engine.settings.project(setup.name)
    new = await engine.store.deployments.require(stuck)
    await engine.route_to(project, new)  # the marker flipped, the database was not updated
    assert await eventually_live(setup, "v2") == "v2"

    report = await reconcile(engine)

    assert report.routes_changed == [setup.name]
    assert report.nginx_changed == []
    assert engine.proxy.route(setup.name) == first.color
    assert await eventually_live(setup, "v1") == "v1"
    assert container_names(docker_client, setup.name) == {first.container}
    assert (
        await engine.store.deployments.active(setup.name)
    ) == await engine.store.deployments.require(first.id)


async def test_stopped_active_container_is_started_again(
    engine: Engine, setup: Setup, docker_client: docker.DockerClient
) -> None:
    setup.repo.commit("v1")
    first = await deploy(engine, setup.name, trigger="test")
    docker_client.containers.get(first.container).stop(timeout=1)

    report = await reconcile(engine)

    assert report.restarted == [first.id]
    assert docker_client.containers.get(first.container).status == "running"
    assert await eventually_live(setup, "v1") == "v1"
    assert (await engine.store.deployments.require(first.id)).status is Status.ACTIVE


async def test_missing_active_container_is_recreated(
    engine: Engine, setup: Setup, docker_client: docker.DockerClient
) -> None:
    setup.repo.commit("v1")
    first = await deploy(engine, setup.name, trigger="test")
    docker_client.containers.get(first.container).remove(force=True)

    report = await reconcile(engine)

    assert report.restarted == [first.id]
    assert await eventually_live(setup, "v1") == "v1"


async def test_active_that_cannot_come_back_is_marked_failed(
    engine: Engine, setup: Setup, docker_client: docker.DockerClient
) -> None:
    setup.repo.commit("v1")
    first = await deploy(engine, setup.name, trigger="test")
    docker_client.containers.get(first.container).remove(force=True)
    assert first.image
    docker_client.images.remove(first.image, force=True)
    engine.settings = setup.settings(health={"retries": 2})

    report = await reconcile(engine)

    assert report.lost == [first.id]
    lost = await engine.store.deployments.require(first.id)
    assert lost.status is Status.FAILED and lost.failed_stage == "reconcile"
    assert (setup.nginx.conf_dir / f"{setup.name}.conf").exists(), "files stay: nginx stays valid"
    assert engine.proxy.route(setup.name) is None
    assert await get_text(f"{setup.site_url}/version") == (
        503,
        f"no release of {setup.name} is live yet",
    )


async def test_stray_gatebot_containers_are_removed(
    engine: Engine, setup: Setup, docker_client: docker.DockerClient
) -> None:
    setup.repo.commit("v1")
    await deploy(engine, setup.name, trigger="test")
    setup.repo.commit("v2")
    second = await deploy(engine, setup.name, trigger="test")
    first = await engine.store.deployments.find(setup.name, "1")
    assert first is not None and first.image and first.container
    # An old slot left running, as after a crash during the drain.
    docker_client.containers.run(
        first.image,
        name=first.container,
        detach=True,
        network_mode="host",
        environment={"PORT": str(first.port)},
        labels={
            "gatebot.managed": "true",
            "gatebot.project": setup.name,
            "gatebot.deployment": str(first.id),
        },
    )

    report = await reconcile(engine)

    assert report.removed_containers == [first.container]
    assert container_names(docker_client, setup.name) == {second.container}


async def test_nginx_files_and_marker_are_rendered_from_the_database(
    engine: Engine, setup: Setup
) -> None:
    setup.repo.commit("v1")
    first = await deploy(engine, setup.name, trigger="test")
    conf = setup.nginx.conf_dir / f"{setup.name}.conf"
    expected = conf.read_text()
    conf.write_text(expected.replace(str(setup.base_port), str(setup.base_port + 7)))
    engine.proxy.set_route(setup.name, None)  # a marker that disagrees with the database

    report = await reconcile(engine)

    assert report.nginx_changed == [setup.name]
    assert report.routes_changed == [setup.name]
    assert conf.read_text() == expected
    assert engine.proxy.route(setup.name) == first.color
    assert await eventually_live(setup, "v1") == "v1"
    again = await reconcile(engine)
    assert (again.nginx_changed, again.routes_changed) == ([], []), "a second pass changes nothing"
