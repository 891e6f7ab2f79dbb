"""A reload_cmd that reloads nginx and then reports failure: the files put back are loaded
again, and the next reconciliation reloads while nginx may still run something else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import docker
import pytest

from gatebot.errors import GatebotError
from gatebot.pipeline.deploy import deploy
from gatebot.pipeline.engine import Engine
from gatebot.pipeline.reconcile import reconcile
from gatebot.settings import Settings, parse_settings
from gatebot.wiring import open_engine
from tests.support.faults import assert_repaired, eventually_serving, flaky_command
from tests.support.http import wait_listening
from tests.support.real import free_port_pair
from tests.support.settings import config_tables
from tests.support.setup import Setup

pytestmark = pytest.mark.faults


def flaky_settings(setup: Setup, reload_cmd: list[str], base_port: int | None = None) -> Settings:
    tables = config_tables(setup.data_dir, nginx=setup.nginx)
    tables["nginx"]["reload_cmd"] = reload_cmd
    project = setup.project()
    if base_port is not None:
        project["base_port"] = base_port
    raw = {**tables, "projects": [project]}
    return parse_settings(raw, source=setup.data_dir / "gatebot.toml")


@pytest.fixture
async def flaky(setup: Setup) -> AsyncIterator[tuple[Engine, list[str], Path]]:
    reload_cmd, control = flaky_command(setup.tmp_path, "reload", setup.nginx.reload_cmd)
    async with open_engine(flaky_settings(setup, reload_cmd)) as engine:
        await engine.proxy.ensure(engine.settings.projects)
        await wait_listening(setup.site_port)
        yield engine, reload_cmd, control


async def test_a_reload_that_fails_after_reloading_leaves_the_live_release_served(
    flaky: tuple[Engine, list[str], Path], setup: Setup, docker_client: docker.DockerClient
) -> None:
    engine, reload_cmd, control = flaky
    url = f"{setup.site_url}/version"
    setup.repo.commit("v1")
    await deploy(engine, setup.name, trigger="test")
    original = engine.settings
    # New slot ports: the project's files change, nginx must reload.
    engine.settings = flaky_settings(setup, reload_cmd, base_port=free_port_pair())
    control.write_text("fail")
    setup.repo.commit("v2")
    with pytest.raises(GatebotError) as caught:
        await deploy(engine, setup.name, trigger="test")
    assert "told to fail" in str(caught.value), caught.value
    assert await eventually_serving(url, "v1") == (200, "v1")  # not the new ports
    unloaded = setup.nginx.conf_dir / ".gatebot-unloaded"
    assert unloaded.exists()  # the reload of the restored files said "failed" too
    control.unlink()
    engine.settings = original  # the operator puts the ports back
    await reconcile(engine)
    assert not unloaded.exists()
    assert await eventually_serving(url, "v1") == (200, "v1")
    setup.repo.commit("v3")
    await deploy(engine, setup.name, trigger="test")
    assert await eventually_serving(url, "v3") == (200, "v3")
    await assert_repaired(engine.store.deployments, docker_client, setup.name)
