"""What a verified delivery means, decided without I/O.

A webhook handler verifies a delivery, parses it into a forge-neutral event (`gatebot.events`),
reads what the database says about the projects it names (`ReleaseFacts`), and asks this module
what to do: queue jobs, answer the commenter, or ignore it and say why. Nothing here touches
Docker, git, nginx or a forge: whether a release's image still exists, or whether the live
release changed meanwhile, is decided when the job runs, under the project's lock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gatebot.commands import USAGE, CommandError, RollbackCommand, choose_project, parse_comment
from gatebot.events import ChecksChanged, CommentCommand, Push
from gatebot.gate import gate_record
from gatebot.model import CommentRef, JobKind, Origin, OriginKind
from gatebot.settings import ProjectSettings, Settings
from gatebot.store.jobs import NewJob


@dataclass(frozen=True)
class Intake:
    """What a delivery asks for: jobs to queue, an answer for an allowed commenter, or
    nothing (`ignored` says why)."""

    jobs: list[NewJob] = field(default_factory=list)
    ignored: str | None = None
    answer: str | None = None  # a comment command that cannot run: the reason, with the usage
    project: str | None = None  # the project a comment is about (for the permission check)


# --- secrets --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A secret a delivery may be signed with, and the projects it may act for."""

    secret: str
    projects: frozenset[str]


def candidate_secrets(
    settings: Settings, forge: str, default: str | None, repo_hint: str | None = None
) -> list[Candidate]:
    """Every distinct secret configured for `forge`: a project's own secret acts for that
    project only; the forge-wide one for the projects without their own.

    `repo_hint` (read from a body not yet verified) only orders the list, so that the likely
    secret is tried first; it never adds or removes a candidate, so a lying body gains nothing.
    """
    own: dict[str, set[str]] = {}
    shared: set[str] = set()
    hinted: set[str] = set()
    for project in settings.projects:
        if project.forge != forge:
            continue
        if project.webhook_secret is not None:
            own.setdefault(project.webhook_secret.get_secret_value(), set()).add(project.name)
        else:
            shared.add(project.name)
        if repo_hint and project.forge_repo and project.forge_repo.lower() == repo_hint.lower():
            hinted.add(project.name)
    found: dict[str, set[str]] = {}
    if default:
        found[default] = shared
    for secret, names in own.items():
        if secret:
            found.setdefault(secret, set()).update(names)
    candidates = [Candidate(secret, frozenset(names)) for secret, names in found.items()]
    return sorted(candidates, key=lambda c: not (c.projects & hinted))


def has_own_secrets(settings: Settings, forge: str) -> bool:
    """Whether any project of `forge` has a webhook secret of its own (only then is it worth
    peeking at the body for the repository, to try the likely secret first)."""
    return any(p.forge == forge and p.webhook_secret is not None for p in settings.projects)


# --- pushes ---------------------------------------------------------------------------------


def plan_push(settings: Settings, push: Push, allowed: frozenset[str] | None = None) -> Intake:
    """The deploy jobs a push asks for, or why it is ignored. `allowed`: the projects the
    delivery's verified secret may act for (None: all)."""
    projects = _projects(settings, push.forge, push.repo, allowed)
    if not projects:
        return Intake(ignored=f"no project tracks {push.repo}")
    if push.is_tag:
        return Intake(ignored="tag pushes are not deployed")
    if push.deleted:
        return Intake(ignored=f"branch {push.branch} was deleted")
    tracked = [p for p in projects if p.branch == push.branch]
    if not tracked:
        return Intake(ignored=f"branch {push.branch} is not tracked")
    origin = Origin(
        kind=OriginKind.PUSH,
        who=push.pusher,
        delivery_id=push.delivery_id,
        forge=push.forge,
        repo=push.repo,
        installation_id=push.installation_id,
        project_id=push.project_id,
    )
    return Intake(jobs=[push_job(p, push.sha, origin) for p in tracked])


NOT_NEWER = "older than the live commit"  # why a push of a once-live commit queues nothing


def push_job(project: ProjectSettings, sha: str, origin: Origin) -> NewJob:
    """The deploy job of a pushed (or polled) commit: waiting for its checks when gated."""
    gate = gate_record(project.gate.checks, None, None) if project.gate is not None else None
    return NewJob(project=project.name, kind=JobKind.DEPLOY, sha=sha, origin=origin, gate=gate)


def plan_checks(
    settings: Settings, event: ChecksChanged, allowed: frozenset[str] | None = None
) -> Intake:
    """A commit's checks changed: nothing to queue; gated projects of the repository have
    their waiting jobs looked at again (the caller pokes the gate watcher)."""
    gated = [p for p in _projects(settings, event.forge, event.repo, allowed) if p.gate]
    if not gated:
        return Intake(ignored=f"no gated project tracks {event.repo}")
    return Intake(ignored=f"checks of {event.sha[:12]} changed; waiting jobs are looked at again")


# --- comments -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommentAsk:
    """A comment that is a well-formed `/rollback` for one project; what it means depends on
    the project's releases (see `plan_rollback`)."""

    project: str
    command: RollbackCommand


def read_comment(
    settings: Settings, event: CommentCommand, allowed: frozenset[str] | None = None
) -> CommentAsk | Intake:
    """First look at a comment: a command for one project, or an Intake that ignores it or
    answers it (a malformed command, an ambiguous project)."""
    own = {
        "github": settings.github.bot_login,
        "gitlab": settings.gitlab.bot_username,
    }.get(event.forge)
    if own and event.author.lower() == own.lower():
        return Intake(ignored="a comment by gatebot itself")
    parsed = parse_comment(event.body)
    if parsed is None:
        return Intake(ignored="not a command")
    candidates = [p.name for p in _projects(settings, event.forge, event.repo, allowed)]
    if not candidates:
        return Intake(ignored=f"no project is deployed from {event.repo}")
    if isinstance(parsed, CommandError):
        return Intake(answer=parsed.message, project=candidates[0])
    chosen = choose_project(parsed, candidates)
    if isinstance(chosen, CommandError):
        return Intake(answer=chosen.message, project=candidates[0])
    return CommentAsk(project=chosen, command=parsed)


@dataclass(frozen=True)
class ReleaseFacts:
    """What the database says about a project's releases, as a comment's meaning needs it."""

    active_id: int | None  # the ACTIVE deployment
    active_sha: str | None
    has_earlier: bool  # a release older than the live one was live once
    commented_version: int | None  # the newest once-live release of the commented commit


def plan_rollback(event: CommentCommand, ask: CommentAsk, facts: ReleaseFacts) -> Intake:
    """The rollback job a `/rollback` comment asks for, fixed when the comment arrives.

    With `to`, the named release. Without: on the live commit, the release before it (picked
    when the job runs, among those whose image still exists); on an older commit that was live
    once, that commit's release. The job records the live release it was decided against; if
    another one is live when the job runs, it is refused instead of guessing.
    """
    target = ask.command.to
    if target is None:
        if facts.active_sha is not None and facts.active_sha == event.sha:
            if not facts.has_earlier:
                return Intake(
                    answer=f"{ask.project} has no earlier release to roll back to.",
                    project=ask.project,
                )
        elif facts.commented_version is not None:
            target = str(facts.commented_version)
        else:
            return Intake(
                answer=(
                    f"commit {event.sha[:12]} was never live for {ask.project}; comment on a "
                    f"deployed commit, or name a release. {USAGE}"
                ),
                project=ask.project,
            )
    origin = Origin(
        kind=OriginKind.COMMENT,
        who=event.author,
        delivery_id=event.delivery_id,
        forge=event.forge,
        repo=event.repo,
        installation_id=event.installation_id,
        project_id=event.project_id,
        comment=CommentRef(
            sha=event.sha,
            author=event.author,
            author_id=event.author_id,
            comment_id=event.comment_id,
        ),
        expect_active=facts.active_id,
    )
    job = NewJob(project=ask.project, kind=JobKind.ROLLBACK, target=target, origin=origin)
    return Intake(jobs=[job], project=ask.project)


def _projects(
    settings: Settings, forge: str, repo: str, allowed: frozenset[str] | None
) -> list[ProjectSettings]:
    return [p for p in settings.projects_for(forge, repo) if allowed is None or p.name in allowed]
