"""Deploy overhead: the sample app deployed by gatebot, both as `gatebot deploy` and as a push
to a running `gatebot serve`, and by reference-deploy.sh (the same steps by hand with the docker,
nginx, git and curl command lines), in rotating order round after round with a warm build cache
(each deploy is of a new commit, so each builds its changed layer and nothing else). The floor,
measured in the same rounds in-process with the Docker SDK, is what Docker must do anyway: the
build plus the container's start to its first healthy answer. drain_seconds is 0 here: it adds
exactly its value to a real deploy (and is reported as such).

    scripts/bench/run deploy [--quick] [--rounds N]
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import common

STAGES = ("source", "build", "run", "health", "switch", "record", "drain", "prune")
HERE = Path(__file__).resolve().parent


@dataclass
class Timing:
    total: float
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def other(self) -> float:
        """What no stage accounts for: process start, preflight, bookkeeping between stages."""
        return self.total - sum(self.stages.values())


@dataclass
class Bench:
    ws: Path
    name: str
    repo: common.SampleRepo
    nginx: common.Nginx
    config: Path
    server: common.Server
    ports: dict[str, int]
    floor_checkout: Path
    counter: int = 0

    def commit(self, label: str) -> str:
        self.counter += 1
        return self.repo.commit(f"{label}-{self.counter}")

    @property
    def db(self) -> Path:
        return self.ws / "data" / "gatebot.db"

    # --- the four ways -----------------------------------------------------------------------

    def gatebot_cli(self, sha: str) -> Timing:
        started = time.monotonic()
        common.gatebot_cli(self.config, "deploy", self.name, "--sha", sha)
        total = time.monotonic() - started
        return Timing(total, self.stages_of_latest())

    def gatebot_serve(self, sha: str) -> Timing:
        """POST the push; the deploy's time is from the POST to the job's finished_at."""
        body, signature = common.github_push(sha)
        request = urllib.request.Request(  # noqa: S310 - loopback
            self.server.url + "/webhooks/github",
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "X-GitHub-Event": "push",
                "X-GitHub-Delivery": str(uuid.uuid4()),
                "X-Hub-Signature-256": signature,
            },
        )
        posted = time.time()
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            job = int(json.load(response)["queued"][0]["job"])
        finished = self.wait_job(job)
        return Timing(finished - posted, self.stages_of_latest())

    def script(self, sha: str) -> Timing:
        state = self.ws / f"{self.name}-ref"
        state.mkdir(exist_ok=True)
        argv = [
            str(HERE / "reference-deploy.sh"),
            str(state),
            self.repo.url,
            sha,
            str(self.ports["script"]),
            str(self.ports["script_site"]),
            str(self.nginx.prefix),
            str(self.nginx.conf),
        ]
        started = time.monotonic()
        result = subprocess.run(argv, capture_output=True, text=True, env=common.docker_env())
        total = time.monotonic() - started
        if result.returncode != 0:
            raise RuntimeError(f"reference-deploy.sh failed:\n{result.stdout}{result.stderr}")
        stages = {
            m[1]: float(m[2]) for m in re.finditer(r"^\s+(\w+)\s+([\d.]+)s$", result.stdout, re.M)
        }
        return Timing(total, stages)

    def floor(self, sha: str) -> Timing:
        """Build, start, first healthy answer: Docker's own work, in-process, polled every 10 ms."""
        import docker

        git = ["git", "-C", str(self.floor_checkout)]
        subprocess.run([*git, "fetch", "-q", "origin"], check=True)
        subprocess.run([*git, "checkout", "-q", "--detach", sha], check=True)
        client = docker.DockerClient(base_url=os.environ.get("DOCKER_HOST") or None)
        container = f"bench-{self.name}-floor-x"
        with contextlib.suppress(docker.errors.NotFound):
            client.containers.get(container).remove(force=True)
        port = self.ports["floor"]
        try:
            started = time.monotonic()
            tag = f"bench/{self.name}-floor:{sha[:12]}"
            for chunk in client.api.build(
                path=str(self.floor_checkout), tag=tag, rm=True, forcerm=True, decode=True
            ):
                if "error" in chunk:
                    raise RuntimeError(chunk["error"])
            built = time.monotonic()
            client.containers.run(
                tag,
                name=container,
                detach=True,
                init=True,
                network_mode="host",
                environment={"PORT": str(port)},
            )
            ran = time.monotonic()
            common.wait_http(f"http://{common.LOOPBACK}:{port}/health", interval=0.01, timeout=60)
            healthy = time.monotonic()
        finally:
            with contextlib.suppress(docker.errors.APIError):
                client.containers.get(container).remove(force=True)
            client.close()
        stages = {"build": built - started, "run": ran - built, "health": healthy - ran}
        return Timing(healthy - started, stages)

    # --- reading gatebot's own records -----------------------------------------------------

    def stages_of_latest(self) -> dict[str, float]:
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as conn:
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

    def wait_job(self, job: int, timeout: float = 300) -> float:
        """The job's finished_at (epoch seconds) once it has finished successfully."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as conn:
                state, error, finished = conn.execute(
                    "SELECT state, error, finished_at FROM jobs WHERE id = ?", (job,)
                ).fetchone()
            if state == "succeeded":
                return datetime.fromisoformat(finished).timestamp()
            if state not in ("queued", "running"):
                raise RuntimeError(f"job {job} {state}: {error}")
            time.sleep(0.02)
        raise RuntimeError(f"job {job} did not finish within {timeout}s")


def setup(ws: Path, stack: contextlib.ExitStack) -> Bench:
    name = f"bd{os.getpid() % 100000}"
    for leftover in (name, f"{name}-ref", f"{name}-floor"):
        stack.callback(common.remove_project, leftover)
    nginx = common.Nginx(ws / "nginx").start()
    stack.callback(nginx.stop)
    repo = common.SampleRepo(ws / "repo")
    repo.commit("v0")
    ports = {
        "gatebot": common.free_port_pair(),
        "script": common.free_port_pair(),
        "floor": common.free_port(),
        "site": common.free_port(),
        "script_site": common.free_port(),
        "api": common.free_port(),
    }
    project = common.project_config(
        name,
        repo.url,
        ports["gatebot"],
        keep_releases=50,  # no image removal inside the run: the script has no such step
        site={"listen": f"{common.LOOPBACK}:{ports['site']}", "server_name": "localhost"},
    )
    config = common.write_config(
        ws / "gatebot.toml",
        data_dir=ws / "data",
        nginx=nginx,
        projects=[project],
        listen_port=ports["api"],
    )
    server = common.Server(config, ports["api"], ws / "serve.log").start(stack)
    floor_checkout = ws / "floor"
    subprocess.run(["git", "clone", "-q", repo.url, str(floor_checkout)], check=True)
    return Bench(ws, name, repo, nginx, config, server, ports, floor_checkout)


def main(argv: list[str]) -> int:
    args = common.parse_args(__doc__, argv)
    rounds = args.rounds or (1 if args.quick else 5)
    with common.workspace("deploy", keep=args.keep) as (ws, stack):
        bench = setup(ws, stack)
        ways: dict[str, Callable[[str], Timing]] = {
            "gatebot deploy (CLI)": bench.gatebot_cli,
            "gatebot serve (push)": bench.gatebot_serve,
            "reference script": bench.script,
            "floor": bench.floor,
        }
        names = list(ways)
        print("warm-up: one deploy each (build cache, a live release to replace)", flush=True)
        for way in names:
            ways[way](bench.commit("warm"))
        results: dict[str, list[Timing]] = {way: [] for way in names}
        for index in range(rounds):
            order = names[index % len(names) :] + names[: index % len(names)]
            for way in order:
                timing = ways[way](bench.commit(f"r{index + 1}"))
                results[way].append(timing)
            print(
                f"round {index + 1}: "
                + ", ".join(f"{w} {results[w][-1].total:.2f}s" for w in names),
                flush=True,
            )
    report(rounds, results)
    return 0


def report(rounds: int, results: dict[str, list[Timing]]) -> None:
    cli, serve = results["gatebot deploy (CLI)"], results["gatebot serve (push)"]
    script, floor = results["reference script"], results["floor"]
    rows = []
    for way, timings in results.items():
        row: list[object] = [way, common.median([t.total for t in timings])]
        for stage in ("source", "build", "run", "health", "switch", "drain"):
            values = [t.stages[stage] for t in timings if stage in t.stages]
            row.append(common.median(values) if values else float("nan"))
        row.append(common.median([t.other for t in timings]))
        rows.append(row)
    common.print_table(
        f"Deploy wall time, seconds: medians of {rounds} round(s) in rotating order "
        "(drain: stop and remove the old slot; drain_seconds = 0)",
        ["way", "total", "source", "build", "run", "health", "switch", "drain", "other"],
        rows,
    )
    per_round = {
        "cli_over_script": [
            common.ratio(a.total, b.total) for a, b in zip(cli, script, strict=True)
        ],
        "serve_over_script": [
            common.ratio(a.total, b.total) for a, b in zip(serve, script, strict=True)
        ],
        "cli_minus_floor_s": [a.total - f.total for a, f in zip(cli, floor, strict=True)],
        "serve_minus_floor_s": [a.total - f.total for a, f in zip(serve, floor, strict=True)],
        "script_minus_floor_s": [a.total - f.total for a, f in zip(script, floor, strict=True)],
    }
    figures = {key: common.median(values) for key, values in per_round.items()}
    common.print_table(
        "Ratios and overheads (medians of per-round figures)",
        ["figure", "value"],
        [
            ["gatebot deploy / script", figures["cli_over_script"]],
            ["gatebot serve / script", figures["serve_over_script"]],
            ["gatebot deploy - floor, s", figures["cli_minus_floor_s"]],
            ["gatebot serve - floor, s", figures["serve_minus_floor_s"]],
            ["script - floor, s", figures["script_minus_floor_s"]],
        ],
    )
    targets = {
        "cli_ratio_at_most_1.10": figures["cli_over_script"] <= 1.10,
        "serve_ratio_at_most_1.10": figures["serve_over_script"] <= 1.10,
        "cli_overhead_under_500ms": figures["cli_minus_floor_s"] < 0.5,
        "serve_overhead_under_500ms": figures["serve_minus_floor_s"] < 0.5,
    }
    print("targets: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in targets.items()))
    common.write_result(
        "deploy",
        {
            "rounds": rounds,
            "figures": figures,
            "per_round": per_round,
            "targets": targets,
            "drain_seconds": "0 here; a real deploy adds exactly drain_seconds (5 by default)",
            "timings": {
                way: [{"total": t.total, "stages": t.stages, "other": t.other} for t in timings]
                for way, timings in results.items()
            },
        },
    )


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
