"""POST /webhooks/github and /webhooks/gitlab: verify first, then parse, then record and queue.

The only thing read from a body before its signature is checked is the repository name, and
only to choose between per-project secrets. A delivery is acknowledged (202 with the job ids)
as soon as its record and its jobs are committed to SQLite; deploys run later, in the queue.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable

from aiohttp import web

from gatebot.api.keys import ENGINE, FEEDBACK, QUEUE, SETTINGS, WEBHOOK_OUTCOME
from gatebot.errors import NothingToRollBack
from gatebot.events import CommentCommand, Event, Ignored, Ping, Push
from gatebot.feedback import CommentPlan, plan_comment, reply_if_allowed, resolve_target
from gatebot.forges.errors import WebhookRejected
from gatebot.forges.github import sansio as github
from gatebot.forges.gitlab import sansio as gitlab
from gatebot.model import JobKind, Origin, OriginKind
from gatebot.settings import Settings
from gatebot.store.jobs import DuplicateDelivery, NewJob

log = logging.getLogger("gatebot.webhooks")
routes = web.RouteTableDef()


async def read_body(request: web.Request) -> bytes:
    """The raw body, refusing one over the limit before reading it whole."""
    limit = request.app[SETTINGS].server.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise WebhookRejected.too_large(limit)
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise WebhookRejected.too_large(limit) from None


def candidate_secrets(
    settings: Settings, forge: str, repo: str | None, default: str | None
) -> dict[str, set[str]]:
    """The secrets a delivery for `repo` may be signed with, each with the projects it may act
    for: a project's own secret acts for that project only; the forge-wide one for the rest."""
    projects = settings.projects_for(forge, repo) if repo else []
    secrets: dict[str, set[str]] = {}
    for project in projects:
        secret = project.webhook_secret.get_secret_value() if project.webhook_secret else default
        if secret:
            secrets.setdefault(secret, set()).add(project.name)
    if not projects and default:
        secrets[default] = set()  # verified, but no project will act on it
    return secrets


def verify_with_any(secrets: dict[str, set[str]], verify: Callable[[str], None]) -> set[str]:
    """Verify with each candidate secret; return the projects the one that passed acts for."""
    if not secrets:
        raise WebhookRejected.unauthorized("no webhook secret is configured for this delivery")
    failure: WebhookRejected | None = None
    for secret, projects in secrets.items():
        try:
            verify(secret)
            return projects
        except WebhookRejected as exc:
            failure = exc
    assert failure is not None
    raise failure


@routes.post("/webhooks/github")
async def github_webhook(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    body = await read_body(request)
    content_type = request.headers.get("Content-Type")
    default = settings.github.webhook_secret
    secrets = candidate_secrets(
        settings,
        "github",
        github.peek_repository(content_type, body),
        default.get_secret_value() if default else None,
    )
    signature = request.headers.get("X-Hub-Signature-256")
    allowed = verify_with_any(
        secrets, lambda secret: github.verify_signature(body, signature, secret)
    )
    event = github.parse_event(request.headers, github.decode_body(content_type, body))
    return await accept(request, event, allowed, body)


@routes.post("/webhooks/gitlab")
async def gitlab_webhook(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    body = await read_body(request)
    token = settings.gitlab.webhook_token
    signing = settings.gitlab.webhook_signing_token
    tokens = candidate_secrets(
        settings,
        "gitlab",
        gitlab.peek_repository(body),
        token.get_secret_value() if token else None,
    )
    now = time.time()
    headers = request.headers

    def check(token_value: str | None) -> None:
        gitlab.verify(
            headers,
            body,
            token=token_value,
            signing_token=signing.get_secret_value() if signing else None,
            now=now,
        )

    allowed: set[str] | None = None  # the signing token alone acts for every project
    if tokens:
        allowed = verify_with_any(tokens, check)
    else:
        check(None)  # signing token only, or nothing configured (refused)
    event = gitlab.parse_event(headers, gitlab.decode_body(headers.get("Content-Type"), body))
    return await accept(request, event, allowed, body)


def plan_push(
    settings: Settings, push: Push, allowed: set[str] | None = None
) -> tuple[list[NewJob], str | None]:
    """The deploy jobs a push asks for, or none and the reason it is ignored. `allowed`: the
    projects the delivery's verified secret may act for (None: all)."""
    projects = [
        p
        for p in settings.projects_for(push.forge, push.repo)
        if allowed is None or p.name in allowed
    ]
    if not projects:
        return [], f"no project tracks {push.repo}"
    if push.is_tag:
        return [], "tag pushes are not deployed"
    if push.deleted:
        return [], f"branch {push.branch} was deleted"
    tracked = [p for p in projects if p.branch == push.branch]
    if not tracked:
        return [], f"branch {push.branch} is not tracked"
    origin = Origin(
        kind=OriginKind.PUSH,
        who=push.pusher,
        delivery_id=push.delivery_id,
        forge=push.forge,
        repo=push.repo,
        installation_id=push.installation_id,
        project_id=push.project_id,
    )
    return [
        NewJob(project=p.name, kind=JobKind.DEPLOY, sha=push.sha, origin=origin) for p in tracked
    ], None


async def accept(
    request: web.Request, event: Event, allowed: set[str] | None, body: bytes
) -> web.Response:
    """Record the delivery and queue what it asks for, in one transaction."""
    queue = request.app[QUEUE]
    settings = request.app[SETTINGS]
    name = type(event).__name__.lower()
    jobs: list[NewJob] = []
    reason: str | None = None
    if isinstance(event, Ping):
        reason = "ping"
    elif isinstance(event, Ignored):
        name, reason = event.event_name, event.reason
    elif isinstance(event, Push):
        jobs, reason = plan_push(settings, event, allowed)
    elif isinstance(event, CommentCommand):
        plan = plan_comment(settings, event, allowed)
        reason = plan.ignored
        if plan.job is not None:
            try:
                jobs = [await resolve_target(request.app[ENGINE], plan.job)]
            except NothingToRollBack as nothing:
                plan = CommentPlan(reply=str(nothing), project=plan.project)
        if plan.reply is not None and plan.project is not None:
            reason = "the command cannot run; the commenter is answered if allowed to deploy"
    extra = {"delivery": event.delivery_id}
    digest = hashlib.sha256(body).hexdigest()
    try:
        created = await queue.submit(
            jobs, delivery=(event.forge, event.delivery_id, name, digest), supersede=True
        )
    except DuplicateDelivery as duplicate:
        log.info("%s delivery %s: %s", event.forge, event.delivery_id, duplicate, extra=extra)
        request[WEBHOOK_OUTCOME] = "duplicate"
        return web.json_response({"duplicate": True, "delivery": event.delivery_id})
    if isinstance(event, CommentCommand) and plan.reply is not None and plan.project:
        feedback = request.app[FEEDBACK]
        feedback.spawn(reply_if_allowed(feedback, event, plan.project, plan.reply))
    if isinstance(event, Ping):
        request[WEBHOOK_OUTCOME] = "ping"
        return web.json_response({"ok": True, "event": "ping"})
    if not created:
        log.info("%s delivery %s ignored: %s", event.forge, event.delivery_id, reason, extra=extra)
        request[WEBHOOK_OUTCOME] = "ignored"
        return web.json_response({"ignored": True, "reason": reason})
    request[WEBHOOK_OUTCOME] = "queued"
    log.info(
        "%s delivery %s queued job(s) %s",
        event.forge,
        event.delivery_id,
        [j.id for j in created],
        extra=extra,
    )
    return web.json_response(
        {"queued": [{"job": j.id, "project": j.project, "sha": j.sha} for j in created]},
        status=202,
    )
