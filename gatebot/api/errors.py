"""One error shape for every HTTP answer gatebot gives: {"error": code, "message": text}."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from gatebot.forges.errors import WebhookRejected

log = logging.getLogger("gatebot.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    500: "internal_error",
    503: "unavailable",
}


def json_answer(data: object, status: int = 200) -> web.Response:
    """`data` as a JSON answer, encoded by orjson (compact, UTF-8) straight to bytes."""
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def error_response(status: int, message: str, **extra: object) -> web.Response:
    return json_answer(
        {"error": CODES.get(status, "error"), "message": message, **extra}, status=status
    )


def delivery_of(request: web.Request) -> str | None:
    for name in ("X-GitHub-Delivery", "Idempotency-Key", "webhook-id", "X-Gitlab-Event-UUID"):
        if name in request.headers:
            return request.headers[name][:200]
    return None


class ApiError(Exception):
    """Raised by a handler to answer with the shared shape and a chosen status:
    ``ApiError(409, "...", job=3)`` becomes
    ``{"error": "conflict", "message": "...", "job": 3}`` with status 409."""

    def __init__(
        self, status: int, message: str, *, headers: dict[str, str] | None = None, **extra: object
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.extra = extra


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into the shared error shape; never a stack trace, never a secret."""
    try:
        return await handler(request)
    except ApiError as problem:
        log.info("%s %s: %d %s", request.method, request.path, problem.status, problem.message)
        response = error_response(problem.status, problem.message, **problem.extra)
        response.headers.update(problem.headers)
        return response
    except WebhookRejected as rejected:
        log.warning(
            "%s %s rejected (%d): %s",
            request.method,
            request.path,
            rejected.status,
            rejected,
            extra={"delivery": delivery_of(request)},
        )
        return error_response(rejected.status, rejected.public_message)
    except web.HTTPException as http:
        if http.status < 400:
            raise
        log.info(
            "%s %s: %d %s",
            request.method,
            request.path,
            http.status,
            http.reason,
            extra={"delivery": delivery_of(request)},
        )
        return error_response(http.status, http.reason or "error")
    except Exception:
        log.exception(
            "%s %s failed", request.method, request.path, extra={"delivery": delivery_of(request)}
        )
        return error_response(500, "internal error; see gatebot's log")
