"""The REST API against the running app: deploy, rollback, projects, deployments, logs (text
and a live event stream), jobs and cancelling, each with its error answers."""

from __future__ import annotations

import json
from typing import Any

from aiohttp.test_utils import TestClient

from gatebot.api.keys import ENGINE, QUEUE
from gatebot.model import JobKind, Origin, OriginKind
from gatebot.store.jobs import NewJob
from tests.support.deploys import eventually_live
from tests.support.server import SLOW_HEALTH, ClientFactory, auth, read_events, running_job
from tests.support.setup import Setup, Workspace

Client = TestClient[Any, Any]
SLOW_START = '#!/bin/sh\nsleep 1.5\nexec httpd -f -v -p "${PORT:-3000}" -h /www\n'


async def test_deploy_and_rollback_through_the_api(
    start_server: ClientFactory, setup: Setup
) -> None:
    client = await start_server()
    headers = await auth(client, "deploy", "ci")
    engine = client.app[ENGINE]
    shas = []
    for version in ("v1", "v2"):
        # v1 starts slowly, so the rollback to it below is still running when it is followed.
        shas.append(
            setup.repo.commit(version, start_script=SLOW_START if version == "v1" else None)
        )
        response = await client.post(
            "/api/v1/deploy", json={"projectId": setup.name}, headers=headers
        )
        assert response.status == 202, await response.text()
        job = await response.json()
        assert response.headers["Location"] == f"/api/v1/jobs/{job['id']}"
        assert (job["project"], job["kind"], job["state"], job["trigger"]) == (
            setup.name,
            "deploy",
            "queued",
            "token:ci",
        )
        await client.app[QUEUE].drain()
        assert await eventually_live(setup, version) == version

    done = await (await client.get(f"/api/v1/jobs/{job['id']}", headers=headers)).json()
    assert done["state"] == "succeeded" and done["deployment"] is not None
    detail = await (
        await client.get(f"/api/v1/deployments/{done['deployment']}", headers=headers)
    ).json()
    assert (detail["status"], detail["version"], detail["commit"], detail["trigger"]) == (
        "ACTIVE",
        2,
        shas[1],
        "token:ci",
    )
    stages = [s["stage"] for s in detail["steps"]]
    for stage in ("source", "build", "run", "health", "switch", "record", "drain"):
        assert stage in stages
    assert all(s["duration"] > 0 for s in detail["steps"] if s["stage"] == "build")
    assert detail["page"] == f"/deployments/{detail['id']}"

    project = await (await client.get(f"/api/v1/projects/{setup.name}", headers=headers)).json()
    assert project["active"]["version"] == 2 and project["active"]["commit"] == shas[1]
    assert (
        project["active"]["color"] == "green" and project["active"]["port"] == setup.base_port + 1
    )
    assert project["active"]["since"] and project["deploying"] is None
    listing = await (await client.get("/api/v1/projects", headers=headers)).json()
    assert [p["name"] for p in listing["projects"]] == [setup.name]

    logs = await client.get(f"/api/v1/deployments/{detail['id']}/logs", headers=headers)
    assert logs.status == 200 and logs.headers["Content-Type"].startswith("text/plain")
    text = await logs.text()
    assert "[build]" in text and "[switch]" in text and "started by token:ci" in text

    rollback = await client.post(
        f"/api/v1/projects/{setup.name}/rollback", json={}, headers=headers
    )
    assert rollback.status == 202, await rollback.text()
    job = await rollback.json()
    assert (job["kind"], job["target"], job["trigger"]) == ("rollback", "1", "token:ci")
    # A rollback appends its steps to the release it brings back: its stream follows them.
    running = await running_job(client, setup.name)
    v1 = (await engine.store.deployments.history(setup.name))[-1]
    assert running.deployment_id == v1.id and v1.version == 1
    events = await read_events(client, f"/api/v1/deployments/{v1.id}/logs", headers)
    statuses = [data["status"] for name, data in events if name == "status"]
    assert statuses == ["ROLLED_BACK", "ACTIVE"] and events[-1] == ("end", {"status": "ACTIVE"})
    steps = [(data["stage"], data["message"]) for name, data in events if name == "step"]
    assert ("rollback", "rollback from v2 to v1 started by token:ci") in steps
    assert [stage for stage, _ in steps][-3:] == ["live", "drain", "prune"]
    await client.app[QUEUE].drain()
    assert await eventually_live(setup, "v1") == "v1"
    assert (await engine.store.deployments.require(v1.id)).status == "ACTIVE"

    nothing = await client.post(f"/api/v1/projects/{setup.name}/rollback", headers=headers)
    assert nothing.status == 422
    assert (await nothing.json())["error"] == "unprocessable"
    missing = await client.post(
        f"/api/v1/projects/{setup.name}/rollback", json={"to": "v99"}, headers=headers
    )
    assert missing.status == 422 and "no release 'v99'" in (await missing.json())["message"]

    metrics = await (await client.get("/metrics")).text()
    assert 'gatebot_rollback_duration_seconds_count{outcome="succeeded"} 1.0' in metrics
    assert 'gatebot_deploy_duration_seconds_count{outcome="succeeded"} 2.0' in metrics

    audit = await engine.store.audit.recent()
    assert [(a.actor, a.action) for a in reversed(audit)] == [
        ("token:ci", "deploy"),
        ("token:ci", "deploy"),
        ("token:ci", "rollback"),
    ]


async def test_bad_deploy_requests_get_4xx_and_queue_nothing(
    start_offline: ClientFactory, workspace: Workspace
) -> None:
    client = await start_offline(queue={"paused": True})
    headers = await auth(client)
    cases: list[tuple[bytes, int, str]] = [
        (b"", 400, "JSON object is needed"),
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "must be a JSON object"),
        (b"{}", 400, "projectId is required"),
        (b'{"projectId": 5}', 400, "projectId must be a non-empty string"),
        (b'{"project": "x"}', 400, "unknown field(s): project"),
        (json.dumps({"projectId": workspace.name, "sha": "--upload-pack=x"}).encode(), 400, "sha"),
        (b'{"projectId": "nope"}', 404, "unknown project 'nope'"),
        (json.dumps({"projectId": "x" * 70_000}).encode(), 413, "over 65536 bytes"),
    ]
    for body, status, message in cases:
        response = await client.post("/api/v1/deploy", data=body, headers=headers)
        assert response.status == status, (body[:40], await response.text())
        answer = await response.json()
        assert set(answer) == {"error", "message"} and message in answer["message"], answer
    for body in (b'{"to": 3}', b'{"to": ""}', b'{"version": "1"}', b"[]"):
        response = await client.post(
            f"/api/v1/projects/{workspace.name}/rollback", data=body, headers=headers
        )
        assert response.status == 400, body
    unknown = await client.post("/api/v1/projects/nope/rollback", headers=headers)
    assert unknown.status == 404 and (await unknown.json())["error"] == "not_found"
    assert await client.app[ENGINE].store.jobs.recent() == []


async def test_a_second_deploy_while_one_runs_is_refused_with_409(
    start_server: ClientFactory, setup: Setup
) -> None:
    client = await start_server(health=SLOW_HEALTH)
    headers = await auth(client)
    setup.repo.commit("v1")
    first = await client.post("/api/v1/deploy", json={"projectId": setup.name}, headers=headers)
    assert first.status == 202
    job_id = (await first.json())["id"]
    job = await running_job(client, setup.name)
    assert job.id == job_id

    again = await client.post("/api/v1/deploy", json={"projectId": setup.name}, headers=headers)
    assert again.status == 409
    body = await again.json()
    assert body["error"] == "conflict" and body["job"] == job_id
    assert f"deploy job {job_id}" in body["message"] and "deploy by token:deploy-token" in (
        body["holder"] or ""
    )
    rollback = await client.post(f"/api/v1/projects/{setup.name}/rollback", headers=headers)
    assert rollback.status == 409 and (await rollback.json())["job"] == job_id
    cancel = await client.delete(f"/api/v1/jobs/{job_id}", headers=headers)
    assert cancel.status == 409 and "is running" in (await cancel.json())["message"]

    project = await (await client.get(f"/api/v1/projects/{setup.name}", headers=headers)).json()
    assert project["deploying"]["job"] == job_id and project["deploying"]["kind"] == "deploy"
    assert project["deploying"]["deployment"] == job.deployment_id

    await client.app[QUEUE].drain()
    jobs = await client.app[ENGINE].store.jobs.recent()
    assert [(j.id, j.state) for j in jobs] == [(job_id, "succeeded")]


async def test_a_project_locked_by_another_process_answers_409_with_the_holder(
    start_server: ClientFactory, setup: Setup
) -> None:
    client = await start_server(queue={"paused": True})
    headers = await auth(client)
    engine = client.app[ENGINE]
    async with engine.locks.hold(setup.name, "deploy by cli:alice"):
        response = await client.post(
            "/api/v1/deploy", json={"projectId": setup.name}, headers=headers
        )
        assert response.status == 409
        body = await response.json()
        assert body["job"] is None and body["holder"].startswith("deploy by cli:alice")
        project = await (await client.get(f"/api/v1/projects/{setup.name}", headers=headers)).json()
        assert project["deploying"]["by"].startswith("deploy by cli:alice")
    assert (
        await client.post("/api/v1/deploy", json={"projectId": setup.name}, headers=headers)
    ).status == 202


async def test_jobs_are_listed_paged_and_cancelled(
    start_server: ClientFactory, setup: Setup
) -> None:
    client = await start_server(queue={"paused": True})
    headers = await auth(client)
    ids = []
    for sha in ("a" * 40, "b" * 40, "c" * 40):
        response = await client.post(
            "/api/v1/deploy", json={"projectId": setup.name, "sha": sha}, headers=headers
        )
        assert response.status == 202
        ids.append((await response.json())["id"])

    page = await (await client.get("/api/v1/jobs?limit=2", headers=headers)).json()
    assert [j["id"] for j in page["jobs"]] == [ids[2], ids[1]]
    assert page["next"] == "/api/v1/jobs?limit=2&offset=2"
    rest = await (await client.get(page["next"], headers=headers)).json()
    assert [j["id"] for j in rest["jobs"]] == [ids[0]] and rest["next"] is None

    cancelled = await client.delete(f"/api/v1/jobs/{ids[1]}", headers=headers)
    assert cancelled.status == 200 and (await cancelled.json())["state"] == "cancelled"
    again = await client.delete(f"/api/v1/jobs/{ids[1]}", headers=headers)
    assert again.status == 200 and (await again.json())["state"] == "cancelled"
    queued = await (await client.get("/api/v1/jobs?state=queued", headers=headers)).json()
    assert {j["id"] for j in queued["jobs"]} == {ids[0], ids[2]}
    job = await (await client.get(f"/api/v1/jobs/{ids[0]}", headers=headers)).json()
    assert (job["sha"], job["state"], job["trigger"]) == ("a" * 40, "queued", "token:deploy-token")

    # A job a newer push superseded has ended: it cannot be cancelled.
    store = client.app[ENGINE].store
    [old] = await store.jobs.enqueue(
        [NewJob(project="other", kind=JobKind.DEPLOY, origin=Origin(kind=OriginKind.PUSH, who="x"))]
    )
    await store.jobs.enqueue(
        [
            NewJob(
                project="other", kind=JobKind.DEPLOY, origin=Origin(kind=OriginKind.PUSH, who="x")
            )
        ],
        supersede=True,
    )
    ended = await client.delete(f"/api/v1/jobs/{old.id}", headers=headers)
    assert ended.status == 409
    assert "already ended (superseded)" in (await ended.json())["message"]
    mine = await (await client.get("/api/v1/jobs?project=other", headers=headers)).json()
    assert [j["state"] for j in mine["jobs"]] == ["queued", "superseded"]

    for path in ("/api/v1/jobs/999999", f"/api/v1/jobs/{2**64}", "/api/v1/jobs/abc"):
        response = await client.get(path, headers=headers)
        assert response.status == 404 and (await response.json())["error"] == "not_found"
    assert (await client.delete("/api/v1/jobs/999999", headers=headers)).status == 404
    for query in ("limit=0", "limit=101", "offset=-1", "limit=x", "state=done", "=true", "sort=id"):
        response = await client.get(f"/api/v1/jobs?{query}", headers=headers)
        assert response.status == 400, query
    unknown = await client.get(f"/api/v1/projects/{setup.name}/deployments?=x", headers=headers)
    assert unknown.status == 400
    assert (await unknown.json())["message"] == "unknown query parameter(s): ''"


async def test_odd_numbers_answer_4xx_in_the_error_shape_never_500(
    start_server: ClientFactory, setup: Setup
) -> None:
    client = await start_server(queue={"paused": True})
    headers = await auth(client)
    nines = "9" * 5000
    for query in ("limit=%C2%B2", "offset=%C2%B2", "limit=%D9%A3", f"offset={nines}"):
        response = await client.get(f"/api/v1/jobs?{query}", headers=headers)
        assert response.status == 400, query
        assert (await response.json())["error"] == "bad_request"
    for path in (
        f"/api/v1/jobs/{nines}",
        "/api/v1/jobs/%D9%A3",  # an Arabic-Indic 3: a digit to \\d, not to gatebot
        f"/api/v1/deployments/{nines}",
        f"/api/v1/deployments/{nines}/logs",
        f"/deployments/{nines}",
        f"/deployments/{nines}/events",
    ):
        response = await client.get(path, headers=headers)
        assert response.status == 404, path
        if path.startswith("/api/"):
            assert (await response.json())["error"] == "not_found"
    assert (await client.delete(f"/api/v1/jobs/{nines}", headers=headers)).status == 404
    for to in ("99999999999999999999", "²", "v99999999999999999999", nines):
        response = await client.post(
            f"/api/v1/projects/{setup.name}/rollback", json={"to": to}, headers=headers
        )
        assert response.status == 422, to
        body = await response.json()
        assert body["error"] == "unprocessable" and len(body["message"]) < 200


async def test_deployments_are_listed_newest_first_a_page_at_a_time(
    start_server: ClientFactory, setup: Setup
) -> None:
    client = await start_server(queue={"paused": True})
    headers = await auth(client, "read")
    store = client.app[ENGINE].store
    made = [await store.deployments.create(setup.name, "test") for _ in range(3)]
    path = f"/api/v1/projects/{setup.name}/deployments"
    first = await (await client.get(f"{path}?limit=2", headers=headers)).json()
    assert [d["version"] for d in first["deployments"]] == [3, 2]
    assert first["next"] == f"{path}?limit=2&offset=2"
    second = await (await client.get(first["next"], headers=headers)).json()
    assert [d["version"] for d in second["deployments"]] == [1] and second["next"] is None
    assert second["deployments"][0]["id"] == made[0].id
    assert second["deployments"][0]["status"] == "PENDING"
    assert (await client.get("/api/v1/projects/nope/deployments", headers=headers)).status == 404
    assert (await client.get(f"{path}?limit=1000", headers=headers)).status == 400
    for missing in ("/api/v1/deployments/424242", "/api/v1/deployments/424242/logs"):
        response = await client.get(missing, headers=headers)
        assert response.status == 404 and "does not exist" in (await response.json())["message"]
    assert (await client.get("/api/v1/projects/nope", headers=headers)).status == 404


async def test_the_event_stream_follows_a_deploy_to_its_end(
    start_server: ClientFactory, setup: Setup
) -> None:
    client = await start_server(health=SLOW_HEALTH)
    headers = await auth(client, "read")
    deploy_headers = await auth(client, "deploy")
    setup.repo.commit("v1")
    response = await client.post(
        "/api/v1/deploy", json={"projectId": setup.name}, headers=deploy_headers
    )
    assert response.status == 202
    job = await running_job(client, setup.name)
    deployment_id = job.deployment_id

    events = await read_events(client, f"/api/v1/deployments/{deployment_id}/logs", headers)
    names = [name for name, _ in events]
    assert names[-1] == "end" and events[-1][1] == {"status": "ACTIVE"}
    statuses = [data["status"] for name, data in events if name == "status"]
    assert statuses[0] in ("PENDING", "DEPLOYING") and statuses[-1] == "ACTIVE"
    steps = [data["stage"] for name, data in events if name == "step"]
    # The stream saw the whole deployment, the stages after going ACTIVE included.
    for stage in ("queued", "source", "build", "health", "switch", "record", "live", "prune"):
        assert stage in steps, steps
    logs = [data for name, data in events if name == "log"]
    assert any("[health] healthy after" in line for line in logs)
    file_lines = (
        await (
            await client.get(f"/api/v1/deployments/{deployment_id}/logs", headers=headers)
        ).text()
    ).splitlines()
    assert logs == file_lines, "the stream carried every line of the log, in order"
    job_row = await client.app[ENGINE].store.jobs.require(job.id)
    assert job_row.state == "succeeded"

    # A finished deployment's stream replays it and ends at once.
    replay = await read_events(client, f"/api/v1/deployments/{deployment_id}/logs", headers)
    assert replay[-1] == ("end", {"status": "ACTIVE"})
    assert [e for e in replay if e[0] == "log"] == [e for e in events if e[0] == "log"]
