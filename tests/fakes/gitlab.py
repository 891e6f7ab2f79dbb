"""A fake GitLab REST API (v4): commit statuses (set and listed), commit comments, project
members, users, and CI pipelines whose jobs show as commit statuses.

    fake = FakeGitLab(tokens=["glpat-x"])
    fake.add_project("group/shop", 42)
    fake.add_member("group/shop", user_id=7, username="alice", access_level=30)
    server = await aiohttp_server(fake.app); api_url = fake.api_url(server)  # .../api/v4

What it refuses, as GitLab does: unknown paths and wrong methods (404), a missing or unknown
``PRIVATE-TOKEN`` (or ``Authorization: Bearer``) (401), an unknown project (404; ``:id`` is the
number or the URL-encoded path), a SHA that is not one (404), a missing or invalid ``state``
or ``note`` (400), a ``description`` or ``target_url`` over 255 characters (400). Like GitLab,
it refuses to set a status that is still pending or running to the state it already has, or
back to pending (400, "Cannot transition status via ...").
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fakes import NO_BODY, NOT_JSON, FakeForge, Reject

STATES = ("pending", "running", "success", "failed", "canceled", "skipped")
JOB_STATUSES = (  # a CI job's status
    "created",
    "waiting_for_resource",
    "preparing",
    "pending",
    "running",
    "success",
    "failed",
    "canceled",
    "skipped",
    "manual",
    "scheduled",
)
FIELD_LIMIT = 255
NOTE_LIMIT = 1_000_000
_OPEN = ("pending", "running")  # a status in these is updated; any other is followed by a new one
_EVENTS = {  # GitLab's state-machine event for each requested state
    "pending": "enqueue",
    "running": "run",
    "success": "success",
    "failed": "drop",
    "canceled": "cancel",
    "skipped": "skip",
}
_NEXT = {  # from an open state, what GitLab lets it become
    "pending": {"running", "success", "failed", "canceled", "skipped"},
    "running": {"success", "failed", "canceled"},
}
_SHA = re.compile(r"[0-9a-fA-F]{40}|[0-9a-fA-F]{64}")


@dataclass
class Member:
    user_id: int
    username: str
    access_level: int
    state: str = "active"


@dataclass
class _Project:
    id: int
    path: str
    members: dict[int, Member]


class FakeGitLab(FakeForge):
    def __init__(
        self,
        *,
        tokens: Iterable[str] = (),
        prefix: str = "/api/v4",
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(prefix=prefix, clock=clock)
        self.tokens = set(tokens)
        self._projects: dict[int, _Project] = {}
        self._statuses: dict[tuple[int, str], list[dict[str, Any]]] = {}
        self._comments: dict[tuple[int, str], list[str]] = {}
        self._ids = itertools.count(1)
        self.route("POST", "/projects/{id}/statuses/{sha}", self._post_status)
        self.route("GET", "/projects/{id}/repository/commits/{sha}/statuses", self._list_statuses)
        self.route("POST", "/projects/{id}/repository/commits/{sha}/comments", self._post_comment)
        self.route("GET", "/projects/{id}/members/all/{user_id}", self._member)
        self.route("GET", "/users", self._users)

    # --- set up ---------------------------------------------------------------------------

    def add_project(self, path: str, project_id: int) -> None:
        self._projects[project_id] = _Project(project_id, path, {})

    def add_member(
        self,
        project: str | int,
        *,
        user_id: int,
        username: str,
        access_level: int,
        state: str = "active",
    ) -> None:
        """A member with `access_level` (10 Guest ... 30 Developer, 40 Maintainer, 50 Owner)."""
        found = self._find(str(project))
        if found is None:
            raise KeyError(project)
        found.members[user_id] = Member(user_id, username, access_level, state)

    def add_pipeline_job(
        self,
        project: str | int,
        sha: str,
        name: str,
        status: str = "pending",
        *,
        allow_failure: bool = False,
    ) -> int:
        """A CI job of a pipeline on the commit (a new one for a retry); its id. GitLab lists
        each job as one of the commit's statuses."""
        if status not in JOB_STATUSES:
            raise ValueError(f"{status!r} is not one of {JOB_STATUSES}")
        found = self._find(str(project))
        if found is None:
            raise KeyError(project)
        job = {"id": next(self._ids), "sha": sha.lower(), "name": name, "status": status}
        job.update(allow_failure=allow_failure, ref="main", description=None, target_url=None)
        self._statuses.setdefault((found.id, sha.lower()), []).append(job)
        return int(str(job["id"]))

    def update_pipeline_job(self, job_id: int, status: str) -> None:
        if status not in JOB_STATUSES:
            raise ValueError(f"{status!r} is not one of {JOB_STATUSES}")
        for jobs in self._statuses.values():
            for job in jobs:
                if job["id"] == job_id:
                    job["status"] = status
                    return
        raise KeyError(job_id)

    # --- what happened --------------------------------------------------------------------

    def statuses(self, project: str | int, sha: str) -> list[dict[str, Any]]:
        """Every status job on the commit, oldest first, with its current state."""
        found = self._find(str(project))
        return list(self._statuses.get((found.id, sha.lower()), [])) if found else []

    def comments(self, project: str | int, sha: str) -> list[str]:
        found = self._find(str(project))
        return list(self._comments.get((found.id, sha.lower()), [])) if found else []

    # --- handlers -------------------------------------------------------------------------

    async def _post_status(self, request: web.Request) -> web.Response:
        project, sha = self._project_access(request), self._sha(request)
        params = self._params(request)
        state = params.get("state")
        if state is None:
            raise _bad_request(error="state is missing")
        if state not in STATES:
            raise _bad_request(error="state does not have a valid value")
        name = params.get("name") or params.get("context") or "default"
        description = _limited(params, "description")
        target_url = _limited(params, "target_url")
        if target_url is not None and not target_url.startswith(("http://", "https://")):
            raise _bad_request(
                message={"target_url": ["is blocked: Only allowed schemes are http, https"]}
            )
        jobs = self._statuses.setdefault((project.id, sha), [])
        job = next((j for j in reversed(jobs) if j["name"] == name and j["status"] in _OPEN), None)
        if job is None:
            job = {"id": next(self._ids), "sha": sha, "name": name, "status": state}
            jobs.append(job)
        elif state not in _NEXT[job["status"]]:
            raise _bad_request(
                message=f"Cannot transition status via :{_EVENTS[state]} from :{job['status']}"
            )
        job.update(status=state, description=description, target_url=target_url)
        return web.json_response(job, status=201)

    async def _list_statuses(self, request: web.Request) -> web.Response:
        project, sha = self._project_access(request), self._sha(request)
        per_page = request.query.get("per_page", "20")
        if not per_page.isdigit() or not 1 <= int(per_page) <= 100:
            raise _bad_request(error="per_page does not have a valid value")
        statuses = [
            {"allow_failure": False, **job} for job in self._statuses.get((project.id, sha), [])
        ]
        return web.json_response(statuses[: int(per_page)])

    async def _post_comment(self, request: web.Request) -> web.Response:
        project, sha = self._project_access(request), self._sha(request)
        params = self._params(request)
        note = params.get("note")
        if note is None:
            raise _bad_request(error="note is missing")
        if not isinstance(note, str) or not note.strip():
            raise _bad_request(error="note is empty")
        if len(note) > NOTE_LIMIT:
            raise _bad_request(
                message={"note": [f"is too long (maximum is {NOTE_LIMIT} characters)"]}
            )
        self._comments.setdefault((project.id, sha), []).append(note)
        return web.json_response({"note": note, "author": {"username": "gatebot"}}, status=201)

    async def _member(self, request: web.Request) -> web.Response:
        project = self._project_access(request)
        user_id = request.match_info["user_id"]
        if not user_id.isdigit():
            raise _bad_request(error="user_id is invalid")
        member = project.members.get(int(user_id))
        if member is None:
            return web.json_response({"message": "404 Not found"}, status=404)
        return web.json_response(
            {
                "id": member.user_id,
                "username": member.username,
                "state": member.state,
                "access_level": member.access_level,
                "expires_at": None,
            }
        )

    async def _users(self, request: web.Request) -> web.Response:
        self._authenticate(request)
        wanted = request.query.get("username", "").lower()
        users = {
            m.user_id: {"id": m.user_id, "username": m.username, "state": m.state}
            for p in self._projects.values()
            for m in p.members.values()
            if m.username.lower() == wanted
        }
        return web.json_response(list(users.values()))

    # --- checks ---------------------------------------------------------------------------

    def _authenticate(self, request: web.Request) -> None:
        token = request.headers.get("PRIVATE-TOKEN")
        if token is None:
            scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
            token = credential.strip() if scheme.lower() == "bearer" else None
        if not token or token not in self.tokens:
            raise Reject(web.json_response({"message": "401 Unauthorized"}, status=401))

    def _project_access(self, request: web.Request) -> _Project:
        self._authenticate(request)
        project = self._find(request.match_info["id"])
        if project is None:
            raise Reject(web.json_response({"message": "404 Project Not Found"}, status=404))
        return project

    def _find(self, ref: str) -> _Project | None:
        if ref.isdigit():
            return self._projects.get(int(ref))
        return next((p for p in self._projects.values() if p.path.lower() == ref.lower()), None)

    def _sha(self, request: web.Request) -> str:
        sha = request.match_info["sha"]
        if not _SHA.fullmatch(sha):
            raise Reject(web.json_response({"message": "404 Commit Not Found"}, status=404))
        return sha.lower()

    def _params(self, request: web.Request) -> dict[str, Any]:
        """Query parameters overlaid with the JSON body, as GitLab's API reads both."""
        body = self.body(request)
        if body is NOT_JSON or (body is not NO_BODY and not isinstance(body, dict)):
            raise _bad_request(error="The provided content-type is not supported")
        return {**request.query, **(body if isinstance(body, dict) else {})}

    def not_found(self) -> web.Response:
        return web.json_response({"error": "404 Not Found"}, status=404)


def _limited(params: dict[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad_request(error=f"{name} is invalid")
    if len(value) > FIELD_LIMIT:
        raise _bad_request(message={name: [f"is too long (maximum is {FIELD_LIMIT} characters)"]})
    return value


def _bad_request(**body: Any) -> Reject:
    return Reject(web.json_response(body, status=400))
