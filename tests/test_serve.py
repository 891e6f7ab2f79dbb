"""`gatebot serve` as a real process: it serves, and on SIGTERM it lets the running deploy
finish, leaves queued jobs queued, and exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp

from tests.support.deliveries import GITHUB_SECRET, github_delivery, github_push_payload
from tests.support.real import free_port
from tests.support.settings import write_config
from tests.support.setup import Setup


def job_states(db: str) -> list[tuple[int, str]]:
    with sqlite3.connect(db) as conn:
        return [
            (int(r[0]), str(r[1])) for r in conn.execute("SELECT id, state FROM jobs ORDER BY id")
        ]


async def wait_for(predicate, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.1)


@contextmanager
def serve(config: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    """`gatebot serve` as a process, its log lines on stdout; killed at the block's end if
    the test did not stop it."""
    server = subprocess.Popen(
        [sys.executable, "-m", "gatebot", "-c", str(config), "serve"],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield server
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def answers(port: int) -> bool:
    """Whether the server on `port` answers /healthz."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:  # noqa: S310
            return bool(r.status == 200)
    except OSError:
        return False


async def test_sigterm_lets_the_running_deploy_finish_and_keeps_queued_jobs(setup: Setup) -> None:
    port = free_port()
    project = setup.project(
        forge_repo=f"acme/{setup.name}", health={"start_period": 2.0, "interval": 0.1}
    )
    path = write_config(
        setup.tmp_path / "gatebot.toml",
        setup.data_dir,
        [project],
        nginx=setup.nginx,
        server={"listen": f"127.0.0.1:{port}"},
        github={"webhook_secret": "env:TEST_SECRET"},
    )
    base = f"http://127.0.0.1:{port}"
    db = str(setup.data_dir / "gatebot.db")

    with serve(path, {"TEST_SECRET": GITHUB_SECRET}) as server:
        await wait_for(lambda: answers(port))
        async with aiohttp.ClientSession() as session:
            for version in ("v1", "v2"):
                sha = setup.repo.commit(version)
                body, headers = github_delivery(
                    "push", github_push_payload(f"acme/{setup.name}", sha)
                )
                async with session.post(f"{base}/webhooks/github", data=body, headers=headers) as r:
                    assert r.status == 202
                if version == "v1":
                    await wait_for(lambda: (1, "running") in job_states(db))
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=120)
    assert server.returncode == 0, output
    assert job_states(db) == [(1, "succeeded"), (2, "queued")]
    assert GITHUB_SECRET not in output


async def test_a_second_sigterm_cuts_the_running_deploy_off_says_so_and_exits_143(
    setup: Setup,
) -> None:
    port = free_port()
    # No webhook secret: serve polls the branch at start-up and deploys its head, whose
    # health check never passes (for a minute): a deploy that is running when the signals come.
    project = setup.project(health={"retries": 600, "interval": 0.1})
    path = write_config(
        setup.tmp_path / "gatebot.toml",
        setup.data_dir,
        [project],
        nginx=setup.nginx,
        server={"listen": f"127.0.0.1:{port}"},
    )
    setup.repo.commit("v1", healthy=False)
    db = str(setup.data_dir / "gatebot.db")
    with serve(path) as server:
        await wait_for(lambda: answers(port))
        await wait_for(lambda: (1, "running") in job_states(db))
        server.send_signal(signal.SIGTERM)
        await wait_for(lambda: not answers(port))  # the first one is stopping the server
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=60)
    assert server.returncode == 143, output
    assert "SIGTERM: stopping; running deploys get up to 600s to finish" in output
    assert (
        "SIGTERM again: stopping now; 1 running job(s) cut off (the next start repairs their "
        "deployments and queues them again); exit code 143"
    ) in output
    assert "Traceback" not in output
    assert job_states(db) == [(1, "running")]  # for the next start to repair and requeue
