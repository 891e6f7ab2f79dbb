"""The reload-free switch as an operator sets it up: a server block of their own (the README's
example) including the project's snippet, on a fresh host, in the README's order."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from gatebot.errors import ProxyError
from gatebot.pipeline.deploy import deploy
from gatebot.pipeline.reconcile import reconcile
from gatebot.pipeline.rollback import rollback
from gatebot.wiring import open_engine
from tests.support.http import get_text, steady_load
from tests.support.real import free_port, free_port_pair
from tests.support.settings import build_settings, project_config, write_config
from tests.support.setup import Setup


def operator_block(conf_dir: Path, project: str, port: int) -> str:
    """The README's example server block, on a loopback port."""
    return f"""server {{
    listen 127.0.0.1:{port};
    server_name _;
    location / {{
        include {conf_dir}/{project}.proxy;
    }}
}}
"""


async def body(url: str) -> tuple[int, str]:
    try:
        return await get_text(url)
    except (aiohttp.ClientError, TimeoutError) as exc:  # nginx applies a reload asynchronously
        return 0, type(exc).__name__


async def eventually(url: str, expected: tuple[int, str], within: float = 5.0) -> tuple[int, str]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    seen = await body(url)
    while seen != expected and loop.time() < deadline:
        await asyncio.sleep(0.05)
        seen = await body(url)
    return seen


async def test_operator_server_block_on_a_fresh_host(setup: Setup) -> None:
    nginx, conf_dir = setup.nginx, setup.nginx.conf_dir
    # 1. configure (no [projects.site]), 2. let gatebot write its files.
    config = write_config(
        setup.tmp_path / "gatebot.toml", setup.data_dir, [setup.project(site=None)], nginx=nginx
    )
    written = subprocess.run(
        [sys.executable, "-m", "gatebot", "-c", str(config), "check-config", "--write-nginx"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert written.returncode == 0, written.stderr
    assert f"wrote the files of {setup.name}" in written.stdout
    # 3. the operator's own server block and include, 4. reload nginx.
    # In conf_dir, after the projects' files: the snippet's log format is defined in
    # <project>.conf, which nginx must read first (the README says where the include goes).
    operator = conf_dir / "zz-operator-site.conf"
    port = free_port()
    operator.write_text(operator_block(conf_dir, setup.name, port))
    nginx.reload()
    url = f"http://127.0.0.1:{port}/version"
    nothing = (503, f"no release of {setup.name} is live yet")
    assert await eventually(url, nothing) == nothing
    operator_text, operator_mtime = operator.read_text(), operator.stat().st_mtime_ns

    # 5. push: deploys, a switch with no reload, a rollback.
    settings = setup.settings(site=None)
    async with open_engine(settings) as engine:
        assert (await reconcile(engine)).nginx_changed == [], "the files were already there"
        setup.repo.commit("v1")
        await deploy(engine, setup.name, trigger="test")
        assert await body(url) == (200, "v1")
        workers = nginx.worker_pids()
        setup.repo.commit("v2")
        await deploy(engine, setup.name, trigger="test")
        assert await body(url) == (200, "v2")
        await rollback(engine, setup.name, trigger="test")
        assert await body(url) == (200, "v1")
        assert nginx.worker_pids() == workers, "a switch never reloads nginx"

    # A project added to the configuration later: its files appear, nginx stays valid.
    later = f"{setup.name}-later"
    later_project = project_config(later, setup.repo.url, free_port_pair(), free_port(), site=None)
    both = build_settings(setup.data_dir, [setup.project(site=None), later_project], nginx=nginx)
    async with open_engine(both) as engine:
        report = await reconcile(engine)
        assert report.nginx_changed == [later]
        await engine.proxy.check()
        later_port = free_port()
        (conf_dir / "zz-operator-later.conf").write_text(
            operator_block(conf_dir, later, later_port)
        )
        nginx.reload()
        later_url = f"http://127.0.0.1:{later_port}/version"
        gone = (503, f"no release of {later} is live yet")
        assert await eventually(later_url, gone) == gone
        assert await body(url) == (200, "v1")

    # The later project leaves the configuration: its files stay until a prune, and a prune
    # that would break the operator's include is refused with everything kept.
    async with open_engine(settings) as engine:
        await reconcile(engine)
        assert (conf_dir / f"{later}.proxy").exists()
        with pytest.raises(ProxyError, match=f"{later}.proxy"):
            await reconcile(engine, prune=True)
        assert (conf_dir / f"{later}.proxy").exists()
        (conf_dir / "zz-operator-later.conf").unlink()
        report = await reconcile(engine, prune=True)
        assert sorted(Path(p).name for p in report.pruned) == [f"{later}.conf", f"{later}.proxy"]
        assert await body(url) == (200, "v1")
    assert (operator.read_text(), operator.stat().st_mtime_ns) == (operator_text, operator_mtime)


async def test_switches_under_load_through_an_operator_block_fail_no_request(
    setup: Setup,
) -> None:
    conf_dir = setup.nginx.conf_dir
    settings = setup.settings(site=None, drain_seconds=1.0)
    port = free_port()
    async with open_engine(settings) as engine:
        await reconcile(engine)
        (conf_dir / "zz-operator-site.conf").write_text(operator_block(conf_dir, setup.name, port))
        setup.nginx.reload()
        setup.repo.commit("v0")
        await deploy(engine, setup.name, trigger="test")
        workers = setup.nginx.worker_pids()
        stop = asyncio.Event()
        base = f"http://127.0.0.1:{port}"
        load = asyncio.create_task(steady_load([f"{base}/version", f"{base}/cgi-bin/slow"], stop))
        for n in range(1, 4):
            setup.repo.commit(f"v{n}")
            await deploy(engine, setup.name, trigger="test")
        await rollback(engine, setup.name, trigger="test")
        await asyncio.sleep(0.5)
        stop.set()
        result = await load
        assert setup.nginx.worker_pids() == workers
    assert result.failures == []
    assert {"v0", "v3", "v2"} <= result.bodies
