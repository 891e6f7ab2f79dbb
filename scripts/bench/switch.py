"""Zero-downtime switching: a steady load through nginx while gatebot runs deploys and
rollbacks back to back (20 by default), with fast requests (/version) and requests that take
half a second (/cgi-bin/slow, so some are in flight at every switch). Three kinds of client,
reported apart: a fresh connection per request; keep-alive that retries an idempotent request
once when the server closed the reused connection before answering (RFC 9112, 9.3.1), as
browsers do; and wrk's raw keep-alive counts. Two proxy setups are measured at once:

- `nginx`: clients talk to the nginx gatebot reloads (the documented setup);
- `two-tier`: clients talk to a front nginx that is never reloaded and keeps upstream
  connections to gatebot's nginx, so a reload closes no client connection.

The control, in the same harness: a naive stop-then-start redeployment of the same app behind
the same nginx, which must show failures.

    scripts/bench/run switch [--quick] [--ops N] [--naive-ops N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
DRAIN_SECONDS = 1.0  # longer than a slow request: the old slot outlives what it still serves
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


async def gatebot_op(config: Path, argv: list[str]) -> Op:
    """Run `gatebot deploy|rollback`, timing the switch from its progress lines."""
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
    op.ok = await proc.wait() == 0
    op.end = time.monotonic()
    if not op.ok:
        print(f"  {' '.join(argv)} failed:\n{''.join(output)}", file=sys.stderr)
    return op


async def gatebot_ops(config: Path, repo: common.SampleRepo, project: str, count: int) -> list[Op]:
    """Deploy (a new commit), roll back, deploy, ... `count` operations back to back."""
    ops = []
    for index in range(count):
        if index % 2 == 0:
            sha = await asyncio.to_thread(repo.commit, f"switch-{index}")
            argv = ["deploy", project, "--sha", sha]
        else:
            argv = ["rollback", project]
        ops.append(await gatebot_op(config, argv))
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
    }
    nginx = common.Nginx(ws / "nginx")
    (nginx.conf_dir / "naive.conf").write_text(
        proxy_conf("naive", ports["naive_site"], ports["naive"])
    )
    stack.callback(nginx.start().stop)
    front = common.Nginx(ws / "front")
    (front.conf_dir / "front.conf").write_text(proxy_conf("inner", ports["front"], ports["site"]))
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
    return Setup(project, config, repo, ports, image, container)


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


async def main_async(args: argparse.Namespace) -> int:
    with common.workspace("switch", keep=args.keep) as (ws, stack):
        s = setup(ws, stack)
        print(f"gatebot: {args.ops} deploys and rollbacks under load", flush=True)
        gatebot = await with_load(
            Phase("gatebot", {"nginx": s.ports["site"], "two-tier": s.ports["front"]}),
            ws,
            args.steady,
            lambda: gatebot_ops(s.config, s.repo, s.project, args.ops),
        )
        print(
            f"control: {args.naive_ops} naive stop-then-start redeployments under load", flush=True
        )
        naive = await with_load(
            Phase("naive", {"naive": s.ports["naive_site"]}),
            ws,
            args.steady,
            lambda: naive_ops(
                s.naive_image, s.naive_container, s.ports["naive"], args.naive_ops, 1.0
            ),
        )
    report(args, gatebot, naive)
    return 0


def report(args: argparse.Namespace, gatebot: Phase, naive: Phase) -> None:
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
    targets = {
        "fresh_zero_failed": failures(rows, "nginx", "fresh") == 0,
        "keepalive_retry_zero_failed": failures(rows, "nginx", "keepalive-retry") == 0,
        "control_shows_failures": sum(r["non_2xx"] + r["conn_errors"] for r in control) > 0,
        "two_tier_zero_raw_keepalive_errors": failures(rows, "two-tier", "keepalive-raw (wrk)")
        == 0,
        "all_operations_succeeded": ok_ops == len(gatebot.ops),
    }
    print("targets: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in targets.items()))
    common.write_result(
        "switch",
        {
            "settings": {
                "ops": args.ops,
                "naive_ops": args.naive_ops,
                "steady_seconds": args.steady,
                "drain_seconds": DRAIN_SECONDS,
            },
            "gatebot": rows,
            "control": control,
            "targets": targets,
            "failed_requests": failed_requests(gatebot),
            "control_failed_requests": failed_requests(naive, 5),
            "ops": [
                {"what": op.what, "seconds": op.end - op.start, "ok": op.ok} for op in gatebot.ops
            ],
        },
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="zero-downtime switching benchmark")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--ops", type=int)
    parser.add_argument("--naive-ops", type=int)
    parser.add_argument("--steady", type=float)
    args = parser.parse_args(argv)
    args.ops = args.ops or (4 if args.quick else 20)
    args.naive_ops = args.naive_ops or (2 if args.quick else 5)
    args.steady = args.steady or (2.0 if args.quick else 5.0)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
