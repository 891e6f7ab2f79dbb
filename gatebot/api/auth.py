"""Bearer-token authentication for the REST API and the deployment pages.

Handlers declare what they need with `@requires("read")` or `@requires("deploy")`; the
decorator answers 401 for a missing, unknown or revoked token and 403 for a token whose scope
is too small, and puts the token on the request for the handler (`token_of`, `actor`). Tokens
are checked by gatebot.store.tokens, which keeps only hashes and compares them in constant time.
Pages may instead present a browser session (gatebot.api.session), opened by signing in with a
token; the session's token is read again at every request. The API never reads the cookie.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from aiohttp import web

from gatebot.api.errors import ApiError, Handler
from gatebot.api.keys import ENGINE, SESSIONS
from gatebot.api.session import COOKIE, Session
from gatebot.model import Origin, OriginKind
from gatebot.store.tokens import Scope, Token, allows

TOKEN = web.RequestKey("token", Token)
SESSION = web.RequestKey("session", Session)
REALM = 'Bearer realm="gatebot"'


def bearer(header: str | None) -> str | None:
    """The token in an ``Authorization: Bearer <token>`` header, or None."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


async def authenticate(request: web.Request, needed: Scope, *, cookie: bool = False) -> Token:
    """The request's token, if it may do `needed`; else ApiError 401 or 403."""
    presented = bearer(request.headers.get("Authorization"))
    if presented is None and cookie:
        signed_in = await session_token(request)
        if signed_in is not None:
            return check_scope(signed_in, needed)
    token = await check_token(request.app, presented, needed)
    request[TOKEN] = token
    return token


async def session_token(request: web.Request) -> Token | None:
    """The live token of the request's browser session (also put on the request with the
    session), or None: no cookie, an unknown or expired session, or a revoked token."""
    sessions = request.app[SESSIONS]
    session_id = request.cookies.get(COOKIE)
    session = sessions.get(session_id)
    if session is None:
        return None
    token = await request.app[ENGINE].store.tokens.live(session.token_id)
    if token is None:
        sessions.close(session_id)
        return None
    request[SESSION] = session
    request[TOKEN] = token
    return token


async def check_token(app: web.Application, presented: str | None, needed: Scope) -> Token:
    """The live token `presented` is, if its scope allows `needed`; else ApiError 401 or 403."""
    if presented is None:
        raise ApiError(
            401,
            "a token is needed: send Authorization: Bearer <token> "
            "(create one with `gatebot token create NAME`)",
            headers={"WWW-Authenticate": REALM},
        )
    token = await app[ENGINE].store.tokens.authenticate(presented)
    if token is None:
        raise ApiError(
            401,
            "the token is unknown or revoked",
            headers={"WWW-Authenticate": f'{REALM}, error="invalid_token"'},
        )
    return check_scope(token, needed)


def check_scope(token: Token, needed: Scope) -> Token:
    """`token`, if its scope allows `needed`; else ApiError 403."""
    if not allows(token.scope, needed):
        raise ApiError(
            403,
            f"token {token.name!r} has scope {token.scope}; this needs scope {needed}",
            headers={"WWW-Authenticate": f'{REALM}, error="insufficient_scope", scope="{needed}"'},
        )
    return token


def requires(scope: Scope) -> Callable[[Handler], Handler]:
    """Decorate a handler that needs a token of `scope` (deploy includes read)."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def checked(request: web.Request) -> web.StreamResponse:
            await authenticate(request, scope)
            return await handler(request)

        return checked

    return decorate


def token_of(request: web.Request) -> Token:
    return request[TOKEN]


def actor(request: web.Request) -> str:
    """Who is acting, as recorded in a job's and a deployment's trigger: ``token:NAME``."""
    return origin_of(request).trigger


def origin_of(request: web.Request) -> Origin:
    """The origin of a job an API request queues: the token's name."""
    return Origin(kind=OriginKind.API, who=token_of(request).name)
