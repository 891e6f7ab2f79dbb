"""Shared by gatebot's benchmarks: a temporary workspace with its own nginx, the sample app's
git repository, `gatebot serve` and the CLI as subprocesses, medians and percentiles, the
printed table and the JSON file each benchmark writes. All traffic stays on 127.0.0.1."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # what the tests and the demo share: tests/support/

from tests.support import real, settings, signing  # noqa: E402

RESULTS = Path(os.environ.get("GATEBOT_BENCH_RESULTS") or ROOT / "scripts" / "bench" / "results")
# The gatebot under test; another command (a wrapper for an experiment) may stand in for it.
GATEBOT = os.environ.get("GATEBOT_BENCH_GATEBOT") or str(Path(sys.executable).parent / "gatebot")
SECRET = "bench-webhook-secret-0123456789"
FORGE_REPO = "acme/bench"
LOOPBACK = "127.0.0.1"


# --- command line ---------------------------------------------------------------------------


def parse_args(doc: str | None, argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--rounds", type=int, help="repeated rounds (default per benchmark)")
    parser.add_argument("--keep", action="store_true", help="keep the workspace for a look")
    return parser.parse_args(argv)


# --- statistics and output -------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def fmt(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        size = abs(value)
        return f"{value:,.0f}" if size >= 100 else f"{value:.1f}" if size >= 10 else f"{value:.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print(
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w)
            for i, (h, w) in enumerate(zip(header, widths, strict=True))
        )
    )
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )


def machine() -> dict[str, Any]:
    def version(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return "missing"
        return (
            (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else ""
        )

    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nginx": version(["nginx", "-v"]),
        "docker": version(["docker", "version", "--format", "{{.Server.Version}}"]),
        "wrk": version(["wrk", "--version"]),
        "webhook": version(["webhook", "-version"]),
    }


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    document = {
        "benchmark": name,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "machine": machine(),
        **data,
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"\nwrote {path}")
    return path


# --- the workspace ---------------------------------------------------------------------------


@contextlib.contextmanager
def workspace(name: str, *, keep: bool = False) -> Iterator[tuple[Path, contextlib.ExitStack]]:
    """A temp folder and an exit stack whose callbacks run (newest first) when it closes."""
    root = Path(tempfile.mkdtemp(prefix=f"gatebot-bench-{name}."))
    with contextlib.ExitStack() as stack:
        if keep:
            print(f"workspace: {root} (kept)")
        else:
            stack.callback(shutil.rmtree, root, True)
        yield root, stack


def free_port() -> int:
    """A free loopback port not handed out before in this run (nor a slot of a pair)."""
    for _ in range(500):
        port = real.free_port()
        if port not in _used_ports:
            _used_ports.add(port)
            return port
    raise RuntimeError("no free port on 127.0.0.1")


def free_port_pair() -> int:
    """A base port whose successor is free too (blue and green), clear of every other port."""
    return real.free_port_pair(_used_ports)


_used_ports: set[int] = set()


Nginx = real.Nginx
stop_pid = real.stop_pid
SampleRepo = real.SampleRepo


# --- gatebot's configuration, server and CLI -------------------------------------------------


def project_config(name: str, repo_url: str, base_port: int, **overrides: Any) -> dict[str, Any]:
    """The tests' project (tests/support/settings.py) on GitHub as FORGE_REPO, polling health
    every 50 ms, with no drain and no watch window (measured on its own, in switch.py)."""
    health = {"interval": 0.05, "retries": 200, **overrides.pop("health", {})}
    return settings.project_config(
        name,
        repo_url,
        base_port,
        forge="github",
        forge_repo=FORGE_REPO,
        drain_seconds=0.0,
        watch_seconds=0.0,
        stop_timeout=5,
        health=health,
        **overrides,
    )


def write_config(
    path: Path,
    *,
    data_dir: Path,
    nginx: Nginx,
    projects: list[dict[str, Any]],
    listen_port: int | None = None,
    queue: dict[str, Any] | None = None,
    server: dict[str, Any] | None = None,
) -> Path:
    """A gatebot TOML file: server, github secret, nginx, queue and the projects."""
    listen = f"{LOOPBACK}:{listen_port}" if listen_port is not None else None
    return settings.write_config(
        path,
        data_dir,
        projects,
        nginx=nginx,
        server={"listen": listen, **(server or {})},
        github={"webhook_secret": SECRET},
        queue=queue or {},
    )


def gatebot_cli(config: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [GATEBOT, "-c", str(config), *args], capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise RuntimeError(f"gatebot {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result


@dataclass
class Server:
    """`gatebot serve` as a real subprocess, its output in a log file."""

    config: Path
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, stack: contextlib.ExitStack | None = None, timeout: float = 60) -> Server:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [GATEBOT, "-c", str(self.config), "serve"], stdout=out, stderr=subprocess.STDOUT
            )
        if stack is not None:
            stack.callback(self.stop)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gatebot serve exited; its log:\n{self.log.read_text()}")
            if http_get(self.url + "/healthz")[0] == 200:
                return self
            time.sleep(0.05)
        raise RuntimeError(f"gatebot serve did not answer within {timeout}s")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> int | None:
        """SIGTERM, then wait (the server finishes running work); its exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def proc_status(pid: int, key: str) -> int:
    """A kB figure from /proc/<pid>/status (VmRSS, VmHWM ...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def import_profile(modules: Sequence[str], top: int = 8) -> tuple[float, list[tuple[str, float]]]:
    """`python -X importtime` of `modules`: the total in ms, and the largest imports made
    directly by gatebot's modules (cumulative ms), for where a CLI command's start-up goes."""
    code = "import " + ", ".join(modules)
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True
    )
    entries: list[tuple[str, float, str]] = []  # (name, cumulative ms, imported by)
    stack: list[str] = []
    for line in reversed(result.stderr.splitlines()):  # -X importtime lists children first
        if not line.startswith("import time:") or "|" not in line or "cumulative" in line:
            continue
        _, cumulative, name = line.split("|")
        depth = (len(name) - len(name.lstrip())) // 2
        name = name.strip()
        del stack[depth:]
        stack.append(name)
        parent = stack[-2] if len(stack) > 1 else ""
        entries.append((name, int(cumulative) / 1000, parent))
    total = sum(ms for name, ms, parent in entries if not parent)
    mine = [
        (f"{name} (by {parent})", ms)
        for name, ms, parent in entries
        if parent.startswith("gatebot") and not name.startswith("gatebot")
    ]
    return total, sorted(mine, key=lambda e: -e[1])[:top]


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and its reaped children (utime, stime, cutime, cstime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def http_get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8", "replace")
    except OSError:
        return 0, ""


def github_push(sha: str) -> tuple[bytes, str]:
    """A push delivery's body for FORGE_REPO's main branch (GitHub's documented shape, from
    tests/fixtures/github_push.json, 2.7 kB) and its X-Hub-Signature-256."""
    payload: dict[str, Any] = json.loads(
        (ROOT / "tests" / "fixtures" / "github_push.json").read_text()
    )
    owner, name = FORGE_REPO.split("/")
    payload["repository"].update(full_name=FORGE_REPO, name=name)
    payload["repository"]["owner"]["login"] = owner
    payload.update(ref="refs/heads/main", after=sha)
    payload["head_commit"]["id"] = sha
    body = json.dumps(payload).encode()
    return body, signing.github_signature(body, SECRET)


# --- Docker -----------------------------------------------------------------------------------


def docker_env() -> dict[str, str]:
    return {**os.environ, "DOCKER_BUILDKIT": "0"}


def remove_project(project: str) -> None:
    """Remove a benchmark project's containers and images (gatebot's labels, or by name)."""
    import docker

    client = docker.DockerClient(base_url=os.environ.get("DOCKER_HOST") or None)
    try:
        for container in client.containers.list(
            all=True, filters={"label": f"gatebot.project={project}"}
        ) + client.containers.list(all=True, filters={"name": f"bench-{project}-"}):
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)
        images = client.images.list(filters={"label": f"gatebot.image.project={project}"})
        images += client.images.list(name=f"bench/{project}")
        for image in images:
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(image.id, force=True)
    finally:
        client.close()


def wait_http(url: str, *, interval: float, timeout: float) -> float:
    """Poll GET `url` until a 2xx answer; the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        status, _ = http_get(url, timeout=1)
        if 200 <= status < 300:
            return time.monotonic() - started
        time.sleep(interval)
    raise RuntimeError(f"{url} did not answer 2xx within {timeout}s")
