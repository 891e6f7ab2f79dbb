"""GET /metrics, and the middleware that counts webhook deliveries by outcome.

The registry lives in gatebot/metrics.py. A webhook handler records what became of a delivery
under `WEBHOOK_OUTCOME` on the request (queued, duplicate, ignored, ping); an answer made
without one (a refusal by the error middleware) is named by its status code.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from gatebot.api.errors import Handler
from gatebot.api.keys import ENGINE, METRICS, WEBHOOK_OUTCOME
from gatebot.metrics import event_label

EVENT_HEADERS = {"github": "X-GitHub-Event", "gitlab": "X-Gitlab-Event"}
REFUSALS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    408: "timeout",
    413: "too_large",
    499: "client_closed",
    503: "unavailable",
}

routes = web.RouteTableDef()


@routes.get("/metrics")
async def metrics_endpoint(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    metrics.set_job_counts(await request.app[ENGINE].store.jobs.counts())
    return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def webhook_outcome(status: int, recorded: str | None) -> str:
    """What became of a delivery: what its handler recorded, else what its status says."""
    if recorded is not None:
        return recorded
    if 200 <= status < 300:
        return "ok"
    return REFUSALS.get(status, "error")


@web.middleware
async def webhook_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count each webhook delivery by forge, event and outcome (outermost middleware, so it
    sees the answer the error middleware made)."""
    forge = request.path.removeprefix("/webhooks/")
    if request.method != "POST" or forge not in EVENT_HEADERS or forge == request.path:
        return await handler(request)
    event = event_label(forge, request.headers.get(EVENT_HEADERS[forge]))
    try:
        response = await handler(request)
    except Exception:
        request.app[METRICS].webhook(forge, event, "error")
        raise
    outcome = webhook_outcome(response.status, request.get(WEBHOOK_OUTCOME))
    request.app[METRICS].webhook(forge, event, outcome)
    return response
