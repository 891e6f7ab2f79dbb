"""Fake forge APIs for tests, written once: GitHub in `github`, GitLab in `gitlab`.

A fake is an aiohttp application, served on 127.0.0.1 by pytest-aiohttp's ``aiohttp_server``
(or ``aiohttp.test_utils.TestServer``). It checks each request as the real API does (path and
method, credentials, required fields, enums, length limits), answers in the documented shape,
and records the call. This module holds what both share: the `Call` record, failure injection
(`FakeForge.fail_next`), a clock tests move by hand (`FakeTime`) and RSA keys for GitHub Apps.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from multidict import CIMultiDict, CIMultiDictProxy

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The parsed body of a request, stored by the middleware: a JSON value, or one of these.
NO_BODY: Any = object()
NOT_JSON: Any = object()
_BODY = web.RequestKey("fake_body", object)


@dataclass(frozen=True)
class Call:
    """One request a fake received, and the status it answered."""

    method: str
    path: str  # below the fake's prefix, percent-escapes kept; the whole path if outside it
    query: Mapping[str, str]
    headers: CIMultiDictProxy[str]
    json: Any  # the decoded JSON body; None when there was none, or it was not JSON
    status: int


@dataclass
class _Failure:
    path_prefix: str
    status: int
    times: int
    headers: dict[str, str] = field(default_factory=dict)
    message: str = "injected failure"


class Reject(Exception):
    """Raised by a handler to answer at once with `response` (an error)."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


class FakeForge:
    """The part of a fake API that is not about one forge: routing below a prefix, recording,
    404 for unknown paths and methods, and failures injected on demand."""

    def __init__(self, *, prefix: str, clock: Callable[[], float]) -> None:
        self.prefix = prefix.rstrip("/")
        self.clock = clock
        self.calls: list[Call] = []
        self._failures: list[_Failure] = []
        self.app = web.Application(middlewares=[self._middleware])

    # --- for tests ------------------------------------------------------------------------

    def api_url(self, server: TestServer) -> str:
        """The base URL a client is configured with, e.g. ``http://127.0.0.1:PORT/api/v4``."""
        return str(server.make_url(self.prefix or "/")).rstrip("/")

    def fail_next(
        self,
        path_prefix: str,
        status: int,
        times: int = 1,
        *,
        retry_after: float | str | None = None,
        headers: Mapping[str, str] | None = None,
        message: str = "injected failure",
    ) -> None:
        """Answer the next `times` requests whose path (below the prefix) starts with
        `path_prefix` with `status`, before any check; ``Retry-After`` when given."""
        extra = dict(headers or {})
        if retry_after is not None:
            extra["Retry-After"] = str(retry_after)
        self._failures.append(_Failure(path_prefix, status, times, extra, message))

    def calls_to(self, path_prefix: str, method: str | None = None) -> list[Call]:
        return [
            c
            for c in self.calls
            if c.path.startswith(path_prefix) and (method is None or c.method == method)
        ]

    # --- for the forge subclasses ---------------------------------------------------------

    def route(self, method: str, path: str, handler: Handler) -> None:
        self.app.router.add_route(method, self.prefix + path, handler)

    def not_found(self) -> web.Response:
        raise NotImplementedError

    @staticmethod
    def body(request: web.Request) -> Any:
        """The request's JSON body, `NO_BODY` or `NOT_JSON`."""
        return request[_BODY]

    # --- machinery ------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        raw = await request.read()
        body = _parse(raw)
        request[_BODY] = body
        path = self._relative(request.rel_url.raw_path)
        response = await self._answer(request, handler, path)
        self.calls.append(
            Call(
                method=request.method,
                path=path,
                query=dict(request.query),
                headers=CIMultiDictProxy(CIMultiDict(request.headers)),
                json=None if body is NO_BODY or body is NOT_JSON else body,
                status=response.status,
            )
        )
        return response

    async def _answer(
        self, request: web.Request, handler: Handler, path: str
    ) -> web.StreamResponse:
        failure = self._take_failure(path)
        if failure is not None:
            return web.json_response(
                {"message": failure.message}, status=failure.status, headers=failure.headers
            )
        if request.match_info.http_exception is not None:  # unknown path, or wrong method
            return self.not_found()
        try:
            return await handler(request)
        except Reject as reject:
            return reject.response

    def _take_failure(self, path: str) -> _Failure | None:
        for failure in self._failures:
            if failure.times > 0 and path.startswith(failure.path_prefix):
                failure.times -= 1
                return failure
        return None

    def _relative(self, raw_path: str) -> str:
        if self.prefix and raw_path.startswith(self.prefix + "/"):
            return raw_path[len(self.prefix) :]
        return raw_path


def _parse(raw: bytes) -> Any:
    if not raw:
        return NO_BODY
    try:
        return json.loads(raw)
    except ValueError:
        return NOT_JSON


class FakeTime:
    """A clock the test moves: `sleep` records the delay and moves the clock instead of waiting.

    Pass the instance as ``clock=`` (it is callable) and its `sleep` as ``sleep=``.
    """

    def __init__(self, start: float = 1_750_000_000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)

    def advance(self, seconds: float) -> None:
        self.now += seconds


@functools.cache
def rsa_key(name: str = "app") -> rsa.RSAPrivateKey:
    """A 2048-bit RSA key, made once per `name` per test session (generation is slow)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
