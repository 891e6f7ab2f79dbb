"""GitHub's REST API for gatebot: commit statuses, commit comments, who may deploy, and a
commit's checks (check runs and statuses) for release gates.

gatebot signs in with a token, or as a GitHub App: a short-lived RS256 JWT buys an installation
token, cached until shortly before it expires. gidgethub builds the requests (URL templates
joined to ``api_url``, so a GitHub Enterprise ``/api/v3`` prefix works; headers; JSON) and
decodes the answers; every request goes through `_GitHubAPI._request`, the one method that does
HTTP, which hands it to the retrying `Transport`. Neither the token nor the JWT ever reaches a
message or a log line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import gidgethub.abc
import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

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
    github_state,
    truncate,
)
from gatebot.gate import Check, check_run, commit_status
from gatebot.settings import GitHubSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

ACCEPT = "application/vnd.github+json"
API_VERSION = "2022-11-28"
USER_AGENT = "gatebot"
DESCRIPTION_LIMIT = 140
COMMENT_LIMIT = 65536
JWT_BACKDATE = 60  # seconds: allows for a clock a little ahead of GitHub's
JWT_LIFETIME = 9 * 60  # GitHub refuses an exp more than 10 minutes ahead
TOKEN_MARGIN = 60  # re-mint an installation token this long before it expires
ALLOWED_ROLES = frozenset({"admin", "maintain", "write"})

_STATUSES = "/repos/{owner}/{repo}/statuses/{sha}"
_COMMENTS = "/repos/{owner}/{repo}/commits/{sha}/comments"
_PERMISSION = "/repos/{owner}/{repo}/collaborators/{username}/permission"
_CHECK_RUNS = "/repos/{owner}/{repo}/commits/{sha}/check-runs?per_page=100"
_COMBINED = "/repos/{owner}/{repo}/commits/{sha}/status?per_page=100"
_ACCESS_TOKENS = "/app/installations/{installation_id}/access_tokens"


def app_jwt(*, app_id: int, private_key: RSAPrivateKey, now: float) -> str:
    """The JWT a GitHub App signs in with: issued a minute ago, valid for nine minutes."""
    issued = int(now) - JWT_BACKDATE
    claims = {"iat": issued, "exp": issued + JWT_BACKDATE + JWT_LIFETIME, "iss": str(app_id)}
    return jwt.encode(claims, private_key, algorithm="RS256")


def load_private_key(path: Path) -> RSAPrivateKey:
    """The App's RSA private key from a PEM file, or ConfigError saying what is wrong."""
    where = f"[github] private_key_file {path}"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read: {exc.strerror}") from None
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ConfigError(
            f"{where}: not an unencrypted PEM private key; download one from the App's settings"
        ) from None
    if not isinstance(key, RSAPrivateKey):
        raise ConfigError(f"{where}: GitHub Apps sign with an RSA key; this is another kind")
    return key


def is_allowed(permission: Mapping[str, Any]) -> bool:
    """Whether a collaborator-permission answer grants push: admin, maintain or write."""
    return any(permission.get(key) in ALLOWED_ROLES for key in ("role_name", "permission"))


@dataclass(frozen=True, slots=True)
class _AppAuth:
    app_id: int
    private_key: RSAPrivateKey
    installation_id: int | None


@dataclass(frozen=True, slots=True)
class _InstallationToken:
    value: str
    expires_at: float  # epoch seconds


class _GitHubAPI(gidgethub.abc.GitHubAPI):
    """gidgethub over gatebot's `Transport`."""

    def __init__(self, transport: Transport, *, base_url: str) -> None:
        super().__init__(USER_AGENT, base_url=base_url)
        self._transport = transport

    async def _request(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes = b""
    ) -> Reply:
        headers = {**headers, "x-github-api-version": API_VERSION}
        return await self._transport.send(method, url, headers, body)

    async def sleep(self, seconds: float) -> None:
        await self._transport.sleep(seconds)


class GitHubClient:
    """`ForgeClient` for GitHub and GitHub Enterprise Server.

    Raises ConfigError at once when the credentials are not set up: a token, or ``app_id``
    with ``private_key_file`` (not both).
    """

    def __init__(
        self,
        settings: GitHubSettings,
        session: aiohttp.ClientSession,
        *,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._token = settings.token.get_secret_value() if settings.token else None
        self._app = _app_auth(settings)
        self._clock = clock
        self._installation_tokens: dict[int, _InstallationToken] = {}
        self._mint_lock = asyncio.Lock()
        self._transport = Transport(
            session,
            forge="GitHub",
            timeout=settings.request_timeout,
            retry_for=settings.retry_for_seconds,
            clock=clock,
            sleep=sleep,
            secrets=self._secrets,
        )
        self._api = _GitHubAPI(self._transport, base_url=settings.api_url)

    async def set_status(
        self, target: StatusTarget, state: DeployState, description: str, target_url: str | None
    ) -> None:
        commit = target.commit
        data: dict[str, str] = {
            "state": github_state(state),
            "context": target.context,
            "description": truncate(description, DESCRIPTION_LIMIT),
        }
        if target_url:
            data["target_url"] = target_url
        await self._call(
            f"cannot set the commit status of {commit}",
            commit.repo,
            lambda token: self._api.post(
                _STATUSES, _commit_vars(commit), data=data, accept=ACCEPT, oauth_token=token
            ),
        )

    async def comment(self, target: CommitRef, body: str) -> None:
        await self._call(
            f"cannot comment on {target}",
            target.repo,
            lambda token: self._api.post(
                _COMMENTS,
                _commit_vars(target),
                data={"body": truncate(body, COMMENT_LIMIT)},
                accept=ACCEPT,
                oauth_token=token,
            ),
        )

    async def may_deploy(self, repo: RepoRef, username: str, user_id: int | None) -> bool:
        async def ask(token: str) -> bool:
            url_vars = {**_repo_vars(repo), "username": username}
            try:
                answer = await self._api.getitem(
                    _PERMISSION, url_vars, accept=ACCEPT, oauth_token=token
                )
            except ForgeError as exc:
                if exc.status == 404:  # not a collaborator, or no such user
                    return False
                raise
            return isinstance(answer, Mapping) and is_allowed(answer)

        return await self._call(f"cannot check {username}'s permission on {repo.repo}", repo, ask)

    async def commit_checks(self, commit: CommitRef) -> list[Check]:
        """Check runs (GitHub Actions and other Apps) and commit statuses of the commit. The
        check-runs API lists runs, so a suite another App opened without runs never shows."""

        async def ask(token: str) -> list[Check]:
            url_vars = _commit_vars(commit)
            runs = await self._api.getitem(_CHECK_RUNS, url_vars, accept=ACCEPT, oauth_token=token)
            combined = await self._api.getitem(
                _COMBINED, url_vars, accept=ACCEPT, oauth_token=token
            )
            return parse_check_runs(runs) + parse_combined_status(combined)

        return await self._call(f"cannot read the checks of {commit}", commit.repo, ask)

    async def close(self) -> None:
        self._installation_tokens.clear()

    # --- plumbing -------------------------------------------------------------------------

    async def _call(self, what: str, repo: RepoRef, send: Callable[[str], Awaitable[T]]) -> T:
        """Run `send` with a token for `repo`, the whole of it within one retry budget."""
        if repo.forge != "github":
            raise ForgeError(f"GitHub: {what}: {repo.repo} is a {repo.forge} repository")
        _repo_vars(repo)  # refuse a malformed name before asking for a token
        with self._transport.operation():
            token = await self._token_for(repo)
            try:
                return await send(token)
            except ForgeError as exc:
                if exc.status == 401:
                    self._forget(token)
                raise ForgeError(
                    f"GitHub: {what}: {exc}{_hint(exc.status)}",
                    status=exc.status,
                    secrets=self._secrets(),
                ) from None
            except (gidgethub.GitHubException, ValueError) as exc:
                raise ForgeError(
                    f"GitHub: {what}: unreadable answer ({type(exc).__name__})",
                    secrets=self._secrets(),
                ) from None

    async def _token_for(self, repo: RepoRef) -> str:
        if self._token is not None:
            return self._token
        assert self._app is not None  # _app_auth saw to it
        installation = self._app.installation_id or repo.installation_id
        if installation is None:
            raise ForgeError(
                f"GitHub: no App installation id for {repo.repo}: set [github] installation_id"
            )
        cached = self._valid_token(installation)
        if cached is not None:
            return cached
        async with self._mint_lock:  # concurrent calls wait for one mint
            cached = self._valid_token(installation)
            if cached is not None:
                return cached
            minted = await self._mint(self._app, installation)
            self._installation_tokens[installation] = minted
            return minted.value

    def _valid_token(self, installation: int) -> str | None:
        token = self._installation_tokens.get(installation)
        if token is None or self._clock() >= token.expires_at - TOKEN_MARGIN:
            return None
        return token.value

    async def _mint(self, app: _AppAuth, installation: int) -> _InstallationToken:
        bearer = app_jwt(app_id=app.app_id, private_key=app.private_key, now=self._clock())
        what = f"GitHub: cannot get an access token for App installation {installation}"
        try:
            answer = await self._api.post(
                _ACCESS_TOKENS,
                {"installation_id": installation},
                data=b"",
                accept=ACCEPT,
                jwt=bearer,
            )
        except ForgeError as exc:
            hint = " (check [github] app_id and private_key_file)" if exc.status == 401 else ""
            raise ForgeError(
                f"{what}: {exc}{hint}", status=exc.status, secrets=[*self._secrets(), bearer]
            ) from None
        except (gidgethub.GitHubException, ValueError) as exc:
            raise ForgeError(f"{what}: unreadable answer ({type(exc).__name__})") from None
        token = _parse_installation_token(answer)
        if token is None:
            raise ForgeError(f"{what}: the answer has no token and expires_at")
        log.info("GitHub App installation %d: new access token", installation)
        return token

    def _forget(self, token: str) -> None:
        for installation, cached in list(self._installation_tokens.items()):
            if cached.value == token:
                del self._installation_tokens[installation]

    def _secrets(self) -> Iterator[str | None]:
        yield self._token
        yield from (t.value for t in self._installation_tokens.values())


def _app_auth(settings: GitHubSettings) -> _AppAuth | None:
    has_app = settings.app_id is not None or settings.private_key_file is not None
    if settings.token is not None and has_app:
        raise ConfigError("[github]: set either token or app_id with private_key_file, not both")
    if settings.token is not None:
        return None
    if settings.app_id is None or settings.private_key_file is None:
        raise ConfigError(
            "[github]: no credentials: set token, or app_id and private_key_file for a GitHub App"
        )
    return _AppAuth(
        settings.app_id, load_private_key(settings.private_key_file), settings.installation_id
    )


def parse_check_runs(answer: Any) -> list[Check]:
    """``GET .../commits/{sha}/check-runs``: ``{"total_count", "check_runs": [...]}``."""
    runs = answer.get("check_runs") if isinstance(answer, Mapping) else None
    checks = []
    for run in runs if isinstance(runs, list) else []:
        if not isinstance(run, Mapping) or not isinstance(run.get("name"), str):
            continue
        order = _id(run)
        conclusion = run.get("conclusion")
        checks.append(
            check_run(
                run["name"],
                str(run.get("status") or "queued"),
                conclusion if isinstance(conclusion, str) else None,
                order,
            )
        )
    return checks


def parse_combined_status(answer: Any) -> list[Check]:
    """``GET .../commits/{sha}/status``: the newest status of each context."""
    statuses = answer.get("statuses") if isinstance(answer, Mapping) else None
    checks = []
    for status in statuses if isinstance(statuses, list) else []:
        if not isinstance(status, Mapping) or not isinstance(status.get("context"), str):
            continue
        order = _id(status)
        checks.append(commit_status(status["context"], str(status.get("state")), order))
    return checks


def _id(item: Mapping[str, Any]) -> int:
    value = item.get("id")
    return value if isinstance(value, int) else 0


def _parse_installation_token(answer: Any) -> _InstallationToken | None:
    if not isinstance(answer, Mapping):
        return None
    value, expires_at = answer.get("token"), answer.get("expires_at")
    if not isinstance(value, str) or not value or not isinstance(expires_at, str):
        return None
    try:
        expires = datetime.fromisoformat(expires_at)
    except ValueError:
        return None
    if expires.tzinfo is None:
        return None
    return _InstallationToken(value, expires.timestamp())


def _repo_vars(repo: RepoRef) -> dict[str, str]:
    owner, sep, name = repo.repo.partition("/")
    if not sep or not owner or not name or "/" in name:
        raise ForgeError(f"GitHub: {repo.repo!r} is not an owner/name repository")
    return {"owner": owner, "repo": name}


def _commit_vars(commit: CommitRef) -> dict[str, str]:
    return {**_repo_vars(commit.repo), "sha": commit.sha}


def _hint(status: int | None) -> str:
    hints = {
        401: " (check the [github] credentials)",
        403: " (the token or App lacks a permission: statuses, contents, metadata)",
        404: " (check the repository name, and that the token or App installation can see it)",
    }
    return hints.get(status or 0, "")
