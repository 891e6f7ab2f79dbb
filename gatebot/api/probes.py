"""Liveness and readiness: /healthz while the process lives, /readyz when it can deploy."""

from __future__ import annotations

from aiohttp import web

from gatebot.api.keys import ENGINE
from gatebot.errors import GatebotError

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
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
    ready = all(v == "ok" for v in checks.values())
    return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)
