"""Deploy wall time on a swarm: the sample app deployed with runtime = "swarm" and 2 replicas
on a 2-node test swarm (tests/support/swarm.py: each dockerd in a network namespace of its
own, a registry in node 1's), by gatebot's pipeline as a `gatebot serve` job runs it (an engine
opened beforehand, called in-process), against the floor measured in the same rounds: the
same build and push to the registry, then a service of its own created or updated to that
image, to the first healthy answer on every node (polled every 10 ms). Each round deploys a new
commit (warm build cache); the order alternates; medians over rounds. nginx, on 127.0.0.1,
reaches the nodes through the test network's own veth.

    scripts/bench/run swarm [--quick] [--rounds N]    (root: network namespaces)
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common

from tests.support import swarm as harness  # noqa: E402 - common puts the repository on sys.path
from tests.support.settings import write_config  # noqa: E402


@dataclass
class Timing:
    total: float
    stages: dict[str, float]


@dataclass
class Bench:
    ws: Path
    name: str
    repo: common.SampleRepo
    swarm: harness.Swarm
    config: Path
    db: Path
    floor_port: int
    counter: int = 0

    def commit(self) -> str:
        self.counter += 1
        return self.repo.commit(f"v{self.counter}")

    def steps_after(self, after: int) -> dict[str, float]:
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as conn:
            rows = conn.execute(
                "SELECT stage, duration FROM deployment_steps"
                " WHERE id > ? AND duration IS NOT NULL",
                (after,),
            ).fetchall()
        return {str(stage): float(duration) for stage, duration in rows}

    def last_step(self) -> int:
        with contextlib.suppress(sqlite3.OperationalError):
            with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as conn:
                row = conn.execute("SELECT COALESCE(MAX(id), 0) FROM deployment_steps").fetchone()
                return int(row[0])
        return 0

    async def pipeline(self, engine: Any) -> Timing:
        from gatebot.pipeline.deploy import deploy

        sha = self.commit()
        before = self.last_step()
        started = time.monotonic()
        await deploy(engine, self.name, sha=sha, trigger="bench")
        return Timing(time.monotonic() - started, self.steps_after(before))

    async def floor(self, engine: Any) -> Timing:
        """Build and push, then the floor's own service to healthy on both nodes."""
        from gatebot.runtime.base import BuildSpec, ContainerSpec

        self.commit()
        runtime = engine.runtime_for(self.name)
        context = self.ws / "floor-context"
        shutil.rmtree(context, ignore_errors=True)
        shutil.copytree(self.repo.work, context, ignore=shutil.ignore_patterns(".git"))
        tag = f"{runtime.image_repository('floor')}:{self.counter}"
        name = f"bench-{self.name}-floor"
        await runtime.retire(name, timeout=5)  # as the idle color is: kept, at 0 (not timed)
        started = time.monotonic()
        await runtime.build(BuildSpec(context, "Dockerfile", tag), lambda _: None)
        built = time.monotonic()
        spec = ContainerSpec(
            name=name,
            image=tag,
            labels={"gatebot.managed": "true", "gatebot.project": f"{self.name}-floor"},
            env={},
            network="bridge",
            host_port=self.floor_port,
            container_port=3000,
            replicas=len(self.swarm.nodes),
            stop_timeout=5,
        )
        await runtime.run(spec)
        ran = time.monotonic()
        await asyncio.gather(
            *(
                asyncio.to_thread(wait_healthy, f"http://{n.address}:{self.floor_port}/health")
                for n in self.swarm.nodes
            )
        )
        healthy = time.monotonic()
        return Timing(
            healthy - started,
            {"build": built - started, "run": ran - built, "health": healthy - ran},
        )


def wait_healthy(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:  # noqa: S310 - the test net
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} not healthy within {timeout:g}s")
        time.sleep(0.01)


def setup(ws: Path, stack: contextlib.ExitStack) -> Bench:
    started = time.monotonic()
    folder = ws / "swarm"
    stack.callback(harness.down, folder)
    swarm = harness.up(folder)
    print(f"test swarm ready in {time.monotonic() - started:.1f}s", flush=True)
    name = "bsw"
    nginx = common.Nginx(ws / "nginx").start()
    stack.callback(nginx.stop)
    repo = common.SampleRepo(ws / "repo")
    project = common.project_config(
        name,
        repo.url,
        common.free_port_pair(),
        runtime="swarm",
        replicas=len(swarm.nodes),
        network="bridge",
        keep_releases=50,
        site={"listen": f"{common.LOOPBACK}:{common.free_port()}", "server_name": "localhost"},
    )
    config = write_config(
        ws / "gatebot.toml",
        ws / "data",
        [project],
        nginx=nginx,
        docker={"host": swarm.manager.socket},
        swarm={
            "registry": f"{swarm.registry}/bench",
            "network": swarm.network,
            "registry_username": swarm.registry_user,
            "registry_password": swarm.registry_password,
        },
    )
    return Bench(ws, name, repo, swarm, config, ws / "data" / "gatebot.db", common.free_port())


async def main_async(args: Any) -> int:
    from gatebot.settings import load_settings
    from gatebot.wiring import open_engine

    rounds = args.rounds or (2 if args.quick else 5)
    with common.workspace("swarm", keep=args.keep) as (ws, stack):
        bench = setup(ws, stack)
        async with open_engine(load_settings(bench.config)) as engine:
            await engine.ensure_files(engine.settings.projects)
            ways: dict[str, Callable[[Any], Awaitable[Timing]]] = {
                "deploy pipeline (as serve runs it)": bench.pipeline,
                "floor (build, push, service to healthy)": bench.floor,
            }
            for warm_up in ways.values():  # the first service, the build cache
                await warm_up(engine)
            names = list(ways)
            results: dict[str, list[Timing]] = {n: [] for n in names}
            for index in range(rounds):
                order = names if index % 2 == 0 else names[::-1]
                for way in order:
                    results[way].append(await ways[way](engine))
                print(
                    f"round {index + 1}: "
                    + ", ".join(f"{n} {results[n][-1].total:.2f}s" for n in names),
                    flush=True,
                )
    report(rounds, results)
    return 0


def report(rounds: int, results: dict[str, list[Timing]]) -> None:
    rows = []
    for way, timings in results.items():
        row: list[object] = [way, common.median([t.total for t in timings])]
        for stage in ("source", "build", "run", "health", "switch", "record", "drain"):
            values = [t.stages[stage] for t in timings if stage in t.stages]
            row.append(common.median(values) if values else float("nan"))
        rows.append(row)
    common.print_table(
        f"Deploy wall time on a 2-node swarm (2 replicas), seconds: medians of {rounds} "
        "round(s) (build includes the push; drain: scale the old color to 0)",
        ["way", "total", "source", "build", "run", "health", "switch", "record", "drain"],
        rows,
    )
    pipe, floor = results.values()
    # The new release is live once `record` is done; drain (retiring the old color: scale to
    # 0, waiting for its tasks to stop) and prune come after, with traffic already on it.
    live = [p.total - p.stages.get("drain", 0.0) - p.stages.get("prune", 0.0) for p in pipe]
    over = common.median([p - f.total for p, f in zip(live, floor, strict=True)])
    ratio = common.median([p / f.total for p, f in zip(live, floor, strict=True)])
    figures = {
        "pipeline_total_s": common.median([p.total for p in pipe]),
        "pipeline_to_live_s": common.median(live),
        "floor_s": common.median([f.total for f in floor]),
        "to_live_minus_floor_s": over,
        "to_live_over_floor": ratio,
        "retire_s": common.median([p.stages.get("drain", 0.0) for p in pipe]),
    }
    print(
        f"live after {figures['pipeline_to_live_s']:.2f}s: {over * 1000:.0f} ms over the floor "
        f"(ratio {ratio:.2f}); then retiring the old color took {figures['retire_s']:.2f}s"
    )
    targets = {
        "to_live_ratio_at_most_1.10": ratio <= 1.10,
        "to_live_under_500ms_over_the_floor": over < 0.5,
    }
    print("targets: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in targets.items()))
    common.write_result(
        "swarm",
        {
            "rounds": rounds,
            "figures": figures,
            "targets": targets,
            "timings": {
                way: [{"total": t.total, "stages": t.stages} for t in timings]
                for way, timings in results.items()
            },
        },
    )


def main(argv: list[str]) -> int:
    return asyncio.run(main_async(common.parse_args(__doc__, argv)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
