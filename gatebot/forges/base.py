"""What gatebot needs from a forge's API, whichever forge it is: one interface, its data.

The pipeline reports a deploy with `ForgeClient.set_status`, answers a ``/rollback`` with
`comment` and asks `may_deploy` before obeying one. It speaks `DeployState`; each forge's
client maps that to its own states with the pure functions here. A forge call never blocks
or fails a deploy: it raises `ForgeError`, which the caller logs and moves past.

`Transport` is the one piece of HTTP both clients share: a request with a timeout, retried
while the failure is transient and the time budget lasts (rules in `gatebot.forges.backoff`).
"""

from __future__ import annotations

import asyncio
import contextvars
import http
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeAlias

import aiohttp
from yarl import URL

from gatebot.errors import GatebotError
from gatebot.events import CommentCommand, Forge, Push
from gatebot.forges.backoff import Outcome, is_transient, retry_delay
from gatebot.gate import Check
from gatebot.redact import redact

log = logging.getLogger(__name__)

Clock: TypeAlias = Callable[[], float]
Sleep: TypeAlias = Callable[[float], Awaitable[None]]

DeployState: TypeAlias = Literal["queued", "deploying", "live", "failed", "superseded", "error"]
GitHubState: TypeAlias = Literal["error", "failure", "pending", "success"]
GitLabState: TypeAlias = Literal["pending", "running", "success", "failed", "canceled"]

_GITHUB_STATES: Mapping[DeployState, GitHubState] = {
    "queued": "pending",
    "deploying": "pending",
    "live": "success",
    "failed": "failure",
    "superseded": "error",
    "error": "error",
}
_GITLAB_STATES: Mapping[DeployState, GitLabState] = {
    "queued": "pending",
    "deploying": "running",
    "live": "success",
    "failed": "failed",
    "superseded": "canceled",
    "error": "failed",
}


def github_state(state: DeployState) -> GitHubState:
    return _GITHUB_STATES[state]


def gitlab_state(state: DeployState) -> GitLabState:
    return _GITLAB_STATES[state]


# --- what a call is about -------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class RepoRef:
    """A repository on a forge, with the ids its API may need."""

    forge: Forge
    repo: str  # "owner/name" on GitHub; the project's path ("group/sub/name") on GitLab
    project_id: int | None = None  # GitLab: used instead of the path when known
    installation_id: int | None = None  # GitHub App: the installation that sent the webhook

    @classmethod
    def of(cls, event: Push | CommentCommand) -> RepoRef:
        return cls(
            forge=event.forge,
            repo=event.repo,
            project_id=event.project_id,
            installation_id=event.installation_id,
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class CommitRef:
    repo: RepoRef
    sha: str

    def __str__(self) -> str:
        return f"{self.repo.repo}@{self.sha[:12]}"


@dataclass(frozen=True, kw_only=True, slots=True)
class StatusTarget:
    """The commit status line gatebot owns: one per `context` ("gatebot/shop") on a commit."""

    commit: CommitRef
    context: str


class ForgeClient(Protocol):
    """One forge's API, as the pipeline and the command handlers use it."""

    async def set_status(
        self, target: StatusTarget, state: DeployState, description: str, target_url: str | None
    ) -> None:
        """Set the commit status `target` to `state`; long descriptions are shortened."""

    async def comment(self, target: CommitRef, body: str) -> None:
        """Post `body` as a comment on the commit."""

    async def may_deploy(self, repo: RepoRef, username: str, user_id: int | None) -> bool:
        """Whether the forge lets this user push to `repo` (an unknown user may not)."""

    async def commit_checks(self, commit: CommitRef) -> list[Check]:
        """The checks (CI) on the commit as the forge reports them now, for a release gate."""

    async def close(self) -> None:
        """Forget cached credentials; the caller owns (and closes) the HTTP session."""


# --- errors ---------------------------------------------------------------------------------


class ForgeError(GatebotError):
    """A forge API call that could not be made; `status` is the last HTTP status, if any.

    Every secret passed in `secrets` is cut out of the message, so the message may be logged.
    """

    def __init__(
        self, message: str, *, status: int | None = None, secrets: Iterable[str | None] = ()
    ) -> None:
        super().__init__(redact(message, secrets))
        self.status = status


def truncate(text: str, limit: int) -> str:
    """`text`, shortened to `limit` characters with an ellipsis when it is longer."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- HTTP -----------------------------------------------------------------------------------

Reply: TypeAlias = tuple[int, Mapping[str, str], bytes]

# When the current forge operation began: its retries, token minting included, share one budget.
_operation_started: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "gatebot_forge_operation_started", default=None
)


class Transport:
    """Sends one request, retrying transient failures within a time budget.

    A reply below 400 is returned; any other ends in `ForgeError` (with its status), either at
    once (a client error) or when retrying gives up. Messages name the method and the URL path,
    never a header, and pass through `secrets()` redaction.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        forge: str,
        timeout: float,
        retry_for: float,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        secrets: Callable[[], Iterable[str | None]] = tuple,
    ) -> None:
        self._session = session
        self._forge = forge
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._retry_for = retry_for
        self._clock = clock
        self.sleep = sleep
        self._secrets = secrets

    @contextmanager
    def operation(self) -> Iterator[None]:
        """Let every request inside (in this task) share one retry budget."""
        token = _operation_started.set(self._clock()) if _operation_started.get() is None else None
        try:
            yield
        finally:
            if token is not None:
                _operation_started.reset(token)

    async def send(self, method: str, url: str, headers: Mapping[str, str], body: bytes) -> Reply:
        started = _operation_started.get()
        if started is None:
            started = self._clock()
        where = f"{method} {URL(url).path}"
        attempt = 0
        while True:
            attempt += 1
            outcome, reply = await self._attempt(method, url, headers, body)
            reply_headers = reply[1] if reply else {}
            if reply is not None and reply[0] < 400:
                return reply
            if not is_transient(outcome, reply_headers):
                raise self._failure(where, outcome, reply, attempts=attempt)
            now = self._clock()
            delay = retry_delay(
                outcome,
                reply_headers,
                attempt=attempt,
                elapsed=now - started,
                budget=self._retry_for,
                now=now,
            )
            if delay is None:
                raise self._failure(where, outcome, reply, attempts=attempt)
            log.warning(
                "%s %s: %s; retrying in %.1fs (attempt %d)",
                self._forge,
                where,
                self._describe(outcome),
                delay,
                attempt,
            )
            await self.sleep(delay)

    async def _attempt(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[Outcome, Reply | None]:
        try:
            async with self._session.request(
                method, url, headers=headers, data=body, timeout=self._timeout
            ) as response:
                reply = (response.status, response.headers, await response.read())
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return exc, None
        return reply[0], reply

    def _failure(
        self, where: str, outcome: Outcome, reply: Reply | None, *, attempts: int
    ) -> ForgeError:
        detail = self._describe(outcome)
        said = server_message(reply[2]) if reply else None
        if said:
            detail += f": {said}"
        if attempts > 1:
            detail += f" (gave up after {attempts} attempts)"
        return ForgeError(
            f"{where}: {detail}",
            status=outcome if isinstance(outcome, int) else None,
            secrets=self._secrets(),
        )

    def _describe(self, outcome: Outcome) -> str:
        if isinstance(outcome, TimeoutError):
            return f"no answer within {self._timeout.total:g}s"
        if isinstance(outcome, BaseException):
            return f"{type(outcome).__name__}: {outcome}".rstrip(": ")
        try:
            return f"{outcome} {http.HTTPStatus(outcome).phrase}"
        except ValueError:
            return f"HTTP {outcome}"


def server_message(body: bytes, *, limit: int = 300) -> str | None:
    """The human part of an error body (GitHub's ``message`` and ``errors``, GitLab's
    ``message`` or ``error``), shortened; None when the body says nothing readable."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    parts = [_text(data.get(key)) for key in ("message", "error")]
    errors = data.get("errors")
    if isinstance(errors, list):
        parts.extend(_error_text(item) for item in errors)
    said = "; ".join(part for part in parts if part)
    return truncate(said, limit) if said else None


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _error_text(item: Any) -> str:
    if isinstance(item, dict):
        if isinstance(item.get("message"), str):
            return str(item["message"])
        return " ".join(str(item[k]) for k in ("field", "code") if k in item)
    return _text(item)
