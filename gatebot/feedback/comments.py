"""`/rollback` comments: authorized, run and answered on the commented commit.

At intake (`CommentDesk.authorize`), a comment command is checked against the commenter's
permission before anything is queued, so comments from someone not allowed queue nothing and
are answered at most once per commit. `comment_runner` wraps the job runner: it checks the
permission again when the job runs (remembered, so asked at most once), says "Rolling back…"
once the pipeline holds the project's lock, and replies how it ended. Replies never quote the
comment and never carry the app's log lines or a secret.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

from gatebot.errors import GatebotError, LiveReleaseChanged, LockHeld, StageFailed
from gatebot.events import CommentCommand
from gatebot.feedback.authz import Permissions
from gatebot.feedback.statuses import page_url, public_reason, repo_of
from gatebot.feedback.tasks import TaskSet
from gatebot.forges.base import CommitRef, ForgeClient, ForgeError, RepoRef
from gatebot.model import JobKind
from gatebot.pipeline.engine import Engine
from gatebot.pipeline.journal import JournalEvent, Listener
from gatebot.queue import JobRunner
from gatebot.redact import redact
from gatebot.settings import ProjectSettings, Settings
from gatebot.store.deployments import Deployment
from gatebot.store.jobs import Job

log = logging.getLogger("gatebot.feedback")

# How long a webhook's answer may wait for the forge to say whether the commenter may deploy;
# past that the job is queued and the permission is checked again when it runs.
INTAKE_PERMISSION_SECONDS = 3.0
_MAX_DENIALS_REMEMBERED = 4096


class CommandRefused(GatebotError):
    """The commenter may not run the command; nothing ran."""


def not_allowed(author: str, project: ProjectSettings, repo: RepoRef) -> str:
    return (
        f"@{author} you are not allowed to roll back `{project.name}`: it takes write "
        f"permission on {repo.repo} (or a place in the project's allowlist)."
    )


class Replier:
    """Posts comments on commits in the background; a failure is logged, never raised."""

    def __init__(self, clients: dict[str, ForgeClient], secrets: tuple[str, ...]) -> None:
        self.clients = clients
        self.secrets = secrets
        self.tasks = TaskSet()

    def reply(self, repo: RepoRef, sha: str, body: str) -> None:
        client = self.clients.get(repo.forge)
        body = redact(body, self.secrets)
        if client is None:
            log.info("no %s API configured; reply not posted", repo.forge)
            return

        async def post() -> None:
            try:
                await client.comment(CommitRef(repo=repo, sha=sha), body)
            except ForgeError as exc:
                log.warning("could not reply on %s@%s: %s", repo.repo, sha[:12], exc)

        self.tasks.spawn(post())


class CommentDesk:
    """The intake side of comment commands: permission first, and at most one "not allowed"
    answer per person and commit."""

    def __init__(self, settings: Settings, permissions: Permissions, replier: Replier) -> None:
        self.settings = settings
        self.permissions = permissions
        self.replier = replier
        self._denied: OrderedDict[tuple[str, str, str, str], None] = OrderedDict()

    async def authorize(self, event: CommentCommand, project_name: str) -> bool | None:
        """Whether the commenter may deploy the project: True, False, or None when the forge
        did not answer in time (the job then checks again when it runs). The check goes on in
        the background after a time-out, so its answer is remembered for the next time."""
        project = self.settings.project(project_name)
        repo = RepoRef.of(event)
        known = self.permissions.known(project, repo, event.author)
        if known is not None:
            return known
        check = asyncio.ensure_future(
            self.permissions.may_deploy(project, repo, event.author, event.author_id)
        )
        try:
            return await asyncio.wait_for(asyncio.shield(check), INTAKE_PERMISSION_SECONDS)
        except TimeoutError:
            log.warning("the forge did not say in time whether %s may deploy", event.author)
            return None

    def refuse(self, event: CommentCommand, project_name: str) -> None:
        """Tell the commenter they may not, once per commit (later comments get silence)."""
        key = (event.forge, event.repo.lower(), event.sha, event.author.lower())
        if key in self._denied:
            log.info("not answering %s again on %s", event.author, event.sha[:12])
            return
        self._denied[key] = None
        while len(self._denied) > _MAX_DENIALS_REMEMBERED:
            self._denied.popitem(last=False)
        project = self.settings.project(project_name)
        repo = RepoRef.of(event)
        self.replier.reply(repo, event.sha, not_allowed(event.author, project, repo))

    def answer(self, event: CommentCommand, body: str) -> None:
        """Answer a command that cannot run (only ever to someone allowed to deploy)."""
        self.replier.reply(RepoRef.of(event), event.sha, f"@{event.author} {body}")

    async def answer_if_allowed(self, event: CommentCommand, project_name: str, body: str) -> None:
        """`answer`, after a permission check that timed out at intake has finished."""
        project = self.settings.project(project_name)
        repo = RepoRef.of(event)
        if await self.permissions.may_deploy(project, repo, event.author, event.author_id):
            self.answer(event, body)
        else:
            self.refuse(event, project_name)


def comment_runner(
    settings: Settings, permissions: Permissions, replier: Replier, inner: JobRunner
) -> JobRunner:
    """Wrap `inner` so comment-triggered jobs are authorized and answered on the commit.

    A busy project (LockHeld) sends the job back to the queue without a word; "Rolling back…"
    is said once, when the pipeline has the lock.
    """

    async def run(engine: Engine, job: Job, listeners: list[Listener]) -> Deployment:
        comment = job.origin.comment
        if job.kind is not JobKind.ROLLBACK or comment is None:
            return await inner(engine, job, listeners)
        project = settings.project(job.project)
        repo = repo_of(project, job.origin)
        sha, author = comment.sha, comment.author

        def say(body: str) -> None:
            replier.reply(repo, sha, body)

        if not await permissions.may_deploy(project, repo, author, comment.author_id):
            say(not_allowed(author, project, repo))
            raise CommandRefused(f"{author} may not roll back {project.name}")
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
        except LiveReleaseChanged as changed:
            say(
                f"@{author} the live release of `{project.name}` changed since your comment "
                f"(now {changed.now}); nothing was rolled back. Comment again if you still "
                "want to."
            )
            raise
        except StageFailed as exc:
            page = page_url(settings, started[0] if started else None)
            more = f" Details: {page}" if page else ""
            live = await engine.store.deployments.active(project.name)
            say(
                f"Rollback of `{project.name}` failed at {exc.stage}: "
                f"{public_reason(exc.reason)}. v{live.version if live else '-'} "
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
        return deployment

    return run


def _release(target: str | None) -> str:
    if target is None:
        return "the previous release"
    return f"v{target}" if target.isdigit() else target
