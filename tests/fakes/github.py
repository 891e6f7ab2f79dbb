"""A fake GitHub REST API: commit statuses (and the combined status), commit comments,
collaborator permissions, check runs and check suites of a commit, and GitHub App
installation tokens.

    fake = FakeGitHub(tokens=["t0ken"], repos=["acme/shop"])           # a token
    fake = FakeGitHub(app_id=1, public_key=key.public_key(), installations=[7])  # an App
    server = await aiohttp_server(fake.app); api_url = fake.api_url(server)

What it refuses, as GitHub does: unknown paths and wrong methods (404), no ``User-Agent``
(403), an unknown ``X-GitHub-Api-Version`` (400), missing or unknown credentials (401), a body
that is not JSON (400), missing or invalid fields and overlong ones (422), a repository it does
not know or the token's installation does not cover (404). On
``POST /app/installations/{id}/access_tokens`` it checks the App's JWT: RS256 signature by the
App's key, ``iss`` = app id, ``iat`` not in the future, ``exp`` in the future and at most ten
minutes after ``iat`` (plus a minute of tolerance). It issues tokens of varying length and
prefix that expire after `token_lifetime` seconds by its `clock`.
"""

from __future__ import annotations

import itertools
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from tests.fakes import NO_BODY, NOT_JSON, FakeForge, Reject

ROLES = ("admin", "maintain", "write", "triage", "read", "none")
STATES = ("error", "failure", "pending", "success")
CHECK_STATUSES = ("queued", "in_progress", "completed", "waiting", "requested", "pending")
CONCLUSIONS = (
    "action_required",
    "cancelled",
    "failure",
    "neutral",
    "success",
    "skipped",
    "stale",
    "timed_out",
)
API_VERSIONS = ("2022-11-28", "2026-03-10")
DESCRIPTION_LIMIT = 140
COMMENT_LIMIT = 65536
JWT_MAX_LIFETIME = 600 + 60  # ten minutes, and a minute of tolerance
_LEGACY_PERMISSION = {  # the "permission" field knows only admin, write, read and none
    "admin": "admin",
    "maintain": "write",
    "write": "write",
    "triage": "read",
    "read": "read",
    "none": "none",
}
_SHA = re.compile(r"[0-9a-fA-F]{40}|[0-9a-fA-F]{64}")
_DOCS = "https://docs.github.com/rest"


def _token_styles() -> Iterable[Callable[[], str]]:
    """Installation tokens in turn: short and long, with and without a prefix."""
    return itertools.cycle(
        (
            lambda: "ghs_" + secrets.token_hex(18),
            lambda: "v1." + secrets.token_hex(20),
            lambda: secrets.token_urlsafe(72),
            lambda: "ghs_" + secrets.token_urlsafe(30) + "_" + secrets.token_hex(2),
        )
    )


@dataclass(frozen=True)
class IssuedToken:
    token: str
    installation_id: int
    expires_at: int  # epoch seconds, by the fake's clock


@dataclass(frozen=True)
class _Installation:
    repos: frozenset[str] | None  # None: every repository


class FakeGitHub(FakeForge):
    def __init__(
        self,
        *,
        tokens: Iterable[str] = (),
        repos: Iterable[str] = (),
        app_id: int | None = None,
        public_key: RSAPublicKey | None = None,
        installations: Iterable[int] = (),
        token_lifetime: float = 3600.0,
        prefix: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(prefix=prefix, clock=clock)
        self.app_id = app_id
        self.public_key = public_key
        self.token_lifetime = token_lifetime
        self.static_tokens = set(tokens)
        self.issued: list[IssuedToken] = []
        self.revoked: set[str] = set()
        self._styles = iter(_token_styles())
        self._installations = {i: _Installation(None) for i in installations}
        self._repos = {r.lower() for r in repos}
        self._permissions: dict[tuple[str, str], str] = {}
        self._statuses: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._comments: dict[tuple[str, str], list[str]] = {}
        self._ids = itertools.count(1)
        self._check_runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._check_suites: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.route("POST", "/repos/{owner}/{repo}/statuses/{sha}", self._post_status)
        self.route("GET", "/repos/{owner}/{repo}/commits/{sha}/status", self._combined_status)
        self.route("GET", "/repos/{owner}/{repo}/commits/{sha}/check-runs", self._list_check_runs)
        self.route("POST", "/repos/{owner}/{repo}/commits/{sha}/comments", self._post_comment)
        self.route(
            "GET", "/repos/{owner}/{repo}/collaborators/{username}/permission", self._permission
        )
        self.route("POST", "/app/installations/{installation_id}/access_tokens", self._mint)

    # --- set up ---------------------------------------------------------------------------

    def add_repo(self, repo: str) -> None:
        self._repos.add(repo.lower())

    def add_installation(self, installation_id: int, repos: Iterable[str] | None = None) -> None:
        """An App installation; its tokens reach `repos` only, or every repository."""
        scope = None if repos is None else frozenset(r.lower() for r in repos)
        self._installations[installation_id] = _Installation(scope)

    def set_permission(self, repo: str, user: str, permission: str) -> None:
        """`user`'s role on `repo`: admin, maintain, write, triage, read or none."""
        if permission not in ROLES:
            raise ValueError(f"{permission!r} is not one of {ROLES}")
        self.add_repo(repo)
        self._permissions[repo.lower(), user.lower()] = permission

    def revoke(self, token: str) -> None:
        self.revoked.add(token)

    def add_check_suite(self, repo: str, sha: str, app: str, status: str = "queued") -> int:
        """A check suite another App opened on the commit; it holds no runs until one is
        added with `add_check_run(..., suite=id)` (the check-runs API lists runs only)."""
        if status not in CHECK_STATUSES:
            raise ValueError(f"{status!r} is not one of {CHECK_STATUSES}")
        suite = {"id": next(self._ids), "head_sha": sha, "status": status, "app": {"slug": app}}
        self._check_suites.setdefault((repo.lower(), sha.lower()), []).append(suite)
        return int(str(suite["id"]))

    def add_check_run(
        self,
        repo: str,
        sha: str,
        name: str,
        status: str = "queued",
        conclusion: str | None = None,
        *,
        app: str = "github-actions",
        suite: int | None = None,
    ) -> int:
        """A check run on the commit (a new one for a re-run); its id."""
        self._check_state(status, conclusion)
        key = (repo.lower(), sha.lower())
        if suite is None:
            suite = self.add_check_suite(repo, sha, app, status)
        run = {
            "id": next(self._ids),
            "head_sha": sha.lower(),
            "name": name,
            "status": status,
            "conclusion": conclusion,
            "started_at": "2026-01-01T00:00:00Z",
            "completed_at": "2026-01-01T00:01:00Z" if status == "completed" else None,
            "app": {"slug": app},
            "check_suite": {"id": suite},
        }
        self._check_runs.setdefault(key, []).append(run)
        return int(str(run["id"]))

    def update_check_run(self, run_id: int, status: str, conclusion: str | None = None) -> None:
        self._check_state(status, conclusion)
        for runs in self._check_runs.values():
            for run in runs:
                if run["id"] == run_id:
                    run.update(status=status, conclusion=conclusion)
                    return
        raise KeyError(run_id)

    def add_status(self, repo: str, sha: str, context: str, state: str) -> None:
        """A status another service (a CI) set on the commit."""
        if state not in STATES:
            raise ValueError(f"{state!r} is not one of {STATES}")
        status = {"id": next(self._ids), "state": state, "context": context}
        status.update(description=None, target_url=None)
        self._statuses.setdefault((repo.lower(), sha.lower()), []).append(status)

    @staticmethod
    def _check_state(status: str, conclusion: str | None) -> None:
        if status not in CHECK_STATUSES:
            raise ValueError(f"{status!r} is not one of {CHECK_STATUSES}")
        if (status == "completed") != (conclusion is not None):
            raise ValueError("a conclusion is set exactly when the status is completed")
        if conclusion is not None and conclusion not in CONCLUSIONS:
            raise ValueError(f"{conclusion!r} is not one of {CONCLUSIONS}")

    # --- what happened --------------------------------------------------------------------

    @property
    def tokens(self) -> set[str]:
        """The tokens accepted right now: the static ones, and issued ones not yet expired."""
        now = self.clock()
        live = {t.token for t in self.issued if now < t.expires_at}
        return (self.static_tokens | live) - self.revoked

    def statuses(self, repo: str, sha: str) -> list[dict[str, Any]]:
        """Statuses created on the commit, oldest first."""
        return list(self._statuses.get((repo.lower(), sha.lower()), []))

    def comments(self, repo: str, sha: str) -> list[str]:
        return list(self._comments.get((repo.lower(), sha.lower()), []))

    # --- handlers -------------------------------------------------------------------------

    async def _post_status(self, request: web.Request) -> web.Response:
        repo, sha = self._repo_access(request), self._sha(request)
        data = self._json_object(request)
        state = data.get("state")
        if state is None:
            raise _invalid("Status", "state", "missing_field")
        if state not in STATES:
            raise _invalid("Status", "state", "invalid", f"state must be one of {STATES}")
        description = _optional_str(data, "description", "Status")
        if description is not None and len(description) > DESCRIPTION_LIMIT:
            raise _invalid(
                "Status",
                "description",
                "custom",
                f"description is too long (maximum is {DESCRIPTION_LIMIT} characters)",
            )
        target_url = _optional_str(data, "target_url", "Status")
        if target_url is not None and not target_url.startswith(("http://", "https://")):
            raise _invalid("Status", "target_url", "invalid", "target_url must be an http(s) URL")
        context = _optional_str(data, "context", "Status") or "default"
        status = {
            "id": next(self._ids),
            "state": state,
            "description": description,
            "target_url": target_url,
            "context": context,
        }
        self._statuses.setdefault((repo, sha), []).append(status)
        return web.json_response(status, status=201)

    async def _combined_status(self, request: web.Request) -> web.Response:
        """The newest status of each context, and their combined state."""
        repo, sha = self._repo_access(request), self._sha(request)
        self._page_size(request)
        latest: dict[str, dict[str, Any]] = {}
        for status in self._statuses.get((repo, sha), []):
            latest[status["context"]] = status
        states = {s["state"] for s in latest.values()}
        if states & {"error", "failure"}:
            combined = "failure"
        elif not states or "pending" in states:
            combined = "pending"
        else:
            combined = "success"
        statuses = sorted(latest.values(), key=lambda s: -int(s["id"]))
        return web.json_response(
            {"state": combined, "statuses": statuses, "sha": sha, "total_count": len(statuses)}
        )

    async def _list_check_runs(self, request: web.Request) -> web.Response:
        repo, sha = self._repo_access(request), self._sha(request)
        self._page_size(request)
        if request.query.get("filter", "latest") not in ("latest", "all"):
            raise _invalid("CheckRun", "filter", "invalid", "filter must be latest or all")
        runs = self._check_runs.get((repo, sha), [])
        if request.query.get("filter", "latest") == "latest":  # the newest run of each name
            newest: dict[str, dict[str, Any]] = {}
            for run in runs:
                newest[run["name"]] = run
            runs = list(newest.values())
        return web.json_response({"total_count": len(runs), "check_runs": runs})

    @staticmethod
    def _page_size(request: web.Request) -> None:
        per_page = request.query.get("per_page", "30")
        if not per_page.isdigit() or not 1 <= int(per_page) <= 100:
            raise _invalid("Query", "per_page", "invalid", "per_page must be 1 to 100")

    async def _post_comment(self, request: web.Request) -> web.Response:
        repo, sha = self._repo_access(request), self._sha(request)
        data = self._json_object(request)
        body = data.get("body")
        if body is None:
            raise _invalid("CommitComment", "body", "missing_field")
        if not isinstance(body, str) or not body:
            raise _invalid("CommitComment", "body", "invalid", "body must be a non-empty string")
        if len(body) > COMMENT_LIMIT:
            raise _invalid(
                "CommitComment",
                "body",
                "custom",
                f"body is too long (maximum is {COMMENT_LIMIT} characters)",
            )
        self._comments.setdefault((repo, sha), []).append(body)
        return web.json_response(
            {"id": next(self._ids), "body": body, "commit_id": sha}, status=201
        )

    async def _permission(self, request: web.Request) -> web.Response:
        repo = self._repo_access(request)
        user = request.match_info["username"]
        role = self._permissions.get((repo, user.lower()))
        if role is None:
            return self.not_found()
        return web.json_response(
            {"permission": _LEGACY_PERMISSION[role], "role_name": role, "user": {"login": user}}
        )

    async def _mint(self, request: web.Request) -> web.Response:
        self._check_headers(request)
        kind, credential = _authorization(request)
        if kind != "bearer" or not credential:
            raise _unauthorized("A JSON web token could not be decoded")
        problem = self.jwt_problem(credential)
        if problem is not None:
            raise _unauthorized(problem)
        body = self.body(request)
        if body is NOT_JSON or (body is not NO_BODY and not isinstance(body, dict)):
            raise _problems_parsing_json()
        installation_id = _int_or_none(request.match_info["installation_id"])
        if installation_id not in self._installations:
            return self.not_found()
        issued = IssuedToken(
            next(self._styles)(), installation_id, int(self.clock() + self.token_lifetime)
        )
        self.issued.append(issued)
        expires_at = datetime.fromtimestamp(issued.expires_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return web.json_response(
            {
                "token": issued.token,
                "expires_at": expires_at,
                "permissions": {"statuses": "write", "contents": "write", "metadata": "read"},
                "repository_selection": "all",
            },
            status=201,
        )

    # --- checks ---------------------------------------------------------------------------

    def jwt_problem(self, token: str) -> str | None:
        """Why GitHub would refuse `token` as this App's JWT, or None if it would not."""
        if self.public_key is None or self.app_id is None:
            return "A JSON web token could not be decoded"
        try:
            claims = jwt.decode(
                token,
                self.public_key,
                algorithms=["RS256"],
                options={"verify_exp": False, "verify_iat": False, "verify_iss": False},
            )
        except jwt.PyJWTError:
            return "A JSON web token could not be decoded"
        iat, exp, iss = claims.get("iat"), claims.get("exp"), claims.get("iss")
        now = self.clock()
        if not isinstance(iat, int) or isinstance(iat, bool) or iat > now:
            return "'Issued at' claim ('iat') must be an Integer representing a time in the past"
        if not isinstance(exp, int) or isinstance(exp, bool) or exp <= now:
            return (
                "'Expiration time' claim ('exp') must be a numeric value representing the "
                "future time at which the assertion expires"
            )
        if exp - iat > JWT_MAX_LIFETIME or exp > now + 600:
            return "'Expiration time' claim ('exp') is too far in the future"
        if str(iss) != str(self.app_id):
            return "'Issuer' claim ('iss') must be the App's id"
        return None

    def _repo_access(self, request: web.Request) -> str:
        """Check headers and credentials for a repository endpoint; the repository's key."""
        self._check_headers(request)
        _, credential = _authorization(request)
        if not credential or credential not in self.tokens:
            raise _unauthorized("Bad credentials")
        repo = f"{request.match_info['owner']}/{request.match_info['repo']}".lower()
        if repo not in self._repos or not self._covers(credential, repo):
            raise Reject(self.not_found())
        return repo

    def _covers(self, token: str, repo: str) -> bool:
        for issued in self.issued:
            if issued.token == token:
                scope = self._installations[issued.installation_id].repos
                return scope is None or repo in scope
        return True  # a static token reaches every repository

    def _check_headers(self, request: web.Request) -> None:
        if not request.headers.get("User-Agent"):
            raise Reject(
                web.json_response(
                    {
                        "message": "Request forbidden by administrative rules. "
                        "Please make sure your request has a User-Agent header"
                    },
                    status=403,
                )
            )
        version = request.headers.get("X-GitHub-Api-Version")
        if version is not None and version not in API_VERSIONS:
            raise Reject(
                web.json_response(
                    {"message": f"API version {version} is not supported."}, status=400
                )
            )

    def _sha(self, request: web.Request) -> str:
        sha = request.match_info["sha"]
        if not _SHA.fullmatch(sha):
            raise Reject(
                web.json_response({"message": f"No commit found for SHA: {sha}"}, status=422)
            )
        return sha.lower()

    def _json_object(self, request: web.Request) -> dict[str, Any]:
        body = self.body(request)
        if not isinstance(body, dict):
            raise _problems_parsing_json()
        return body

    def not_found(self) -> web.Response:
        return web.json_response(
            {"message": "Not Found", "documentation_url": _DOCS, "status": "404"}, status=404
        )


def _authorization(request: web.Request) -> tuple[str, str]:
    """(scheme lower-cased, credential) of the Authorization header; ("", "") if absent."""
    scheme, _, credential = request.headers.get("Authorization", "").strip().partition(" ")
    return scheme.lower(), credential.strip()


def _optional_str(data: dict[str, Any], name: str, resource: str) -> str | None:
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise _invalid(resource, name, "invalid", f"{name} must be a string")
    return value


def _int_or_none(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _invalid(resource: str, name: str, code: str, message: str | None = None) -> Reject:
    error: dict[str, str] = {"resource": resource, "field": name, "code": code}
    if message:
        error["message"] = message
    return Reject(
        web.json_response(
            {"message": "Validation Failed", "errors": [error], "documentation_url": _DOCS},
            status=422,
        )
    )


def _unauthorized(message: str) -> Reject:
    return Reject(web.json_response({"message": message, "documentation_url": _DOCS}, status=401))


def _problems_parsing_json() -> Reject:
    return Reject(web.json_response({"message": "Problems parsing JSON"}, status=400))
