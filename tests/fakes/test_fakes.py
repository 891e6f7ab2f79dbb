"""The fakes refuse what the real APIs refuse, so a client that passes against them is right."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.fakes import FakeTime, rsa_key
from tests.fakes.github import FakeGitHub
from tests.fakes.gitlab import FakeGitLab

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[[web.Application], Awaitable[Client]]

SHA = "a" * 40
TOKEN = "ghp_static_token_for_tests"
GL_TOKEN = "glpat-for-tests"
APP_ID = 4242
INSTALLATION = 99
GH = {"User-Agent": "tests", "Authorization": f"token {TOKEN}"}
GL = {"PRIVATE-TOKEN": GL_TOKEN}


@pytest.fixture
def clock() -> FakeTime:
    return FakeTime()


@pytest.fixture
def github(clock: FakeTime) -> FakeGitHub:
    return FakeGitHub(
        tokens=[TOKEN],
        repos=["acme/shop"],
        app_id=APP_ID,
        public_key=rsa_key("app").public_key(),
        installations=[INSTALLATION],
        token_lifetime=600,
        clock=clock,
    )


@pytest.fixture
def gitlab() -> FakeGitLab:
    fake = FakeGitLab(tokens=[GL_TOKEN])
    fake.add_project("group/sub/shop", 42)
    fake.add_member("group/sub/shop", user_id=7, username="alice", access_level=30)
    return fake


def app_jwt(
    clock: FakeTime, *, key: str = "app", iat: int = -60, exp: int = 540, **claims: Any
) -> str:
    now = int(clock())
    payload = {"iat": now + iat, "exp": now + exp, "iss": str(APP_ID), **claims}
    return jwt.encode(payload, rsa_key(key), algorithm="RS256")


async def mint(client: Client, token: str, installation: int = INSTALLATION) -> Any:
    return await client.post(
        f"/app/installations/{installation}/access_tokens",
        headers={"User-Agent": "tests", "Authorization": f"Bearer {token}"},
    )


# --- GitHub ---------------------------------------------------------------------------------


async def test_github_status_is_created_and_recorded(
    aiohttp_client: MakeClient, github: FakeGitHub
) -> None:
    client = await aiohttp_client(github.app)
    body = {"state": "pending", "context": "gatebot/shop", "description": "queued"}
    response = await client.post(f"/repos/acme/shop/statuses/{SHA}", json=body, headers=GH)
    assert response.status == 201
    assert github.statuses("acme/shop", SHA) == [
        {"id": 1, "state": "pending", "description": "queued", "target_url": None, **body}
    ]
    [call] = github.calls
    assert (call.method, call.path, call.status, call.json) == (
        "POST",
        f"/repos/acme/shop/statuses/{SHA}",
        201,
        body,
    )
    assert call.headers["authorization"] == f"token {TOKEN}"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", f"/repos/acme/shop/status/{SHA}"),
        ("GET", f"/repos/acme/shop/statuses/{SHA}/extra"),
        ("PUT", f"/repos/acme/shop/statuses/{SHA}"),
        ("POST", "/repos/acme/shop/collaborators/bob/permission"),
    ],
)
async def test_github_unknown_paths_and_methods_are_404(
    aiohttp_client: MakeClient, github: FakeGitHub, method: str, path: str
) -> None:
    client = await aiohttp_client(github.app)
    response = await client.request(method, path, json={"state": "success"}, headers=GH)
    assert response.status == 404
    assert (await response.json())["message"] == "Not Found"


@pytest.mark.parametrize(
    "headers",
    [
        {"User-Agent": "tests"},
        {"User-Agent": "tests", "Authorization": "token not-a-known-token"},
        {"User-Agent": "tests", "Authorization": "token"},
    ],
)
async def test_github_refuses_missing_or_unknown_credentials(
    aiohttp_client: MakeClient, github: FakeGitHub, headers: dict[str, str]
) -> None:
    client = await aiohttp_client(github.app)
    response = await client.post(
        f"/repos/acme/shop/statuses/{SHA}", json={"state": "success"}, headers=headers
    )
    assert response.status == 401
    assert github.statuses("acme/shop", SHA) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"context": "x"}, "state"),
        ({"state": "succeeded"}, "state"),
        ({"state": "running"}, "state"),
        ({"state": "success", "description": "d" * 141}, "description"),
        ({"state": "success", "description": 5}, "description"),
        ({"state": "success", "target_url": "ftp://example.test/x"}, "target_url"),
    ],
)
async def test_github_status_fields_are_validated(
    aiohttp_client: MakeClient, github: FakeGitHub, body: dict[str, Any], field: str
) -> None:
    client = await aiohttp_client(github.app)
    response = await client.post(f"/repos/acme/shop/statuses/{SHA}", json=body, headers=GH)
    assert response.status == 422
    answer = await response.json()
    assert answer["message"] == "Validation Failed"
    assert answer["errors"][0]["field"] == field


async def test_github_description_of_140_characters_is_accepted(
    aiohttp_client: MakeClient, github: FakeGitHub
) -> None:
    client = await aiohttp_client(github.app)
    body = {"state": "success", "description": "d" * 140}
    response = await client.post(f"/repos/acme/shop/statuses/{SHA}", json=body, headers=GH)
    assert response.status == 201


async def test_github_refuses_bad_shas_bodies_headers_and_repos(
    aiohttp_client: MakeClient, github: FakeGitHub
) -> None:
    client = await aiohttp_client(github.app)
    ok = {"state": "success"}
    bad_sha = await client.post("/repos/acme/shop/statuses/main", json=ok, headers=GH)
    assert bad_sha.status == 422
    not_json = await client.post(f"/repos/acme/shop/statuses/{SHA}", data=b"{", headers=GH)
    assert not_json.status == 400
    no_agent = await client.post(
        f"/repos/acme/shop/statuses/{SHA}",
        json=ok,
        headers={"Authorization": f"token {TOKEN}", "User-Agent": ""},
    )
    assert no_agent.status == 403
    bad_version = await client.post(
        f"/repos/acme/shop/statuses/{SHA}",
        json=ok,
        headers={**GH, "X-GitHub-Api-Version": "1999-01-01"},
    )
    assert bad_version.status == 400
    unknown_repo = await client.post(f"/repos/acme/other/statuses/{SHA}", json=ok, headers=GH)
    assert unknown_repo.status == 404


async def test_github_comment_needs_a_body(aiohttp_client: MakeClient, github: FakeGitHub) -> None:
    client = await aiohttp_client(github.app)
    path = f"/repos/acme/shop/commits/{SHA}/comments"
    assert (await client.post(path, json={}, headers=GH)).status == 422
    assert (await client.post(path, json={"body": "x" * 65537}, headers=GH)).status == 422
    assert (await client.post(path, json={"body": "done"}, headers=GH)).status == 201
    assert github.comments("acme/shop", SHA) == ["done"]


async def test_github_permission_answers_role_and_legacy_permission(
    aiohttp_client: MakeClient, github: FakeGitHub
) -> None:
    github.set_permission("acme/shop", "mia", "maintain")
    client = await aiohttp_client(github.app)
    response = await client.get("/repos/acme/shop/collaborators/mia/permission", headers=GH)
    answer = await response.json()
    assert (answer["permission"], answer["role_name"]) == ("write", "maintain")
    unknown = await client.get("/repos/acme/shop/collaborators/zed/permission", headers=GH)
    assert unknown.status == 404


async def test_github_app_jwt_buys_an_installation_token(
    aiohttp_client: MakeClient, github: FakeGitHub, clock: FakeTime
) -> None:
    client = await aiohttp_client(github.app)
    response = await mint(client, app_jwt(clock))
    assert response.status == 201
    answer = await response.json()
    assert answer["expires_at"].endswith("Z")
    token = answer["token"]
    assert token in github.tokens
    headers = {"User-Agent": "tests", "Authorization": f"Bearer {token}"}
    ok = await client.post(
        f"/repos/acme/shop/statuses/{SHA}", json={"state": "success"}, headers=headers
    )
    assert ok.status == 201
    clock.advance(601)  # token_lifetime is 600
    assert token not in github.tokens
    expired = await client.post(
        f"/repos/acme/shop/statuses/{SHA}", json={"state": "success"}, headers=headers
    )
    assert expired.status == 401


async def test_github_issues_tokens_of_varying_shapes(
    aiohttp_client: MakeClient, github: FakeGitHub, clock: FakeTime
) -> None:
    client = await aiohttp_client(github.app)
    for _ in range(4):
        assert (await mint(client, app_jwt(clock))).status == 201
    tokens = [t.token for t in github.issued]
    assert len({len(t) for t in tokens}) >= 3
    assert len({t[:4] for t in tokens}) >= 2


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda clock: app_jwt(clock, key="intruder"), "decoded"),
        (lambda clock: app_jwt(clock, iat=-700, exp=-60), "exp"),
        (lambda clock: app_jwt(clock, iat=-60, exp=900), "too far"),
        (lambda clock: app_jwt(clock, iat=30, exp=500), "iat"),
        (lambda clock: app_jwt(clock, iss="1"), "iss"),
        (lambda clock: "not.a.jwt", "decoded"),
        (lambda clock: TOKEN, "decoded"),
    ],
    ids=["other key", "expired", "too long", "issued in future", "wrong app", "garbage", "token"],
)
async def test_github_refuses_bad_app_jwts(
    aiohttp_client: MakeClient,
    github: FakeGitHub,
    clock: FakeTime,
    make: Callable[[FakeTime], str],
    reason: str,
) -> None:
    client = await aiohttp_client(github.app)
    response = await mint(client, make(clock))
    assert response.status == 401
    assert reason in (await response.json())["message"]
    assert github.issued == []


async def test_github_jwt_is_not_a_repository_credential(
    aiohttp_client: MakeClient, github: FakeGitHub, clock: FakeTime
) -> None:
    client = await aiohttp_client(github.app)
    response = await client.post(
        f"/repos/acme/shop/statuses/{SHA}",
        json={"state": "success"},
        headers={"User-Agent": "tests", "Authorization": f"Bearer {app_jwt(clock)}"},
    )
    assert response.status == 401


async def test_github_unknown_installation_is_404(
    aiohttp_client: MakeClient, github: FakeGitHub, clock: FakeTime
) -> None:
    client = await aiohttp_client(github.app)
    assert (await mint(client, app_jwt(clock), installation=1)).status == 404


async def test_github_installation_token_reaches_only_its_repositories(
    aiohttp_client: MakeClient, github: FakeGitHub, clock: FakeTime
) -> None:
    github.add_installation(5, repos=["acme/other"])
    github.add_repo("acme/other")
    client = await aiohttp_client(github.app)
    token = (await (await mint(client, app_jwt(clock), installation=5)).json())["token"]
    headers = {"User-Agent": "tests", "Authorization": f"token {token}"}
    body = {"state": "success"}
    assert (
        await client.post(f"/repos/acme/other/statuses/{SHA}", json=body, headers=headers)
    ).status == 201
    assert (
        await client.post(f"/repos/acme/shop/statuses/{SHA}", json=body, headers=headers)
    ).status == 404


async def test_fail_next_answers_injected_failures_then_recovers(
    aiohttp_client: MakeClient, github: FakeGitHub
) -> None:
    github.fail_next("/repos/acme/shop/statuses", 503, times=2)
    github.fail_next("/repos/acme/shop/commits", 429, retry_after=7)
    client = await aiohttp_client(github.app)
    path = f"/repos/acme/shop/statuses/{SHA}"
    statuses = [
        (await client.post(path, json={"state": "success"}, headers=GH)).status for _ in range(3)
    ]
    assert statuses == [503, 503, 201]
    limited = await client.post(
        f"/repos/acme/shop/commits/{SHA}/comments", json={"body": "x"}, headers=GH
    )
    assert (limited.status, limited.headers["Retry-After"]) == (429, "7")
    assert [c.status for c in github.calls] == [503, 503, 201, 429]


async def test_github_fake_mounts_under_a_prefix(
    aiohttp_client: MakeClient, clock: FakeTime
) -> None:
    fake = FakeGitHub(tokens=[TOKEN], repos=["acme/shop"], prefix="/api/v3", clock=clock)
    client = await aiohttp_client(fake.app)
    body = {"state": "success"}
    assert (
        await client.post(f"/repos/acme/shop/statuses/{SHA}", json=body, headers=GH)
    ).status == 404
    response = await client.post(f"/api/v3/repos/acme/shop/statuses/{SHA}", json=body, headers=GH)
    assert response.status == 201
    assert fake.calls[-1].path == f"/repos/acme/shop/statuses/{SHA}"


# --- GitLab ---------------------------------------------------------------------------------


@pytest.mark.parametrize("project", ["42", "group%2Fsub%2Fshop", "GROUP%2Fsub%2Fshop"])
async def test_gitlab_status_by_id_or_encoded_path(
    aiohttp_client: MakeClient, gitlab: FakeGitLab, project: str
) -> None:
    client = await aiohttp_client(gitlab.app)
    response = await client.post(
        f"/api/v4/projects/{project}/statuses/{SHA}",
        json={"state": "running", "name": "gatebot/shop", "description": "deploying"},
        headers=GL,
    )
    assert response.status == 201
    [job] = gitlab.statuses(42, SHA)
    assert (job["status"], job["name"], job["description"]) == (
        "running",
        "gatebot/shop",
        "deploying",
    )
    assert gitlab.statuses("group/sub/shop", SHA) == [job]


async def test_gitlab_refuses_unknown_paths_methods_projects_and_encoding(
    aiohttp_client: MakeClient, gitlab: FakeGitLab
) -> None:
    client = await aiohttp_client(gitlab.app)
    ok = {"state": "success"}
    assert (
        await client.post(f"/api/v4/projects/42/status/{SHA}", json=ok, headers=GL)
    ).status == 404
    assert (await client.get(f"/api/v4/projects/42/statuses/{SHA}", headers=GL)).status == 404
    assert (await client.post(f"/projects/42/statuses/{SHA}", json=ok, headers=GL)).status == 404
    unencoded = await client.post(
        f"/api/v4/projects/group/sub/shop/statuses/{SHA}", json=ok, headers=GL
    )
    assert unencoded.status == 404
    unknown = await client.post(f"/api/v4/projects/43/statuses/{SHA}", json=ok, headers=GL)
    assert (unknown.status, (await unknown.json())["message"]) == (404, "404 Project Not Found")
    bad_sha = await client.post("/api/v4/projects/42/statuses/main", json=ok, headers=GL)
    assert bad_sha.status == 404


@pytest.mark.parametrize(
    "headers",
    [{}, {"PRIVATE-TOKEN": "wrong"}, {"Authorization": f"token {GL_TOKEN}"}],
)
async def test_gitlab_refuses_missing_or_unknown_tokens(
    aiohttp_client: MakeClient, gitlab: FakeGitLab, headers: dict[str, str]
) -> None:
    client = await aiohttp_client(gitlab.app)
    response = await client.post(
        f"/api/v4/projects/42/statuses/{SHA}", json={"state": "success"}, headers=headers
    )
    assert (response.status, await response.json()) == (401, {"message": "401 Unauthorized"})


async def test_gitlab_accepts_a_bearer_token(
    aiohttp_client: MakeClient, gitlab: FakeGitLab
) -> None:
    client = await aiohttp_client(gitlab.app)
    response = await client.post(
        f"/api/v4/projects/42/statuses/{SHA}",
        json={"state": "success"},
        headers={"Authorization": f"Bearer {GL_TOKEN}"},
    )
    assert response.status == 201


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, {"error": "state is missing"}),
        ({"state": "error"}, {"error": "state does not have a valid value"}),
        ({"state": "success", "description": "d" * 256}, "description"),
        ({"state": "success", "target_url": "https://x.test/" + "u" * 250}, "target_url"),
        ({"state": "success", "target_url": "javascript:alert(1)"}, "target_url"),
    ],
)
async def test_gitlab_status_fields_are_validated(
    aiohttp_client: MakeClient, gitlab: FakeGitLab, body: dict[str, Any], expected: Any
) -> None:
    client = await aiohttp_client(gitlab.app)
    response = await client.post(f"/api/v4/projects/42/statuses/{SHA}", json=body, headers=GL)
    assert response.status == 400
    answer = await response.json()
    if isinstance(expected, dict):
        assert answer == expected
    else:
        assert expected in answer["message"]
    assert gitlab.statuses(42, SHA) == []


async def test_gitlab_status_transitions_like_gitlab(
    aiohttp_client: MakeClient, gitlab: FakeGitLab
) -> None:
    client = await aiohttp_client(gitlab.app)
    path = f"/api/v4/projects/42/statuses/{SHA}"

    async def post(state: str) -> int:
        response = await client.post(path, json={"state": state, "name": "ci"}, headers=GL)
        return response.status

    assert await post("pending") == 201
    assert await post("pending") == 400  # Cannot transition status via :enqueue from :pending
    assert await post("running") == 201
    assert await post("running") == 400
    assert await post("pending") == 400
    assert await post("success") == 201
    assert await post("running") == 201  # a finished job is followed by a new one
    assert [j["status"] for j in gitlab.statuses(42, SHA)] == ["success", "running"]
    message = gitlab.calls[1]
    assert message.status == 400


async def test_gitlab_comment_needs_a_note(aiohttp_client: MakeClient, gitlab: FakeGitLab) -> None:
    client = await aiohttp_client(gitlab.app)
    path = f"/api/v4/projects/42/repository/commits/{SHA}/comments"
    assert (await client.post(path, json={"body": "x"}, headers=GL)).status == 400
    assert (await client.post(path, json={"note": "rolled back"}, headers=GL)).status == 201
    assert gitlab.comments(42, SHA) == ["rolled back"]


async def test_gitlab_members_and_users(aiohttp_client: MakeClient, gitlab: FakeGitLab) -> None:
    client = await aiohttp_client(gitlab.app)
    member = await client.get("/api/v4/projects/42/members/all/7", headers=GL)
    assert (await member.json())["access_level"] == 30
    stranger = await client.get("/api/v4/projects/42/members/all/8", headers=GL)
    assert stranger.status == 404
    users = await client.get("/api/v4/users", params={"username": "alice"}, headers=GL)
    assert [u["id"] for u in await users.json()] == [7]
    unauthenticated = await client.get("/api/v4/projects/42/members/all/7")
    assert unauthenticated.status == 401


async def test_gitlab_fake_mounts_under_a_sub_path(aiohttp_client: MakeClient) -> None:
    fake = FakeGitLab(tokens=[GL_TOKEN], prefix="/gitlab/api/v4")
    fake.add_project("shop", 1)
    fake.fail_next("/projects/1/statuses", 502)
    client = await aiohttp_client(fake.app)
    path = f"/gitlab/api/v4/projects/1/statuses/{SHA}"
    assert (await client.post(path, json={"state": "success"}, headers=GL)).status == 502
    assert (await client.post(path, json={"state": "success"}, headers=GL)).status == 201
    assert [c.path for c in fake.calls] == [f"/projects/1/statuses/{SHA}"] * 2


# --- checks ---------------------------------------------------------------------------------


async def test_github_check_runs_list_runs_not_empty_suites_and_the_newest_by_default(
    aiohttp_client: MakeClient, github: FakeGitHub
) -> None:
    client = await aiohttp_client(github.app)
    github.add_check_suite("acme/shop", SHA, "other-app")
    github.add_check_run("acme/shop", SHA, "test", "completed", "failure")
    rerun = github.add_check_run("acme/shop", SHA, "test", "in_progress")
    answer = await client.get(f"/repos/acme/shop/commits/{SHA}/check-runs", headers=GH)
    data = await answer.json()
    assert answer.status == 200 and data["total_count"] == 1
    assert [(r["id"], r["status"], r["conclusion"]) for r in data["check_runs"]] == [
        (rerun, "in_progress", None)
    ]
    every = await client.get(
        f"/repos/acme/shop/commits/{SHA}/check-runs", params={"filter": "all"}, headers=GH
    )
    assert (await every.json())["total_count"] == 2
    too_many = await client.get(
        f"/repos/acme/shop/commits/{SHA}/check-runs", params={"per_page": "101"}, headers=GH
    )
    assert too_many.status == 422
    unknown = await client.get(f"/repos/acme/other/commits/{SHA}/check-runs", headers=GH)
    assert unknown.status == 404
    anonymous = await client.get(
        f"/repos/acme/shop/commits/{SHA}/check-runs", headers={"User-Agent": "t"}
    )
    assert anonymous.status == 401


def test_github_check_runs_take_only_documented_states(github: FakeGitHub) -> None:
    with pytest.raises(ValueError):
        github.add_check_run("acme/shop", SHA, "t", "done")
    with pytest.raises(ValueError):
        github.add_check_run("acme/shop", SHA, "t", "completed")  # a conclusion is required
    with pytest.raises(ValueError):
        github.add_check_run("acme/shop", SHA, "t", "queued", "success")
    with pytest.raises(ValueError):
        github.add_check_run("acme/shop", SHA, "t", "completed", "passed")


async def test_github_combined_status_has_the_newest_of_each_context(
    aiohttp_client: MakeClient, github: FakeGitHub
) -> None:
    client = await aiohttp_client(github.app)
    github.add_status("acme/shop", SHA, "ci", "pending")
    github.add_status("acme/shop", SHA, "ci", "success")
    github.add_status("acme/shop", SHA, "lint", "failure")
    answer = await client.get(f"/repos/acme/shop/commits/{SHA}/status", headers=GH)
    data = await answer.json()
    assert data["state"] == "failure" and data["total_count"] == 2
    assert {s["context"]: s["state"] for s in data["statuses"]} == {
        "ci": "success",
        "lint": "failure",
    }


async def test_gitlab_commit_statuses_list_pipeline_jobs(
    aiohttp_client: MakeClient, gitlab: FakeGitLab
) -> None:
    client = await aiohttp_client(gitlab.app)
    job = gitlab.add_pipeline_job(42, SHA, "test", "running", allow_failure=True)
    answer = await client.get(f"/api/v4/projects/42/repository/commits/{SHA}/statuses", headers=GL)
    [status] = await answer.json()
    assert (status["id"], status["name"], status["status"], status["allow_failure"]) == (
        job,
        "test",
        "running",
        True,
    )
    with pytest.raises(ValueError):
        gitlab.add_pipeline_job(42, SHA, "test", "passed")
    anonymous = await client.get(f"/api/v4/projects/42/repository/commits/{SHA}/statuses")
    assert anonymous.status == 401
