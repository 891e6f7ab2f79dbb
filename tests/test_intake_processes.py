"""`gatebot serve` with [server] intake_listen: its intake processes answer webhooks on their
own address, serve deploys what they committed and posts the commit statuses in order; an
intake process killed with -9 is started again while the other answers on, and none outlives
serve, stopped or killed. Real processes, Docker, nginx, git and SQLite; the GitHub API is the
local fake."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from gatebot.intake_process import Throttle
from tests.fakes.github import FakeGitHub
from tests.support.deliveries import GITHUB_SECRET, github_delivery, github_push_payload
from tests.support.deploys import eventually_live
from tests.support.real import free_port
from tests.support.settings import write_config
from tests.support.setup import Setup
from tests.test_serve import serve

TOKEN = "intake-test-token"


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - loopback
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def answering_pids(port: int, want: int, seconds: float = 30) -> set[int]:
    """The pids of the intake processes answering /healthz on `port`, once `want` have."""
    seen: set[int] = set()
    end = time.monotonic() + seconds
    while len(seen) < want:
        assert time.monotonic() < end, f"only {sorted(seen)} answered"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:  # noqa: S310
                seen.add(json.load(r)["intake"])
        except OSError:
            time.sleep(0.1)
    return seen


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def job_rows(db: Path) -> dict[int, str]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT id, state FROM jobs").fetchall())


@pytest.fixture
async def forge(aiohttp_server: Any) -> tuple[FakeGitHub, str]:
    fake = FakeGitHub(tokens=[TOKEN])
    server = await aiohttp_server(fake.app)
    return fake, fake.api_url(server)


def config(setup: Setup, api_url: str, intake_port: int) -> Path:
    repo = f"acme/{setup.name}"
    return write_config(
        setup.tmp_path / "gatebot.toml",
        setup.data_dir,
        [setup.project(forge_repo=repo)],
        nginx=setup.nginx,
        server={
            "listen": f"127.0.0.1:{free_port()}",
            "intake_listen": f"127.0.0.1:{intake_port}",
            "intake_processes": 2,
        },
        github={"webhook_secret": GITHUB_SECRET, "api_url": api_url, "token": TOKEN},
    )


async def test_intake_processes_answer_serve_deploys_and_a_killed_one_comes_back(
    setup: Setup, forge: tuple[FakeGitHub, str]
) -> None:
    fake, api_url = forge
    repo = f"acme/{setup.name}"
    fake.add_repo(repo)
    port = free_port()
    url = f"http://127.0.0.1:{port}/webhooks/github"
    with serve(config(setup, api_url, port)) as server:
        pids = await asyncio.to_thread(answering_pids, port, 2)

        # A push answered by an intake process is deployed by serve, with its statuses in order.
        sha = setup.repo.commit("v1")
        status, answer = await asyncio.to_thread(
            post, url, *github_delivery("push", github_push_payload(repo, sha))
        )
        assert status == 202, answer
        [queued] = answer["queued"]
        db = setup.data_dir / "gatebot.db"
        for _ in range(1200):
            if job_rows(db)[queued["job"]] in ("succeeded", "failed"):
                break
            await asyncio.sleep(0.1)
        if job_rows(db)[queued["job"]] != "succeeded":
            server.kill()
            pytest.fail(f"job {queued}: {job_rows(db)}; serve said:\n{server.communicate()[0]}")
        assert await eventually_live(setup, "v1") == "v1"

        async def finished() -> bool:
            states = [s["state"] for s in fake.statuses(repo, sha)]
            return bool(states) and states[-1] == "success"

        for _ in range(300):
            if await finished():
                break
            await asyncio.sleep(0.1)
        statuses = fake.statuses(repo, sha)
        assert statuses[0]["description"] == "queued", statuses
        assert [s["state"] for s in statuses][-1] == "success", statuses
        assert set(s["state"] for s in statuses[:-1]) == {"pending"}, statuses

        # One intake process killed: deliveries go on being answered, and every one answered
        # 202 is a job; serve starts another process in its place. (These commits do not
        # exist: serve's deploy of the last one fails, and v1 stays live.)
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        acked: list[int] = []
        acked_shas: list[str] = []
        for i in range(40):
            body, headers = github_delivery("push", github_push_payload(repo, f"{i + 1:040x}"))
            try:
                status, answer = await asyncio.to_thread(post, url, body, headers)
            except OSError:  # a connection the killed process had accepted
                continue
            assert status in (200, 202), answer
            acked += [j["job"] for j in answer.get("queued", [])]
            acked_shas += [j["sha"] for j in answer.get("queued", [])]

        # serve heard of every job they committed: only serve posts statuses, and each commit
        # has one (its "queued", or the newer "superseded" that replaced it before it was sent)
        async def announced() -> bool:
            return all(fake.statuses(repo, sha) for sha in acked_shas)

        for _ in range(300):
            if await announced():
                break
            await asyncio.sleep(0.1)
        assert await announced(), [s for s in acked_shas if not fake.statuses(repo, s)][:3]
        again = await asyncio.to_thread(answering_pids, port, 2)
        assert victim not in again and len(again) == 2
        rows = job_rows(db)
        assert len(acked) > 30 and all(job in rows for job in acked)
        children = again

        server.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(server.wait, 60) == 0
    for _ in range(50):
        if not any(alive(pid) for pid in children):
            break
        await asyncio.sleep(0.1)
    assert not any(alive(pid) for pid in children), "an intake process outlived serve"


async def test_no_intake_process_outlives_serve_killed_with_sigkill(
    setup: Setup, forge: tuple[FakeGitHub, str]
) -> None:
    _, api_url = forge
    port = free_port()
    with serve(config(setup, api_url, port)) as server:
        children = await asyncio.to_thread(answering_pids, port, 2)
        server.kill()
        server.wait()
    for _ in range(100):
        if not any(alive(pid) for pid in children):
            break
        await asyncio.sleep(0.1)
    assert not any(alive(pid) for pid in children), "an intake process outlived serve"


async def test_nudges_are_sent_at_most_once_per_interval_and_none_is_lost() -> None:
    """A burst of commits sends serve one signal at once and one when the interval ends (the
    commits after the first are announced then); a quiet interval sends nothing."""
    loop = asyncio.get_running_loop()
    sent: list[float] = []
    nudge = Throttle(lambda: sent.append(loop.time()), 0.05)
    start = loop.time()
    for _ in range(10):
        nudge()
    assert len(sent) == 1
    await asyncio.sleep(0.15)
    assert len(sent) == 2 and sent[1] - start >= 0.05  # the burst's trailing nudge
    await asyncio.sleep(0.1)
    assert len(sent) == 2  # nothing called meanwhile: nothing sent
    nudge()
    assert len(sent) == 3  # the next one goes at once again
