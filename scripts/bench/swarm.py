"""Deploy wall time on Docker Swarm: `gatebot deploy` of a project with runtime = "swarm" and
2 replicas on a real 2-node swarm (tests/support/swarm.py: each node a dockerd in a network
namespace of its own, Debian's docker-registry on the manager), against its floor measured in
the same rounds, alternating: what Swarm must do anyway for a new release, in-process with the
Docker SDK (build on the manager, push to the registry, update a service of 2 host-mode tasks,
every task running and each node's address answering the health path, polled every 10 ms).
The single-host figures of results/deploy.json, if there is one, are printed beside.

    scripts/bench/run swarm [--quick] [--rounds N]
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import common
import docker
import docker.types

from tests.support import swarm as harness

REPLICAS = 2
STAGES = ("source", "build", "run", "health", "switch", "drain")


@dataclass
class Timing:
    total: float
    stages: dict[str, float] = field(default_factory=dict)


@dataclass
class Bench:
    ws: Path
    cluster: harness.Swarm
    name: str
    repo: common.SampleRepo
    config: Path
    floor_checkout: Path
    floor_port: int
    counter: int = 0

    def commit(self, label: str) -> str:
        self.counter += 1
        return self.repo.commit(f"{label}-{self.counter}")

    def gatebot_cli(self, sha: str) -> Timing:
        started = time.monotonic()
        common.gatebot_cli(self.config, "deploy", self.name, "--sha", sha)
        return Timing(time.monotonic() - started, self.stages_of_latest())

    def floor(self, sha: str) -> Timing:
        """Build, push, service update until every task runs and answers on its node."""
        git = ["git", "-C", str(self.floor_checkout)]
        subprocess.run([*git, "fetch", "-q", "origin"], check=True)
        subprocess.run([*git, "checkout", "-q", "--detach", sha], check=True)
        client = self.cluster.client()
        tag = f"{self.cluster.registry}/bench/{self.name}-floor:{sha[:12]}"
        auth = {"username": self.cluster.registry_user, "password": self.cluster.registry_password}
        client.login(registry=self.cluster.registry, **auth)  # the service's tasks pull with it
        try:
            started = time.monotonic()
            for chunk in client.api.build(
                path=str(self.floor_checkout), tag=tag, rm=True, forcerm=True, decode=True
            ):
                if "error" in chunk:
                    raise RuntimeError(chunk["error"])
            built = time.monotonic()
            for chunk in client.images.push(tag, auth_config=auth, stream=True, decode=True):
                if "error" in chunk:
                    raise RuntimeError(chunk["error"])
            pushed = time.monotonic()
            service = self.floor_service(client, tag)
            self.wait_converged(client, service, tag)
            ran = time.monotonic()
            for node in self.cluster.nodes:
                common.wait_http(
                    f"http://{node.address}:{self.floor_port}/health", interval=0.01, timeout=60
                )
            healthy = time.monotonic()
            self.scale_down(client, service)  # untimed: like gatebot's idle color, at 0
        finally:
            client.close()
        stages = {
            "build": built - started,
            "push": pushed - built,
            "run": ran - pushed,
            "health": healthy - ran,
        }
        return Timing(healthy - started, stages)

    def floor_service(self, client: docker.DockerClient, tag: str) -> str:
        """Create the floor's service, or scale it up from 0 on the new image, as gatebot does
        with the idle color's service."""
        name = f"bench-{self.name}-floor"
        mode = docker.types.ServiceMode("replicated", replicas=REPLICAS)
        existing = client.services.list(filters={"name": name})
        if existing:
            existing[0].update(image=tag, mode=mode, force_update=True)
            return name
        client.services.create(
            tag,
            name=name,
            mode=mode,
            endpoint_spec=docker.types.EndpointSpec(
                mode="dnsrr", ports={self.floor_port: (3000, "tcp", "host")}
            ),
            networks=[self.cluster.network],
            init=True,
            env=["PORT=3000"],
            update_config=docker.types.UpdateConfig(parallelism=0, order="stop-first"),
        )
        return name

    @staticmethod
    def scale_down(client: docker.DockerClient, name: str) -> None:
        service = client.services.get(name)
        service.scale(0)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            states = [t["Status"]["State"] for t in client.services.get(name).tasks()]
            if "running" not in states:
                return
            time.sleep(0.05)
        raise RuntimeError(f"service {name} did not scale down within 60 s")

    @staticmethod
    def wait_converged(client: docker.DockerClient, name: str, tag: str) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            tasks = client.services.get(name).tasks(filters={"desired-state": "running"})
            running = [
                t
                for t in tasks
                if t["Status"]["State"] == "running"
                and t["Spec"]["ContainerSpec"]["Image"].split("@")[0] == tag
            ]
            if len(running) == REPLICAS:
                return
            time.sleep(0.01)
        raise RuntimeError(f"service {name} did not converge on {tag} within 120 s")

    def stages_of_latest(self) -> dict[str, float]:
        db = self.ws / "data" / "gatebot.db"
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            [deployment] = conn.execute(
                "SELECT id FROM deployments WHERE project = ? ORDER BY id DESC LIMIT 1",
                (self.name,),
            ).fetchone()
            rows = conn.execute(
                "SELECT stage, duration FROM deployment_steps"
                " WHERE deployment_id = ? AND duration IS NOT NULL",
                (deployment,),
            ).fetchall()
        return {stage: float(duration) for stage, duration in rows}


def setup(ws: Path, stack: contextlib.ExitStack) -> Bench:
    print("building the 2-node swarm and its registry", flush=True)
    cluster = harness.up(ws / "swarm")
    stack.callback(harness.down, ws / "swarm")
    name = f"bs{int(time.time()) % 100000}"
    nginx = common.Nginx(ws / "nginx").start()
    stack.callback(nginx.stop)
    repo = common.SampleRepo(ws / "repo")
    repo.commit("v0")
    project = common.project_config(
        name,
        repo.url,
        common.free_port_pair(),
        runtime="swarm",
        replicas=REPLICAS,
        keep_releases=50,
        site={"listen": f"{common.LOOPBACK}:{common.free_port()}", "server_name": "localhost"},
    )
    config = ws / "gatebot.toml"
    common.settings.write_config(
        config,
        ws / "data",
        [project],
        nginx=nginx,
        docker={"host": cluster.manager.socket},
        swarm={
            "registry": f"{cluster.registry}/bench",
            "network": cluster.network,
            "registry_username": cluster.registry_user,
            "registry_password": cluster.registry_password,
        },
    )
    floor_checkout = ws / "floor"
    subprocess.run(["git", "clone", "-q", repo.url, str(floor_checkout)], check=True)
    return Bench(ws, cluster, name, repo, config, floor_checkout, common.free_port())


def single_host() -> dict[str, float] | None:
    path = common.RESULTS / "deploy.json"
    if not path.exists():
        return None
    figures = json.loads(path.read_text()).get("figures", {})
    return {k: float(v) for k, v in figures.items() if isinstance(v, int | float)}


def main(argv: list[str]) -> int:
    args = common.parse_args(__doc__, argv)
    rounds = args.rounds or (1 if args.quick else 5)
    with common.workspace("swarm", keep=args.keep) as (ws, stack):
        bench = setup(ws, stack)
        ways = {"gatebot deploy (CLI)": bench.gatebot_cli, "floor": bench.floor}
        names = list(ways)
        print("warm-up: one deploy each (build cache, a live release to replace)", flush=True)
        for way in names:
            ways[way](bench.commit("warm"))
        results: dict[str, list[Timing]] = {way: [] for way in names}
        for index in range(rounds):
            order = names if index % 2 == 0 else names[::-1]
            for way in order:
                results[way].append(ways[way](bench.commit(f"r{index + 1}")))
            print(
                f"round {index + 1}: "
                + ", ".join(f"{w} {results[w][-1].total:.2f}s" for w in names),
                flush=True,
            )
    report(rounds, results)
    return 0


def report(rounds: int, results: dict[str, list[Timing]]) -> None:
    rows = []
    for way, timings in results.items():
        row: list[object] = [way, common.median([t.total for t in timings])]
        for stage in ("build", "push", "run", "health", "switch", "drain"):
            values = [t.stages[stage] for t in timings if stage in t.stages]
            row.append(common.median(values) if values else float("nan"))
        rows.append(row)
    common.print_table(
        f"Swarm deploy wall time, seconds: medians of {rounds} round(s), 2 replicas on 2 nodes "
        "(gatebot's build stage includes the push; drain: scale the old color to 0)",
        ["way", "total", "build", "push", "run", "health", "switch", "drain"],
        rows,
    )
    cli, floor = results["gatebot deploy (CLI)"], results["floor"]
    per_round = {
        "cli_minus_floor_s": [a.total - f.total for a, f in zip(cli, floor, strict=True)],
        "cli_over_floor": [common.ratio(a.total, f.total) for a, f in zip(cli, floor, strict=True)],
    }
    figures = {key: common.median(values) for key, values in per_round.items()}
    beside = single_host()
    table = [
        ["swarm: gatebot deploy - floor, s", figures["cli_minus_floor_s"]],
        ["swarm: gatebot deploy / floor", figures["cli_over_floor"]],
    ]
    if beside and "cli_minus_floor_s" in beside:
        single = beside["cli_minus_floor_s"]
        table.append(["single host: gatebot deploy - floor, s (deploy.json)", single])
    common.print_table("Overheads (medians of per-round figures)", ["figure", "value"], table)
    targets = {"swarm_overhead_under_2s": figures["cli_minus_floor_s"] < 2.0}
    print("targets: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in targets.items()))
    common.write_result(
        "swarm",
        {
            "rounds": rounds,
            "replicas": REPLICAS,
            "figures": figures,
            "per_round": per_round,
            "single_host": beside,
            "targets": targets,
            "timings": {
                way: [{"total": t.total, "stages": t.stages} for t in timings]
                for way, timings in results.items()
            },
        },
    )


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
