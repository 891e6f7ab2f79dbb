"""GitLab's REST API for gatebot: commit statuses, commit comments, who may deploy, and a
commit's statuses (one per CI job) for release gates.

gatebot signs in with an access token sent as ``PRIVATE-TOKEN``. gidgetlab builds the requests
(paths joined to ``api_url``, so a GitLab served under a sub-path works; headers; JSON) and
decodes the answers; every request goes through `_GitLabAPI._request`, the one method that does
HTTP, which adds the token and hands it to the retrying `Transport`. A project is named by its
numeric id when the webhook gave one, else by its URL-encoded path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import gidgetlab.abc
import gidgetlab.exceptions

from gatebot.errors import ConfigError
from gatebot.forges.base import (
    Clock,
    CommitRef,
    DeployState,
    ForgeError,
    Reply,
    RepoRef,
    Sleep,
    StatusTarget,
    Transport,
    gitlab_state,
    truncate,
)
from gatebot.gate import Check, gitlab_status
from gatebot.settings import GitLabSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

USER_AGENT = "gatebot"
FIELD_LIMIT = 255  # description and target_url of a commit status
NOTE_LIMIT = 1_000_000
_ALREADY_SO = "Cannot transition status"  # GitLab's 400 for a status set twice in a row


def project_ref(repo: RepoRef) -> str:
    """The ``:id`` of a project in an API path: its number, or its path URL-encoded."""
    if repo.project_id is not None:
        return str(repo.project_id)
    return quote(repo.repo, safe="")


def is_allowed(member: Mapping[str, Any], *, min_access_level: int) -> bool:
    """Whether a member answer grants at least `min_access_level`, to an active account."""
    level = member.get("access_level")
    active = member.get("state") in (None, "active")
    return isinstance(level, int) and level >= min_access_level and active


class _GitLabAPI(gidgetlab.abc.GitLabAPI):
    """gidgetlab over gatebot's `Transport`, signing every request with the token."""

    def __init__(self, transport: Transport, *, api_url: str, token: str) -> None:
        super().__init__(USER_AGENT, url=api_url)  # a url, so GL_URL is not read
        self.api_url = api_url.rstrip("/") + "/"  # ours ends in /api/v4; GraphQL is unused
        self._transport = transport
        self._token = token

    async def _request(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes = b""
    ) -> Reply:
        headers = {**headers, "private-token": self._token}
        return await self._transport.send(method, url, headers, body)

    async def sleep(self, seconds: float) -> None:
        await self._transport.sleep(seconds)


class GitLabClient:
    """`ForgeClient` for gitlab.com and self-managed GitLab.

    Raises ConfigError at once when ``[gitlab] token`` is not set.
    """

    def __init__(
        self,
        settings: GitLabSettings,
        session: aiohttp.ClientSession,
        *,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if settings.token is None:
            raise ConfigError("[gitlab]: no token: set token to an access token with the api scope")
        self._token = settings.token.get_secret_value()
        self._min_access_level = settings.min_access_level
        self._transport = Transport(
            session,
            forge="GitLab",
            timeout=settings.request_timeout,
            retry_for=settings.retry_for_seconds,
            clock=clock,
            sleep=sleep,
            secrets=lambda: (self._token,),
        )
        self._api = _GitLabAPI(self._transport, api_url=settings.api_url, token=self._token)

    async def set_status(
        self, target: StatusTarget, state: DeployState, description: str, target_url: str | None
    ) -> None:
        commit = target.commit
        data = {
            "state": gitlab_state(state),
            "name": target.context,
            "description": truncate(description, FIELD_LIMIT),
        }
        if target_url and len(target_url) <= FIELD_LIMIT:
            data["target_url"] = target_url
        elif target_url:
            log.warning("GitLab: status of %s sent without its target_url: too long", commit)

        async def send() -> None:
            try:
                await self._api.post(_commit_path(commit, "statuses"), data=data)
            except ForgeError as exc:
                if exc.status == 400 and _ALREADY_SO in str(exc):
                    log.info("GitLab: status of %s is already %s", commit, data["state"])
                    return
                raise

        await self._call(f"cannot set the commit status of {commit}", commit.repo, send)

    async def comment(self, target: CommitRef, body: str) -> None:
        path = _commit_path(target, "repository/commits") + "/comments"
        note = {"note": truncate(body, NOTE_LIMIT)}
        await self._call(
            f"cannot comment on {target}", target.repo, lambda: self._api.post(path, data=note)
        )

    async def may_deploy(self, repo: RepoRef, username: str, user_id: int | None) -> bool:
        async def ask() -> bool:
            uid = user_id if user_id is not None else await self._user_id(username)
            if uid is None:
                return False
            try:
                member = await self._api.getitem(f"projects/{project_ref(repo)}/members/all/{uid}")
            except ForgeError as exc:
                if exc.status == 404:  # not a member, or no such user
                    return False
                raise
            if not isinstance(member, Mapping):
                return False
            return is_allowed(member, min_access_level=self._min_access_level)

        return await self._call(f"cannot check {username}'s access to {repo.repo}", repo, ask)

    async def commit_checks(self, commit: CommitRef) -> list[Check]:
        """The commit's statuses: each CI job's (on every pipeline of the commit) and external
        ones; the newest of each name wins (`gatebot.gate.newest`)."""
        path = _commit_path(commit, "repository/commits") + "/statuses"

        async def ask() -> list[Check]:
            return parse_statuses(await self._api.getitem(path, {"per_page": "100", "all": "true"}))

        return await self._call(f"cannot read the statuses of {commit}", commit.repo, ask)

    async def close(self) -> None:
        """Nothing is cached; the caller closes the session."""

    # --- plumbing -------------------------------------------------------------------------

    async def _call(self, what: str, repo: RepoRef, send: Callable[[], Awaitable[T]]) -> T:
        if repo.forge != "gitlab":
            raise ForgeError(f"GitLab: {what}: {repo.repo} is a {repo.forge} repository")
        with self._transport.operation():
            try:
                return await send()
            except ForgeError as exc:
                raise ForgeError(
                    f"GitLab: {what}: {exc}{_hint(exc.status)}",
                    status=exc.status,
                    secrets=[self._token],
                ) from None
            except (gidgetlab.exceptions.GitLabException, ValueError) as exc:
                raise ForgeError(
                    f"GitLab: {what}: unreadable answer ({type(exc).__name__})",
                    secrets=[self._token],
                ) from None

    async def _user_id(self, username: str) -> int | None:
        users = await self._api.getitem("users", {"username": username})
        for user in users if isinstance(users, list) else []:
            if isinstance(user, Mapping) and user.get("username") == username:
                uid = user.get("id")
                return uid if isinstance(uid, int) else None
        return None


def parse_statuses(answer: Any) -> list[Check]:
    """``GET /projects/:id/repository/commits/:sha/statuses``: a list of statuses."""
    checks = []
    for status in answer if isinstance(answer, list) else []:
        if not isinstance(status, Mapping) or not isinstance(status.get("name"), str):
            continue
        order = _id(status)
        allowed = status.get("allow_failure") is True
        checks.append(gitlab_status(status["name"], str(status.get("status")), allowed, order))
    return checks


def _id(item: Mapping[str, Any]) -> int:
    value = item.get("id")
    return value if isinstance(value, int) else 0


def _commit_path(commit: CommitRef, collection: str) -> str:
    return f"projects/{project_ref(commit.repo)}/{collection}/{quote(commit.sha, safe='')}"


def _hint(status: int | None) -> str:
    hints = {
        401: " (check [gitlab] token)",
        403: " (the token needs the api scope and at least Developer access)",
        404: " (check the project path, and that the token's user can see it)",
    }
    return hints.get(status or 0, "")
