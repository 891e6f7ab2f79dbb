"""Webhook intake: signed GitHub push deliveries at fixed concurrency with wrk, against
`gatebot serve` (queue paused, so jobs accumulate and coalesce) and against adnanh/webhook
with an equivalent rule (HMAC-SHA256 signature and a branch match, /bin/true as its command),
interleaved round by round (A B, B A, ...). After each gatebot run every acknowledged job is
looked up in SQLite (nothing acknowledged may be missing) and a few deliveries are sent again
(each must be answered as a duplicate, adding no row).

    scripts/bench/run intake [--quick] [--rounds N] [--connections C] [--seconds S]
"""

from __future__ import annotations

import functools
import hashlib
import json
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import common
import pyspy
from wrkrun import Wrk, WrkResult, lua_string

REQUEST = r"""
local n = 0
function request()
  n = n + 1
  local i = (n - 1) % POOL + 1
  local sha = SHAS:sub(i * 40 - 39, i * 40)
  local body = PARTS[1]
  for k = 2, #PARTS do body = body .. sha .. PARTS[k] end
  return wrk.format("POST", nil, {
    ["Content-Type"] = "application/json",
    ["User-Agent"] = "GitHub-Hookshot/bench",
    ["X-GitHub-Event"] = "push",
    ["X-GitHub-Delivery"] = PREFIX .. "-" .. thread_id .. "-" .. n,
    ["X-Hub-Signature-256"] = "sha256=" .. SIGS:sub(i * 64 - 63, i * 64),
  }, body)
end
"""
COLLECT_JOBS = r"""
function response(status, headers, body)
  count_status(status)
  local job = body:match('"job": *(%d+)')
  if job then collected[#collected + 1] = job end
end
"""
PLACEHOLDER = "@@SHA@@"


def script(prefix: str, count: int, response: str = COLLECT_JOBS) -> str:
    """Lua for `count` distinct signed pushes (each of a new commit, so no body repeats) with
    unique delivery ids PREFIX-THREAD-N; `response` is the Lua that reads each answer."""
    parts = template()
    pushes = [pushed(prefix, i) for i in range(count)]
    shas = [sha for sha, _, _ in pushes]
    sigs = [sig.removeprefix("sha256=") for _, _, sig in pushes]
    return (
        f"PARTS = {{{', '.join(lua_string(p) for p in parts)}}}\n"
        f"SHAS = {lua_string(''.join(shas))}\nSIGS = {lua_string(''.join(sigs))}\n"
        f"POOL = {count}\nPREFIX = {lua_string(prefix)}\n" + REQUEST + response
    )


@functools.cache
def template() -> list[str]:
    """The push body, split where its commit SHA goes."""
    return common.github_push(PLACEHOLDER)[0].decode().split(PLACEHOLDER)


def pushed(prefix: str, index: int) -> tuple[str, bytes, str]:
    """The `index`-th push of a run: (its commit, body, X-Hub-Signature-256)."""
    sha = hashlib.sha1(f"{prefix}-{index}".encode()).hexdigest()  # noqa: S324 - a name
    body = sha.join(template()).encode()
    return sha, body, common.signing.github_signature(body, common.SECRET)


def pool_size(seconds: float) -> int:
    return int(seconds * 6000) + 2000  # more than any server here answers: no body repeats


def load(
    folder: Path, name: str, url: str, args: Any, pids: list[int], profile: bool
) -> tuple[WrkResult, float]:
    """A one-second warm-up, then the measured run (its acknowledged job ids collected);
    returns wrk's result and the CPU seconds the server's processes `pids` used meanwhile. With
    `profile`, py-spy samples the first during the run."""
    conns, secs = args.connections, args.seconds
    Wrk(
        folder,
        f"{name}-warm",
        url,
        script(f"{name}-warm", pool_size(1)),
        connections=conns,
        seconds=1,
    ).run()
    wrk = Wrk(
        folder,
        name,
        url,
        script(name, pool_size(secs)),
        connections=conns,
        seconds=secs,
        collect=True,
    )
    before = [common.cpu_seconds(pid) for pid in pids]
    wrk.start()
    spy = pyspy.record(pids[0], secs - 1, folder / f"{name}.stacks") if profile else None
    result = wrk.wait()
    used = [common.cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True)]
    cpu = sum(used)
    if len(pids) > 1:
        print(f"  CPU s by process (serve first): {', '.join(f'{u:.2f}' for u in used)}")
    if spy is not None:
        spy.wait(timeout=60)
        stacks = folder / f"{name}.stacks"
        summary: dict[str, Any] = dict(pyspy.summarize(stacks))
        summary["categories"] = pyspy.categorize(stacks)
        print(f"\npy-spy profile of gatebot serve under load ({name}, not in the figures):")
        print(
            f"  {result.rps:.0f} req/s while sampled; samples holding the GIL, by where they were:"
        )
        for category, share in summary["categories"]:
            print(f"  {share * 100:5.1f}%  {category}")
        print("  top frames by own samples:")
        for frame, share in summary["self"][:10]:
            print(f"  {share * 100:5.1f}%  {frame}")
        PROFILES[name] = summary
    return result, cpu


PROFILES: dict[str, Any] = {}


# --- gatebot ---------------------------------------------------------------------------------


def gatebot_run(ws: Path, name: str, args: Any, intake_processes: int = 0) -> dict[str, Any]:
    """`gatebot serve` under load: its own webhook route, or with `intake_processes` intake
    processes on [server] intake_listen (CPU and RSS then summed over serve and them)."""
    data_dir = ws / name
    port = common.free_port()
    nginx = common.Nginx(ws / "nginx")  # never started: a paused queue deploys nothing
    project = common.project_config("bench", f"file://{ws}/none.git", common.free_port_pair())
    intake_port = common.free_port() if intake_processes else None
    server_table = (
        {"intake_listen": f"{common.LOOPBACK}:{intake_port}", "intake_processes": intake_processes}
        if intake_processes
        else {}
    )
    config = common.write_config(
        ws / f"{name}.toml",
        data_dir=data_dir,
        nginx=nginx,
        projects=[project],
        listen_port=port,
        queue={"paused": True},
        server=server_table,
    )
    server = common.Server(config, port, ws / f"{name}.log").start()
    try:
        base = server.url
        if intake_port is not None:
            base = f"http://{common.LOOPBACK}:{intake_port}"
            wait_intake(base, intake_processes)
        profile = name.endswith("-profile")
        pids = [server.pid, *intake_pids(server.pid)]
        result, cpu = load(ws, name, base + "/webhooks/github", args, pids, profile)
        settle(data_dir / "gatebot.db")
        rss_kb = sum(common.proc_status(pid, "VmRSS") for pid in pids)
        rows = check_rows(data_dir / "gatebot.db", result)
        rows["redelivered_as_duplicate"] = redeliver(base, data_dir / "gatebot.db")
    finally:
        rows_exit = server.stop()
    after = check_rows(data_dir / "gatebot.db", result)
    rows["missing_after_stop"] = after["missing"]
    rows["exit_code"] = rows_exit
    return {"wrk": result, "cpu_s": cpu, "rss_mb": rss_kb / 1024, "rows": rows}


def intake_pids(serve_pid: int) -> list[int]:
    children = Path(f"/proc/{serve_pid}/task/{serve_pid}/children").read_text().split()
    return [int(c) for c in children]


def wait_intake(base: str, count: int, timeout: float = 30) -> None:
    """Until `count` distinct intake processes have answered /healthz."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(seen)} of {count} intake processes answered")
        status, body = common.http_get(base + "/healthz", timeout=2)
        if status == 200:
            seen.add(json.loads(body)["intake"])
        else:
            time.sleep(0.1)


def settle(db: Path, seconds: float = 5) -> None:
    """Wait until requests wrk left in flight are done: the row count stops changing."""
    last, deadline = -1, time.monotonic() + seconds
    while time.monotonic() < deadline:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            count = conn.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0]
        if count == last:
            return
        last = count
        time.sleep(0.2)


def check_rows(db: Path, result: WrkResult) -> dict[str, Any]:
    """Every acknowledged job must be a row whose delivery is a row too."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        jobs = dict(conn.execute("SELECT id, delivery_id FROM jobs").fetchall())
        deliveries = {d for (d,) in conn.execute("SELECT delivery_id FROM deliveries")}
        states = dict(conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
    acked = [int(j) for j in result.collected]
    missing = [j for j in acked if j not in jobs or jobs[j] not in deliveries]
    return {
        "answered_202": result.statuses.get(202, 0),
        "acknowledged_jobs": len(acked),
        "job_rows": len(jobs),
        "delivery_rows": len(deliveries),
        "job_states": states,
        "missing": len(missing),
    }


def redeliver(url: str, db: Path, count: int = 3) -> str:
    """Send `count` recorded deliveries again: each must be a duplicate and add no row."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        ids = [
            d
            for (d,) in conn.execute(
                "SELECT delivery_id FROM jobs ORDER BY random() LIMIT ?", (count,)
            )
        ]
        before = conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
    duplicates = 0
    for delivery in ids:
        prefix, _, n = delivery.rpartition("-")  # PREFIX-THREAD-N, the N-th of the run's pool
        _, body, sig = pushed(prefix.rpartition("-")[0], int(n) - 1)
        request = urllib.request.Request(  # noqa: S310 - loopback
            url + "/webhooks/github",
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "X-GitHub-Event": "push",
                "X-GitHub-Delivery": delivery,
                "X-Hub-Signature-256": sig,
            },
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            duplicates += response.status == 200 and json.load(response).get("duplicate") is True
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        after = conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
    return f"{duplicates}/{len(ids)}" + (
        "" if after == before else f" (but {after - before} new rows)"
    )


# --- adnanh/webhook ----------------------------------------------------------------------------


def webhook_hooks(path: Path) -> Path:
    """The equivalent rule: a valid X-Hub-Signature-256 and ref refs/heads/main."""
    hooks = [
        {
            "id": "github",
            "execute-command": "/bin/true",
            "command-working-directory": "/tmp",
            "response-message": "queued",
            "trigger-rule-mismatch-http-response-code": 401,
            "trigger-rule": {
                "and": [
                    {
                        "match": {
                            "type": "payload-hmac-sha256",
                            "secret": common.SECRET,
                            "parameter": {"source": "header", "name": "X-Hub-Signature-256"},
                        }
                    },
                    {
                        "match": {
                            "type": "value",
                            "value": "refs/heads/main",
                            "parameter": {"source": "payload", "name": "ref"},
                        }
                    },
                ]
            },
        }
    ]
    path.write_text(json.dumps(hooks, indent=2))
    return path


def webhook_run(ws: Path, name: str, args: Any) -> dict[str, Any]:
    port = common.free_port()
    hooks = webhook_hooks(ws / "hooks.json")
    argv = ["webhook", "-hooks", str(hooks), "-ip", common.LOOPBACK, "-port", str(port)]
    with open(ws / f"{name}.log", "ab") as log:
        proc = subprocess.Popen([*argv, "-http-methods", "POST"], stdout=log, stderr=log)
    try:
        common.wait_http(f"http://{common.LOOPBACK}:{port}/", interval=0.05, timeout=30)
        url = f"http://{common.LOOPBACK}:{port}/hooks/github"
        result, cpu = load(ws, name, url, args, [proc.pid], False)
        rss_kb = common.proc_status(proc.pid, "VmRSS")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {"wrk": result, "cpu_s": cpu, "rss_mb": rss_kb / 1024}


# --- report ----------------------------------------------------------------------------------


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for server, results in runs.items():
        w = [r["wrk"] for r in results]
        out[server] = {
            "rps": common.median([r.rps for r in w]),
            "p50_ms": common.median([r.latency_ms["p50"] for r in w]),
            "p99_ms": common.median([r.latency_ms["p99"] for r in w]),
            "socket_errors": sum(r.socket_errors for r in w),
            "non_2xx": sum(r.requests - r.answered() for r in w),
            "requests": sum(r.requests for r in w),
            "rss_mb": common.median([r["rss_mb"] for r in results]),
            "cpu_ms_per_request": common.median(
                [1000 * r["cpu_s"] / max(1, r["wrk"].requests) for r in results]
            ),
        }
    return out


GATEBOT, INTAKE, WEBHOOK = "gatebot", "gatebot+intake", "webhook"


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="webhook intake benchmark")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float)
    parser.add_argument(
        "--intake-processes", type=int, default=2, help="[server] intake_processes (default 2)"
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy run")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.seconds = args.seconds or (3 if args.quick else 10)
    servers = [GATEBOT, INTAKE, WEBHOOK]
    runs: dict[str, list[dict[str, Any]]] = {server: [] for server in servers}
    ratios: dict[str, list[float]] = {"rps": [], "p99": [], "rps_serve": [], "p99_serve": []}
    with common.workspace("intake", keep=args.keep) as (ws, _stack):
        for index in range(args.rounds):
            order = servers[index % 3 :] + servers[: index % 3]  # each goes first once in 3
            for server in order:
                started = time.monotonic()
                name = f"{server.replace('+', '-')}-{index + 1}"
                if server == WEBHOOK:
                    result = webhook_run(ws, name, args)
                else:
                    processes = args.intake_processes if server == INTAKE else 0
                    result = gatebot_run(ws, name, args, processes)
                runs[server].append(result)
                last = result["wrk"]
                print(
                    f"round {index + 1} {server:<14} {last.rps:8.0f} req/s  "
                    f"p50 {last.latency_ms['p50']:6.2f} ms  p99 {last.latency_ms['p99']:6.2f} ms  "
                    f"({time.monotonic() - started:.0f}s)",
                    flush=True,
                )
            h = runs[WEBHOOK][-1]["wrk"]
            for key, server in (("", INTAKE), ("_serve", GATEBOT)):
                g = runs[server][-1]["wrk"]
                ratios["rps" + key].append(common.ratio(g.rps, h.rps))
                ratios["p99" + key].append(common.ratio(g.latency_ms["p99"], h.latency_ms["p99"]))
        if pyspy.available() and not args.no_profile:
            gatebot_run(ws, "gatebot-profile", args)
    report(args, runs, ratios)
    return 0


def report(
    args: Any, runs: dict[str, list[dict[str, Any]]], ratios: dict[str, list[float]]
) -> None:
    medians = summarize(runs)
    rows = [
        [
            name,
            m["rps"],
            m["p50_ms"],
            m["p99_ms"],
            m["socket_errors"],
            m["non_2xx"],
            m["cpu_ms_per_request"],
            m["rss_mb"],
        ]
        for name, m in medians.items()
    ]
    rps_ratio, p99_ratio = common.median(ratios["rps"]), common.median(ratios["p99"])
    for server, key in ((INTAKE, ""), (GATEBOT, "_serve")):
        cpu_ratio = common.ratio(
            medians[server]["cpu_ms_per_request"], medians[WEBHOOK]["cpu_ms_per_request"]
        )
        rps, p99 = common.median(ratios["rps" + key]), common.median(ratios["p99" + key])
        rows.append([f"{server} / webhook", rps, "", p99, "", "", cpu_ratio, ""])
    common.print_table(
        f"Webhook intake: {args.connections} connections, {args.seconds:g} s per run, "
        f"{args.rounds} round(s) interleaved; gatebot+intake: {args.intake_processes} intake "
        "processes; medians (ratios: median of per-round ratios)",
        ["server", "req/s", "p50 ms", "p99 ms", "sock err", "non-2xx", "CPU ms/req", "RSS MB"],
        rows,
    )
    checks = [r["rows"] for server in (GATEBOT, INTAKE) for r in runs[server]]
    acked = sum(c["acknowledged_jobs"] for c in checks)
    missing = sum(c["missing"] + c["missing_after_stop"] for c in checks)
    print(
        f"gatebot persistence: {acked} acknowledged jobs, {missing} missing from SQLite "
        f"(checked while serving and after SIGTERM); redeliveries answered as duplicates: "
        f"{', '.join(c['redelivered_as_duplicate'] for c in checks)}; "
        f"exit codes {[c['exit_code'] for c in checks]}"
    )
    targets = {
        "throughput_at_least_webhook": rps_ratio >= 1.0,
        "p99_lower_than_webhook": p99_ratio < 1.0,
        "nothing_lost": missing == 0 and acked > 0,
    }
    print(
        f"targets ({INTAKE}): "
        + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in targets.items())
    )
    common.write_result(
        "intake",
        {
            "settings": {
                "intake_processes": args.intake_processes,
                "connections": args.connections,
                "seconds": args.seconds,
                "rounds": args.rounds,
            },
            "medians": medians,
            "ratios": {
                "rps_intake_over_webhook": rps_ratio,
                "p99_intake_over_webhook": p99_ratio,
                "rps_serve_over_webhook": common.median(ratios["rps_serve"]),
                "p99_serve_over_webhook": common.median(ratios["p99_serve"]),
            },
            "per_round_ratios": ratios,
            "targets": targets,
            "profiles": PROFILES,
            "rounds": {
                server: [
                    {
                        "wrk": r["wrk"].to_dict(),
                        "cpu_s": r["cpu_s"],
                        "rss_mb": r["rss_mb"],
                        "rows": r.get("rows"),
                    }
                    for r in results
                ]
                for server, results in runs.items()
            },
        },
    )


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
