"""GitLabClient against the fake GitLab API: statuses, comments, member access, retries and
their budget, and the token kept out of errors."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
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
from gatebot.forges.gitlab.client import GitLabClient, project_ref
from gatebot.settings import GitLabSettings
from tests.fakes import FakeTime
from tests.fakes.gitlab import FakeGitLab

MakeServer = Callable[[web.Application], Awaitable[TestServer]]

TOKEN = "glpat-0123456789TESTTOKEN"
SHA = "89abcdef0123456789abcdef0123456789abcdef"
PROJECT_ID = 42
BY_PATH = RepoRef(forge="gitlab", repo="group/sub/shop")
BY_ID = RepoRef(forge="gitlab", repo="group/sub/shop", project_id=PROJECT_ID)
COMMIT = CommitRef(repo=BY_PATH, sha=SHA)
TARGET = StatusTarget(commit=COMMIT, context="gatebot/shop")
STATUSES = f"/projects/group%2Fsub%2Fshop/statuses/{SHA}"


@pytest.fixture
def clock() -> FakeTime:
    return FakeTime()


@pytest.fixture
def fake() -> FakeGitLab:
    gitlab = FakeGitLab(tokens=[TOKEN])
    gitlab.add_project("group/sub/shop", PROJECT_ID)
    levels = {"guest": 10, "reporter": 20, "dev": 30, "maint": 40, "owner": 50}
    for user_id, (username, level) in enumerate(levels.items(), start=1):
        gitlab.add_member(PROJECT_ID, user_id=user_id, username=username, access_level=level)
    gitlab.add_member(PROJECT_ID, user_id=9, username="gone", access_level=40, state="blocked")
    return gitlab


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as opened:
        yield opened


@pytest.fixture
async def api_url(aiohttp_server: MakeServer, fake: FakeGitLab) -> str:
    return fake.api_url(await aiohttp_server(fake.app))


ClientFactory = Callable[..., GitLabClient]


@pytest.fixture
def make_client(api_url: str, session: aiohttp.ClientSession, clock: FakeTime) -> ClientFactory:
    def make(**values: Any) -> GitLabClient:
        settings = GitLabSettings.model_validate(
            {"api_url": api_url, "token": TOKEN, "retry_for_seconds": 60, **values}
        )
        return GitLabClient(settings, session, clock=clock, sleep=clock.sleep)

    return make


async def test_is_a_forge_client(make_client: ClientFactory) -> None:
    client: ForgeClient = make_client()  # mypy checks the protocol here
    await client.close()


# --- statuses -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("queued", "pending"),
        ("deploying", "running"),
        ("live", "success"),
        ("failed", "failed"),
        ("superseded", "canceled"),
        ("error", "failed"),
    ],
)
async def test_status_maps_each_state(
    make_client: ClientFactory, fake: FakeGitLab, state: DeployState, expected: str
) -> None:
    await make_client().set_status(TARGET, state, f"{state} now", "https://gatebot.test/d/1")
    [job] = fake.statuses(PROJECT_ID, SHA)
    assert job["status"] == expected
    assert job["name"] == "gatebot/shop"
    assert job["description"] == f"{state} now"
    assert job["target_url"] == "https://gatebot.test/d/1"


async def test_requests_carry_the_private_token(
    make_client: ClientFactory, fake: FakeGitLab
) -> None:
    await make_client().set_status(TARGET, "live", "ok", None)
    [call] = fake.calls
    assert call.headers["PRIVATE-TOKEN"] == TOKEN
    assert "Authorization" not in call.headers
    assert call.headers["User-Agent"] == "gatebot"
    assert call.path == STATUSES  # the path, URL-encoded
    assert call.json == {"state": "success", "name": "gatebot/shop", "description": "ok"}


async def test_project_id_is_used_when_known(make_client: ClientFactory, fake: FakeGitLab) -> None:
    target = StatusTarget(commit=CommitRef(repo=BY_ID, sha=SHA), context="gatebot/shop")
    await make_client().set_status(target, "live", "ok", None)
    assert [c.path for c in fake.calls] == [f"/projects/{PROJECT_ID}/statuses/{SHA}"]


def test_project_ref() -> None:
    assert project_ref(BY_ID) == "42"
    assert project_ref(BY_PATH) == "group%2Fsub%2Fshop"
    assert project_ref(RepoRef(forge="gitlab", repo="a b/c.d")) == "a%20b%2Fc.d"


async def test_long_description_is_truncated_and_long_url_dropped(
    make_client: ClientFactory, fake: FakeGitLab
) -> None:
    long_url = "https://gatebot.test/" + "d" * 300
    await make_client().set_status(TARGET, "failed", "x" * 400, long_url)
    [job] = fake.statuses(PROJECT_ID, SHA)
    assert len(job["description"]) == 255
    assert job["description"].endswith("…")
    assert job["target_url"] is None


async def test_setting_the_same_open_state_twice_is_not_an_error(
    make_client: ClientFactory, fake: FakeGitLab
) -> None:
    client = make_client()
    await client.set_status(TARGET, "deploying", "building", None)
    await client.set_status(TARGET, "deploying", "starting", None)  # GitLab answers 400
    await client.set_status(TARGET, "live", "ok", None)
    assert [c.status for c in fake.calls] == [201, 400, 201]
    assert [j["status"] for j in fake.statuses(PROJECT_ID, SHA)] == ["success"]


async def test_self_managed_gitlab_under_a_sub_path(
    aiohttp_server: MakeServer, session: aiohttp.ClientSession, clock: FakeTime
) -> None:
    hosted = FakeGitLab(tokens=[TOKEN], prefix="/gitlab/api/v4")
    hosted.add_project("group/sub/shop", PROJECT_ID)
    api_url = hosted.api_url(await aiohttp_server(hosted.app))
    client = GitLabClient(GitLabSettings(api_url=api_url, token=TOKEN), session, clock=clock)
    await client.comment(COMMIT, "hello")
    assert hosted.comments(PROJECT_ID, SHA) == ["hello"]


# --- comments and access --------------------------------------------------------------------


async def test_comment_is_a_note_on_the_commit(
    make_client: ClientFactory, fake: FakeGitLab
) -> None:
    await make_client().comment(COMMIT, "Rolled back to `abc1234`.")
    assert fake.comments(PROJECT_ID, SHA) == ["Rolled back to `abc1234`."]
    assert fake.calls[0].path == f"/projects/group%2Fsub%2Fshop/repository/commits/{SHA}/comments"


@pytest.mark.parametrize(
    ("username", "user_id", "allowed"),
    [
        ("guest", 1, False),
        ("reporter", 2, False),
        ("dev", 3, True),
        ("maint", 4, True),
        ("owner", 5, True),
        ("gone", 9, False),  # blocked
        ("stranger", 77, False),  # 404
    ],
)
async def test_may_deploy_needs_developer_or_more(
    make_client: ClientFactory, username: str, user_id: int, allowed: bool
) -> None:
    assert await make_client().may_deploy(BY_ID, username, user_id) is allowed


async def test_min_access_level_is_configurable(make_client: ClientFactory) -> None:
    client = make_client(min_access_level=40)
    assert await client.may_deploy(BY_PATH, "dev", 3) is False
    assert await client.may_deploy(BY_PATH, "maint", 4) is True


async def test_user_id_is_looked_up_when_missing(
    make_client: ClientFactory, fake: FakeGitLab
) -> None:
    client = make_client()
    assert await client.may_deploy(BY_ID, "maint", None) is True
    assert await client.may_deploy(BY_ID, "nobody", None) is False
    assert [c.path for c in fake.calls] == ["/users", "/projects/42/members/all/4", "/users"]
    assert fake.calls[0].query == {"username": "maint"}


async def test_may_deploy_raises_when_gitlab_cannot_answer(
    make_client: ClientFactory, fake: FakeGitLab
) -> None:
    fake.fail_next("/projects/42/members", 403, message="403 Forbidden")
    with pytest.raises(ForgeError) as caught:
        await make_client().may_deploy(BY_ID, "dev", 3)
    assert caught.value.status == 403


# --- failures -------------------------------------------------------------------------------


async def test_no_token_is_a_config_error(session: aiohttp.ClientSession) -> None:
    with pytest.raises(ConfigError, match="token"):
        GitLabClient(GitLabSettings(), session)


async def test_wrong_token_is_a_forge_error_without_the_token(
    make_client: ClientFactory, clock: FakeTime
) -> None:
    with pytest.raises(ForgeError) as caught:
        await make_client(token="glpat-wrong-one").set_status(TARGET, "live", "ok", None)
    assert caught.value.status == 401
    assert "glpat-wrong-one" not in str(caught.value)
    assert "[gitlab] token" in str(caught.value)
    assert clock.sleeps == []


async def test_unknown_project_is_a_forge_error(make_client: ClientFactory) -> None:
    missing = CommitRef(repo=RepoRef(forge="gitlab", repo="group/other"), sha=SHA)
    with pytest.raises(ForgeError, match="404 Project Not Found") as caught:
        await make_client().comment(missing, "hi")
    assert caught.value.status == 404


async def test_502_is_retried_with_backoff(
    make_client: ClientFactory, fake: FakeGitLab, clock: FakeTime
) -> None:
    fake.fail_next(STATUSES, 502, times=2)
    await make_client().set_status(TARGET, "live", "ok", None)
    assert [c.status for c in fake.calls] == [502, 502, 201]
    assert clock.sleeps == [0.5, 1.0]


async def test_429_honours_retry_after(
    make_client: ClientFactory, fake: FakeGitLab, clock: FakeTime
) -> None:
    fake.fail_next(STATUSES, 429, retry_after=4)
    await make_client().set_status(TARGET, "live", "ok", None)
    assert clock.sleeps == [4.0]


async def test_429_honours_ratelimit_reset(
    make_client: ClientFactory, fake: FakeGitLab, clock: FakeTime
) -> None:
    reset = int(clock()) + 12
    fake.fail_next(
        STATUSES, 429, headers={"RateLimit-Remaining": "0", "RateLimit-Reset": str(reset)}
    )
    await make_client().set_status(TARGET, "live", "ok", None)
    assert clock.sleeps == [12.0]


async def test_400_is_not_retried(
    make_client: ClientFactory, fake: FakeGitLab, clock: FakeTime
) -> None:
    with pytest.raises(ForgeError, match="400") as caught:
        await make_client().set_status(TARGET, "live", "ok", "javascript:alert(document.cookie)")
    assert caught.value.status == 400
    assert len(fake.calls) == 1
    assert clock.sleeps == []


async def test_gives_up_when_the_budget_is_spent(
    make_client: ClientFactory, fake: FakeGitLab, clock: FakeTime
) -> None:
    fake.fail_next(STATUSES, 503, times=100, message=f"proxy saw PRIVATE-TOKEN {TOKEN}")
    with pytest.raises(ForgeError, match="gave up after") as caught:
        await make_client(retry_for_seconds=4).set_status(TARGET, "live", "ok", None)
    assert caught.value.status == 503
    assert clock.sleeps == [0.5, 1.0, 2.0, 0.5]
    assert TOKEN not in str(caught.value)
    assert "***" in str(caught.value)


async def test_a_github_repository_is_refused(make_client: ClientFactory, fake: FakeGitLab) -> None:
    other = CommitRef(repo=RepoRef(forge="github", repo="acme/shop"), sha=SHA)
    with pytest.raises(ForgeError, match="github"):
        await make_client().comment(other, "hi")
    assert fake.calls == []


async def test_commit_checks_are_the_commits_statuses(
    fake: FakeGitLab, make_client: ClientFactory
) -> None:
    fake.add_pipeline_job(PROJECT_ID, SHA, "test", "success")
    fake.add_pipeline_job(PROJECT_ID, SHA, "flaky", "failed", allow_failure=True)
    job = fake.add_pipeline_job(PROJECT_ID, SHA, "lint", "running")
    checks = {c.name: c for c in await make_client().commit_checks(COMMIT)}
    assert checks["test"].outcome == "passed"
    assert checks["flaky"].outcome == "passed"
    assert checks["lint"].outcome == "pending"
    fake.update_pipeline_job(job, "failed")
    checks = {c.name: c for c in await make_client().commit_checks(COMMIT)}
    assert checks["lint"].outcome == "failed" and checks["lint"].detail == "failed"
