"""open_engine binds each project to its runtime: the Docker host, or the swarm."""

from __future__ import annotations

from pathlib import Path

from gatebot.model import Color, Status
from gatebot.pipeline.engine import slot_of
from gatebot.runtime.docker import DockerRuntime
from gatebot.runtime.swarm import SwarmRuntime
from gatebot.settings import Settings, parse_settings
from gatebot.store.deployments import Deployment
from gatebot.wiring import open_engine


def settings(tmp_path: Path, swarm: bool) -> Settings:
    raw: dict[str, object] = {
        "server": {"data_dir": str(tmp_path / "data")},
        "nginx": {"conf_dir": str(tmp_path / "nginx")},
        "projects": [
            {"name": "shop", "repo": "https://example.com/a/shop.git", "base_port": 3100},
            {
                "name": "blog",
                "repo": "https://example.com/a/blog.git",
                "base_port": 3200,
                "runtime": "swarm" if swarm else "docker",
                **({"replicas": 2} if swarm else {}),
            },
        ],
    }
    if swarm:
        raw["swarm"] = {"registry": "registry.example.com:5000/acme"}
    return parse_settings(raw, source=tmp_path / "gatebot.toml", environ={})


async def test_swarm_projects_get_the_swarm_runtime_the_others_the_docker_host(
    tmp_path: Path,
) -> None:
    async with open_engine(settings(tmp_path, swarm=True)) as engine:
        assert isinstance(engine.runtime_for("shop"), DockerRuntime)
        assert not isinstance(engine.runtime_for("shop"), SwarmRuntime)
        blog = engine.runtime_for("blog")
        assert isinstance(blog, SwarmRuntime)
        assert blog.image_repository("blog") == "registry.example.com:5000/acme/blog"
        assert engine.runtime_for("shop").image_repository("shop") == "gatebot/shop"


async def test_without_swarm_every_project_uses_the_docker_host(tmp_path: Path) -> None:
    async with open_engine(settings(tmp_path, swarm=False)) as engine:
        assert engine.runtimes == {}
        assert engine.runtime_for("blog") is engine.runtime


async def test_a_swarm_projects_slot_spec_carries_its_replicas_and_placement(
    tmp_path: Path,
) -> None:
    async with open_engine(settings(tmp_path, swarm=True)) as engine:
        blog = engine.settings.project("blog")
        spec = engine.container_spec(blog, deployment("blog"), "img", slot_of(blog, Color.BLUE))
        assert (spec.name, spec.host_port) == ("gatebot-blog-blue", blog.ports[0])
        assert spec.replicas == blog.replicas
        shop = engine.settings.project("shop")
        spec = engine.container_spec(shop, deployment("shop"), "img", slot_of(shop, Color.BLUE))
        assert (spec.replicas, spec.placement, spec.stop_timeout) == (1, (), 10)


def deployment(project: str) -> Deployment:
    return Deployment(
        id=1, project=project, version=1, commit_sha="0" * 40, commit_message="", image="img",
        container=None, color=None, port=None, status=Status.DEPLOYING, error=None,
        failed_stage=None, trigger="test", created_at="", updated_at="", activated_at=None,
        finished_at=None,
    )  # fmt: skip
