"""nginx as the switch: the rendered files (pure), and files, markers, test and reload against
a real nginx."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gatebot.errors import ProxyError
from gatebot.model import Color
from gatebot.proxy.nginx import (
    HEADER,
    Layout,
    NginxProxy,
    choose_servers,
    render_conf,
    render_proxy,
    rendered_servers,
    run_command,
    upstream_name,
)
from gatebot.settings import ProjectSettings
from tests.support.http import get_text
from tests.support.real import Nginx, free_port, free_port_pair

Backend = Callable[[str, int], Awaitable[int]]
LAYOUT = Layout(Path("/etc/nginx/gatebot.d"), Path("/var/lib/gatebot/nginx"))


def project(
    name: str = "my-shop", site_port: int | None = None, base_port: int = 3100, **extra: Any
) -> ProjectSettings:
    site = {"listen": f"127.0.0.1:{site_port}", "server_name": "localhost"} if site_port else None
    return ProjectSettings(
        name=name, repo="https://example.com/acme/x.git", base_port=base_port, site=site, **extra
    )


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    """Start tiny HTTP servers on 127.0.0.1:`port` that answer every path with `body`."""
    runners: list[web.AppRunner] = []

    async def start(body: str, port: int) -> int:
        async def answer(request: web.Request) -> web.Response:
            return web.Response(text=body)

        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", answer)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        return port

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
def proxy(nginx: Nginx, tmp_path: Path) -> NginxProxy:
    return NginxProxy(nginx.conf_dir, nginx.test_cmd, nginx.reload_cmd, log_dir=tmp_path / "logs")


async def body_at(url: str) -> str | None:
    try:
        status, body = await get_text(url, timeout=2)
    except (aiohttp.ClientError, TimeoutError):
        return None
    return body if status == 200 else f"HTTP {status} {body}"


async def wait_for(url: str, expected: str | None, deadline: float = 10.0) -> str | None:
    """Poll until `url` answers `expected` (None: refuses connections); nginx reloads async."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while True:
        seen = await body_at(url)
        if seen == expected or loop.time() > end:
            return seen
        await asyncio.sleep(0.05)


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- rendering (pure) ---------------------------------------------------------------------


def test_upstream_names_replace_dashes() -> None:
    assert upstream_name("my-shop-2", Color.BLUE) == "gatebot_my_shop_2_blue"
    assert upstream_name("shop", Color.GREEN) == "gatebot_shop_green"


def test_conf_holds_both_slots_and_no_server_without_a_site() -> None:
    text = render_conf(project(), LAYOUT)
    assert text.startswith(HEADER)
    assert "upstream gatebot_my_shop_blue {\n    server 127.0.0.1:3100 max_fails=0;" in text
    assert "upstream gatebot_my_shop_green {\n    server 127.0.0.1:3101 max_fails=0;" in text
    assert text.count("keepalive 16;") == 2
    assert "log_format gatebot_my_shop_watch '$msec $status $upstream_addr';" in text
    assert "server {" not in text
    assert text.count("{") == text.count("}")


def test_a_swarm_slot_lists_its_nodes_and_the_other_color_as_backup() -> None:
    swarm = project(runtime="swarm", replicas=2, network="bridge")
    servers = {
        Color.BLUE: ["10.0.0.11:3100", "10.0.0.12:3100"],
        Color.GREEN: ["10.0.0.11:3101"],
    }
    text = render_conf(swarm, LAYOUT, servers)
    assert (
        "upstream gatebot_my_shop_blue {\n"
        "    server 10.0.0.11:3100 max_fails=1 fail_timeout=10s;\n"
        "    server 10.0.0.12:3100 max_fails=1 fail_timeout=10s;\n"
        "    server 10.0.0.11:3101 backup;\n"
    ) in text
    assert (
        "upstream gatebot_my_shop_green {\n"
        "    server 10.0.0.11:3101 max_fails=0;\n"
        "    server 10.0.0.11:3100 backup;\n"
        "    server 10.0.0.12:3100 backup;\n"
    ) in text
    assert rendered_servers(text, "my-shop", Color.BLUE) == servers[Color.BLUE]
    assert rendered_servers(text, "my-shop", Color.GREEN) == servers[Color.GREEN]
    # One host: no backup, whatever is given.
    assert "backup" not in render_conf(project(), LAYOUT, servers)


def test_a_slot_given_no_servers_keeps_those_its_file_lists_on_its_port() -> None:
    swarm = project(runtime="swarm", replicas=2, network="bridge")
    was = render_conf(swarm, LAYOUT, {Color.GREEN: ["10.0.0.11:3101", "10.0.0.12:3101"]})
    chosen = choose_servers(swarm, {Color.BLUE: ["10.0.0.12:3100"], Color.GREEN: []}, was)
    assert chosen == {
        Color.BLUE: ["10.0.0.12:3100"],
        Color.GREEN: ["10.0.0.11:3101", "10.0.0.12:3101"],
    }
    # A changed base_port does not keep servers on the old port; no file: the default.
    moved = project(runtime="swarm", replicas=2, network="bridge", base_port=4100)
    assert choose_servers(moved, None, was) == {Color.BLUE: [], Color.GREEN: []}
    assert choose_servers(swarm, None, None) == {Color.BLUE: [], Color.GREEN: []}


def test_conf_site_includes_the_snippet() -> None:
    lines = render_conf(project(site_port=8123), LAYOUT).splitlines()
    assert "    listen 127.0.0.1:8123;" in lines
    assert "    server_name localhost;" in lines
    assert "        include /etc/nginx/gatebot.d/my-shop.proxy;" in lines


def test_snippet_picks_the_slot_from_markers_and_answers_503_when_nothing_is_live() -> None:
    lines = render_proxy(project(), LAYOUT).splitlines()
    assert lines[0].startswith(HEADER)
    assert "open_file_cache off;" in lines[2]
    assert "set $gatebot_my_shop gatebot_my_shop_blue;" in lines
    assert (
        "if (-f /etc/nginx/gatebot.d/my-shop.green) { set $gatebot_my_shop gatebot_my_shop_green; }"
        in lines
    )
    assert (
        'if (!-f /etc/nginx/gatebot.d/my-shop.live) { return 503 "no release of my-shop is live'
        ' yet\\n"; }' in lines
    )
    assert (
        "access_log /var/lib/gatebot/nginx/my-shop.access.log gatebot_my_shop_watch"
        " if=$gatebot_my_shop_watch;" in lines
    )
    assert "proxy_pass http://$gatebot_my_shop;" in lines
    assert "proxy_set_header Host $host;" in lines


def test_files_follow_the_ports_and_do_not_depend_on_what_is_live() -> None:
    a, b = project(base_port=3100), project(base_port=4100)
    assert render_conf(a, LAYOUT) != render_conf(b, LAYOUT)
    assert render_conf(a, LAYOUT).replace("310", "410") == render_conf(b, LAYOUT)
    assert render_proxy(a, LAYOUT) == render_proxy(b, LAYOUT)
    assert render_conf(a, LAYOUT) == render_conf(a, LAYOUT), "rendering is deterministic"


# --- a real nginx -------------------------------------------------------------------------


@pytest.mark.nginx
async def test_files_pass_nginx_and_nothing_live_answers_503(
    nginx: Nginx, proxy: NginxProxy
) -> None:
    site_port = free_port()
    shop = project(site_port=site_port)
    assert await proxy.ensure([shop]) == ["my-shop"]
    await proxy.check()
    assert proxy.route("my-shop") is None
    url = f"http://127.0.0.1:{site_port}/"
    assert await wait_for(url, "HTTP 503 no release of my-shop is live yet") == (
        "HTTP 503 no release of my-shop is live yet"
    )
    assert listing(nginx.conf_dir) == [".gatebot-nginx.lock", "my-shop.conf", "my-shop.proxy"]


@pytest.mark.nginx
async def test_marker_flips_switch_at_once_without_a_reload(
    nginx: Nginx, proxy: NginxProxy, backend: Backend
) -> None:
    base = free_port_pair()
    await backend("blue backend", base)
    await backend("green backend", base + 1)
    site_port = free_port()
    shop = project(site_port=site_port, base_port=base)
    url = f"http://127.0.0.1:{site_port}/anything"
    await proxy.ensure([shop])
    assert await wait_for(url, "HTTP 503 no release of my-shop is live yet")
    workers = nginx.worker_pids()

    assert proxy.set_route("my-shop", Color.BLUE, note="v1") is True
    assert await body_at(url) == "blue backend"
    assert proxy.set_route("my-shop", Color.GREEN) is True
    assert await body_at(url) == "green backend", "the very next request follows the flip"
    assert proxy.set_route("my-shop", Color.GREEN) is False
    assert proxy.route("my-shop") is Color.GREEN
    assert proxy.set_route("my-shop", Color.BLUE) is True
    assert await body_at(url) == "blue backend"
    assert proxy.set_route("my-shop", None) is True
    assert await body_at(url) == "HTTP 503 no release of my-shop is live yet"
    assert nginx.worker_pids() == workers, "no reload: the same worker processes"
    assert await proxy.ensure([shop]) == [], "unchanged files: nothing written, nothing run"
    assert nginx.worker_pids() == workers


@pytest.mark.nginx
async def test_open_file_cache_of_the_operator_does_not_hide_a_flip(
    tmp_path: Path, backend: Backend
) -> None:
    nginx = Nginx(tmp_path / "cached")
    nginx.conf.write_text(
        nginx.conf.read_text().replace(
            "http {",
            "http {\n    open_file_cache max=1000 inactive=60s;\n    open_file_cache_valid 60s;\n"
            "    open_file_cache_errors on;",
        )
    )
    nginx.start()
    try:
        proxy = NginxProxy(nginx.conf_dir, nginx.test_cmd, nginx.reload_cmd, log_dir=tmp_path)
        base = free_port_pair()
        await backend("blue backend", base)
        await backend("green backend", base + 1)
        site_port = free_port()
        await proxy.ensure([project(site_port=site_port, base_port=base)])
        url = f"http://127.0.0.1:{site_port}/"
        assert await wait_for(url, "HTTP 503 no release of my-shop is live yet")
        for color in (Color.BLUE, Color.GREEN, Color.BLUE, Color.GREEN):
            proxy.set_route("my-shop", color)
            assert await body_at(url) == f"{color} backend"
    finally:
        nginx.stop()


@pytest.mark.nginx
async def test_watch_marker_turns_the_access_log_on_and_off(
    nginx: Nginx, proxy: NginxProxy, backend: Backend, tmp_path: Path
) -> None:
    base = free_port_pair()
    await backend("blue backend", base)
    site_port = free_port()
    await proxy.ensure([project(site_port=site_port, base_port=base)])
    proxy.set_route("my-shop", Color.BLUE)
    url = f"http://127.0.0.1:{site_port}/"
    assert await wait_for(url, "blue backend") == "blue backend"
    log = tmp_path / "logs" / "my-shop.access.log"
    assert log.read_text() == "", "no log outside a watch window"
    proxy.set_watch("my-shop", True)
    await body_at(url)
    await body_at(url)
    proxy.set_watch("my-shop", False)
    await body_at(url)
    lines = log.read_text().splitlines()
    assert len(lines) == 2
    stamp, status, upstream = lines[0].split(" ")
    assert float(stamp) > 0 and status == "200" and upstream == f"127.0.0.1:{base}"


@pytest.mark.nginx
async def test_unchanged_files_are_not_rewritten(nginx: Nginx, proxy: NginxProxy) -> None:
    shop = project(site_port=free_port())
    assert await proxy.ensure([shop]) == ["my-shop"]
    path = nginx.conf_dir / "my-shop.conf"
    written = path.stat().st_mtime_ns, path.stat().st_ino
    assert await proxy.ensure([shop]) == []
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == written


@pytest.mark.nginx
async def test_broken_sibling_keeps_the_previous_files(
    nginx: Nginx, proxy: NginxProxy, backend: Backend
) -> None:
    base = free_port_pair()
    await backend("blue backend", base)
    site_port = free_port()
    await proxy.ensure([project(site_port=site_port, base_port=base)])
    proxy.set_route("my-shop", Color.BLUE)
    url = f"http://127.0.0.1:{site_port}/"
    assert await wait_for(url, "blue backend") == "blue backend"
    before = {kind: proxy.current("my-shop", kind) for kind in ("conf", "proxy")}

    broken = nginx.conf_dir / "zz-broken.conf"
    broken.write_text("this is not nginx syntax;\n")
    try:
        with pytest.raises(ProxyError) as caught:
            await proxy.ensure([project(site_port=site_port, base_port=base + 10)])
    finally:
        broken.unlink()
    message = str(caught.value)
    assert message.startswith("nginx rejected the new configuration:")
    assert 'unknown directive "this"' in message
    assert {kind: proxy.current("my-shop", kind) for kind in ("conf", "proxy")} == before
    assert [n for n in listing(nginx.conf_dir) if n.startswith(".") and n.endswith(".tmp")] == []
    assert await body_at(url) == "blue backend", "nginx still routes to the old port"


@pytest.mark.nginx
async def test_rejected_first_files_are_removed_again(nginx: Nginx, proxy: NginxProxy) -> None:
    broken = nginx.conf_dir / "zz-broken.conf"
    broken.write_text("nonsense\n")
    try:
        with pytest.raises(ProxyError, match="zz-broken.conf"):
            await proxy.ensure([project()])
        assert listing(nginx.conf_dir) == [".gatebot-nginx.lock", "zz-broken.conf"]
        with pytest.raises(ProxyError, match="nginx configuration test failed"):
            await proxy.check()
    finally:
        broken.unlink()  # else the fixture's `nginx -s quit` cannot parse the config


@pytest.mark.nginx
async def test_files_gatebot_did_not_write_are_left_alone(nginx: Nginx, proxy: NginxProxy) -> None:
    mine = nginx.conf_dir / "my-shop.conf"
    mine.write_text("# the operator's own file\n")
    with pytest.raises(ProxyError, match="was not written by gatebot"):
        await proxy.ensure([project()])
    assert mine.read_text() == "# the operator's own file\n"
    assert not (nginx.conf_dir / "my-shop.proxy").exists()
    mine.unlink()

    await proxy.ensure([project()])
    marker = nginx.conf_dir / "my-shop.green"
    marker.write_text("someone's\n")
    with pytest.raises(ProxyError, match="was not written by gatebot"):
        proxy.set_route("my-shop", Color.BLUE)
    assert marker.read_text() == "someone's\n"
    assert proxy.set_route("my-shop", None) is False


@pytest.mark.nginx
async def test_remove_takes_only_gatebots_files(nginx: Nginx, proxy: NginxProxy) -> None:
    await proxy.ensure([project("gone"), project("kept", base_port=4100)])
    proxy.set_route("gone", Color.GREEN)
    operator = nginx.conf_dir / "gone.extra"
    operator.write_text("# the operator's\n")
    assert proxy.configured_elsewhere(["kept"]) == ["gone"]
    removed = await proxy.remove(["gone"])
    assert [p.name for p in removed] == ["gone.conf", "gone.green", "gone.live", "gone.proxy"]
    assert listing(nginx.conf_dir) == [
        ".gatebot-nginx.lock",
        "gone.extra",
        "kept.conf",
        "kept.proxy",
    ]


@pytest.mark.nginx
async def test_failed_reload_restores_the_previous_files(nginx: Nginx, tmp_path: Path) -> None:
    good = NginxProxy(nginx.conf_dir, nginx.test_cmd, nginx.reload_cmd, log_dir=tmp_path)
    await good.ensure([project()])
    first = good.current("my-shop")
    failing = NginxProxy(
        nginx.conf_dir, nginx.test_cmd, ["/bin/sh", "-c", "echo no pid; exit 1"], log_dir=tmp_path
    )
    with pytest.raises(ProxyError, match="nginx reload failed: no pid"):
        await failing.ensure([project(base_port=4100)])
    assert good.current("my-shop") == first


async def test_missing_nginx_binary_is_a_clear_error(tmp_path: Path) -> None:
    proxy = NginxProxy(
        tmp_path / "conf", ["/nonexistent/nginx", "-t"], ["/nonexistent/nginx"], log_dir=tmp_path
    )
    with pytest.raises(ProxyError) as caught:
        await proxy.ensure([project()])
    assert str(caught.value) == "command not found: /nonexistent/nginx (is nginx installed?)"
    assert listing(tmp_path / "conf") == [".gatebot-nginx.lock"], "no untested file left"
    with pytest.raises(ProxyError, match="command not found: /nonexistent/nginx"):
        await proxy.check()


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


async def test_ensure_waits_for_another_process_holding_the_conf_dir(
    nginx: Nginx, proxy: NginxProxy
) -> None:
    """Two gatebot processes sharing conf_dir never test or reload each other's half-made
    change: ensure waits while another process holds the directory's lock."""
    import fcntl
    import os

    nginx.conf_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(nginx.conf_dir / ".gatebot-nginx.lock", os.O_RDWR | os.O_CREAT, 0o600)
    other = os.open(nginx.conf_dir / ".gatebot-nginx.lock", os.O_RDWR)
    fcntl.flock(other, fcntl.LOCK_EX)  # "another process" (another open file description)
    try:
        task = asyncio.create_task(proxy.ensure([project("my-shop")]))
        await asyncio.sleep(0.3)
        assert not task.done(), "ensure went ahead while the directory was locked"
        assert proxy.current("my-shop") is None
        fcntl.flock(other, fcntl.LOCK_UN)
        assert await asyncio.wait_for(task, 10) == ["my-shop"]
        assert proxy.current("my-shop") is not None
    finally:
        os.close(other)
        os.close(fd)
