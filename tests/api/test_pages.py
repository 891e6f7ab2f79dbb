"""The deployment page: rendered for a finished and a running deployment, live updates through
its event stream, secrets redacted, and a token asked for unless pages are public."""

from __future__ import annotations

import html
import re
from typing import Any

from aiohttp.test_utils import TestClient

from gatebot.api.keys import ENGINE, QUEUE
from tests.support.server import (
    SLOW_HEALTH,
    ClientFactory,
    auth,
    page_log,
    read_events,
    running_job,
)
from tests.support.setup import Setup, Workspace

Client = TestClient[Any, Any]
SECRET = "s3cr3t-database-password"
LEAKY = '#!/bin/sh\necho "connecting with $APP_SECRET" >&2\nexit 3\n'


async def deploy(client: Client, setup: Setup, headers: dict[str, str]) -> int:
    response = await client.post("/api/v1/deploy", json={"projectId": setup.name}, headers=headers)
    assert response.status == 202
    await client.app[QUEUE].drain()
    job = await client.app[ENGINE].store.jobs.require((await response.json())["id"])
    deployment_id: int | None = job.deployment_id
    assert deployment_id is not None
    return deployment_id


async def test_finished_deployments_render_with_their_timeline_and_no_secrets(
    start_server: ClientFactory, setup: Setup
) -> None:
    client = await start_server(env={"APP_SECRET": SECRET})
    headers = await auth(client, "deploy", "ci")
    sha = setup.repo.commit("v1")
    good = await deploy(client, setup, headers)
    setup.repo.commit("v2", start_script=LEAKY)
    bad = await deploy(client, setup, headers)

    response = await client.get(f"/deployments/{good}", headers=headers)
    assert response.status == 200 and response.content_type == "text/html"
    assert "script-src 'nonce-" in response.headers["Content-Security-Policy"]
    assert response.headers["Cache-Control"] == "no-store"
    page = await response.text()
    assert f"<h1>{setup.name} v1</h1>" in page
    assert 'class="status s-ACTIVE">ACTIVE<' in page
    assert f'<code title="{sha}">{sha[:12]}</code> sample app v1' in page
    assert f"<dt>Color</dt><dd>blue (port {setup.base_port})</dd>" in page
    assert "<dt>Trigger</dt><dd>token:ci</dd>" in page
    timeline = dict(re.findall(r"<tr><td>(\w+)</td><td class=\"num\">([^<]*)</td>", page))
    for stage in ("source", "build", "run", "health", "switch", "record"):
        assert re.fullmatch(r"\d+\.\d\d s", timeline[stage]), (stage, timeline)
    log = page_log(page)
    assert "[build] started" in log and f"[switch] {setup.name} now routed to blue" in log
    assert "<script" not in page, "a finished deployment's page does not follow anything"
    assert 'name="viewport"' in page

    failed = await (await client.get(f"/deployments/{bad}", headers=headers)).text()
    assert 'class="status s-FAILED">FAILED<' in failed
    assert '<span class="error">health: ' in failed
    assert "connecting with ***" in failed
    api = await (await client.get(f"/api/v1/deployments/{bad}", headers=headers)).json()
    logs = await (await client.get(f"/api/v1/deployments/{bad}/logs", headers=headers)).text()
    # The app's lines are in the log (redacted), never in the error a status could show.
    assert "connecting with" not in api["error"] and "connecting with ***" in logs
    for shown in (failed, str(api), logs):
        assert SECRET not in shown

    missing = await client.get("/deployments/424242", headers=headers)
    assert missing.status == 404 and "does not exist" in await missing.text()


async def test_a_running_deployment_page_follows_it_to_the_end(
    start_server: ClientFactory, setup: Setup
) -> None:
    client = await start_server(health=SLOW_HEALTH)
    headers = await auth(client, "read")
    setup.repo.commit("v1")
    response = await client.post(
        "/api/v1/deploy", json={"projectId": setup.name}, headers=await auth(client, "deploy")
    )
    assert response.status == 202
    job = await running_job(client, setup.name)

    page = await (await client.get(f"/deployments/{job.deployment_id}", headers=headers)).text()
    assert re.search(r'class="status s-(PENDING|DEPLOYING)">', page)
    assert 'id="live" class="live">live:' in page
    script = re.search(r'<script nonce="([^"]+)">var RESUME="(\d+)\.(\d+)";', page)
    assert script, page
    step_after, offset = int(script.group(2)), int(script.group(3))
    shown = page_log(page)

    events = await read_events(
        client, f"/deployments/{job.deployment_id}/events?after={step_after}.{offset}", headers
    )
    assert events[-1] == ("end", {"status": "ACTIVE"})
    assert all(data["id"] > step_after for name, data in events if name == "step")
    streamed = "".join(data + "\n" for name, data in events if name == "log")
    whole = await (
        await client.get(f"/api/v1/deployments/{job.deployment_id}/logs", headers=headers)
    ).text()
    # What the page showed and what the stream added make the whole log, nothing twice.
    assert html.unescape(shown) + streamed == whole

    finished = await (await client.get(f"/deployments/{job.deployment_id}", headers=headers)).text()
    assert "<script" not in finished and 'class="status s-ACTIVE"' in finished


async def test_pages_ask_for_a_token_unless_they_are_public(
    start_offline: ClientFactory, workspace: Workspace
) -> None:
    client = await start_offline(queue={"paused": True})
    store = client.app[ENGINE].store
    d = await store.deployments.create(workspace.name, "test")
    _, secret = await store.tokens.create("viewer", "read")

    asked = await client.get(f"/deployments/{d.id}")
    assert asked.status == 401 and asked.content_type == "text/html"
    form = await asked.text()
    assert '<form method="post" action="/sign-in">' in form
    assert f'name="next" value="/deployments/{d.id}"' in form
    events = await client.get(f"/deployments/{d.id}/events")
    assert events.status == 401 and (await events.json())["error"] == "unauthorized"

    here = {"Origin": str(client.make_url("")).rstrip("/")}
    form_data = {"next": f"/deployments/{d.id}"}
    wrong = await client.post("/sign-in", data={**form_data, "token": "gb_nope"}, headers=here)
    assert wrong.status == 401 and "unknown or revoked" in await wrong.text()
    signed = await client.post(
        "/sign-in", data={**form_data, "token": secret}, headers=here, allow_redirects=False
    )
    assert signed.status == 303 and signed.headers["Location"] == f"/deployments/{d.id}"
    cookie = signed.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert secret not in cookie, "the browser keeps a session id, not the token"
    value = cookie.split(";", 1)[0]
    shown = await client.get(f"/deployments/{d.id}", headers={"Cookie": value})
    assert shown.status == 200 and 'class="status s-PENDING"' in await shown.text()
    # The API never takes the page cookie.
    api = await client.get(f"/api/v1/deployments/{d.id}", headers={"Cookie": value})
    assert api.status == 401
    await client.close()

    public = await start_offline(queue={"paused": True}, server={"public_pages": True})
    assert (await public.get(f"/deployments/{d.id}")).status == 200
    assert (await public.get(f"/api/v1/deployments/{d.id}")).status == 401
