"""Errors a handler raises to answer with the shared error shape and a chosen status.

`ApiError(409, "...", job=3)` becomes ``{"error": "conflict", "message": "...", "job": 3}``
with status 409 (the code comes from gatebot.api.errors.CODES). The middleware here sits
inside error_middleware, so anything else a handler raises still gets the generic treatment.
"""

from __future__ import annotations

import logging

from aiohttp import web

from gatebot.api.errors import Handler, error_response

log = logging.getLogger("gatebot.api")


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, *, headers: dict[str, str] | None = None, **extra: object
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.extra = extra


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as problem:
        log.info("%s %s: %d %s", request.method, request.path, problem.status, problem.message)
        response = error_response(problem.status, problem.message, **problem.extra)
        response.headers.update(problem.headers)
        return response
