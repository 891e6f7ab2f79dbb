"""Zero-downtime switching: a steady load through nginx while gatebot runs deploys and
rollbacks back to back (20 by default), with fast requests (/version) and requests that take
half a second (/cgi-bin/slow, so some are in flight at every switch). Three kinds of client,
reported apart: a fresh connection per request; keep-alive that retries an idempotent request
once when the server closed the reused connection before answering (RFC 9112, 9.3.1), as
browsers do; and wrk's raw keep-alive counts. Three proxy setups are measured at once, all in
front of the very containers gatebot deploys:

- `marker`: clients talk to gatebot's nginx, switched by a marker flip (never reloaded);
- `reload`: clients talk to a second nginx switched the way gatebot did before, by rewriting
  an upstream file, `nginx -t` and a reload, at the moment gatebot's switch stage ends;
- `two-tier`: clients talk to a front nginx that is never reloaded and keeps upstream
  connections to the reloaded one, so a reload closes no client connection.

The control, in the same harness: a naive stop-then-start redeployment of the same app behind
the same nginx, which must show failures.

Then, on their own: the cost of one switch on a host with 1, 50 and 300 projects (a marker
flip against a reload: wall time until the new route serves, and nginx's memory during the
reload), and the watch window's revert time (the new release's health check starts failing;
time until traffic is back on the old slot, against one probe interval plus 50 ms).

    scripts/bench/run switch [--quick] [--ops N] [--naive-ops N] [--only load|scale|watch]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common
from httpload import Client, Record, worker
from wrkrun import Wrk, WrkResult

FAST, SLOW = "/version", "/cgi-bin/slow"
DRAIN_SECONDS = 2.0  # longer than a slow request (0.5 s; more on a busy host)
WRK_FAST = """
function request() return wrk.format("GET", PATH) end
function delay() return 20 end
function response(status) count_status(status) end
"""
WRK_SLOW = """
function request() return wrk.format("GET", PATH) end
function response(status) count_status(status) end
"""


@dataclass
class Op:
    what: str
    start: float
    end: float = 0.0
    switch_start: float = 0.0  # when the switch (nginx reload, or the naive stop) began
    ok: bool = True


@dataclass
class Phase:
    name: str
    targets: dict[str, int]
    ops: list[Op] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    idle_closes: dict[tuple[str, str], int] = field(default_factory=dict)
    wrk: dict[tuple[str, str], WrkResult] = field(default_factory=dict)


# --- load ------------------------------------------------------------------------------------


async def with_load(
    phase: Phase, folder: Path, steady: float, run_ops: Callable[[], Awaitable[list[Op]]]
) -> Phase:
    """Load every target; `steady` seconds, then the operations, then `steady` seconds again."""
    stop = asyncio.Event()
    deadline = time.monotonic() + 1800  # a hard bound, whatever happens
    tasks, clients, wrks = [], [], []
    for target, port in phase.targets.items():
        for kind, fresh, retry in (("fresh", True, False), ("keepalive-retry", False, True)):
            for path, pause, count in ((FAST, 0.02, 2), (SLOW, 0.0, 2)):
                for _ in range(count):
                    client = Client(common.LOOPBACK, port, fresh=fresh, retry=retry)
                    clients.append((target, kind, client))
                    tasks.append(
                        asyncio.create_task(
                            worker(client, target, kind, path, pause, stop, phase.records, deadline)
                        )
                    )
        for path, lua in ((FAST, WRK_FAST), (SLOW, WRK_SLOW)):
            script = f'PATH = "{path}"\n' + lua
            label = "fast" if path == FAST else "slow"
            wrk = Wrk(
                folder,
                f"{phase.name}-{target}-{label}",
                f"http://{common.LOOPBACK}:{port}{path}",
                script,
                connections=2,
                seconds=1800,
            )
            wrks.append(((target, label), wrk.start()))
    try:
        await asyncio.sleep(steady)
        phase.ops = await run_ops()
        await asyncio.sleep(steady)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        for _, wrk in wrks:
            wrk.interrupt()
    for key, wrk in wrks:
        phase.wrk[key] = await asyncio.to_thread(wrk.wait)
    for target, kind, client in clients:
        key = (target, kind)
        phase.idle_closes[key] = phase.idle_closes.get(key, 0) + client.idle_closes
    lines = [json.dumps({"op": op.__dict__}) for op in phase.ops]
    lines += [json.dumps(record.__dict__) for record in phase.records]
    (folder / f"{phase.name}-records.jsonl").write_text("\n".join(lines) + "\n")  # a closer look
    return phase


# --- operations ------------------------------------------------------------------------------

STAGE_LINE = re.compile(r"^\s+(\w+)\s+([\d.]+)s\s")


SWITCHED = re.compile(r"\(port (\d+)\)")
Switcher = Callable[[int], Awaitable[None]]


async def gatebot_op(config: Path, argv: list[str], on_switch: Switcher | None = None) -> Op:
    """Run `gatebot deploy|rollback`, timing the switch from its progress lines; `on_switch`
    hears the new slot's port as soon as gatebot's switch stage has ended."""
    op = Op(argv[0], time.monotonic())
    proc = await asyncio.create_subprocess_exec(
        common.GATEBOT,
        "-c",
        str(config),
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    output = []
    async for raw in proc.stdout:
        line = raw.decode("utf-8", "replace")
        output.append(line)
        match = STAGE_LINE.match(line)
        if match and match[1] == "switch":
            op.switch_start = time.monotonic() - float(match[2])
            port = SWITCHED.search(line)
            if on_switch is not None and port:
                await on_switch(int(port[1]))
    op.ok = await proc.wait() == 0
    op.end = time.monotonic()
    if not op.ok:
        print(f"  {' '.join(argv)} failed:\n{''.join(output)}", file=sys.stderr)
    return op


async def gatebot_ops(
    config: Path, repo: common.SampleRepo, project: str, count: int, on_switch: Switcher
) -> list[Op]:
    """Deploy (a new commit), roll back, deploy, ... `count` operations back to back."""
    ops = []
    for index in range(count):
        if index % 2 == 0:
            sha = await asyncio.to_thread(repo.commit, f"switch-{index}")
            argv = ["deploy", project, "--sha", sha]
        else:
            argv = ["rollback", project]
        ops.append(await gatebot_op(config, argv, on_switch))
        print(f"  {argv[0]:<8} {ops[-1].end - ops[-1].start:5.2f}s", flush=True)
    return ops


async def run(*argv: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        env=common.docker_env(),
    )
    await proc.wait()


async def naive_ops(image: str, container: str, port: int, count: int, gap: float) -> list[Op]:
    """The control: stop the running container, start the new one on the same port."""
    ops = []
    for _ in range(count):
        op = Op("restart", time.monotonic())
        op.switch_start = op.start
        await run("docker", "stop", "-t", "5", container)
        await run("docker", "rm", "-f", container)
        await run(*naive_run(image, container, port))
        await asyncio.to_thread(
            common.wait_http, f"http://{common.LOOPBACK}:{port}/health", interval=0.05, timeout=60
        )
        op.end = time.monotonic()
        ops.append(op)
        print(f"  restart  {op.end - op.start:5.2f}s", flush=True)
        await asyncio.sleep(gap)
    return ops


def naive_run(image: str, container: str, port: int) -> list[str]:
    return [
        "docker",
        "run",
        "-d",
        "--name",
        container,
        "--network",
        "host",
        "--init",
        "-e",
        f"PORT={port}",
        image,
    ]


# --- setup -----------------------------------------------------------------------------------


def proxy_conf(name: str, listen: int, upstream_port: int) -> str:
    return f"""upstream {name} {{ server 127.0.0.1:{upstream_port} max_fails=0; keepalive 32; }}
server {{
    listen 127.0.0.1:{listen};
    location / {{
        proxy_pass http://{name};
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
    }}
}}
"""


@dataclass
class Setup:
    project: str
    config: Path
    repo: common.SampleRepo
    ports: dict[str, int]
    naive_image: str
    naive_container: str
    legacy: common.Nginx
    reloads: list[float] = field(default_factory=list)  # seconds each legacy switch took

    async def reload_switch(self, port: int) -> None:
        """Switch the `reload` setup the way gatebot did before: rewrite, test, reload."""
        started = time.monotonic()
        conf = self.legacy.conf_dir / "legacy.conf"
        conf.write_text(proxy_conf("legacy", self.ports["legacy"], port))
        for argv in (self.legacy.test_cmd, self.legacy.reload_cmd):
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
            )
            await proc.wait()
        self.reloads.append(time.monotonic() - started)


def setup(ws: Path, stack: Any) -> Setup:
    project = f"bs{os.getpid() % 100000}"
    stack.callback(common.remove_project, project)
    stack.callback(common.remove_project, f"{project}-naive")
    ports = {
        "base": common.free_port_pair(),
        "site": common.free_port(),
        "front": common.free_port(),
        "naive": common.free_port(),
        "naive_site": common.free_port(),
        "legacy": common.free_port(),
    }
    nginx = common.Nginx(ws / "nginx")
    (nginx.conf_dir / "naive.conf").write_text(
        proxy_conf("naive", ports["naive_site"], ports["naive"])
    )
    stack.callback(nginx.start().stop)
    legacy = common.Nginx(ws / "legacy")
    (legacy.conf_dir / "legacy.conf").write_text(
        proxy_conf("legacy", ports["legacy"], ports["base"])
    )
    stack.callback(legacy.start().stop)
    front = common.Nginx(ws / "front")
    (front.conf_dir / "front.conf").write_text(proxy_conf("inner", ports["front"], ports["legacy"]))
    stack.callback(front.start().stop)
    repo = common.SampleRepo(ws / "repo")
    sha = repo.commit("switch-v1")
    config = common.write_config(
        ws / "gatebot.toml",
        data_dir=ws / "data",
        nginx=nginx,
        projects=[
            common.project_config(
                project,
                repo.url,
                ports["base"],
                drain_seconds=DRAIN_SECONDS,
                keep_releases=50,
                site={"listen": f"{common.LOOPBACK}:{ports['site']}", "server_name": "localhost"},
            )
        ],
    )
    common.gatebot_cli(config, "deploy", project, "--sha", sha)
    image, container = f"bench/{project}-naive:1", f"bench-{project}-naive-c"
    subprocess.run(
        ["docker", "build", "-q", "-t", image, str(repo.work)],
        check=True,
        capture_output=True,
        env=common.docker_env(),
    )
    subprocess.run(naive_run(image, container, ports["naive"]), check=True, capture_output=True)
    common.wait_http(
        f"http://{common.LOOPBACK}:{ports['naive_site']}/health", interval=0.05, timeout=60
    )
    common.wait_http(f"http://{common.LOOPBACK}:{ports['front']}/health", interval=0.05, timeout=60)
    return Setup(project, config, repo, ports, image, container, legacy)


# --- report ----------------------------------------------------------------------------------


def classify(record: Record, ops: list[Op]) -> str:
    """steady (overlaps no operation), switch (overlaps a switch), or deploying (a build ...)."""
    if any(record.started <= op.end and record.ended >= op.switch_start for op in ops):
        return "switch"
    if any(record.started <= op.end and record.ended >= op.start for op in ops):
        return "deploying"
    return "steady"


def p99(records: list[Record], path: str, when: str, ops: list[Op]) -> float:
    values = [r.latency_ms for r in records if r.path == path and classify(r, ops) == when]
    return common.percentile(values, 99)


def summarize(phase: Phase) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for target in phase.targets:
        for kind in ("fresh", "keepalive-retry"):
            mine = [r for r in phase.records if r.target == target and r.client == kind]
            rows.append(
                {
                    "setup": target,
                    "client": kind,
                    "requests": len(mine),
                    "non_2xx": sum(1 for r in mine if r.status is not None and not r.ok),
                    "conn_errors": sum(1 for r in mine if r.error is not None),
                    "retried": sum(1 for r in mine if r.retried),
                    "idle_closes": phase.idle_closes.get((target, kind), 0),
                    "p99_fast_steady_ms": p99(mine, FAST, "steady", phase.ops),
                    "p99_fast_switch_ms": p99(mine, FAST, "switch", phase.ops),
                    "p99_slow_steady_ms": p99(mine, SLOW, "steady", phase.ops),
                    "p99_slow_switch_ms": p99(mine, SLOW, "switch", phase.ops),
                }
            )
        fast, slow = phase.wrk[(target, "fast")], phase.wrk[(target, "slow")]
        rows.append(
            {
                "setup": target,
                "client": "keepalive-raw (wrk)",
                "requests": fast.requests + slow.requests,
                "non_2xx": fast.errors["status"] + slow.errors["status"],
                "conn_errors": fast.socket_errors + slow.socket_errors,
                "wrk_errors": {k: fast.errors[k] + slow.errors[k] for k in fast.errors},
                "p99_fast_all_ms": fast.latency_ms["p99"],
                "p99_slow_all_ms": slow.latency_ms["p99"],
            }
        )
    return rows


def failed_requests(phase: Phase, limit: int = 20) -> list[dict[str, Any]]:
    """The first failed requests, each placed relative to the operations."""
    origin = phase.ops[0].start if phase.ops else 0.0
    out = []
    for r in [r for r in phase.records if not r.ok][:limit]:
        out.append(
            {
                "setup": r.target,
                "client": r.client,
                "path": r.path,
                "status": r.status,
                "error": r.error,
                "started_s": round(r.started - origin, 3),
                "latency_ms": round(r.latency_ms, 1),
                "when": classify(r, phase.ops),
            }
        )
    return out


def print_phase(title: str, rows: list[dict[str, Any]]) -> None:
    table = []
    for r in rows:
        steady = r.get("p99_fast_steady_ms", r.get("p99_fast_all_ms"))
        switch = r.get("p99_fast_switch_ms", float("nan"))
        table.append(
            [
                r["setup"],
                r["client"],
                r["requests"],
                r["non_2xx"],
                r["conn_errors"],
                r.get("retried", "-"),
                r.get("idle_closes", "-"),
                steady,
                switch,
                r.get("p99_slow_steady_ms", r.get("p99_slow_all_ms")),
                r.get("p99_slow_switch_ms", float("nan")),
            ]
        )
    common.print_table(
        title,
        [
            "setup",
            "client",
            "requests",
            "non-2xx",
            "conn err",
            "retried",
            "idle closed",
            "fast p99 steady",
            "fast p99 switch",
            "slow p99 steady",
            "slow p99 switch",
        ],
        table,
    )


def failures(rows: list[dict[str, Any]], setup_name: str, client: str) -> int:
    return sum(
        r["non_2xx"] + r["conn_errors"]
        for r in rows
        if r["setup"] == setup_name and r["client"] == client
    )


# --- the cost of one switch on a host with many projects --------------------------------------


def nginx_rss_kb(master: int) -> int:
    """VmRSS of nginx's master and all its children (old workers still draining included)."""
    total = common.proc_status(master, "VmRSS")
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{master}/task/{master}/children").read_text().split():
            with contextlib.suppress(OSError, ValueError, KeyError):  # a zombie has no VmRSS
                total += common.proc_status(int(child), "VmRSS")
    return total


def scale_projects(count: int, backend: int, base: int) -> list[Any]:
    """`count` projects with sites on one port (by server name); p0's slots are the backends."""
    from gatebot.settings import ProjectSettings

    projects = []
    for n in range(count):
        projects.append(
            ProjectSettings(
                name=f"p{n}",
                repo="https://example.com/acme/bench.git",
                base_port=backend if n == 0 else base + 2 * n,
                site={"listen": f"{common.LOOPBACK}:{SCALE_PORT[0]}", "server_name": f"p{n}.bench"},
            )
        )
    return projects


SCALE_PORT = [0]


async def sample_rss(master: int, peak: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak.append(nginx_rss_kb(master))
        await asyncio.sleep(0.005)


async def until_body(url: str, host: str, body: str, timeout: float = 10.0) -> float:
    """Poll (2 ms apart) until `url` with Host `host` answers `body`; the time it took."""
    import aiohttp

    started = time.monotonic()
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        while time.monotonic() - started < timeout:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url, headers={"Host": host}) as response:
                    if (await response.text()).strip() == body:
                        return time.monotonic() - started
            await asyncio.sleep(0.002)
    return math.nan


async def scale_one(ws: Path, count: int, rounds: int) -> dict[str, Any]:
    """Marker flips against reloads on one nginx holding `count` projects' files."""
    from gatebot.model import Color
    from gatebot.proxy.nginx import NginxProxy

    folder = ws / f"scale-{count}"
    nginx = common.Nginx(folder / "nginx", workers=2)
    backend = common.free_port_pair()
    SCALE_PORT[0] = common.free_port()
    (nginx.conf_dir / "zz-backends.conf").write_text(
        f'server {{ listen {common.LOOPBACK}:{backend}; return 200 "blue\\n"; }}\n'
        f'server {{ listen {common.LOOPBACK}:{backend + 1}; return 200 "green\\n"; }}\n'
    )
    proxy = NginxProxy(nginx.conf_dir, nginx.test_cmd, nginx.reload_cmd, log_dir=folder / "logs")
    nginx.start()
    try:
        projects = scale_projects(count, backend, 20000)
        await proxy.ensure(projects)
        for p in projects:
            proxy.set_route(p.name, Color.BLUE)
        url = f"http://{common.LOOPBACK}:{SCALE_PORT[0]}/"
        await until_body(url, "p0.bench", "blue", timeout=30)
        steady_kb = nginx_rss_kb(nginx.master_pid())
        flips, reloads, peaks = [], [], []
        conf = nginx.conf_dir / "p0.conf"
        original = conf.read_text()
        for n in range(rounds):
            color = Color.GREEN if n % 2 == 0 else Color.BLUE
            started = time.monotonic()
            proxy.set_route("p0", color)
            flips.append(time.monotonic() - started + await until_body(url, "p0.bench", str(color)))
            # The same change by a reload, as gatebot switched before: p0's blue upstream
            # rewritten to the other port, nginx -t, nginx -s reload, until it serves.
            target = "blue" if color is Color.GREEN else "green"
            swapped = (
                original.replace(f"server 127.0.0.1:{backend} ", f"server 127.0.0.1:{backend + 1} ")
                if target == "green"
                else original
            )
            proxy.set_route("p0", Color.BLUE)
            await until_body(url, "p0.bench", "blue" if target == "green" else "green")
            peak = [nginx_rss_kb(nginx.master_pid())]
            stop = asyncio.Event()
            sampler = asyncio.create_task(sample_rss(nginx.master_pid(), peak, stop))
            started = time.monotonic()
            conf.write_text(swapped)
            for argv in (nginx.test_cmd, nginx.reload_cmd):
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
                await proc.wait()
            reloads.append(time.monotonic() - started + await until_body(url, "p0.bench", target))
            await asyncio.sleep(0.3)  # the old workers' exit
            stop.set()
            await sampler
            peaks.append(max(peak))
            conf.write_text(original)  # back, for the next round's flip
            for argv in (nginx.test_cmd, nginx.reload_cmd):
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
                await proc.wait()
            proxy.set_route("p0", Color.BLUE)
            await until_body(url, "p0.bench", "blue")
        return {
            "projects": count,
            "flip_ms": common.median(flips) * 1000,
            "reload_ms": common.median(reloads) * 1000,
            "steady_rss_mb": steady_kb / 1024,
            "reload_peak_rss_mb": common.median(peaks) / 1024,
        }
    finally:
        nginx.stop()


# --- the watch window's revert ------------------------------------------------------------------


async def watch_revert(ws: Path, rounds: int) -> dict[str, Any]:
    """A release whose health check starts failing in its watch window: the time from the
    failure to traffic back on the old slot (a client polling through nginx every 2 ms)."""
    import docker
    from gatebot.errors import StageFailed
    from gatebot.pipeline.deploy import deploy
    from gatebot.settings import load_settings
    from gatebot.wiring import open_engine

    name = f"bw{os.getpid() % 100000}"
    interval = 0.5
    site = common.free_port()
    nginx = common.Nginx(ws / "watch-nginx").start()
    repo = common.SampleRepo(ws / "watch-repo")
    project = common.project_config(
        name,
        repo.url,
        common.free_port_pair(),
        keep_releases=50,
        watch_failures=1,
        site={"listen": f"{common.LOOPBACK}:{site}", "server_name": "localhost"},
    )
    quiet = common.write_config(
        ws / "watch-0.toml", data_dir=ws / "watch", nginx=nginx, projects=[project]
    )
    project["watch_seconds"] = 60.0
    project["health"] = {**project["health"], "interval": interval}
    watched = common.write_config(
        ws / "watch.toml", data_dir=ws / "watch", nginx=nginx, projects=[project]
    )
    client = docker.DockerClient(base_url=os.environ.get("DOCKER_HOST") or None)
    url = f"http://{common.LOOPBACK}:{site}/version"
    onsets, decided = [], []
    try:
        async with open_engine(load_settings(quiet)) as engine:
            await engine.proxy.ensure(engine.settings.projects)
            await deploy(engine, name, sha=repo.commit("w0"), trigger="bench")
        for n in range(rounds):
            async with open_engine(load_settings(watched)) as engine:
                old = await engine.store.deployments.active(name)
                assert old is not None
                watching, verdict_at = asyncio.Event(), []

                sha = repo.commit(f"w{n + 1}")
                task = asyncio.create_task(
                    deploy(
                        engine,
                        name,
                        sha=sha,
                        trigger="bench",
                        listeners=[watch_listener(watching, verdict_at)],
                    )
                )
                await watching.wait()
                await asyncio.sleep(1.0 + 0.13 * n)  # not in step with the probes
                new = await engine.store.deployments.active(name)
                assert new is not None and new.container
                polling = time.monotonic()
                poll = asyncio.create_task(until_body(url, "localhost", old_version_text(old), 30))
                container = client.containers.get(new.container)
                broke = time.monotonic()  # before the exec: an upper bound of the revert time
                await asyncio.to_thread(container.exec_run, ["rm", "/www/health"])
                back = polling + await poll
                with contextlib.suppress(StageFailed):
                    await task
                onsets.append(back - broke)
                if verdict_at:
                    decided.append(back - verdict_at[0])
                print(
                    f"  revert {n + 1}: {1000 * (back - broke):.0f} ms after the failure",
                    flush=True,
                )
    finally:
        client.close()
        nginx.stop()
        common.remove_project(name)
    return {
        "probe_interval_ms": interval * 1000,
        "watch_failures": 1,
        "failure_to_old_slot_ms": common.median(onsets) * 1000,
        "failure_to_old_slot_max_ms": max(onsets) * 1000 if onsets else math.nan,
        "verdict_to_old_slot_ms": common.median(decided) * 1000,
        "target_ms": interval * 1000 + 50,
    }


def watch_listener(watching: asyncio.Event, verdict_at: list[float]) -> Any:
    from gatebot.pipeline.journal import JournalEvent

    def listen(event: JournalEvent) -> None:
        if event.stage == "watch" and event.kind == "start":
            watching.set()
        if event.kind == "output" and "revert:" in event.message:
            verdict_at.append(time.monotonic())

    return listen


def old_version_text(old: Any) -> str:
    """What the old release answers at /version: the commit message names it (w0, w1, ...)."""
    return str(old.commit_message or "").removeprefix("sample app ")


async def main_async(args: argparse.Namespace) -> int:
    result: dict[str, Any] = {
        "settings": {
            "ops": args.ops,
            "naive_ops": args.naive_ops,
            "steady_seconds": args.steady,
            "drain_seconds": DRAIN_SECONDS,
        }
    }
    with common.workspace("switch", keep=args.keep) as (ws, stack):
        if args.only in (None, "load"):
            s = setup(ws, stack)
            print(f"gatebot: {args.ops} deploys and rollbacks under load", flush=True)
            targets = {
                "marker": s.ports["site"],
                "reload": s.ports["legacy"],
                "two-tier": s.ports["front"],
            }
            gatebot = await with_load(
                Phase("gatebot", targets),
                ws,
                args.steady,
                lambda: gatebot_ops(s.config, s.repo, s.project, args.ops, s.reload_switch),
            )
            print(
                f"control: {args.naive_ops} naive stop-then-start redeployments under load",
                flush=True,
            )
            naive = await with_load(
                Phase("naive", {"naive": s.ports["naive_site"]}),
                ws,
                args.steady,
                lambda: naive_ops(
                    s.naive_image, s.naive_container, s.ports["naive"], args.naive_ops, 1.0
                ),
            )
            result.update(report_load(gatebot, naive, s))
        if args.only in (None, "scale"):
            rows = []
            for count in (1, 50, 300):
                print(f"scale: one switch with {count} project(s)", flush=True)
                rows.append(await scale_one(ws, count, args.scale_rounds))
            common.print_table(
                f"One switch on a host with N projects (median of {args.scale_rounds})",
                ["projects", "marker flip ms", "reload ms", "nginx RSS MB", "peak in reload MB"],
                [
                    [
                        r["projects"],
                        r["flip_ms"],
                        r["reload_ms"],
                        r["steady_rss_mb"],
                        r["reload_peak_rss_mb"],
                    ]
                    for r in rows
                ],
            )
            result["scale"] = rows
        if args.only in (None, "watch"):
            print(f"watch: {args.watch_rounds} reverts", flush=True)
            watch = await watch_revert(ws, args.watch_rounds)
            common.print_table(
                "Watch window revert (watch_failures = 1)",
                [
                    "probe interval ms",
                    "failure to old slot ms (median)",
                    "max",
                    "verdict to old slot ms",
                    "target ms",
                ],
                [
                    [
                        watch["probe_interval_ms"],
                        watch["failure_to_old_slot_ms"],
                        watch["failure_to_old_slot_max_ms"],
                        watch["verdict_to_old_slot_ms"],
                        watch["target_ms"],
                    ]
                ],
            )
            result["watch"] = watch
            result.setdefault("targets", {})["watch_revert_within_interval_plus_50ms"] = (
                watch["failure_to_old_slot_max_ms"] < watch["target_ms"]
            )
    targets = result.get("targets", {})
    print("targets: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in targets.items()))
    common.write_result("switch", result)
    return 0


def report_load(gatebot: Phase, naive: Phase, s: Setup) -> dict[str, Any]:
    rows, control = summarize(gatebot), summarize(naive)
    ok_ops = sum(op.ok for op in gatebot.ops)
    print_phase(
        f"Switching under load: {len(gatebot.ops)} gatebot deploys and rollbacks ({ok_ops} ok), "
        f"drain_seconds {DRAIN_SECONDS:g}; p99 in ms (wrk: over the whole run)",
        rows,
    )
    for failure in failed_requests(gatebot):
        print(f"  failed: {failure}")
    print_phase(f"Control: {len(naive.ops)} naive stop-then-start redeployments", control)
    kinds = ("fresh", "keepalive-retry", "keepalive-raw (wrk)")
    targets = {
        "marker_zero_failed_every_client_kind": all(
            failures(rows, "marker", kind) == 0 for kind in kinds
        ),
        "control_shows_failures": sum(r["non_2xx"] + r["conn_errors"] for r in control) > 0,
        "all_operations_succeeded": ok_ops == len(gatebot.ops),
    }
    return {
        "gatebot": rows,
        "control": control,
        "targets": targets,
        "legacy_reload_seconds": s.reloads,
        "failed_requests": failed_requests(gatebot),
        "control_failed_requests": failed_requests(naive, 5),
        "ops": [{"what": op.what, "seconds": op.end - op.start, "ok": op.ok} for op in gatebot.ops],
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="zero-downtime switching benchmark")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--ops", type=int)
    parser.add_argument("--naive-ops", type=int)
    parser.add_argument("--steady", type=float)
    parser.add_argument("--only", choices=["load", "scale", "watch"])
    args = parser.parse_args(argv)
    args.scale_rounds = 3 if args.quick else 7
    args.watch_rounds = 2 if args.quick else 5
    args.ops = args.ops or (4 if args.quick else 20)
    args.naive_ops = args.naive_ops or (2 if args.quick else 5)
    args.steady = args.steady or (2.0 if args.quick else 5.0)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
