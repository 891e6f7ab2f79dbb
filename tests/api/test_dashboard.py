"""The dashboard over a real server (app factory, SQLite, Docker, nginx, git): sign-in and
sessions, the buttons' CSRF and Origin checks, the same answers as the API, public pages."""

from __future__ import annotations

import re
from typing import Any

from aiohttp.test_utils import TestClient

from gatebot.api.keys import ENGINE
from gatebot.api.session import COOKIE
from tests.support.server import ClientFactory
from tests.support.setup import Setup

Client = TestClient[Any, Any]


def here(client: Client) -> dict[str, str]:
    return {"Origin": str(client.make_url("")).rstrip("/")}


async def sign_in(client: Client, scope: str, name: str | None = None) -> str:
    """Sign in with a fresh token of `scope`; the session cookie stays in the client's jar.
    Returns the session's CSRF token (read from the project page's forms or the sign-out)."""
    _, secret = await client.app[ENGINE].store.tokens.create(name or scope, scope)
    response = await client.post(
        "/sign-in", data={"token": secret, "next": "/"}, headers=here(client), allow_redirects=False
    )
    assert response.status == 303, await response.text()
    return await csrf_of(client)


async def csrf_of(client: Client) -> str:
    page = await (await client.get("/")).text()
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, page
    return match.group(1)


async def test_sign_in_opens_a_session_and_sign_out_ends_it(
    start_server: ClientFactory, setup: Setup
) -> None:
    client = await start_server(queue={"paused": True})
    asked = await client.get("/")
    assert asked.status == 401 and 'action="/sign-in"' in await asked.text()
    assert (await client.get(f"/projects/{setup.name}")).status == 401
    assert (await client.get("/events")).status == 401

    token, secret = await client.app[ENGINE].store.tokens.create("ops", "deploy")
    form = {"token": secret, "next": f"/projects/{setup.name}"}
    # The sign-in form must come from gatebot's own origin.
    for headers in ({}, {"Origin": "https://evil.example"}, {"Origin": "null"}):
        refused = await client.post("/sign-in", data=form, headers=headers)
        assert refused.status == 403, headers
        assert COOKIE not in refused.cookies
    signed = await client.post("/sign-in", data=form, headers=here(client), allow_redirects=False)
    assert signed.status == 303 and signed.headers["Location"] == f"/projects/{setup.name}"
    cookie = signed.headers["Set-Cookie"]
    assert re.search(r"HttpOnly", cookie) and "SameSite=Strict" in cookie and "Max-Age=" in cookie
    assert "Secure" not in cookie, "public_url is http here"
    assert secret not in cookie

    overview = await client.get("/")
    page = await overview.text()
    assert overview.status == 200 and f'href="/projects/{setup.name}"' in page
    assert "ops (deploy)" in page and 'action="/sign-out"' in page
    csp = overview.headers["Content-Security-Policy"]
    assert "script-src 'nonce-" in csp and "default-src 'none'" in csp
    assert overview.headers["Referrer-Policy"] == "same-origin"
    # An outside redirect target is not followed.
    outside = await client.post(
        "/sign-in",
        data={"token": secret, "next": "//evil.example/"},
        headers=here(client),
        allow_redirects=False,
    )
    assert outside.headers["Location"] == "/"

    csrf = await csrf_of(client)
    stale = await client.post("/sign-out", data={"csrf": "nope"}, headers=here(client))
    assert stale.status == 403
    assert (await client.get("/")).status == 200, "still signed in"
    out = await client.post(
        "/sign-out", data={"csrf": csrf}, headers=here(client), allow_redirects=False
    )
    assert out.status == 303 and out.headers["Location"] == "/sign-in"
    assert (await client.get("/")).status == 401

    # Revoking the token ends its sessions at the next request.
    await sign_in(client, "deploy", "second")
    await client.app[ENGINE].store.tokens.revoke("second")
    assert (await client.get("/")).status == 401
    assert token.name == "ops"


async def test_failed_sign_ins_are_slowed_down(start_server: ClientFactory, setup: Setup) -> None:
    client = await start_server(queue={"paused": True})
    for _ in range(5):
        wrong = await client.post("/sign-in", data={"token": "gb_nope"}, headers=here(client))
        assert wrong.status == 401
    slowed = await client.post("/sign-in", data={"token": "gb_nope"}, headers=here(client))
    assert slowed.status == 429 and int(slowed.headers["Retry-After"]) >= 1
    assert "Too many failed sign-ins" in await slowed.text()
    # Even the right token waits: the wait is not a hint about the token.
    _, secret = await client.app[ENGINE].store.tokens.create("ops", "read")
    waiting = await client.post("/sign-in", data={"token": secret}, headers=here(client))
    assert waiting.status == 429


async def test_buttons_check_csrf_origin_and_scope_and_queue_like_the_api(
    start_server: ClientFactory, setup: Setup
) -> None:
    client = await start_server(queue={"paused": True})
    store = client.app[ENGINE].store
    setup.repo.commit("v1")
    deploy = f"/projects/{setup.name}/deploy"

    assert (await client.post(deploy, data={}, headers=here(client))).status == 401
    await sign_in(client, "read", "viewer")
    page = await (await client.get(f"/projects/{setup.name}")).text()
    assert "Deploy</button>" not in page and "Roll back</button>" not in page
    csrf = await csrf_of(client)  # the sign-out form's
    assert (await client.post(deploy, data={"csrf": csrf}, headers=here(client))).status == 403

    csrf = await sign_in(client, "deploy", "ops")
    page = await (await client.get(f"/projects/{setup.name}")).text()
    assert "Deploy</button>" in page and "Roll back</button>" in page
    for data, headers in (
        ({}, here(client)),
        ({"csrf": "wrong"}, here(client)),
        ({"csrf": csrf}, {"Origin": "https://evil.example"}),
        ({"csrf": csrf}, {}),
    ):
        refused = await client.post(deploy, data=data, headers=headers)
        assert refused.status == 403, (data, headers)
    assert await store.jobs.recent() == [], "nothing was queued"

    bad = await client.post(deploy, data={"csrf": csrf, "sha": "<b>nope"}, headers=here(client))
    assert bad.status == 400 and "&#x27;&lt;b&gt;nope&#x27; is not a commit SHA" in await bad.text()

    queued = await client.post(
        deploy, data={"csrf": csrf, "sha": ""}, headers=here(client), allow_redirects=False
    )
    assert queued.status == 303
    job_id = int(queued.headers["Location"].rsplit("/", 1)[1])
    job = await store.jobs.require(job_id)
    assert job.trigger == "token:ops" and job.kind == "deploy" and job.state == "queued"
    [audit] = await store.audit.recent()
    assert (audit.actor, audit.action, audit.job_id) == ("token:ops", "deploy", job_id)
    waiting = await client.get(f"/jobs/{job_id}")
    assert waiting.status == 200 and 'http-equiv="refresh"' in await waiting.text()

    # Nothing was ever live: the rollback answers the API's 422, on the project's page.
    nothing = await client.post(
        f"/projects/{setup.name}/rollback", data={"csrf": csrf}, headers=here(client)
    )
    text = await nothing.text()
    assert nothing.status == 422 and 'class="notice problem"' in text and "<h1>" in text

    cancel = await client.post(
        f"/jobs/{job_id}/cancel", data={"csrf": csrf}, headers=here(client), allow_redirects=False
    )
    assert cancel.status == 303 and cancel.headers["Location"] == f"/projects/{setup.name}"
    assert (await store.jobs.require(job_id)).state == "cancelled"
    ended = await client.get(f"/jobs/{job_id}")
    assert "refresh" not in await ended.text()
    again = await client.post(f"/jobs/{job_id}/cancel", data={"csrf": csrf}, headers=here(client))
    assert again.status == 200, "cancelling a cancelled job is fine, as in the API"


async def test_a_busy_project_answers_409_on_its_page(
    start_server: ClientFactory, setup: Setup
) -> None:
    client = await start_server()
    csrf = await sign_in(client, "deploy", "ops")
    engine = client.app[ENGINE]
    async with engine.locks.hold(setup.name, "deploy by cli:alice"):
        overview = await (await client.get("/")).text()
        assert "deploy by cli:alice" in overview
        busy = await client.post(
            f"/projects/{setup.name}/deploy", data={"csrf": csrf}, headers=here(client)
        )
        text = await busy.text()
    assert busy.status == 409
    assert f"project &#x27;{setup.name}&#x27; is busy: deploy by cli:alice" in text
    assert 'role="alert"' in text and "Deploy</button>" in text, "the project's page, not an error"
    assert await engine.store.jobs.recent() == []


async def test_public_pages_show_read_only_views(start_server: ClientFactory, setup: Setup) -> None:
    client = await start_server(queue={"paused": True}, server={"public_pages": True})
    overview = await client.get("/")
    page = await overview.text()
    assert overview.status == 200 and f'href="/projects/{setup.name}"' in page
    assert 'href="/sign-in">Sign in<' in page
    project = await (await client.get(f"/projects/{setup.name}")).text()
    assert "<form" not in project
    refused = await client.post(f"/projects/{setup.name}/deploy", data={}, headers=here(client))
    assert refused.status == 401
    assert (await client.get("/projects/no-such")).status == 404
    events = await client.get("/events")
    assert events.status == 200
    first = await events.content.readuntil(b"\n\n")
    first += await events.content.readuntil(b"\n\n")
    assert b"event: overview" in first and setup.name.encode() in first
    events.close()


async def test_the_session_cookie_is_secure_when_gatebot_is_public_over_https(
    start_server: ClientFactory, setup: Setup
) -> None:
    client = await start_server(
        queue={"paused": True}, server={"public_url": "https://gatebot.example.com"}
    )
    _, secret = await client.app[ENGINE].store.tokens.create("ops", "read")
    # The public origin is gatebot's own too (a TLS proxy in front sends it).
    signed = await client.post(
        "/sign-in",
        data={"token": secret},
        headers={"Origin": "https://gatebot.example.com"},
        allow_redirects=False,
    )
    assert signed.status == 303
    assert "Secure" in signed.headers["Set-Cookie"]
