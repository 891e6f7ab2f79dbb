"""The REST API, /api/v1: what operators and scripts use to deploy, roll back and look.

Deploys and rollbacks go through the same durable queue as webhooks, with the token's name as
the trigger (``token:NAME``), and each is also written to the audit table. A project that is
deploying or rolling back right now (a job of this server, or another process holding its
lock) answers 409 naming who holds it. Reads need a `read` token, changes a `deploy` token.
The OpenAPI document at /api/v1/openapi.json describes every route here; a test holds the
server to it.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from gatebot.api import sse
from gatebot.api.auth import actor, origin_of, requires
from gatebot.api.errors import ApiError
from gatebot.api.keys import ENGINE, QUEUE, SECRETS, SETTINGS
from gatebot.api.openapi import MAX_ID, SPEC
from gatebot.api.views import (
    busy_view,
    deployment_view,
    job_view,
    project_view,
    step_view,
    task_view,
)
from gatebot.errors import NothingToRollBack, RuntimeUnavailable, SourceError, UnknownProject
from gatebot.intake import push_job
from gatebot.model import JobKind, JobState, Origin, Status
from gatebot.numbers import parse_count
from gatebot.pipeline.engine import Engine
from gatebot.pipeline.rollback import choose_target
from gatebot.settings import ProjectSettings
from gatebot.store.deployments import Deployment
from gatebot.store.jobs import Job, NewJob

log = logging.getLogger("gatebot.api.v1")
routes = web.RouteTableDef()

MAX_BODY = 64 * 1024
DEFAULT_LIMIT, MAX_LIMIT = 20, 100
SHA = re.compile(r"^[0-9a-fA-F]{7,64}$")


# --- reading requests -----------------------------------------------------------------------


async def read_object(request: web.Request, *, required: bool) -> dict[str, Any]:
    """The JSON object in the body ({} for none when not `required`); 400 or 413 otherwise."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError(413, f"the body is over {MAX_BODY} bytes")
    body = await request.read()  # read (within [server] body_timeout) by api.errors.body_reader
    if len(body) > MAX_BODY:
        raise ApiError(413, f"the body is over {MAX_BODY} bytes")
    if not body.strip():
        if required:
            raise ApiError(400, "a JSON object is needed in the body")
        return {}
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise ApiError(400, "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    return data


def string_field(
    body: dict[str, Any],
    name: str,
    *,
    required: bool = False,
    pattern: re.Pattern[str] | None = None,
) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise ApiError(400, f"{name} is required")
        return None
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, f"{name} must be a non-empty string")
    if pattern is not None and not pattern.fullmatch(value):
        raise ApiError(400, f"{name} {value[:80]!r} is not valid")
    return value


def only_fields(body: dict[str, Any], *allowed: str) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        expected = ", ".join(allowed) or "none"
        raise ApiError(400, f"unknown field(s): {', '.join(unknown)[:200]} (expected: {expected})")


def paging(request: web.Request, *others: str) -> tuple[int, int]:
    """`limit` and `offset` of a listing; a query parameter other than those and `others`
    gets 400, as an unknown body field does (an empty name too: `?=x`)."""
    unknown = sorted(set(request.query) - {"limit", "offset", *others})
    if unknown:
        names = ", ".join(repr(name) for name in unknown)[:200]
        raise ApiError(400, f"unknown query parameter(s): {names}")

    def number(name: str, default: int, low: int, high: int) -> int:
        raw = request.query.get(name)
        if raw is None:
            return default
        value = parse_count(raw, high=high)
        if value is None or value < low:
            raise ApiError(400, f"{name} must be a whole number from {low} to {high}")
        return value

    return number("limit", DEFAULT_LIMIT, 1, MAX_LIMIT), number("offset", 0, 0, 10**9)


def path_id(request: web.Request, what: str) -> int:
    raw = request.match_info["id"]
    value = parse_count(raw, high=MAX_ID)
    if value is None:
        raise ApiError(404, f"{what} {raw[:20]}{'…' if len(raw) > 20 else ''} does not exist")
    return value


def known_project(request: web.Request, name: str) -> ProjectSettings:
    try:
        return request.app[SETTINGS].project(name)
    except UnknownProject:
        raise ApiError(
            404, f"unknown project {name[:80]!r}: it is not in gatebot's configuration"
        ) from None


def next_link(path: str, limit: int, offset: int, more: bool, **query: str) -> str | None:
    if not more:
        return None
    return f"{path}?{urlencode({**query, 'limit': limit, 'offset': offset + limit})}"


# --- deciding -------------------------------------------------------------------------------


async def running_job(engine: Engine, project: str) -> Job | None:
    running = await engine.store.jobs.recent(project=project, state=JobState.RUNNING, limit=1)
    return running[0] if running else None


async def busy_with(engine: Engine, project: str) -> tuple[Job | None, str | None]:
    """(this server's running job, who holds the lock) for a project; (None, None) when idle.

    The lock is probed only when no job of this server runs: probing takes the lock for an
    instant, and must not race this server's own job (claimed, about to lock) for it.
    """
    job = await running_job(engine, project)
    if job is not None:
        return job, f"{job.kind} by {job.trigger}"
    return None, engine.locks.holder(project)


async def refuse_if_busy(engine: Engine, project: str) -> None:
    """409 when the project is deploying or rolling back, here or in another process."""
    job, holder = await busy_with(engine, project)
    if holder is None:
        return
    who = f"{job.kind} job {job.id} ({job.trigger})" if job else holder
    raise ApiError(
        409,
        f"project {project!r} is busy: {who}; try again when it is done",
        job=job.id if job else None,
        holder=holder,
    )


async def project_summary(engine: Engine, project: ProjectSettings) -> dict[str, Any]:
    store = engine.store
    active = await store.deployments.active(project.name)
    job, holder = await busy_with(engine, project.name)
    in_flight = await store.deployments.with_status(
        Status.PENDING, Status.DEPLOYING, project=project.name
    )
    queued = (await store.jobs.counts(project.name)).get(JobState.QUEUED, 0)
    busy = busy_view(job, holder, in_flight[-1] if in_flight else None)
    return project_view(project, active, busy, queued, await engine.live_tasks(active))


async def gated_deploy(
    engine: Engine, project: ProjectSettings, origin: Origin, sha: str | None, skip_gate: bool
) -> tuple[NewJob, str]:
    """An operator's deploy job, and its audit detail. For a gated project it waits for the
    commit's checks like a push (the branch head is asked for with git ls-remote when no sha
    is given), unless the gate is skipped explicitly."""
    what = f"sha {sha}" if sha else f"head of {project.branch}"
    if project.gate is None:
        return NewJob(project.name, JobKind.DEPLOY, origin, sha=sha), what
    if skip_gate:
        return NewJob(project.name, JobKind.DEPLOY, origin, sha=sha), f"{what}, gate skipped"
    if sha is None:
        try:
            sha = await engine.source.remote_head(project.repo, project.branch)
        except SourceError as exc:
            raise ApiError(503, f"cannot read the head of {project.branch}: {exc}") from None
        if sha is None:
            raise ApiError(422, f"branch {project.branch!r} does not exist in the repository")
    return push_job(project, sha, origin), f"{what}, waiting for checks"


async def find_deployment(engine: Engine, deployment_id: int) -> Deployment:
    found = await engine.store.deployments.get(deployment_id)
    if found is None:
        raise ApiError(404, f"deployment {deployment_id} does not exist")
    return found


async def find_job(engine: Engine, job_id: int) -> Job:
    found = await engine.store.jobs.get(job_id)
    if found is None:
        raise ApiError(404, f"job {job_id} does not exist")
    return found


def secrets(request: web.Request) -> tuple[str, ...]:
    return request.app[SECRETS]


# --- changing things ------------------------------------------------------------------------


async def enqueue(app: web.Application, new: NewJob, detail: str) -> Job:
    """Queue `new` (through the same queue as webhooks) and write it to the audit table."""
    engine = app[ENGINE]
    [job] = await app[QUEUE].submit([new])
    await engine.store.audit.record(
        new.trigger, new.kind, project=new.project, job_id=job.id, detail=detail
    )
    log.info(
        "%s of %s (%s) queued by %s",
        new.kind,
        new.project,
        detail,
        new.trigger,
        extra={"project": new.project, "job": job.id},
    )
    return job


def accepted(job: Job) -> web.Response:
    return web.json_response(
        job_view(job), status=202, headers={"Location": f"/api/v1/jobs/{job.id}"}
    )


async def request_deploy(
    app: web.Application,
    project: ProjectSettings,
    sha: str | None,
    origin: Origin,
    *,
    skip_gate: bool = False,
) -> Job:
    """Queue a deploy of `sha` (default: the branch head); ApiError 409 when busy. A gated
    project's deploy waits for the commit's checks unless `skip_gate`. The API and the
    dashboard's Deploy button both come here."""
    engine = app[ENGINE]
    await refuse_if_busy(engine, project.name)
    new, detail = await gated_deploy(engine, project, origin, sha, skip_gate)
    return await enqueue(app, new, detail)


async def request_rollback(
    app: web.Application, project: ProjectSettings, to: str | None, origin: Origin
) -> Job:
    """Queue a rollback to `to` (default: the previous release); ApiError 409 when busy, 422
    when there is nothing to roll back to, 503 when Docker does not answer."""
    engine = app[ENGINE]
    await refuse_if_busy(engine, project.name)
    active = await engine.store.deployments.active(project.name)
    try:
        target = await choose_target(engine, project.name, active, to)
    except NothingToRollBack as nothing:
        raise ApiError(422, str(nothing)) from None
    except RuntimeUnavailable as down:
        raise ApiError(503, str(down)) from None
    new = NewJob(
        project=project.name, kind=JobKind.ROLLBACK, origin=origin, target=str(target.version)
    )
    return await enqueue(app, new, f"to v{target.version}")


async def cancel_job(app: web.Application, job_id: int, who: str) -> Job:
    """Cancel a queued job (again fine if it already was); ApiError 404, or 409 when it is
    running or has ended."""
    engine = app[ENGINE]
    job = await find_job(engine, job_id)
    if job.state is JobState.CANCELLED:
        return job
    if not await app[QUEUE].cancel(job.id):
        job = await find_job(engine, job.id)
        running = job.state is JobState.RUNNING
        what = "is running" if running else f"has already ended ({job.state})"
        raise ApiError(409, f"job {job.id} {what}; only a queued job can be cancelled", job=job.id)
    await engine.store.audit.record(who, "cancel", project=job.project, job_id=job.id)
    log.info("job %s cancelled by %s", job.id, who, extra={"project": job.project, "job": job.id})
    return await find_job(engine, job.id)


@routes.post("/api/v1/deploy")
@requires("deploy")
async def post_deploy(request: web.Request) -> web.Response:
    body = await read_object(request, required=True)
    only_fields(body, "projectId", "sha", "skipGate")
    name = string_field(body, "projectId", required=True)
    sha = string_field(body, "sha", pattern=SHA)
    skip_gate = body.get("skipGate", False)
    if not isinstance(skip_gate, bool):
        raise ApiError(400, "skipGate must be true or false")
    assert name is not None
    project = known_project(request, name)
    return accepted(
        await request_deploy(request.app, project, sha, origin_of(request), skip_gate=skip_gate)
    )


@routes.post("/api/v1/projects/{name}/rollback")
@requires("deploy")
async def post_rollback(request: web.Request) -> web.Response:
    project = known_project(request, request.match_info["name"])
    body = await read_object(request, required=False)
    only_fields(body, "to")
    to = string_field(body, "to")
    return accepted(await request_rollback(request.app, project, to, origin_of(request)))


@routes.delete(r"/api/v1/jobs/{id:\d+}")
@requires("deploy")
async def delete_job(request: web.Request) -> web.Response:
    job = await cancel_job(request.app, path_id(request, "job"), actor(request))
    return web.json_response(job_view(job, secrets(request)))


# --- reading things -------------------------------------------------------------------------


@routes.get("/api/v1/projects")
@requires("read")
async def get_projects(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    projects = [await project_summary(engine, p) for p in request.app[SETTINGS].projects]
    return web.json_response({"projects": projects})


@routes.get("/api/v1/projects/{name}")
@requires("read")
async def get_project(request: web.Request) -> web.Response:
    project = known_project(request, request.match_info["name"])
    return web.json_response(await project_summary(request.app[ENGINE], project))


@routes.get("/api/v1/projects/{name}/deployments")
@requires("read")
async def get_project_deployments(request: web.Request) -> web.Response:
    project = known_project(request, request.match_info["name"])
    limit, offset = paging(request)
    rows = await request.app[ENGINE].store.deployments.history(
        project.name, limit=limit + 1, offset=offset
    )
    hidden = secrets(request)
    return web.json_response(
        {
            "deployments": [deployment_view(d, hidden) for d in rows[:limit]],
            "limit": limit,
            "offset": offset,
            "next": next_link(request.path, limit, offset, len(rows) > limit),
        }
    )


@routes.get(r"/api/v1/deployments/{id:\d+}")
@requires("read")
async def get_deployment(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    d = await find_deployment(engine, path_id(request, "deployment"))
    hidden = secrets(request)
    steps = await engine.store.deployments.steps(d.id)
    tasks = [task_view(t) for t in await engine.live_tasks(d)]
    return web.json_response(
        {
            **deployment_view(d, hidden),
            "tasks": tasks,
            "steps": [step_view(s, hidden) for s in steps],
        }
    )


@routes.get(r"/api/v1/deployments/{id:\d+}/logs")
@requires("read")
async def get_deployment_logs(request: web.Request) -> web.StreamResponse:
    engine = request.app[ENGINE]
    d = await find_deployment(engine, path_id(request, "deployment"))
    if "text/event-stream" in request.headers.get("Accept", ""):
        return await sse.follow(request, engine, d.id, secrets(request))
    return web.Response(
        text=await sse.log_text(engine, d, secrets(request)), content_type="text/plain"
    )


@routes.get("/api/v1/jobs")
@requires("read")
async def get_jobs(request: web.Request) -> web.Response:
    limit, offset = paging(request, "state", "project")
    state_name = request.query.get("state")
    if state_name is not None and state_name not in set(JobState):
        raise ApiError(400, f"state must be one of {', '.join(JobState)}")
    state = JobState(state_name) if state_name is not None else None
    project = request.query.get("project")
    rows = await request.app[ENGINE].store.jobs.recent(
        project=project, state=state, limit=limit + 1, offset=offset
    )
    query = {k: v for k, v in (("state", state), ("project", project)) if v is not None}
    hidden = secrets(request)
    return web.json_response(
        {
            "jobs": [job_view(j, hidden) for j in rows[:limit]],
            "limit": limit,
            "offset": offset,
            "next": next_link(request.path, limit, offset, len(rows) > limit, **query),
        }
    )


@routes.get(r"/api/v1/jobs/{id:\d+}")
@requires("read")
async def get_job(request: web.Request) -> web.Response:
    job = await find_job(request.app[ENGINE], path_id(request, "job"))
    return web.json_response(job_view(job, secrets(request)))


@routes.get("/api/v1/openapi.json")
async def get_openapi(request: web.Request) -> web.Response:
    return web.json_response(SPEC)
