"""Forge feedback: every job shows on its commit as a status, and comment commands get replies.

`ForgeFeedback` is a JobObserver: it maps a job's life to commit statuses (context
`gatebot/<project>`, linked to the deployment's page). Statuses of one commit and context are
posted in order by one task; a newer state replaces one not sent yet, so a late retry never
overwrites a newer state. Forge calls run in the background and never block or fail a deploy:
a call that finally fails is logged, and the deploy's own result stands.

`comment_runner` wraps the job runner for `/rollback` comments: it checks the commenter's
permission (or the project's allowlist) before anything runs, resolves which release the
commented commit means, and replies on the commit when the rollback starts and ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any

from gatebot.commands import (
    USAGE,
    CommandError,
    RollbackCommand,
    choose_project,
    parse_comment,
)
from gatebot.errors import GatebotError, NothingToRollBack
from gatebot.events import CommentCommand
from gatebot.forges.base import (
    CommitRef,
    DeployState,
    ForgeClient,
    ForgeError,
    RepoRef,
    StatusTarget,
)
from gatebot.pipeline.engine import Engine
from gatebot.pipeline.journal import JournalEvent, Listener
from gatebot.pipeline.status import Status
from gatebot.queue import JobRunner
from gatebot.settings import ProjectSettings, Settings
from gatebot.store.deployments import Deployment
from gatebot.store.jobs import Job, NewJob

log = logging.getLogger("gatebot.feedback")

STAGE_WORDS = {
    "source": "fetching the commit",
    "build": "building the image",
    "run": "starting the container",
    "health": "health-checking",
    "switch": "switching traffic",
    "record": "recording",
    "drain": "retiring the old release",
}


class CommandRefused(GatebotError):
    """The commenter may not run the command; nothing ran."""


class ForgeFeedback:
    def __init__(self, settings: Settings, clients: dict[str, ForgeClient]) -> None:
        self.settings = settings
        self.clients = clients
        self._pending: dict[
            tuple[str, str, str, str], tuple[StatusTarget, DeployState, str, str | None]
        ] = {}
        self._posters: dict[tuple[str, str, str, str], asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()

    # --- plumbing -------------------------------------------------------------------------

    def client_for(self, project: ProjectSettings) -> ForgeClient | None:
        return self.clients.get(project.forge)

    def repo_of(self, project: ProjectSettings, context: dict[str, Any]) -> RepoRef:
        return RepoRef(
            forge=project.forge,
            repo=str(context.get("repo") or project.forge_repo or project.name),
            project_id=context.get("project_id"),
            installation_id=context.get("installation_id"),
        )

    def page_url(self, deployment_id: int | None) -> str | None:
        if deployment_id is None:
            return None
        return f"{self.settings.server.public_url.rstrip('/')}/deployments/{deployment_id}"

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a forge call in the background; its failure is logged, never raised."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def settle(self) -> None:
        """Wait until every forge call started so far has gone out (or given up)."""
        while self._background or self._posters:
            await asyncio.gather(
                *self._background, *self._posters.values(), return_exceptions=True
            )

    async def close(self, timeout: float = 10.0) -> None:
        """Give queued forge calls a little time to go out, then stop."""
        tasks = [*self._background, *self._posters.values()]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def status(
        self,
        job: Job,
        sha: str | None,
        state: DeployState,
        description: str,
        deployment_id: int | None = None,
    ) -> None:
        project = next((p for p in self.settings.projects if p.name == job.project), None)
        if project is None or sha is None:
            return
        client = self.client_for(project)
        if client is None:
            return
        target = StatusTarget(
            commit=CommitRef(repo=self.repo_of(project, job.context), sha=sha),
            context=f"gatebot/{project.name}",
        )
        key = (project.forge, target.commit.repo.repo, sha, target.context)
        self._pending[key] = (target, state, description, self.page_url(deployment_id))
        poster = self._posters.get(key)
        if poster is None or poster.done():
            self._posters[key] = asyncio.get_running_loop().create_task(
                self._post_in_order(client, key)
            )

    async def _post_in_order(self, client: ForgeClient, key: tuple[str, str, str, str]) -> None:
        while key in self._pending:
            target, state, description, url = self._pending.pop(key)
            try:
                await client.set_status(target, state, description, url)
            except ForgeError as exc:
                log.warning("could not post status %s on %s: %s", state, target.commit, exc)
            except Exception:
                log.exception("posting status %s on %s failed", state, target.commit)
        self._posters.pop(key, None)

    def reply(self, forge: str, repo: RepoRef, sha: str, body: str) -> None:
        client = self.clients.get(forge)
        if client is None:
            log.info("no %s API configured; reply not posted: %s", forge, body)
            return

        async def post() -> None:
            try:
                await client.comment(CommitRef(repo=repo, sha=sha), body)
            except ForgeError as exc:
                log.warning("could not reply on %s@%s: %s", repo.repo, sha[:12], exc)

        self.spawn(post())

    # --- JobObserver ----------------------------------------------------------------------

    async def job_queued(self, job: Job) -> None:
        if job.kind == "deploy":
            self.status(job, job.sha, "queued", "queued")

    async def job_superseded(self, job: Job, by: Job) -> None:
        if job.kind == "deploy":
            self.status(job, job.sha, "superseded", f"superseded by {(by.sha or '?')[:7]}")

    async def job_started(self, job: Job) -> None:
        if job.kind == "deploy":
            self.status(job, job.sha, "deploying", "starting")

    def job_event(self, job: Job, event: JournalEvent) -> None:
        if job.kind == "deploy" and event.kind == "start" and event.stage in STAGE_WORDS:
            words = STAGE_WORDS[event.stage]
            self.status(job, job.sha, "deploying", words, event.deployment_id)

    async def job_finished(self, job: Job, deployment: Deployment | None) -> None:
        sha = (deployment.commit_sha if deployment else None) or job.sha
        dep_id = deployment.id if deployment else job.deployment_id
        if job.state == "succeeded" and deployment is not None:
            self.status(
                job, sha, "live", f"v{deployment.version} live on {deployment.color}", dep_id
            )
        elif job.kind == "deploy" and deployment is not None and deployment.failed_stage:
            reason = deployment.error or job.error or "failed"
            self.status(job, sha, "failed", f"{deployment.failed_stage}: {reason}", dep_id)
        elif job.kind == "deploy":
            self.status(job, sha, "error", f"failed: {job.error or 'internal error'}", dep_id)


# --- comment commands -----------------------------------------------------------------------


def plan_comment(settings: Settings, event: CommentCommand) -> tuple[NewJob | None, str]:
    """The rollback job a comment asks for (None if none) and what to say about it: the reason
    it is ignored, or the reply explaining a malformed command (prefixed ``reply:``)."""
    own = {
        "github": settings.github.bot_login,
        "gitlab": settings.gitlab.bot_username,
    }.get(event.forge)
    if own and event.author.lower() == own.lower():
        return None, "a comment by gatebot itself"
    parsed = parse_comment(event.body)
    if parsed is None:
        return None, "not a command"
    if isinstance(parsed, CommandError):
        return None, f"reply:{parsed.message}"
    candidates = [p.name for p in settings.projects_for(event.forge, event.repo)]
    chosen = choose_project(parsed, candidates)
    if isinstance(chosen, CommandError):
        return None, f"reply:{chosen.message}"
    return _rollback_job(event, parsed, chosen), "queued"


def _rollback_job(event: CommentCommand, command: RollbackCommand, project: str) -> NewJob:
    return NewJob(
        project=project,
        kind="rollback",
        target=command.to,
        trigger=f"comment:{event.author}",
        delivery_id=event.delivery_id,
        context={
            "forge": event.forge,
            "repo": event.repo,
            "installation_id": event.installation_id,
            "project_id": event.project_id,
            "comment": {
                "sha": event.sha,
                "author": event.author,
                "author_id": event.author_id,
                "comment_id": event.comment_id,
            },
        },
    )


async def target_for_commit(engine: Engine, project: str, sha: str) -> str | None:
    """What `/rollback` on commit `sha` means: None (the previous release) when `sha` is live,
    else the version of the newest once-live release of that commit."""
    active = await engine.store.deployments.active(project)
    if active is not None and active.commit_sha == sha:
        return None
    for deployment in await engine.store.deployments.history(project, limit=10_000):
        if deployment.commit_sha == sha and deployment.status is Status.ROLLED_BACK:
            return str(deployment.version)
    raise NothingToRollBack(
        f"commit {sha[:12]} was never live for {project}; comment on a deployed commit, "
        f"or name a release: {USAGE}"
    )


def comment_runner(settings: Settings, feedback: ForgeFeedback, inner: JobRunner) -> JobRunner:
    """Wrap `inner` so comment-triggered jobs are authorized and answered on the commit."""

    async def run(engine: Engine, job: Job, listeners: list[Listener]) -> Deployment:
        comment = job.context.get("comment")
        if job.kind != "rollback" or not isinstance(comment, dict):
            return await inner(engine, job, listeners)
        project = settings.project(job.project)
        repo = feedback.repo_of(project, job.context)
        sha, author = str(comment["sha"]), str(comment["author"])

        def say(body: str) -> None:
            feedback.reply(project.forge, repo, sha, body)

        if not await may_deploy(feedback, project, repo, author, comment.get("author_id")):
            say(
                f"@{author} you are not allowed to roll back `{project.name}`: it takes write "
                f"permission on {repo.repo} (or a place in the project's allowlist)."
            )
            raise CommandRefused(f"{author} may not roll back {project.name}")
        try:
            target = job.target or await target_for_commit(engine, project.name, sha)
            say(f"Rolling back `{project.name}` (requested by @{author})…")
            deployment = await inner(engine, replace(job, target=target), listeners)
        except GatebotError as exc:
            say(f"Rollback of `{project.name}` failed: {exc}")
            raise
        say(
            f"Rolled back `{project.name}`: v{deployment.version} "
            f"({(deployment.commit_sha or '')[:7]}) is live on {deployment.color}."
        )
        return deployment

    return run


async def may_deploy(
    feedback: ForgeFeedback,
    project: ProjectSettings,
    repo: RepoRef,
    author: str,
    author_id: object,
) -> bool:
    """Allowlisted, or at least write permission on the forge; any doubt means no."""
    if author.lower() in {name.lower() for name in project.allow}:
        return True
    client = feedback.client_for(project)
    if client is None:
        log.warning("no %s API configured: cannot check %s's permission", project.forge, author)
        return False
    try:
        return await client.may_deploy(
            repo, author, author_id if isinstance(author_id, int) else None
        )
    except ForgeError as exc:
        log.warning("permission check for %s failed: %s", author, exc)
        return False
