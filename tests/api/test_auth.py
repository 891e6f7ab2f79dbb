"""Bearer tokens on the running app: 401 without a good one, 403 for a scope too small, and
tokens kept only as hashes."""

from __future__ import annotations

import hashlib
import sqlite3

from aiohttp import web

from gatebot.api.keys import ENGINE
from tests.support.server import ClientFactory, auth
from tests.support.setup import Workspace

READ_METHODS = ("GET", "HEAD")
PUBLIC = {
    ("GET", "/api/v1/openapi.json"),
    ("HEAD", "/api/v1/openapi.json"),
    ("POST", "/deployments/{id}"),  # the sign-in form: it takes the token in its body
}


def guarded_routes(app: web.Application) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(API routes, page routes) from the app's router, as (method, path template): every
    route under /api/v1 and under /deployments (pages, with public_pages off), but PUBLIC."""
    api, pages = [], []
    for route in app.router.routes():
        key = (route.method, route.resource.canonical) if route.resource else None
        if key is None or key in PUBLIC:
            continue
        if key[1].startswith("/api/v1/"):
            api.append(key)
        elif key[1].startswith("/deployments/"):
            pages.append(key)
    return api, pages


async def test_every_endpoint_needs_a_token_and_the_right_scope(
    start_offline: ClientFactory, workspace: Workspace
) -> None:
    client = await start_offline(queue={"paused": True})
    read = await auth(client, "read")
    deploy = await auth(client, "deploy")
    store = client.app[ENGINE].store
    await store.deployments.create(workspace.name, "test")
    await client.post("/api/v1/deploy", json={"projectId": workspace.name}, headers=deploy)
    bad_headers = [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer gb_0123456789ab_" + "x" * 43},
        {"Authorization": "Bearer not-a-gatebot-token"},
    ]
    api, pages = guarded_routes(client.app)
    reads = [(m, t) for m, t in api if m in READ_METHODS]
    changes = [(m, t) for m, t in api if m not in READ_METHODS]
    # The derivation finds what is known to be there (and whatever is added later).
    assert {("GET", "/api/v1/projects"), ("GET", "/api/v1/deployments/{id}/logs")} <= set(reads)
    assert {("POST", "/api/v1/deploy"), ("DELETE", "/api/v1/jobs/{id}")} <= set(changes)
    assert {("GET", "/deployments/{id}"), ("GET", "/deployments/{id}/events")} <= set(pages)

    def fill(template: str) -> str:
        return template.format(name=workspace.name, id=1)  # deployment 1 and job 1 exist

    for method, template in reads:
        path = fill(template)
        for headers in bad_headers:
            response = await client.request(method, path, headers=headers)
            assert response.status == 401, (method, path, headers)
            assert response.headers["WWW-Authenticate"].startswith('Bearer realm="gatebot"')
            if method == "GET":
                answer = await response.json()
                assert answer["error"] == "unauthorized" and set(answer) == {"error", "message"}
        assert (await client.request(method, path, headers=read)).status == 200, path
        assert (await client.request(method, path, headers=deploy)).status == 200, path

    for method, template in pages:  # public_pages is off
        path = fill(template)
        for headers in bad_headers:
            response = await client.request(method, path, headers=headers)
            assert response.status == 401, (method, path, headers)
        assert (await client.request(method, path, headers=read)).status == 200, path

    for method, template in changes:
        path = fill(template)
        body: dict[str, str] = {}
        for headers in bad_headers:
            response = await client.request(method, path, json=body, headers=headers)
            assert response.status == 401, (method, path, headers)
        refused = await client.request(method, path, json=body, headers=read)
        assert refused.status == 403, path
        answer = await refused.json()
        assert answer["error"] == "forbidden"
        assert answer["message"] == "token 'read-token' has scope read; this needs scope deploy"
        assert 'error="insufficient_scope"' in refused.headers["WWW-Authenticate"]
    # A read token changed nothing: one job (the one queued above), still queued.
    assert [j.state for j in await store.jobs.recent()] == ["queued"]

    assert (await client.get("/api/v1/openapi.json")).status == 200  # the document is public


async def test_revoked_tokens_stop_working_and_only_hashes_are_stored(
    start_offline: ClientFactory, workspace: Workspace
) -> None:
    client = await start_offline(queue={"paused": True})
    store = client.app[ENGINE].store
    token, secret = await store.tokens.create("alice", "read")
    assert secret.startswith(f"gb_{token.lookup}_") and len(secret) > 50
    headers = {"Authorization": f"Bearer {secret}"}
    assert token.last_used_at is None
    assert (await client.get("/api/v1/projects", headers=headers)).status == 200
    [listed] = await store.tokens.list()
    assert listed.last_used_at is not None

    # A token that differs in its secret part only is refused.
    forged = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")
    response = await client.get("/api/v1/projects", headers={"Authorization": f"Bearer {forged}"})
    assert response.status == 401
    assert forged not in await response.text() and secret not in await response.text()

    with sqlite3.connect(workspace.data_dir / "gatebot.db") as conn:
        rows = conn.execute("SELECT name, lookup, hash, scope FROM tokens").fetchall()
        dump = "\n".join(conn.iterdump())
    assert rows == [("alice", token.lookup, hashlib.sha256(secret.encode()).hexdigest(), "read")]
    assert secret not in dump and secret.split("_", 2)[2] not in dump

    await store.tokens.revoke("alice")
    response = await client.get("/api/v1/projects", headers=headers)
    assert response.status == 401
    assert (await response.json())["message"] == "the token is unknown or revoked"
    # The name is free again; the new token is a different one.
    _, again = await store.tokens.create("alice", "deploy")
    assert again != secret
    assert (
        await client.get("/api/v1/projects", headers={"Authorization": f"bearer {again}"})
    ).status == 200
