"""Commit statuses: every job shows on its commit, context `gatebot/<project>`, linked to the
deployment's page.

`StatusObserver` is a JobObserver that maps a job's life to statuses; `StatusPoster` posts
them. Statuses of one commit and context are posted in order by one task; a newer state
replaces one not sent yet, so a late retry never overwrites a newer state. Descriptions are
public: they carry the stage and a short reason, never the app's log lines or a secret.
"""

from __future__ import annotations

import asyncio
import logging

from gatebot.errors import UnknownProject
from gatebot.feedback.tasks import TaskSet
from gatebot.forges.base import (
    CommitRef,
    DeployState,
    ForgeClient,
    ForgeError,
    RepoRef,
    StatusTarget,
)
from gatebot.model import JobKind, JobState, Origin
from gatebot.pipeline.journal import JournalEvent
from gatebot.redact import redact
from gatebot.settings import ProjectSettings, Settings
from gatebot.store.deployments import Deployment
from gatebot.store.jobs import Job

log = logging.getLogger("gatebot.feedback")

STAGE_WORDS = {
    "source": "fetching the commit",
    "build": "building the image",
    "run": "starting the container",
    "health": "health-checking",
    "switch": "switching traffic",
    "record": "recording",
    "watch": "watching the new release (the old one is kept running)",
    "drain": "retiring the old release",
}

_Key = tuple[str, str, str, str]  # forge, repo, sha, context


def repo_of(project: ProjectSettings, origin: Origin) -> RepoRef:
    """The forge repository a job's feedback goes to."""
    return RepoRef(
        forge=project.forge,
        repo=origin.repo or project.forge_repo or project.name,
        project_id=origin.project_id,
        installation_id=origin.installation_id,
    )


def page_url(settings: Settings, deployment_id: int | None) -> str | None:
    if deployment_id is None:
        return None
    return f"{settings.server.public_url.rstrip('/')}/deployments/{deployment_id}"


def public_reason(text: str, limit: int = 200) -> str:
    """What a failure may say in public (a status, a comment): its first line, shortened.
    A failed container's log lines never reach it: they travel in `StageFailed.logs`."""
    first = text.strip().splitlines()[0] if text.strip() else "failed"
    return first if len(first) <= limit else first[: limit - 1] + "…"


def waits_for(job: Job) -> str:
    """The checks a waiting job waits for, in words: "test, lint" or "all checks"."""
    required = (job.gate or {}).get("required")
    if isinstance(required, list) and required:
        return ", ".join(str(name) for name in required)
    return "all checks"


class StatusPoster:
    """Posts commit statuses in order per commit and context, in the background."""

    def __init__(self, clients: dict[str, ForgeClient], secrets: tuple[str, ...]) -> None:
        self.clients = clients
        self.secrets = secrets
        self.tasks = TaskSet()
        self._pending: dict[_Key, tuple[StatusTarget, DeployState, str, str | None]] = {}
        self._posters: dict[_Key, asyncio.Task[None]] = {}

    def post(
        self, target: StatusTarget, state: DeployState, description: str, url: str | None
    ) -> None:
        client = self.clients.get(target.commit.repo.forge)
        if client is None:
            return
        key = (target.commit.repo.forge, target.commit.repo.repo, target.commit.sha, target.context)
        self._pending[key] = (target, state, redact(description, self.secrets), url)
        poster = self._posters.get(key)
        if poster is None or poster.done():
            self._posters[key] = self.tasks.spawn(self._post_in_order(client, key))

    async def _post_in_order(self, client: ForgeClient, key: _Key) -> None:
        while key in self._pending:
            target, state, description, url = self._pending.pop(key)
            try:
                await client.set_status(target, state, description, url)
            except ForgeError as exc:
                log.warning("could not post status %s on %s: %s", state, target.commit, exc)
            except Exception:
                log.exception("posting status %s on %s failed", state, target.commit)
        self._posters.pop(key, None)


class StatusObserver:
    """A JobObserver: a deploy job's life as commit statuses on its commit."""

    def __init__(self, settings: Settings, poster: StatusPoster) -> None:
        self.settings = settings
        self.poster = poster

    def status(
        self,
        job: Job,
        sha: str | None,
        state: DeployState,
        description: str,
        deployment_id: int | None = None,
    ) -> None:
        if sha is None:
            return
        try:
            project = self.settings.project(job.project)
        except UnknownProject:
            return
        target = StatusTarget(
            commit=CommitRef(repo=repo_of(project, job.origin), sha=sha),
            context=f"gatebot/{project.name}",
        )
        self.poster.post(target, state, description, page_url(self.settings, deployment_id))

    async def job_queued(self, job: Job) -> None:
        if job.kind is JobKind.DEPLOY and job.state is JobState.WAITING:
            self.status(job, job.sha, "queued", f"waiting for checks: {waits_for(job)}")
        elif job.kind is JobKind.DEPLOY:
            self.status(job, job.sha, "queued", "queued")

    async def job_superseded(self, job: Job, by: Job) -> None:
        if job.kind is JobKind.DEPLOY:
            self.status(job, job.sha, "superseded", f"superseded by {(by.sha or '?')[:7]}")

    async def job_started(self, job: Job) -> None:
        if job.kind is JobKind.DEPLOY:
            self.status(job, job.sha, "deploying", "starting")

    def job_event(self, job: Job, event: JournalEvent) -> None:
        if job.kind is JobKind.DEPLOY and event.kind == "start" and event.stage in STAGE_WORDS:
            words = STAGE_WORDS[event.stage]
            self.status(job, job.sha, "deploying", words, event.deployment_id)

    async def job_finished(self, job: Job, deployment: Deployment | None) -> None:
        sha = (deployment.commit_sha if deployment else None) or job.sha
        dep_id = deployment.id if deployment else job.deployment_id
        if job.state is JobState.SUPERSEDED:  # its commit was not newer than the live one
            self.status(job, sha, "superseded", public_reason(job.error or "superseded"))
        elif job.state is JobState.FAILED and job.gate is not None and deployment is None:
            self.status(job, sha, "failed", public_reason(job.error or "checks failed"))
        elif job.state is JobState.SUCCEEDED and deployment is not None:
            self.status(
                job, sha, "live", f"v{deployment.version} live on {deployment.color}", dep_id
            )
        elif job.kind is JobKind.DEPLOY and deployment is not None and deployment.failed_stage:
            reason = public_reason(deployment.error or job.error or "failed")
            self.status(job, sha, "failed", f"{deployment.failed_stage}: {reason}", dep_id)
        elif job.kind is JobKind.DEPLOY:
            reason = public_reason(job.error or "internal error")
            self.status(job, sha, "error", f"failed: {reason}", dep_id)
