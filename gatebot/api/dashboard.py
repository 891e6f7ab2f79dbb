"""The operator dashboard: `/` (every project at a glance, live through `/events`),
`/projects/{name}` (history, jobs, Deploy / Roll back / Cancel), `/jobs/{id}` (a job on its way
to its deployment's page), and signing in and out.

Thin handlers: they read the store and hand what they read to gatebot.api.dashboard_render.
The buttons go through the very functions the REST API calls (v1.request_deploy,
request_rollback, cancel_job), so they queue the same jobs, audit the same way and refuse the
same things: a busy project's 409 comes back as its message on the project's page.

A page needs a read token unless `[server] public_pages` is on: a Bearer header, or a browser
session opened at /sign-in (gatebot.api.session). Buttons need a session whose token has scope
`deploy`; every form that changes something carries the session's CSRF token and must come
from gatebot's own origin; so must the sign-in form, whose failures are slowed down per address.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets as random
from urllib.parse import urlsplit

from aiohttp import web

from gatebot import __version__
from gatebot.api import sse
from gatebot.api.auth import (
    SESSION,
    actor,
    authenticate,
    bearer,
    check_scope,
    check_token,
    origin_of,
    session_token,
)
from gatebot.api.dashboard_render import (
    HISTORY_PAGE,
    Bar,
    ProjectState,
    Viewer,
    commit_base,
    overview_projects,
    page_number,
    queue_state,
    render_job,
    render_message,
    render_overview,
    render_project,
    render_sign_in,
    rollback_choices,
)
from gatebot.api.errors import ApiError
from gatebot.api.keys import ENGINE, SECRETS, SESSIONS, SETTINGS, THROTTLE
from gatebot.api.layout import html_response
from gatebot.api.openapi import MAX_ID
from gatebot.api.probes import readiness
from gatebot.api.session import (
    COOKIE,
    Sessions,
    SignInThrottle,
    origin_of_url,
    safe_next,
    same_origin,
)
from gatebot.api.v1 import SHA, busy_with, cancel_job, request_deploy, request_rollback
from gatebot.errors import UnknownProject
from gatebot.model import JobState, Status
from gatebot.settings import ProjectSettings, Settings

log = logging.getLogger("gatebot.api.dashboard")
routes = web.RouteTableDef()

POLL_SECONDS = 1.0  # how often the overview's stream looks for changes
MAX_FORM = 16 * 1024
RECENT_JOBS = 10


STOPPING = web.AppKey("dashboard_stopping", asyncio.Event)  # set when the server shuts down


def install(app: web.Application, settings: Settings) -> None:
    """Add the dashboard's routes and its state (sessions, the sign-in throttle) to `app`."""
    app[SESSIONS] = Sessions(settings.server.session_hours * 3600)
    app[THROTTLE] = SignInThrottle()
    app[STOPPING] = asyncio.Event()
    app.on_shutdown.append(_stop_streams)
    app.add_routes(routes)


async def _stop_streams(app: web.Application) -> None:
    """The overview's streams never end by themselves: end them so shutdown need not wait."""
    app[STOPPING].set()


# --- who looks --------------------------------------------------------------------------------


async def viewer_of(request: web.Request) -> Viewer:
    """Who looks at a page; ApiError 401 when pages need a token and there is none."""
    if bearer(request.headers.get("Authorization")) is None:
        token = await session_token(request)
        if token is not None:
            return Viewer(name=token.name, scope=token.scope, csrf=request[SESSION].csrf)
        if request.app[SETTINGS].server.public_pages:
            return Viewer()
    token = await authenticate(request, "read")
    return Viewer(name=token.name, scope=token.scope)


async def bar_of(request: web.Request, viewer: Viewer) -> Bar:
    _, checks = await readiness(request.app)
    label, cls = queue_state(checks)
    return Bar(version=__version__, queue=label, queue_class=cls, viewer=viewer)


def allowed_origins(request: web.Request) -> set[str]:
    """gatebot's own origins: its public_url's, and the one this request was sent to."""
    own = {f"{request.scheme}://{request.host}".lower()}
    public = origin_of_url(request.app[SETTINGS].server.public_url)
    return own | ({public} if public else set())


def from_here(request: web.Request) -> bool:
    return same_origin(
        request.headers.get("Origin"), request.headers.get("Referer"), allowed_origins(request)
    )


async def read_form(request: web.Request) -> dict[str, str]:
    """A posted form's text fields: at most MAX_FORM bytes, with a Content-Length (browsers
    always send one), else ApiError 400 or 413."""
    if request.content_length is None:
        raise ApiError(400, "a form needs a Content-Length")
    if request.content_length > MAX_FORM:
        raise ApiError(413, f"the form is over {MAX_FORM} bytes")
    form = await request.post()
    return {k: v for k, v in form.items() if isinstance(v, str)}


async def deploy_form(request: web.Request) -> dict[str, str]:
    """The form of a button, checked: from gatebot's origin, a session whose token may deploy,
    and that session's CSRF token. ApiError 403 (or 401: not signed in) otherwise."""
    if not from_here(request):
        raise ApiError(403, "this form was not sent from gatebot's own pages")
    token = await session_token(request)
    if token is None:
        raise ApiError(401, "sign in first: your session has ended")
    form = await read_form(request)
    if not request[SESSION].csrf_ok(form.get("csrf")):
        raise ApiError(403, "the form is out of date (its CSRF token does not match); reload")
    check_scope(token, "deploy")
    return form


def page(text: str, nonce: str, status: int = 200) -> web.Response:
    return html_response(text, nonce, status)


def _nonce() -> str:
    return random.token_urlsafe(12)


def _project(request: web.Request) -> ProjectSettings | None:
    try:
        return request.app[SETTINGS].project(request.match_info["name"])
    except UnknownProject:
        return None


def _job_id(request: web.Request) -> int:
    value = int(request.match_info["id"])
    return value if value <= MAX_ID else 0


async def _signed_out(request: web.Request, problem: ApiError, nonce: str) -> web.Response:
    message = (
        "Sign in with an API token to see gatebot's dashboard."
        if problem.status == 401
        else problem.message
    )
    return page(render_sign_in(message, nonce, next_path=request.path_qs), nonce, problem.status)


# --- reading ----------------------------------------------------------------------------------


async def project_state(app: web.Application, project: ProjectSettings) -> ProjectState:
    engine = app[ENGINE]
    deployments = engine.store.deployments
    active = await deployments.active(project.name)
    job, holder = await busy_with(engine, project.name)
    deploying = None
    if job is not None and job.deployment_id is not None:
        deploying = await deployments.get(job.deployment_id)
    elif holder is not None:
        in_flight = await deployments.with_status(
            Status.PENDING, Status.DEPLOYING, project=project.name
        )
        deploying = in_flight[-1] if in_flight else None
    stage = None
    if deploying is not None:
        steps = await deployments.steps(deploying.id)
        stage = steps[-1].stage if steps else None
    counts = await engine.store.jobs.counts(project.name)
    queued = counts.get(JobState.QUEUED, 0) + counts.get(JobState.WAITING, 0)
    newest = await deployments.history(project.name, limit=1)
    failure = newest[0] if newest and newest[0].status is Status.FAILED else None
    return ProjectState(
        project=project,
        active=active,
        deploying=deploying,
        busy_by=holder,
        stage=stage,
        queued=queued,
        failure=failure,
        commit_base=commit_base(app[SETTINGS], project),
        tasks=await engine.live_tasks(active),
    )


async def all_states(app: web.Application) -> list[ProjectState]:
    return [await project_state(app, p) for p in app[SETTINGS].projects]


@routes.get("/")
async def overview(request: web.Request) -> web.Response:
    nonce = _nonce()
    try:
        viewer = await viewer_of(request)
    except ApiError as problem:
        return await _signed_out(request, problem, nonce)
    states = await all_states(request.app)
    bar = await bar_of(request, viewer)
    return page(render_overview(bar, states, nonce, request.app[SECRETS]), nonce)


@routes.get("/events")
async def overview_events(request: web.Request) -> web.StreamResponse:
    """The overview's live stream: an `overview` event (the projects' HTML and the queue's
    state) at the start and whenever it changes; it ends when the viewer's session does."""
    await viewer_of(request)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    if request.method == "HEAD":
        await response.write_eof()
        return response
    loop = asyncio.get_running_loop()
    last, quiet_since = "", loop.time()
    try:
        await response.write(b"retry: 2000\n\n")
        while True:
            try:
                viewer = await viewer_of(request)
            except ApiError:
                break
            states = await all_states(request.app)
            bar = await bar_of(request, viewer)
            data = json.dumps(
                {
                    "projects": overview_projects(states, request.app[SECRETS]),
                    "queue": bar.queue,
                    "queueClass": bar.queue_class,
                },
                separators=(",", ":"),
            )
            if data != last:
                await response.write(sse.event("overview", data))
                last, quiet_since = data, loop.time()
            elif loop.time() - quiet_since > sse.KEEPALIVE_SECONDS:
                await response.write(b": keepalive\n\n")
                quiet_since = loop.time()
            if await _stopping_within(request.app[STOPPING], POLL_SECONDS):
                break
            if request.transport is None or request.transport.is_closing():
                return response  # the browser went away
    except ConnectionResetError:
        return response
    await response.write_eof()
    return response


async def _stopping_within(stopping: asyncio.Event, seconds: float) -> bool:
    try:
        await asyncio.wait_for(stopping.wait(), seconds)
    except TimeoutError:
        return False
    return True


async def _project_page(
    request: web.Request,
    project: ProjectSettings,
    viewer: Viewer,
    nonce: str,
    *,
    notice: str | None = None,
    status: int = 200,
) -> web.Response:
    engine = request.app[ENGINE]
    deployments = engine.store.deployments
    number = page_number(request.query.get("page"))
    rows = await deployments.history(
        project.name, limit=HISTORY_PAGE + 1, offset=(number - 1) * HISTORY_PAGE
    )
    state = await project_state(request.app, project)
    recent = await deployments.history(project.name, limit=50)
    choices = rollback_choices(recent, state.active)[: project.keep_releases]
    jobs = await engine.store.jobs.recent(project=project.name, limit=RECENT_JOBS)
    text = render_project(
        await bar_of(request, viewer),
        state,
        history=rows[:HISTORY_PAGE],
        page=number,
        more=len(rows) > HISTORY_PAGE,
        jobs=jobs,
        choices=choices,
        nonce=nonce,
        secrets=request.app[SECRETS],
        notice=notice,
        problem=status >= 400,
    )
    return page(text, nonce, status)


@routes.get("/projects/{name}")
async def project_page(request: web.Request) -> web.Response:
    nonce = _nonce()
    try:
        viewer = await viewer_of(request)
    except ApiError as problem:
        return await _signed_out(request, problem, nonce)
    project = _project(request)
    if project is None:
        return await _missing(request, viewer, nonce, "no such project")
    return await _project_page(request, project, viewer, nonce)


async def _missing(request: web.Request, viewer: Viewer, nonce: str, what: str) -> web.Response:
    bar = await bar_of(request, viewer)
    return page(render_message(bar, "Not found", f"{what}.", nonce), nonce, 404)


# --- the buttons ------------------------------------------------------------------------------


async def _button(request: web.Request, act: str) -> web.Response:
    """Deploy or Roll back: the API's decision, then the job's page (or the project's page
    with the refusal's message and status)."""
    nonce = _nonce()
    project = _project(request)
    try:
        form = await deploy_form(request)
    except ApiError as problem:
        return await _refused(request, problem, nonce)
    viewer = await viewer_of(request)
    if project is None:
        return await _missing(request, viewer, nonce, "no such project")
    try:
        if act == "deploy":
            sha = form.get("sha", "").strip() or None
            if sha is not None and not SHA.match(sha):
                raise ApiError(400, f"{sha[:80]!r} is not a commit SHA (7 to 64 hex digits)")
            job = await request_deploy(request.app, project, sha, origin_of(request))
        else:
            to = form.get("to", "").strip() or None
            job = await request_rollback(request.app, project, to, origin_of(request))
    except ApiError as problem:
        return await _project_page(
            request, project, viewer, nonce, notice=problem.message, status=problem.status
        )
    raise web.HTTPSeeOther(f"/jobs/{job.id}")


@routes.post("/projects/{name}/deploy")
async def post_deploy(request: web.Request) -> web.Response:
    return await _button(request, "deploy")


@routes.post("/projects/{name}/rollback")
async def post_rollback(request: web.Request) -> web.Response:
    return await _button(request, "rollback")


@routes.post(r"/jobs/{id:\d+}/cancel")
async def post_cancel(request: web.Request) -> web.Response:
    nonce = _nonce()
    try:
        await deploy_form(request)
        job = await cancel_job(request.app, _job_id(request), actor(request))
    except ApiError as problem:
        return await _refused(request, problem, nonce)
    raise web.HTTPSeeOther(f"/projects/{job.project}")


async def _refused(request: web.Request, problem: ApiError, nonce: str) -> web.Response:
    """A button refused before it did anything: the sign-in form when the session has ended,
    else the reason."""
    if problem.status == 401:
        back = safe_next(urlsplit(request.headers.get("Referer", "")).path)
        text = render_sign_in(problem.message, nonce, next_path=back)
        return page(text, nonce, 401)
    return page(render_message(None, "Not done", problem.message, nonce), nonce, problem.status)


@routes.get(r"/jobs/{id:\d+}")
async def job_page(request: web.Request) -> web.Response:
    nonce = _nonce()
    try:
        viewer = await viewer_of(request)
    except ApiError as problem:
        return await _signed_out(request, problem, nonce)
    job = await request.app[ENGINE].store.jobs.get(_job_id(request))
    if job is None:
        return await _missing(request, viewer, nonce, f"job {_job_id(request)} does not exist")
    if job.deployment_id is not None:
        raise web.HTTPSeeOther(f"/deployments/{job.deployment_id}")
    bar = await bar_of(request, viewer)
    return page(render_job(bar, job, nonce, request.app[SECRETS]), nonce)


# --- signing in and out -----------------------------------------------------------------------


@routes.get("/sign-in")
async def sign_in_page(request: web.Request) -> web.Response:
    nonce = _nonce()
    next_path = safe_next(request.query.get("next"))
    text = render_sign_in("Sign in to use gatebot's dashboard.", nonce, next_path=next_path)
    return page(text, nonce)


@routes.post("/sign-in")
async def sign_in(request: web.Request) -> web.Response:
    """A good token opens a session (its id in the cookie) and the browser goes on to `next`."""
    nonce = _nonce()
    settings = request.app[SETTINGS]
    throttle = request.app[THROTTLE]
    address = request.remote or "unknown"
    form = await read_form(request)
    next_path = safe_next(form.get("next"))

    def refused(message: str, status: int, **headers: str) -> web.Response:
        text = render_sign_in(message, nonce, next_path=next_path)
        return html_response(text, nonce, status, headers)

    if not from_here(request):
        return refused("This sign-in did not come from gatebot's own page.", 403)
    wait = throttle.wait(address)
    if wait > 0:
        seconds = int(wait) + 1
        return refused(
            f"Too many failed sign-ins from your address: try again in {seconds} s.",
            429,
            **{"Retry-After": str(seconds)},
        )
    try:
        token = await check_token(request.app, form.get("token", "").strip() or None, "read")
    except ApiError as problem:
        throttle.failed(address)
        log.info("failed sign-in from %s: %s", address, problem.message)
        return refused(f"Not signed in: {problem.message}.", problem.status)
    throttle.succeeded(address)
    sessions = request.app[SESSIONS]
    sessions.close(request.cookies.get(COOKIE))
    session_id, _ = sessions.open(token.id)
    log.info("%s signed in from %s", token.name, address)
    response = web.Response(status=303, headers={"Location": next_path})
    response.set_cookie(
        COOKIE,
        session_id,
        path="/",
        max_age=int(sessions.lifetime),
        httponly=True,
        samesite="Strict",
        secure=settings.server.public_url.startswith("https://"),
    )
    return response


@routes.post("/sign-out")
async def sign_out(request: web.Request) -> web.Response:
    nonce = _nonce()
    sessions = request.app[SESSIONS]
    session = sessions.get(request.cookies.get(COOKIE))
    if session is not None:
        form = await read_form(request)
        if not from_here(request) or not session.csrf_ok(form.get("csrf")):
            text = render_message(None, "Not signed out", "the form is out of date; reload", nonce)
            return page(text, nonce, 403)
        sessions.close(request.cookies.get(COOKIE))
    response = web.Response(status=303, headers={"Location": "/sign-in"})
    response.del_cookie(COOKIE, path="/")
    return response
