"""Rollback time: bringing back a release whose image is present, as `gatebot rollback --to V`
(a process of its own: interpreter start, preflight, the pipeline) and as the pipeline alone
(what a queued job in `gatebot serve` runs, called in-process), against the floor measured in
the same rounds: that image's container started to its first healthy answer (Docker SDK,
polled every 10 ms). Rotating order, medians over rounds.

    scripts/bench/run rollback [--quick] [--rounds N]
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common

Way = Callable[[int], Awaitable["Timing"]]


@dataclass
class Timing:
    total: float
    stages: dict[str, float]


@dataclass
class Bench:
    name: str
    config: Path
    db: Path
    floor_port: int
    images: dict[int, str]  # version -> image

    def new_steps(self, after: int) -> dict[str, float]:
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as conn:
            rows = conn.execute(
                "SELECT stage, duration FROM deployment_steps"
                " WHERE id > ? AND duration IS NOT NULL",
                (after,),
            ).fetchall()
        return {stage: float(duration) for stage, duration in rows}

    def last_step(self) -> int:
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as conn:
            return int(
                conn.execute("SELECT COALESCE(MAX(id), 0) FROM deployment_steps").fetchone()[0]
            )

    async def cli(self, version: int) -> Timing:
        before = self.last_step()
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            common.GATEBOT,
            "-c",
            str(self.config),
            "rollback",
            self.name,
            "--to",
            str(version),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await proc.communicate()
        total = time.monotonic() - started
        if proc.returncode != 0:
            raise RuntimeError(f"gatebot rollback failed:\n{output.decode()}")
        return Timing(total, self.new_steps(before))

    async def pipeline(self, version: int) -> Timing:
        """gatebot's rollback() with an engine opened beforehand, as a server job runs it."""
        from gatebot.pipeline.rollback import rollback
        from gatebot.settings import load_settings
        from gatebot.wiring import open_engine

        async with open_engine(load_settings(self.config)) as engine:
            await engine.runtime.ping()
            before = self.last_step()
            started = time.monotonic()
            await rollback(engine, self.name, to=str(version), trigger="bench")
            total = time.monotonic() - started
        return Timing(total, self.new_steps(before))

    async def floor(self, version: int) -> Timing:
        return await asyncio.to_thread(self._floor, self.images[version])

    def _floor(self, image: str) -> Timing:
        import docker

        client = docker.DockerClient(base_url=os.environ.get("DOCKER_HOST") or None)
        container = f"bench-{self.name}-floor-x"
        with contextlib.suppress(docker.errors.NotFound):
            client.containers.get(container).remove(force=True)
        try:
            started = time.monotonic()
            client.containers.run(
                image,
                name=container,
                detach=True,
                init=True,
                network_mode="host",
                environment={"PORT": str(self.floor_port)},
            )
            ran = time.monotonic()
            url = f"http://{common.LOOPBACK}:{self.floor_port}/health"
            common.wait_http(url, interval=0.01, timeout=60)
            healthy = time.monotonic()
        finally:
            with contextlib.suppress(docker.errors.APIError):
                client.containers.get(container).remove(force=True)
            client.close()
        return Timing(healthy - started, {"run": ran - started, "health": healthy - ran})


def setup(ws: Path, stack: contextlib.ExitStack) -> Bench:
    name = f"br{os.getpid() % 100000}"
    stack.callback(common.remove_project, name)
    nginx = common.Nginx(ws / "nginx").start()
    stack.callback(nginx.stop)
    repo = common.SampleRepo(ws / "repo")
    project = common.project_config(
        name,
        repo.url,
        common.free_port_pair(),
        keep_releases=50,
        site={"listen": f"{common.LOOPBACK}:{common.free_port()}", "server_name": "localhost"},
    )
    config = common.write_config(
        ws / "gatebot.toml", data_dir=ws / "data", nginx=nginx, projects=[project]
    )
    for version in ("v1", "v2"):
        common.gatebot_cli(config, "deploy", name, "--sha", repo.commit(version))
    db = ws / "data" / "gatebot.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        images = dict(
            conn.execute("SELECT version, image FROM deployments WHERE project = ?", (name,))
        )
    return Bench(name, config, db, common.free_port(), images)


async def main_async(args: Any) -> int:
    rounds = args.rounds or (2 if args.quick else 7)
    with common.workspace("rollback", keep=args.keep) as (ws, stack):
        bench = setup(ws, stack)
        ways: dict[str, Way] = {
            "gatebot rollback (CLI)": bench.cli,
            "rollback pipeline (in-process)": bench.pipeline,
            "floor (start to healthy)": bench.floor,
        }
        names = list(ways)
        results: dict[str, list[Timing]] = {n: [] for n in names}
        live = 2
        await bench.cli(1)  # warm-up
        live = 1
        for index in range(rounds):
            order = names[index % len(names) :] + names[: index % len(names)]
            for way in order:
                target = 2 if live == 1 else 1
                results[way].append(await ways[way](target))
                if way != "floor (start to healthy)":
                    live = target
            print(
                f"round {index + 1}: "
                + ", ".join(f"{n} {results[n][-1].total:.3f}s" for n in names),
                flush=True,
            )
    report(rounds, results)
    return 0


def report(rounds: int, results: dict[str, list[Timing]]) -> None:
    stages = ("run", "health", "switch", "record", "drain", "prune")
    rows = []
    for way, timings in results.items():
        row: list[object] = [way, common.median([t.total for t in timings])]
        for stage in stages:
            values = [t.stages[stage] for t in timings if stage in t.stages]
            row.append(common.median(values) if values else float("nan"))
        live = [
            sum(t.stages.get(s, 0.0) for s in ("run", "health", "switch", "record"))
            for t in timings
        ]
        row.append(common.median(live) if "floor" not in way else float("nan"))
        rows.append(row)
    common.print_table(
        f"Rollback wall time, seconds: medians of {rounds} round(s) in rotating order "
        "(drain: stop and remove the old slot; drain_seconds = 0)",
        ["way", "total", *stages, "run..record"],
        rows,
    )
    names = list(results)
    cli, pipe, floor = (results[n] for n in names)
    figures = {
        "cli_minus_floor_s": common.median(
            [a.total - f.total for a, f in zip(cli, floor, strict=True)]
        ),
        "pipeline_minus_floor_s": common.median(
            [a.total - f.total for a, f in zip(pipe, floor, strict=True)]
        ),
    }
    print(
        f"over the floor: CLI {figures['cli_minus_floor_s'] * 1000:.0f} ms, "
        f"pipeline {figures['pipeline_minus_floor_s'] * 1000:.0f} ms "
        "(medians of per-round differences)"
    )
    started = time.monotonic()
    common.gatebot_cli(Path("/dev/null"), "--help")
    help_s = time.monotonic() - started
    total_ms, largest = common.import_profile(
        ["gatebot.cli", "gatebot.wiring", "gatebot.pipeline.rollback", "gatebot.pipeline.reconcile"]
    )
    figures["cli_fixed_s"] = common.median(
        [a.total - p.total for a, p in zip(cli, pipe, strict=True)]
    )
    print(
        f"what the CLI adds to the pipeline: {figures['cli_fixed_s'] * 1000:.0f} ms "
        f"(`gatebot --help` alone: {help_s * 1000:.0f} ms; importing what a rollback needs: "
        f"{total_ms:.0f} ms; the rest is the preflight: engine ping, nginx -t, reconcile)"
    )
    print("largest imports below gatebot's own modules (cumulative ms, python -X importtime):")
    for name, ms in largest:
        print(f"  {ms:6.0f}  {name}")
    targets = {
        "cli_within_300ms_of_floor": figures["cli_minus_floor_s"] <= 0.3,
        "pipeline_within_300ms_of_floor": figures["pipeline_minus_floor_s"] <= 0.3,
    }
    print("targets: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in targets.items()))
    common.write_result(
        "rollback",
        {
            "rounds": rounds,
            "figures": figures,
            "targets": targets,
            "cli_start": {"help_s": help_s, "import_ms": total_ms, "largest_imports": largest},
            "timings": {
                way: [{"total": t.total, "stages": t.stages} for t in timings]
                for way, timings in results.items()
            },
        },
    )


def main(argv: list[str]) -> int:
    return asyncio.run(main_async(common.parse_args(__doc__, argv)))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
