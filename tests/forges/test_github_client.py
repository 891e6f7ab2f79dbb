"""GitHubClient against the fake GitHub API: statuses, comments, permissions, App tokens,
retries and their budget, and secrets kept out of errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gatebot.errors import ConfigError
from gatebot.forges.base import (
    CommitRef,
    DeployState,
    ForgeClient,
    ForgeError,
    RepoRef,
    StatusTarget,
)
from gatebot.forges.github.client import GitHubClient
from gatebot.settings import GitHubSettings
from tests.fakes import FakeTime, private_pem, rsa_key
from tests.fakes.github import FakeGitHub
from tests.support.real import free_port

MakeServer = Callable[[web.Application], Awaitable[TestServer]]

TOKEN = "ghp_0123456789abcdefTESTTOKEN"
APP_ID = 12345
INSTALLATION = 678
SHA = "0123456789abcdef0123456789abcdef01234567"
REPO = RepoRef(forge="github", repo="acme/shop")
COMMIT = CommitRef(repo=REPO, sha=SHA)
TARGET = StatusTarget(commit=COMMIT, context="gatebot/shop")
STATUSES = f"/repos/acme/shop/statuses/{SHA}"
ACCESS_TOKENS = f"/app/installations/{INSTALLATION}/access_tokens"


@pytest.fixture
def clock() -> FakeTime:
    return FakeTime()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "app.pem"
    path.write_bytes(private_pem(rsa_key("app")))
    return path


@pytest.fixture
def fake(clock: FakeTime) -> FakeGitHub:
    github = FakeGitHub(
        tokens=[TOKEN],
        repos=["acme/shop"],
        app_id=APP_ID,
        public_key=rsa_key("app").public_key(),
        installations=[INSTALLATION],
        clock=clock,
    )
    for user, role in [("ada", "admin"), ("max", "maintain"), ("wes", "write")]:
        github.set_permission("acme/shop", user, role)
    for user, role in [("tia", "triage"), ("rae", "read"), ("nil", "none")]:
        github.set_permission("acme/shop", user, role)
    return github


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as opened:
        yield opened


@pytest.fixture
async def api_url(aiohttp_server: MakeServer, fake: FakeGitHub) -> str:
    return fake.api_url(await aiohttp_server(fake.app))


ClientFactory = Callable[..., GitHubClient]


@pytest.fixture
def make_client(
    api_url: str, session: aiohttp.ClientSession, clock: FakeTime, key_file: Path
) -> ClientFactory:
    """A client for the fake: with the token by default, as the App with ``app=True``."""

    def make(*, app: bool = False, **values: Any) -> GitHubClient:
        auth: dict[str, Any] = (
            {"app_id": APP_ID, "private_key_file": key_file} if app else {"token": TOKEN}
        )
        settings = GitHubSettings.model_validate(
            {"api_url": api_url, "retry_for_seconds": 60, **auth, **values}
        )
        return GitHubClient(settings, session, clock=clock, sleep=clock.sleep)

    return make


def authorization(fake: FakeGitHub, path: str) -> list[str]:
    return [c.headers.get("Authorization", "") for c in fake.calls_to(path)]


async def test_is_a_forge_client(make_client: ClientFactory) -> None:
    client: ForgeClient = make_client()  # mypy checks the protocol here
    await client.close()


# --- statuses, comments, permissions --------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("queued", "pending"),
        ("deploying", "pending"),
        ("live", "success"),
        ("failed", "failure"),
        ("superseded", "error"),
        ("error", "error"),
    ],
)
async def test_status_maps_each_state(
    make_client: ClientFactory, fake: FakeGitHub, state: DeployState, expected: str
) -> None:
    client = make_client()
    await client.set_status(TARGET, state, f"{state} now", "https://gatebot.test/d/1")
    [status] = fake.statuses("acme/shop", SHA)
    assert status["state"] == expected
    assert status["context"] == "gatebot/shop"
    assert status["description"] == f"{state} now"
    assert status["target_url"] == "https://gatebot.test/d/1"


async def test_requests_carry_githubs_headers(make_client: ClientFactory, fake: FakeGitHub) -> None:
    await make_client().set_status(TARGET, "live", "ok", None)
    [call] = fake.calls
    assert call.headers["Accept"] == "application/vnd.github+json"
    assert call.headers["X-GitHub-Api-Version"] == "2022-11-28"
    assert call.headers["User-Agent"] == "gatebot"
    assert call.headers["Authorization"] in (f"token {TOKEN}", f"Bearer {TOKEN}")
    assert call.json == {"state": "success", "context": "gatebot/shop", "description": "ok"}


async def test_long_description_is_truncated_to_140(
    make_client: ClientFactory, fake: FakeGitHub
) -> None:
    await make_client().set_status(TARGET, "failed", "health check: " + "x" * 300, None)
    [status] = fake.statuses("acme/shop", SHA)
    assert len(status["description"]) == 140
    assert status["description"].startswith("health check: xxx")
    assert status["description"].endswith("…")


async def test_comment_is_posted_on_the_commit(
    make_client: ClientFactory, fake: FakeGitHub
) -> None:
    await make_client().comment(COMMIT, "Rolled back to `abc1234`.")
    assert fake.comments("acme/shop", SHA) == ["Rolled back to `abc1234`."]


@pytest.mark.parametrize(
    ("user", "allowed"),
    [
        ("ada", True),
        ("max", True),  # maintain: "permission" says write, "role_name" maintain
        ("wes", True),
        ("tia", False),  # triage: "permission" says read
        ("rae", False),
        ("nil", False),
        ("stranger", False),  # 404
    ],
)
async def test_may_deploy_needs_write_or_more(
    make_client: ClientFactory, user: str, allowed: bool
) -> None:
    assert await make_client().may_deploy(REPO, user, None) is allowed


async def test_may_deploy_raises_when_github_cannot_answer(
    make_client: ClientFactory, fake: FakeGitHub
) -> None:
    fake.fail_next("/repos/acme/shop/collaborators", 401, message="Bad credentials")
    with pytest.raises(ForgeError) as caught:
        await make_client().may_deploy(REPO, "ada", None)
    assert caught.value.status == 401


async def test_enterprise_server_api_prefix(
    aiohttp_server: MakeServer, session: aiohttp.ClientSession, clock: FakeTime, key_file: Path
) -> None:
    ghes = FakeGitHub(
        repos=["acme/shop"],
        app_id=APP_ID,
        public_key=rsa_key("app").public_key(),
        installations=[INSTALLATION],
        prefix="/api/v3",
        clock=clock,
    )
    api_url = ghes.api_url(await aiohttp_server(ghes.app))
    assert api_url.endswith("/api/v3")
    settings = GitHubSettings(
        api_url=api_url, app_id=APP_ID, private_key_file=key_file, installation_id=INSTALLATION
    )
    client = GitHubClient(settings, session, clock=clock, sleep=clock.sleep)
    await client.set_status(TARGET, "live", "ok", None)
    assert [c.path for c in ghes.calls] == [ACCESS_TOKENS, STATUSES]
    assert [c.status for c in ghes.calls] == [201, 201]


async def test_malformed_repository_name_is_refused_without_a_request(
    make_client: ClientFactory, fake: FakeGitHub
) -> None:
    bad = CommitRef(repo=RepoRef(forge="github", repo="group/sub/shop"), sha=SHA)
    with pytest.raises(ForgeError, match="owner/name"):
        await make_client().comment(bad, "hi")
    assert fake.calls == []


# --- GitHub App -----------------------------------------------------------------------------


async def test_app_token_is_minted_once_and_reused(
    make_client: ClientFactory, fake: FakeGitHub, clock: FakeTime
) -> None:
    client = make_client(app=True, installation_id=INSTALLATION)
    await client.set_status(TARGET, "queued", "queued", None)
    await client.set_status(TARGET, "deploying", "building", None)
    await client.comment(COMMIT, "deploying")
    assert await client.may_deploy(REPO, "wes", 1) is True
    assert len(fake.calls_to(ACCESS_TOKENS)) == 1
    [issued] = fake.issued
    repo_calls = [c for c in fake.calls if c.path.startswith("/repos/")]
    assert [c.headers["Authorization"].split()[-1] for c in repo_calls] == [issued.token] * 4


async def test_app_jwt_claims(
    make_client: ClientFactory, fake: FakeGitHub, clock: FakeTime
) -> None:
    await make_client(app=True, installation_id=INSTALLATION).comment(COMMIT, "hi")
    [mint] = fake.calls_to(ACCESS_TOKENS)
    scheme, token = mint.headers["Authorization"].split()
    assert scheme.lower() == "bearer"
    claims = jwt.decode(
        token, rsa_key("app").public_key(), algorithms=["RS256"], options={"verify_exp": False}
    )
    now = int(clock())
    assert (claims["iat"], claims["exp"], str(claims["iss"])) == (now - 60, now + 540, str(APP_ID))


async def test_app_token_is_minted_again_near_expiry(
    make_client: ClientFactory, fake: FakeGitHub, clock: FakeTime
) -> None:
    client = make_client(app=True, installation_id=INSTALLATION)
    await client.comment(COMMIT, "one")
    clock.advance(3600 - 61)  # the token lives 3600 s; still over a minute left
    await client.comment(COMMIT, "two")
    assert len(fake.issued) == 1
    clock.advance(2)  # now within the last minute
    await client.comment(COMMIT, "three")
    assert len(fake.issued) == 2
    first, second = fake.issued
    assert first.token != second.token
    assert authorization(fake, "/repos/")[-1].endswith(second.token)
    assert fake.comments("acme/shop", SHA) == ["one", "two", "three"]


async def test_installation_id_comes_from_the_webhook_when_not_configured(
    make_client: ClientFactory, fake: FakeGitHub
) -> None:
    fake.add_installation(555, repos=["acme/shop"])
    repo = RepoRef(forge="github", repo="acme/shop", installation_id=555)
    await make_client(app=True).comment(CommitRef(repo=repo, sha=SHA), "hi")
    assert [c.path for c in fake.calls] == [
        "/app/installations/555/access_tokens",
        f"/repos/acme/shop/commits/{SHA}/comments",
    ]


async def test_no_installation_id_at_all_is_a_forge_error(
    make_client: ClientFactory, fake: FakeGitHub
) -> None:
    with pytest.raises(ForgeError, match="installation_id"):
        await make_client(app=True).comment(COMMIT, "hi")
    assert fake.calls == []


async def test_concurrent_calls_share_one_mint(
    make_client: ClientFactory, fake: FakeGitHub
) -> None:
    client = make_client(app=True, installation_id=INSTALLATION)
    await asyncio.gather(*(client.comment(COMMIT, f"c{i}") for i in range(5)))
    assert len(fake.issued) == 1
    assert len(fake.comments("acme/shop", SHA)) == 5


async def test_a_revoked_token_is_forgotten_after_401(
    make_client: ClientFactory, fake: FakeGitHub
) -> None:
    client = make_client(app=True, installation_id=INSTALLATION)
    await client.comment(COMMIT, "one")
    fake.revoke(fake.issued[0].token)
    with pytest.raises(ForgeError) as caught:
        await client.comment(COMMIT, "two")
    assert caught.value.status == 401
    await client.comment(COMMIT, "three")
    assert len(fake.issued) == 2
    assert fake.comments("acme/shop", SHA) == ["one", "three"]


async def test_close_forgets_tokens(make_client: ClientFactory, fake: FakeGitHub) -> None:
    client = make_client(app=True, installation_id=INSTALLATION)
    await client.comment(COMMIT, "one")
    await client.close()
    await client.comment(COMMIT, "two")
    assert len(fake.issued) == 2


async def test_jwt_refused_by_github_is_a_forge_error_without_secrets(
    make_client: ClientFactory, fake: FakeGitHub
) -> None:
    client = make_client(app=True, installation_id=INSTALLATION, app_id=999)
    with pytest.raises(ForgeError) as caught:
        await client.comment(COMMIT, "hi")
    message = str(caught.value)
    assert caught.value.status == 401
    assert "installation 678" in message and "app_id" in message
    [mint] = fake.calls
    assert mint.headers["Authorization"].split()[-1] not in message


# --- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({}, "no credentials"),
        ({"app_id": APP_ID}, "no credentials"),
        ({"token": TOKEN, "app_id": APP_ID}, "not both"),
        ({"app_id": APP_ID, "private_key_file": "/nonexistent/app.pem"}, "cannot read"),
    ],
)
async def test_bad_credentials_setup_is_a_config_error(
    session: aiohttp.ClientSession, values: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(ConfigError, match=complaint):
        GitHubClient(GitHubSettings.model_validate(values), session)


async def test_a_key_file_that_is_not_a_key_is_a_config_error(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    path = tmp_path / "app.pem"
    path.write_text("-----BEGIN RSA PRIVATE KEY-----\nnot a key\n-----END RSA PRIVATE KEY-----\n")
    settings = GitHubSettings(app_id=APP_ID, private_key_file=path)
    with pytest.raises(ConfigError, match="PEM") as caught:
        GitHubClient(settings, session)
    assert "not a key" not in str(caught.value)


# --- retries --------------------------------------------------------------------------------


async def test_500_is_retried_with_backoff(
    make_client: ClientFactory, fake: FakeGitHub, clock: FakeTime
) -> None:
    fake.fail_next(STATUSES, 500, times=3)
    await make_client().set_status(TARGET, "live", "ok", None)
    assert [c.status for c in fake.calls] == [500, 500, 500, 201]
    assert clock.sleeps == [0.5, 1.0, 2.0]
    assert len(fake.statuses("acme/shop", SHA)) == 1


async def test_429_waits_as_long_as_retry_after_says(
    make_client: ClientFactory, fake: FakeGitHub, clock: FakeTime
) -> None:
    fake.fail_next(STATUSES, 429, retry_after=7)
    await make_client().set_status(TARGET, "live", "ok", None)
    assert clock.sleeps == [7.0]


async def test_secondary_rate_limit_403_is_retried_until_reset(
    make_client: ClientFactory, fake: FakeGitHub, clock: FakeTime
) -> None:
    reset = int(clock()) + 20
    fake.fail_next(
        STATUSES,
        403,
        headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)},
        message="API rate limit exceeded",
    )
    await make_client().set_status(TARGET, "live", "ok", None)
    assert clock.sleeps == [20.0]


async def test_plain_403_is_not_retried(
    make_client: ClientFactory, fake: FakeGitHub, clock: FakeTime
) -> None:
    fake.fail_next(STATUSES, 403, message="Resource not accessible by integration")
    with pytest.raises(ForgeError, match="Resource not accessible") as caught:
        await make_client().set_status(TARGET, "live", "ok", None)
    assert caught.value.status == 403
    assert clock.sleeps == []


async def test_422_is_not_retried(
    make_client: ClientFactory, fake: FakeGitHub, clock: FakeTime
) -> None:
    fake.fail_next(STATUSES, 422, times=5, message="Validation Failed")
    with pytest.raises(ForgeError, match="422") as caught:
        await make_client().set_status(TARGET, "live", "ok", None)
    assert caught.value.status == 422
    assert len(fake.calls) == 1
    assert clock.sleeps == []


async def test_gives_up_when_the_budget_is_spent(
    make_client: ClientFactory, fake: FakeGitHub, clock: FakeTime
) -> None:
    fake.fail_next(STATUSES, 502, times=100)
    with pytest.raises(ForgeError, match="gave up after") as caught:
        await make_client(retry_for_seconds=10).set_status(TARGET, "live", "ok", None)
    assert caught.value.status == 502
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0, 2.5]
    assert sum(clock.sleeps) <= 10
    assert len(fake.calls) == 6


async def test_retry_after_beyond_the_budget_gives_up_at_once(
    make_client: ClientFactory, fake: FakeGitHub, clock: FakeTime
) -> None:
    fake.fail_next(STATUSES, 429, retry_after=3600)
    with pytest.raises(ForgeError) as caught:
        await make_client().set_status(TARGET, "live", "ok", None)
    assert caught.value.status == 429
    assert clock.sleeps == []


async def test_minting_and_the_call_share_one_budget(
    make_client: ClientFactory, fake: FakeGitHub, clock: FakeTime
) -> None:
    fake.fail_next(ACCESS_TOKENS, 503, times=3)
    fake.fail_next(STATUSES, 503, times=100)
    client = make_client(app=True, installation_id=INSTALLATION, retry_for_seconds=10)
    with pytest.raises(ForgeError):
        await client.set_status(TARGET, "live", "ok", None)
    assert sum(clock.sleeps) <= 10
    assert clock.sleeps[:3] == [0.5, 1.0, 2.0]


async def test_network_errors_are_retried_then_reported(
    session: aiohttp.ClientSession, clock: FakeTime
) -> None:
    settings = GitHubSettings(
        api_url=f"http://127.0.0.1:{free_port()}", token=TOKEN, retry_for_seconds=5
    )
    client = GitHubClient(settings, session, clock=clock, sleep=clock.sleep)
    with pytest.raises(ForgeError, match="gave up after") as caught:
        await client.set_status(TARGET, "live", "ok", None)
    assert caught.value.status is None
    assert clock.sleeps == [0.5, 1.0, 2.0, 1.5]
    assert TOKEN not in str(caught.value)


# --- secrets --------------------------------------------------------------------------------


async def test_a_token_echoed_by_the_server_is_redacted(
    make_client: ClientFactory, fake: FakeGitHub
) -> None:
    fake.fail_next(STATUSES, 401, message=f"Bad credentials: token {TOKEN}")
    with pytest.raises(ForgeError) as caught:
        await make_client().set_status(TARGET, "live", "ok", None)
    message = str(caught.value)
    assert TOKEN not in message
    assert "***" in message and "Bad credentials" in message


async def test_app_secrets_echoed_by_the_server_are_redacted(
    make_client: ClientFactory, fake: FakeGitHub
) -> None:
    client = make_client(app=True, installation_id=INSTALLATION)
    await client.comment(COMMIT, "warm the cache")
    token = fake.issued[0].token
    fake.fail_next(STATUSES, 500, times=100, message=f"backend refused {token}")
    with pytest.raises(ForgeError) as caught:
        await client.set_status(TARGET, "live", "ok", None)
    assert token not in str(caught.value)
    assert "backend refused ***" in str(caught.value)


async def test_commit_checks_are_the_runs_and_the_newest_status_of_each_context(
    fake: FakeGitHub, make_client: ClientFactory
) -> None:
    fake.add_check_suite("acme/shop", SHA, "some-app")  # empty: never listed
    first = fake.add_check_run("acme/shop", SHA, "test", "completed", "failure")
    fake.add_check_run("acme/shop", SHA, "test", "completed", "success")  # the re-run
    fake.add_check_run("acme/shop", SHA, "lint", "in_progress")
    fake.add_status("acme/shop", SHA, "ci/legacy", "pending")
    fake.add_status("acme/shop", SHA, "ci/legacy", "success")
    checks = await make_client().commit_checks(COMMIT)
    by_name = {(c.name, c.source): c for c in checks}
    assert by_name["test", "run"].outcome == "passed" and by_name["test", "run"].order > first
    assert by_name["lint", "run"].detail == "in_progress"
    assert by_name["ci/legacy", "status"].outcome == "passed"
    assert len(checks) == 3
    assert {c.path for c in fake.calls_to(f"/repos/acme/shop/commits/{SHA}")} == {
        f"/repos/acme/shop/commits/{SHA}/check-runs",
        f"/repos/acme/shop/commits/{SHA}/status",
    }
