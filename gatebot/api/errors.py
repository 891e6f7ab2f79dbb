"""One error shape for every HTTP answer gatebot gives: {"error": code, "message": text}.

Also the reading of request bodies: `body_reader` reads a body before its handler runs, within
[server] body_timeout seconds, so a client that sends headers and part of a body and then
stays silent gets 408 and is disconnected instead of holding a connection for ever; a client
that goes away mid-body is a 499 (nginx's "client closed request") logged at INFO, not an error
with a traceback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from gatebot.api.keys import SETTINGS
from gatebot.forges.errors import WebhookRejected

log = logging.getLogger("gatebot.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    499: "client_closed",
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
        response = error_response(http.status, http.reason or "error")
        for name, value in http.headers.items():  # Allow on a 405, for one
            if name.lower() not in ("content-type", "content-length"):
                response.headers[name] = value
        return response
    except Exception:
        log.exception(
            "%s %s failed", request.method, request.path, extra={"delivery": delivery_of(request)}
        )
        return error_response(500, "internal error; see gatebot's log")


_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@web.middleware
async def body_reader(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Read the body (kept by aiohttp for the handler's own read) within [server]
    body_timeout; refuse one over [server] max_body_bytes before reading it."""
    if request.method in _BODY_METHODS and request.body_exists:
        server = request.app[SETTINGS].server
        limit = server.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise ApiError(413, f"body is larger than {limit} bytes")
        try:
            async with asyncio.timeout(server.body_timeout):
                await request.read()
        except TimeoutError:
            message = f"the request body did not arrive within {server.body_timeout:g} s"
            log.info("%s %s: 408 %s", request.method, request.path, message)
            response = error_response(408, message)
            response.force_close()
            await response.prepare(request)
            await response.write_eof()
            if request.transport is not None:  # no lingering for the rest of the body
                request.transport.close()
            return response
        except ConnectionResetError:
            raise ApiError(
                499, "the client closed the connection before its body arrived"
            ) from None
        except web.HTTPRequestEntityTooLarge:
            raise ApiError(413, f"body is larger than {limit} bytes") from None
    return await handler(request)
