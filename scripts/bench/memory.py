"""Resident memory of `gatebot serve`: idle after start-up, then after 10,000 signed webhook
deliveries (16 keep-alive connections, the queue paused so each is a job row) and a rest,
read from /proc/<pid>/status (VmRSS, and VmHWM for the peak). adnanh/webhook's, measured the
same way in the same rounds, is the baseline.

    scripts/bench/run memory [--quick] [--rounds N] [--deliveries N]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import common
import intake
from httpload import read_response


def send(url: str, count: int, connections: int, prefix: str) -> int:
    """Exactly `count` signed deliveries over `connections` keep-alive connections; returns
    how many were answered 2xx."""
    return asyncio.run(_send(url, count, connections, prefix))


async def _send(url: str, count: int, connections: int, prefix: str) -> int:
    host, _, rest = url.removeprefix("http://").partition("/")
    port = int(host.rpartition(":")[2])
    numbers = iter(range(count))
    answered = 0

    async def connection() -> None:
        nonlocal answered
        reader, writer = await asyncio.open_connection(common.LOOPBACK, port)
        try:
            for n in numbers:
                _, body, sig = intake.pushed(prefix, n)  # a new commit each: no body repeats
                head = (
                    f"POST /{rest} HTTP/1.1\r\nHost: localhost\r\n"
                    "Content-Type: application/json\r\n"
                    f"X-GitHub-Event: push\r\nX-GitHub-Delivery: {prefix}-{n}\r\n"
                    f"X-Hub-Signature-256: {sig}\r\nContent-Length: {len(body)}\r\n\r\n"
                )
                writer.write(head.encode() + body)
                status, _ = await read_response(reader)
                answered += 200 <= status < 300
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    return answered


def settle(pid: int, seconds: float) -> dict[str, float]:
    time.sleep(seconds)
    return {key: common.proc_status(pid, key) / 1024 for key in ("VmRSS", "VmHWM")}


def gatebot_round(ws: Path, index: int, args: argparse.Namespace) -> dict[str, Any]:
    name, port = f"gatebot-{index}", common.free_port()
    project = common.project_config("bench", f"file://{ws}/none.git", common.free_port_pair())
    config = common.write_config(
        ws / f"{name}.toml",
        data_dir=ws / name,
        nginx=common.Nginx(ws / "nginx"),
        projects=[project],
        listen_port=port,
        queue={"paused": True},
    )
    server = common.Server(config, port, ws / f"{name}.log").start()
    try:
        idle = settle(server.pid, args.rest)
        sent = send(server.url + "/webhooks/github", args.deliveries, args.connections, name)
        after = settle(server.pid, args.rest)
    finally:
        server.stop()
    with sqlite3.connect(f"file:{ws / name / 'gatebot.db'}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0]
    return {"idle": idle, "after": after, "sent": sent, "delivery_rows": rows}


def webhook_round(ws: Path, index: int, args: argparse.Namespace) -> dict[str, Any]:
    name, port = f"webhook-{index}", common.free_port()
    hooks = intake.webhook_hooks(ws / "hooks.json")
    argv = ["webhook", "-hooks", str(hooks), "-ip", common.LOOPBACK, "-port", str(port)]
    with open(ws / f"{name}.log", "ab") as log:
        proc = subprocess.Popen([*argv, "-http-methods", "POST"], stdout=log, stderr=log)
    try:
        common.wait_http(f"http://{common.LOOPBACK}:{port}/", interval=0.05, timeout=30)
        idle = settle(proc.pid, args.rest)
        url = f"http://{common.LOOPBACK}:{port}/hooks/github"
        sent = send(url, args.deliveries, args.connections, name)
        after = settle(proc.pid, args.rest)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {"idle": idle, "after": after, "sent": sent}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="resident memory benchmark")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--deliveries", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rest", type=float, default=2.0, help="seconds before each reading")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    if args.quick:
        args.deliveries = min(args.deliveries, 2000)
    runs: dict[str, list[dict[str, Any]]] = {"gatebot": [], "webhook": []}
    with common.workspace("memory", keep=args.keep) as (ws, _stack):
        for index in range(args.rounds):
            runs["gatebot"].append(gatebot_round(ws, index + 1, args))
            runs["webhook"].append(webhook_round(ws, index + 1, args))
            g, w = runs["gatebot"][-1], runs["webhook"][-1]
            print(
                f"round {index + 1}: "
                f"gatebot {g['idle']['VmRSS']:.1f} -> {g['after']['VmRSS']:.1f} MB, "
                f"webhook {w['idle']['VmRSS']:.1f} -> {w['after']['VmRSS']:.1f} MB",
                flush=True,
            )
    report(args, runs)
    return 0


def report(args: argparse.Namespace, runs: dict[str, list[dict[str, Any]]]) -> None:
    medians: dict[str, dict[str, float]] = {}
    for server, results in runs.items():
        medians[server] = {
            "idle_rss_mb": common.median([r["idle"]["VmRSS"] for r in results]),
            "after_rss_mb": common.median([r["after"]["VmRSS"] for r in results]),
            "peak_rss_mb": common.median([r["after"]["VmHWM"] for r in results]),
            "sent": common.median([r["sent"] for r in results]),
        }
    common.print_table(
        f"Resident memory, MB (medians of {args.rounds} round(s)): idle, and after "
        f"{args.deliveries:,} deliveries at {args.connections} connections",
        ["server", "idle", "after", "peak", "deliveries"],
        [
            [s, m["idle_rss_mb"], m["after_rss_mb"], m["peak_rss_mb"], m["sent"]]
            for s, m in medians.items()
        ],
    )
    rows = [r["delivery_rows"] for r in runs["gatebot"]]
    print(f"gatebot recorded {rows} deliveries (one row each, the queue paused)")
    g = medians["gatebot"]
    targets = {
        "idle_under_80mb": g["idle_rss_mb"] < 80,
        "after_under_150mb": g["after_rss_mb"] < 150,
    }
    print("targets: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in targets.items()))
    common.write_result(
        "memory", {"settings": vars(args), "medians": medians, "targets": targets, "rounds": runs}
    )


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
