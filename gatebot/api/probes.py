"""Liveness and readiness: /healthz while the process lives, /readyz when it can deploy.

/readyz checks the database, the Docker engine, the releases (`releases`: the database knows
the releases that run, not a new database beside them, and each project's ACTIVE release's
container is running) and the queue's dispatcher. A dispatcher that
has died answers 503 (webhooks would be queued and never run); a paused queue, or one not
started yet, is reported in the checks: not started because Docker is unreachable fails the
docker check anyway, and not started for another reason while Docker answers is a 503 too.
"""

from __future__ import annotations

from aiohttp import web

from gatebot.api.keys import ENGINE, QUEUE
from gatebot.errors import GatebotError
from gatebot.model import Status
from gatebot.pipeline.adopt import find_unrecorded
from gatebot.pipeline.engine import Engine

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    ready, checks = await readiness(request.app)
    return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)


async def readiness(app: web.Application) -> tuple[bool, dict[str, str]]:
    """(ready, the checks by name): what /readyz answers, and the dashboard's top bar shows."""
    engine = app[ENGINE]
    checks: dict[str, str] = {}
    try:
        await engine.store.db.fetchone("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        checks["database"] = f"unavailable: {type(exc).__name__}"
    try:
        await engine.runtime.ping()
        checks["docker"] = "ok"
    except GatebotError as exc:
        checks["docker"] = f"unavailable: {exc}"
    if checks["database"] == checks["docker"] == "ok":
        checks["releases"] = await releases_check(engine)
    ready = all(v == "ok" for v in checks.values())
    queue = app[QUEUE]
    if queue.alive:
        checks["queue"] = "paused" if queue.paused else "ok"
    elif queue.started:
        checks["queue"] = "stopped: the dispatcher has died; restart gatebot"
        ready = False
    else:
        checks["queue"] = f"not started: {queue.start_problem or 'starting'}"
        ready = False  # with Docker unreachable, the docker check says so already
    return ready, checks


async def releases_check(engine: Engine) -> str:
    """"ok", or what is wrong with the releases that run: a database that records no
    deployment beside gatebot's running releases (a lost or deleted database: deploys are
    refused, pipeline/adopt.py), or the configured projects whose ACTIVE release's container
    is not running (the database says live, nginx routes to it, and it cannot answer: the
    watchdog is bringing it back, or could not)."""
    try:
        found = await find_unrecorded(engine)
    except Exception as exc:  # noqa: BLE001 - the docker or database check names the cause
        return f"unknown: {type(exc).__name__}"
    if found is not None:
        return "unrecorded: " + found.describe(str(engine.store.db.path))
    configured = {p.name for p in engine.settings.projects}
    down: list[str] = []
    try:
        for active in await engine.store.deployments.with_status(Status.ACTIVE):
            if active.project not in configured or not active.container:
                continue
            state = await engine.runtime_for(active.project).state(active.container)
            if state is None or not state.running:
                what = state.status if state is not None else "missing"
                down.append(f"{active.project} (v{active.version}, {active.container} {what})")
    except GatebotError as exc:
        return f"unknown: {exc}"
    return f"down: {', '.join(down)}" if down else "ok"
