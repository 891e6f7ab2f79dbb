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
from dataclasses import dataclass, replace
from typing import Any

from gatebot.commands import (
    USAGE,
    CommandError,
    RollbackCommand,
    choose_project,
    parse_comment,
)
from gatebot.errors import (
    GatebotError,
    LockHeld,
    NothingToRollBack,
    StageFailed,
    UnknownProject,
)
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
from gatebot.redact import redact, secrets_of
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
        self.secrets = secrets_of(settings)

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
            await asyncio.gather(*self._background, *self._posters.values(), return_exceptions=True)

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
        if sha is None:
            return
        try:
            project = self.settings.project(job.project)
        except UnknownProject:
            return
        client = self.client_for(project)
        if client is None:
            return
        target = StatusTarget(
            commit=CommitRef(repo=self.repo_of(project, job.context), sha=sha),
            context=f"gatebot/{project.name}",
        )
        key = (project.forge, target.commit.repo.repo, sha, target.context)
        description = redact(description, self.secrets)
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
        body = redact(body, self.secrets)
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
            reason = public_reason(deployment.error or job.error or "failed")
            self.status(job, sha, "failed", f"{deployment.failed_stage}: {reason}", dep_id)
        elif job.kind == "deploy":
            reason = public_reason(job.error or "internal error")
            self.status(job, sha, "error", f"failed: {reason}", dep_id)


# --- comment commands -----------------------------------------------------------------------


def public_reason(text: str, limit: int = 200) -> str:
    """What a failure may say in public (a status, a comment): its first line, shortened.
    A failed container's log lines never reach it: they travel in `StageFailed.logs`."""
    first = text.strip().splitlines()[0] if text.strip() else "failed"
    return first if len(first) <= limit else first[: limit - 1] + "…"


@dataclass(frozen=True)
class CommentPlan:
    """What a comment asks for: a job to queue, or a reply to give an allowed commenter
    (`reply`), or nothing (`ignored` says why)."""

    job: NewJob | None = None
    reply: str | None = None
    ignored: str | None = None
    project: str | None = None


def plan_comment(
    settings: Settings, event: CommentCommand, allowed_projects: set[str] | None = None
) -> CommentPlan:
    """Decide what a comment asks for, without I/O. `allowed_projects`: the projects the
    delivery's verified secret may act for (None: every project of the repository)."""
    own = {
        "github": settings.github.bot_login,
        "gitlab": settings.gitlab.bot_username,
    }.get(event.forge)
    if own and event.author.lower() == own.lower():
        return CommentPlan(ignored="a comment by gatebot itself")
    parsed = parse_comment(event.body)
    if parsed is None:
        return CommentPlan(ignored="not a command")
    candidates = [
        p.name
        for p in settings.projects_for(event.forge, event.repo)
        if allowed_projects is None or p.name in allowed_projects
    ]
    if not candidates:
        return CommentPlan(ignored=f"no project is deployed from {event.repo}")
    if isinstance(parsed, CommandError):
        return CommentPlan(reply=parsed.message, project=candidates[0])
    chosen = choose_project(parsed, candidates)
    if isinstance(chosen, CommandError):
        return CommentPlan(reply=chosen.message, project=candidates[0])
    return CommentPlan(job=_rollback_job(event, parsed, chosen), project=chosen)


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


async def resolve_target(engine: Engine, job: NewJob) -> NewJob:
    """Fix what a `/rollback` comment means when it arrives, not when it runs: on the live
    commit, the release before it; on an older commit, that commit's release. The job also
    records the live release it was decided against; if another has gone live by the time the
    job runs, the job is refused instead of guessing (and a retry after a crash cannot bounce
    back to the release it replaced)."""
    comment = dict((job.context or {}).get("comment") or {})
    deployments = engine.store.deployments
    active = await deployments.active(job.project)
    target = job.target
    if target is None:
        sha = str(comment.get("sha", ""))
        if active is not None and active.commit_sha == sha:
            from gatebot.pipeline.rollback import choose_target

            target = str((await choose_target(engine, job.project, active, None)).version)
        else:
            target = next(
                (
                    str(d.version)
                    for d in await deployments.history(job.project, limit=10_000)
                    if d.commit_sha == sha and d.status is Status.ROLLED_BACK
                ),
                None,
            )
            if target is None:
                raise NothingToRollBack(
                    f"commit {sha[:12]} was never live for {job.project}; comment on a "
                    f"deployed commit, or name a release. {USAGE}"
                )
    comment["expect_active"] = active.id if active else None
    return replace(job, target=target, context={**(job.context or {}), "comment": comment})


def comment_runner(settings: Settings, feedback: ForgeFeedback, inner: JobRunner) -> JobRunner:
    """Wrap `inner` so comment-triggered jobs are authorized and answered on the commit.

    The permission is asked once per job; a busy project (LockHeld) sends the job back to the
    queue without a word; "Rolling back…" is said once, when the pipeline has the lock.
    """
    decided: dict[int, bool] = {}

    async def run(engine: Engine, job: Job, listeners: list[Listener]) -> Deployment:
        comment = job.context.get("comment")
        if job.kind != "rollback" or not isinstance(comment, dict):
            return await inner(engine, job, listeners)
        project = settings.project(job.project)
        repo = feedback.repo_of(project, job.context)
        sha, author = str(comment["sha"]), str(comment["author"])

        def say(body: str) -> None:
            feedback.reply(project.forge, repo, sha, body)

        if job.id not in decided:
            decided[job.id] = await may_deploy(
                feedback, project, repo, author, comment.get("author_id")
            )
        if not decided[job.id]:
            say(
                f"@{author} you are not allowed to roll back `{project.name}`: it takes write "
                f"permission on {repo.repo} (or a place in the project's allowlist)."
            )
            raise CommandRefused(f"{author} may not roll back {project.name}")
        active = await engine.store.deployments.active(project.name)
        if comment.get("expect_active") != (active.id if active else None):
            say(
                f"@{author} the live release of `{project.name}` changed since your comment "
                f"(now v{active.version if active else '-'}); nothing was rolled back. "
                "Comment again if you still want to."
            )
            raise CommandRefused("the live release changed since the comment")
        started: list[int] = []  # the deployment the pipeline reports on

        def on_start(event: JournalEvent) -> None:
            if not started:
                started.append(event.deployment_id)
                say(
                    f"Rolling back `{project.name}` to {_release(job.target)} "
                    f"(requested by @{author})…"
                )

        try:
            deployment = await inner(engine, job, [*listeners, on_start])
        except LockHeld:
            raise
        except StageFailed as exc:
            page = feedback.page_url(started[0] if started else None)
            more = f" Details: {page}" if page else ""
            say(
                f"Rollback of `{project.name}` failed at {exc.stage}: "
                f"{public_reason(exc.reason)}. v{active.version if active else '-'} "
                f"is still live.{more}"
            )
            raise
        except GatebotError as exc:
            say(f"Rollback of `{project.name}` failed: {public_reason(str(exc))}")
            raise
        say(
            f"Rolled back `{project.name}`: v{deployment.version} "
            f"({(deployment.commit_sha or '')[:7]}) is live on {deployment.color}."
        )
        decided.pop(job.id, None)
        return deployment

    return run


def _release(target: str | None) -> str:
    if target is None:
        return "the previous release"
    return f"v{target}" if target.isdigit() else target


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


async def reply_if_allowed(
    feedback: ForgeFeedback, event: CommentCommand, project_name: str, body: str
) -> None:
    """Answer a command gatebot will not run, but only to someone who may deploy: nobody
    else can make gatebot post on a commit."""
    project = feedback.settings.project(project_name)
    repo = RepoRef.of(event)
    if await may_deploy(feedback, project, repo, event.author, event.author_id):
        feedback.reply(event.forge, repo, event.sha, f"@{event.author} {body}")
    else:
        log.info("not answering %s: not allowed to deploy %s", event.author, project_name)
