"""`gatebot deploy` of a gated project: refused unless the commit's checks passed, or with
--skip-gate (audited); in-process, against a fake GitHub API and real Docker, nginx and git."""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gatebot.cli import Console, build_parser, run_command
from gatebot.errors import GatebotError
from gatebot.settings import Settings, parse_settings
from gatebot.wiring import open_engine
from tests.fakes.github import FakeGitHub
from tests.support.deploys import eventually_live
from tests.support.setup import Setup

TOKEN = "cli-gate-token"


async def gated(
    setup: Setup, aiohttp_server: Callable[[web.Application], Awaitable[TestServer]]
) -> tuple[Settings, FakeGitHub, str]:
    fake = FakeGitHub(tokens=[TOKEN])
    server = await aiohttp_server(fake.app)
    repo = f"acme/{setup.name}"
    fake.add_repo(repo)
    raw: dict[str, Any] = setup.settings().model_dump(mode="json", exclude_none=True)
    raw["projects"][0].update(forge_repo=repo, gate={"checks": ["test"]})
    raw["github"] = {"api_url": fake.api_url(server), "token": TOKEN, "retry_for_seconds": 5}
    return parse_settings(raw, source=setup.data_dir / "gatebot.toml"), fake, repo


async def cli(settings: Settings, *args: str) -> str:
    out = io.StringIO()
    await run_command(settings, build_parser().parse_args(list(args)), Console(out=out))
    return out.getvalue()


async def test_the_cli_refuses_a_commit_whose_checks_have_not_passed(
    setup: Setup, aiohttp_server: Any
) -> None:
    settings, fake, repo = await gated(setup, aiohttp_server)
    sha = setup.repo.commit("v1")
    run = fake.add_check_run(repo, sha, "test", "completed", "failure")
    with pytest.raises(GatebotError, match=r"not deploying .*checks failed: test \(failure\)"):
        await cli(settings, "deploy", setup.name)  # the branch head, by git ls-remote
    fake.update_check_run(run, "in_progress")
    with pytest.raises(GatebotError, match="waiting for checks: test.*--skip-gate"):
        await cli(settings, "deploy", setup.name, "--sha", sha)
    fake.update_check_run(run, "completed", "success")
    assert "live on" in await cli(settings, "deploy", setup.name)
    assert await eventually_live(setup, "v1") == "v1"


async def test_skip_gate_deploys_without_asking_and_is_audited(
    setup: Setup, aiohttp_server: Any
) -> None:
    settings, fake, repo = await gated(setup, aiohttp_server)
    sha = setup.repo.commit("v1")
    fake.add_check_run(repo, sha, "test", "in_progress")
    assert "live on" in await cli(settings, "deploy", setup.name, "--skip-gate")
    assert await eventually_live(setup, "v1") == "v1"
    assert fake.calls_to(f"/repos/{repo}/commits") == []
    async with open_engine(settings) as engine:
        [entry] = await engine.store.audit.recent()
    assert (entry.action, entry.project, entry.detail) == (
        "deploy",
        setup.name,
        "head of main, gate skipped",
    )
