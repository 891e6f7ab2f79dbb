"""nginx as the switch: the rendered file, and apply/test/reload against a real nginx."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gatebot.errors import ProxyError
from gatebot.proxy.nginx import NginxProxy, render_project_conf, run_command, upstream_name
from gatebot.settings import ProjectSettings
from tests.support.http import get_text
from tests.support.real import Nginx, free_port

Backend = Callable[[str], Awaitable[int]]


def project(name: str = "my-shop", site_port: int | None = None, **extra: Any) -> ProjectSettings:
    site = {"listen": f"127.0.0.1:{site_port}", "server_name": "localhost"} if site_port else None
    return ProjectSettings(
        name=name, repo="https://example.com/acme/x.git", base_port=3100, site=site, **extra
    )


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    """Start tiny HTTP servers on 127.0.0.1 that answer every path with their own name."""
    runners: list[web.AppRunner] = []

    async def start(body: str) -> int:
        async def answer(request: web.Request) -> web.Response:
            return web.Response(text=body)

        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", answer)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        return port

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
def proxy(nginx: Nginx) -> NginxProxy:
    return NginxProxy(nginx.conf_dir, nginx.test_cmd, nginx.reload_cmd)


async def body_at(url: str) -> str | None:
    try:
        status, body = await get_text(url, timeout=2)
    except (aiohttp.ClientError, TimeoutError):
        return None
    return body if status == 200 else f"HTTP {status}"


async def wait_for(url: str, expected: str | None, deadline: float = 10.0) -> str | None:
    """Poll until `url` answers `expected` (None: refuses connections); nginx reloads async."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while True:
        seen = await body_at(url)
        if seen == expected or loop.time() > end:
            return seen
        await asyncio.sleep(0.05)


# --- rendering (pure) ---------------------------------------------------------------------


def test_upstream_name_replaces_dashes() -> None:
    assert upstream_name("my-shop-2") == "gatebot_my_shop_2"
    assert upstream_name("shop") == "gatebot_shop"


def test_render_without_site_has_only_the_upstream() -> None:
    text = render_project_conf(project(), 3101)
    assert "upstream gatebot_my_shop {" in text
    assert "    server 127.0.0.1:3101 max_fails=0;" in text
    assert "project my-shop" in text
    assert "server {" not in text
    assert "listen" not in text
    assert text.endswith("}\n")


def test_render_with_site_proxies_to_the_upstream() -> None:
    text = render_project_conf(project(site_port=8123), 3100, note="deployment 7 (blue)")
    lines = text.splitlines()
    assert "# deployment 7 (blue)" in lines
    assert "server {" in lines
    assert "    listen 127.0.0.1:8123;" in lines
    assert "    server_name localhost;" in lines
    assert "        proxy_pass http://gatebot_my_shop;" in lines
    assert "    server 127.0.0.1:3100 max_fails=0;" in lines
    assert text.count("{") == text.count("}")


def test_render_follows_the_port() -> None:
    shop = project(site_port=8123)
    blue, green = render_project_conf(shop, 3100), render_project_conf(shop, 3101)
    assert blue != green
    assert blue.replace("127.0.0.1:3100", "127.0.0.1:3101") == green
    assert render_project_conf(shop, 3100) == blue, "rendering is deterministic"


# --- a real nginx -------------------------------------------------------------------------


@pytest.mark.nginx
async def test_rendered_file_passes_nginx_test(nginx: Nginx, proxy: NginxProxy) -> None:
    assert await proxy.apply("my-shop", render_project_conf(project(site_port=free_port()), 9))
    await proxy.check()


@pytest.mark.nginx
async def test_apply_writes_reloads_and_switches(
    nginx: Nginx, proxy: NginxProxy, backend: Backend
) -> None:
    blue, green = await backend("blue backend"), await backend("green backend")
    site_port = free_port()
    shop = project(site_port=site_port)
    url = f"http://127.0.0.1:{site_port}/anything"

    text = render_project_conf(shop, blue)
    assert await proxy.apply("my-shop", text) is True
    assert (nginx.conf_dir / "my-shop.conf").read_text() == text
    assert proxy.current("my-shop") == text
    assert await wait_for(url, "blue backend") == "blue backend"

    assert await proxy.apply("my-shop", render_project_conf(shop, green)) is True
    assert await wait_for(url, "green backend") == "green backend"
    left = sorted(p.name for p in nginx.conf_dir.iterdir())
    assert left == [".gatebot-nginx.lock", "my-shop.conf"], "no temp file, only the lock file"


@pytest.mark.nginx
async def test_apply_with_identical_content_does_nothing(nginx: Nginx, proxy: NginxProxy) -> None:
    text = render_project_conf(project(site_port=free_port()), 3100)
    assert await proxy.apply("my-shop", text) is True
    path = nginx.conf_dir / "my-shop.conf"
    written = path.stat().st_mtime_ns, path.stat().st_ino
    assert await proxy.apply("my-shop", text) is False
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == written


@pytest.mark.nginx
async def test_broken_sibling_keeps_the_previous_file(
    nginx: Nginx, proxy: NginxProxy, backend: Backend
) -> None:
    blue, green = await backend("blue backend"), await backend("green backend")
    site_port = free_port()
    shop = project(site_port=site_port)
    url = f"http://127.0.0.1:{site_port}/"
    await proxy.apply("my-shop", render_project_conf(shop, blue))
    assert await wait_for(url, "blue backend") == "blue backend"
    path = nginx.conf_dir / "my-shop.conf"
    before = path.read_bytes()

    broken = nginx.conf_dir / "zz-broken.conf"
    broken.write_text("this is not nginx syntax;\n")
    try:
        with pytest.raises(ProxyError) as caught:
            await proxy.apply("my-shop", render_project_conf(shop, green))
    finally:
        broken.unlink()
    message = str(caught.value)
    assert message.startswith("nginx rejected the new configuration:")
    assert "zz-broken.conf" in message
    assert 'unknown directive "this"' in message
    assert path.read_bytes() == before
    left = sorted(p.name for p in nginx.conf_dir.iterdir())
    assert left == [".gatebot-nginx.lock", "my-shop.conf"], "no temp file, only the lock file"
    assert await body_at(url) == "blue backend", "nginx still routes to the old port"


@pytest.mark.nginx
async def test_rejected_first_file_is_removed_again(nginx: Nginx, proxy: NginxProxy) -> None:
    broken = nginx.conf_dir / "zz-broken.conf"
    broken.write_text("nonsense\n")
    try:
        with pytest.raises(ProxyError, match="zz-broken.conf"):
            await proxy.apply("my-shop", render_project_conf(project(), 3100))
        assert not (nginx.conf_dir / "my-shop.conf").exists()
        with pytest.raises(ProxyError, match="nginx configuration test failed"):
            await proxy.check()
    finally:
        broken.unlink()  # else the fixture's `nginx -s quit` cannot parse the config


@pytest.mark.nginx
async def test_apply_none_removes_the_file(
    nginx: Nginx, proxy: NginxProxy, backend: Backend
) -> None:
    port = await backend("blue backend")
    site_port = free_port()
    url = f"http://127.0.0.1:{site_port}/"
    await proxy.apply("my-shop", render_project_conf(project(site_port=site_port), port))
    assert await wait_for(url, "blue backend") == "blue backend"

    assert await proxy.apply("my-shop", None) is True
    assert not (nginx.conf_dir / "my-shop.conf").exists()
    assert proxy.current("my-shop") is None
    assert await wait_for(url, None) is None, "the site stops listening after the reload"
    assert await proxy.apply("my-shop", None) is False


@pytest.mark.nginx
async def test_failed_reload_restores_the_previous_file(nginx: Nginx, tmp_path: Path) -> None:
    good = NginxProxy(nginx.conf_dir, nginx.test_cmd, nginx.reload_cmd)
    first = render_project_conf(project(), 3100)
    await good.apply("my-shop", first)
    failing = NginxProxy(nginx.conf_dir, nginx.test_cmd, ["/bin/sh", "-c", "echo no pid; exit 1"])
    with pytest.raises(ProxyError, match="nginx reload failed: no pid"):
        await failing.apply("my-shop", render_project_conf(project(), 3101))
    assert (nginx.conf_dir / "my-shop.conf").read_text() == first


async def test_missing_nginx_binary_is_a_clear_error(tmp_path: Path) -> None:
    proxy = NginxProxy(tmp_path / "conf", ["/nonexistent/nginx", "-t"], ["/nonexistent/nginx"])
    with pytest.raises(ProxyError) as caught:
        await proxy.apply("my-shop", render_project_conf(project(), 3100))
    assert str(caught.value) == "command not found: /nonexistent/nginx (is nginx installed?)"
    with pytest.raises(ProxyError, match="command not found: /nonexistent/nginx"):
        await proxy.check()


async def test_missing_nginx_binary_leaves_the_previous_file(tmp_path: Path) -> None:
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    previous = render_project_conf(project(), 3100)
    (conf_dir / "my-shop.conf").write_text(previous)
    proxy = NginxProxy(conf_dir, ["/nonexistent/nginx", "-t"], ["/nonexistent/nginx"])
    with pytest.raises(ProxyError):
        await proxy.apply("my-shop", render_project_conf(project(), 3101))
    assert (conf_dir / "my-shop.conf").read_text() == previous


async def test_command_timeout_is_a_proxy_error() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ProxyError, match="/bin/sleep did not finish within 1s"):
        await run_command(["/bin/sleep", "30"], timeout=1.0)
    assert loop.time() - started < 5


async def test_run_command_returns_code_and_combined_output() -> None:
    result = await run_command(["/bin/sh", "-c", "echo out; echo err >&2; exit 3"])
    assert result.returncode == 3
    assert result.output.splitlines() == ["out", "err"]


async def test_apply_waits_for_another_process_holding_the_conf_dir(nginx: Nginx) -> None:
    """Two gatebot processes sharing conf_dir never test or reload each other's half-made
    change: apply waits while another process holds the directory's lock."""
    import fcntl
    import os

    proxy = NginxProxy(nginx.conf_dir, nginx.test_cmd, nginx.reload_cmd)
    shop = project("my-shop")
    nginx.conf_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(nginx.conf_dir / ".gatebot-nginx.lock", os.O_RDWR | os.O_CREAT, 0o600)
    other = os.open(nginx.conf_dir / ".gatebot-nginx.lock", os.O_RDWR)
    fcntl.flock(other, fcntl.LOCK_EX)  # "another process" (another open file description)
    try:
        task = asyncio.create_task(proxy.apply("my-shop", render_project_conf(shop, 3100)))
        await asyncio.sleep(0.3)
        assert not task.done(), "apply went ahead while the directory was locked"
        assert proxy.current("my-shop") is None
        fcntl.flock(other, fcntl.LOCK_UN)
        assert await asyncio.wait_for(task, 10) is True
        assert proxy.current("my-shop") is not None
    finally:
        os.close(other)
        os.close(fd)
