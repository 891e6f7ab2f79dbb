"""The demo's small helpers, so scripts/demo stays short: free loopback ports, a self-contained
nginx.conf, one GET, a signed GitHub push, waiting for a page, removing a project's containers.

    python scripts/devtools.py free-ports            -> "BASE SITE" (BASE and BASE+1 free)
    python scripts/devtools.py nginx-conf PREFIX     -> an nginx.conf including PREFIX/gatebot.d
    python scripts/devtools.py get URL               -> prints the status and body
    python scripts/devtools.py remove-containers P   -> removes gatebot's containers of project P
    python scripts/devtools.py github-push URL REPO BRANCH SHA PUSHER
                                   -> sends a signed GitHub push delivery (secret from
                                      GATEBOT_DEMO_SECRET), prints the answer
    python scripts/devtools.py wait-for URL TEXT [SECONDS] -> waits until GET URL answers TEXT

It lives outside the gatebot package (it needs a source checkout) and uses what the tests and
the benchmarks use, from tests/support/.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.real import free_port, free_port_pair, nginx_conf  # noqa: E402
from tests.support.signing import github_signature  # noqa: E402


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
    request = urllib.request.Request(  # noqa: S310 - loopback only
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": github_signature(body, secret),
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
