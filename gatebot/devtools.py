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
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any


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
