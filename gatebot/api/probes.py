"""Liveness and readiness: /healthz while the process lives, /readyz when it can deploy.

/readyz checks the database, the Docker engine, that the database knows the releases that run
(not a new database beside them, "releases") and the queue's dispatcher. A dispatcher that
has died answers 503 (webhooks would be queued and never run); a paused queue, or one not
started yet, is reported in the checks: not started because Docker is unreachable fails the
docker check anyway, and not started for another reason while Docker answers is a 503 too.
"""

from __future__ import annotations

from aiohttp import web

from gatebot.api.keys import ENGINE, QUEUE
from gatebot.errors import GatebotError
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
    """"ok", or why deploys are refused: a database that records no deployment beside
    gatebot's running releases (a lost or deleted database, pipeline/adopt.py)."""
    try:
        found = await find_unrecorded(engine)
    except Exception as exc:  # noqa: BLE001 - the docker or database check names the cause
        return f"unknown: {type(exc).__name__}"
    if found is None:
        return "ok"
    return "unrecorded: " + found.describe(str(engine.store.db.path))
