"""Small helpers for scripts/demo, scripts/bench and the tests, so shell scripts stay short:
free loopback ports, a self-contained nginx.conf, one GET, and removing a project's containers.

    python -m gatebot.devtools free-ports            -> "BASE SITE" (BASE and BASE+1 free)
    python -m gatebot.devtools nginx-conf PREFIX     -> an nginx.conf including PREFIX/gatebot.d
    python -m gatebot.devtools get URL               -> prints the status and body
    python -m gatebot.devtools remove-containers P   -> removes gatebot's containers of project P
    python -m gatebot.devtools github-push URL REPO BRANCH SHA PUSHER
                                   -> sends a signed GitHub push delivery (secret from
                                      GATEBOT_DEMO_SECRET), prints the answer
    python -m gatebot.devtools wait-for URL TEXT [SECONDS] -> waits until GET URL answers TEXT

`SampleRepo` and `stop_pid` serve the tests and the benchmarks alike; they need a source
checkout (the sample app lives in scripts/sample-app).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SAMPLE_APP = Path(__file__).resolve().parent.parent / "scripts" / "sample-app"
BUSYBOX = Path("/bin/busybox")


class SampleRepo:
    """The sample app (scripts/sample-app, with a static busybox beside it) in a bare
    repository that gatebot clones over file://, and a work tree that commits and pushes."""

    def __init__(self, root: Path, *, who: str = "gatebot-dev") -> None:
        self.bare = root / "remote.git"
        self.work = root / "work"
        self.who = who
        shutil.copytree(SAMPLE_APP, self.work)
        shutil.copy2(BUSYBOX, self.work / "busybox")
        self.git("init", "-q", "--bare", "-b", "main", str(self.bare), cwd=root)
        self.git("init", "-q", "-b", "main")
        self.git("remote", "add", "origin", str(self.bare))

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    def git(self, *args: str, cwd: Path | None = None) -> str:
        identity = ["-c", f"user.name={self.who}", "-c", f"user.email={self.who}@example.com"]
        result = subprocess.run(  # noqa: S603 - an argument list, no shell
            ["git", *identity, *args],  # noqa: S607
            cwd=cwd or self.work,
            check=True,
            capture_output=True,
            text=True,
        )
        return result.stdout.strip()

    def commit(
        self,
        version: str,
        *,
        healthy: bool = True,
        start_script: str | None = None,
        push: bool = True,
    ) -> str:
        """Commit the app answering `version` at /version (and /health unless not `healthy`,
        started by `start_script` if given); push it; return the SHA."""
        www = self.work / "www"
        (www / "version").write_text(version + "\n")
        health = www / "health"
        if healthy:
            health.write_text("ok\n")
        elif health.exists():
            health.unlink()
        if start_script is not None:
            (self.work / "start.sh").write_text(start_script)
        else:
            shutil.copy2(SAMPLE_APP / "start.sh", self.work / "start.sh")
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", f"sample app {version}")
        if push:
            self.git("push", "-q", "origin", "main")
        return self.git("rev-parse", "HEAD")


@dataclass
class Nginx:
    """A real nginx with its own prefix (config, pid, logs, temp files), including PREFIX/gatebot.d
    as gatebot's conf_dir; for the tests and the benchmarks."""

    prefix: Path
    workers: int = 1
    conf_dir: Path = field(init=False)
    conf: Path = field(init=False)

    def __post_init__(self) -> None:
        self.conf_dir = self.prefix / "gatebot.d"
        self.conf = self.prefix / "nginx.conf"
        for sub in ("logs", "gatebot.d", "tmp"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(nginx_conf(self.prefix, workers=self.workers))

    @property
    def base_cmd(self) -> list[str]:
        return ["nginx", "-p", str(self.prefix), "-c", str(self.conf)]

    @property
    def test_cmd(self) -> list[str]:
        return [*self.base_cmd, "-t", "-q"]

    @property
    def reload_cmd(self) -> list[str]:
        return [*self.base_cmd, "-s", "reload"]

    def start(self) -> Nginx:
        subprocess.run(self.base_cmd, check=True, capture_output=True)  # noqa: S603
        return self

    def reload(self) -> None:
        subprocess.run(self.reload_cmd, check=True, capture_output=True)  # noqa: S603

    def master_pid(self) -> int:
        return int((self.prefix / "nginx.pid").read_text().strip())

    def worker_pids(self) -> set[int]:
        """The master's child processes (its workers), from /proc."""
        master = self.master_pid()
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        return {int(pid) for pid in children}

    def stop(self) -> None:
        """Stop by the master's PID (a signal through `nginx -s` would need a valid config)."""
        try:
            pid = int((self.prefix / "nginx.pid").read_text().strip())
        except (OSError, ValueError):
            return
        stop_pid(pid, signal.SIGQUIT, 10.0)


def config_toml(tables: dict[str, dict[str, Any]], projects: list[dict[str, Any]]) -> str:
    """A gatebot configuration file: top-level tables, then one [[projects]] table each (a
    nested dict becomes a [projects.KEY] table). Values: bool, int, float, str, list; a None
    value leaves its key out (TOML has no null)."""
    lines: list[str] = []
    for table, values in tables.items():
        lines.append(f"[{table}]")
        lines += [f"{k} = {_toml(v)}" for k, v in values.items()]
    for project in projects:
        project = {k: v for k, v in project.items() if v is not None}
        lines.append("[[projects]]")
        nested = {k: v for k, v in project.items() if isinstance(v, dict)}
        lines += [f"{k} = {_toml(v)}" for k, v in project.items() if k not in nested]
        for key, values in nested.items():
            lines.append(f"[projects.{key}]")
            lines += [f"{k} = {_toml(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def stop_pid(pid: int, sig: signal.Signals = signal.SIGTERM, seconds: float = 10.0) -> None:
    """Send `sig`, wait up to `seconds` for the process to go, then SIGKILL it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port_pair(avoid: set[int] | None = None) -> int:
    """A free port whose successor is free too: a project's blue and green slots."""
    avoid = avoid if avoid is not None else set()
    for _ in range(500):
        base = free_port()
        if base + 1 < 65535 and not {base, base + 1} & avoid and port_is_free(base + 1):
            avoid.update({base, base + 1})
            return base
    raise RuntimeError("no two consecutive free ports on 127.0.0.1")


def nginx_conf(prefix: Path, *, user: str = "root", workers: int = 1) -> str:
    """An nginx.conf whose every path is under `prefix` and that includes PREFIX/gatebot.d."""
    temp = prefix / "tmp"
    return f"""user {user};
worker_processes {workers};
daemon on;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {prefix}/gatebot.d/*.conf;
}}
"""


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback only
        return f"{response.status} {response.read().decode('utf-8', 'replace').strip()}"


def github_push_payload(repo: str, branch: str, sha: str, pusher: str) -> dict[str, Any]:
    """A push event in GitHub's documented shape, trimmed to what a receiver reads."""
    owner, _, name = repo.partition("/")
    return {
        "ref": f"refs/heads/{branch}",
        "before": "0" * 40,
        "after": sha,
        "created": False,
        "deleted": False,
        "forced": False,
        "repository": {"name": name, "full_name": repo, "owner": {"login": owner}},
        "pusher": {"name": pusher},
        "sender": {"login": pusher},
        "head_commit": {"id": sha},
        "commits": [{"id": sha}],
    }


def send_github_push(url: str, secret: str, payload: dict[str, Any]) -> tuple[int, str]:
    """POST a push delivery signed the way GitHub signs it (X-Hub-Signature-256)."""
    body = json.dumps(payload).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    request = urllib.request.Request(  # noqa: S310 - loopback only
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": signature,
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def wait_for(url: str, text: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310
                if response.read().decode("utf-8", "replace").strip() == text:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def remove_containers(project: str) -> int:
    import docker

    client = docker.DockerClient(
        base_url=os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    )
    containers = client.containers.list(
        all=True, filters={"label": [f"gatebot.project={project}", "gatebot.managed=true"]}
    )
    for container in containers:
        container.remove(force=True)
    return len(containers)


def main(argv: list[str]) -> int:
    match argv:
        case ["free-ports"]:
            print(free_port_pair(), free_port())
        case ["nginx-conf", prefix]:
            print(nginx_conf(Path(prefix)), end="")
        case ["get", url]:
            print(f"    GET {url} -> {get(url)}")
        case ["remove-containers", project]:
            remove_containers(project)
        case ["github-push", url, repo, branch, sha, pusher]:
            secret = os.environ.get("GATEBOT_DEMO_SECRET", "")
            status, answer = send_github_push(
                url, secret, github_push_payload(repo, branch, sha, pusher)
            )
            print(f"    POST {url} (push {sha[:12]}) -> {status} {answer}")
            return 0 if status < 300 else 1
        case ["wait-for", url, text, *rest]:
            if not wait_for(url, text, float(rest[0]) if rest else 120.0):
                print(f"gave up waiting for {url} to answer {text!r}", file=sys.stderr)
                return 1
        case _:
            print(__doc__, file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
